"""Image fetching guards and the HTTP app's protocol edges, against real servers."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from labelloop.backend.inference.images import ImageFetcher, decode_image
from labelloop.backend.serving.app import create_app
from labelloop.backend.serving.project_access import Credentials
from labelloop.errors import FetchError
from labelloop.settings import load_settings

ROOT = Path(__file__).resolve().parent.parent


def _jpeg(w: int = 64, h: int = 48) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def test_private_addresses_refused_unless_allowed(tmp_path: Path) -> None:
    from labelloop.procs import free_port

    port = free_port()
    srv = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        (tmp_path / "a.jpg").write_bytes(_jpeg())
        url = f"http://127.0.0.1:{port}/a.jpg"
        f = ImageFetcher(load_settings(cache_dir=tmp_path / "c"))
        got = f.load(url)
        assert not got.ok and "LABELLOOP_ALLOW_PRIVATE_URLS" in got.error
        allowed = ImageFetcher(load_settings(cache_dir=tmp_path / "c", allow_private_urls=True))
        import time

        for _ in range(50):  # the http.server may still be starting
            got = allowed.load(url)
            if got.ok:
                break
            time.sleep(0.1)
        assert got.ok and got.image.shape == (48, 64, 3)
        assert allowed.load(f"http://127.0.0.1:{port}/missing.jpg").error.endswith("HTTP 404")
    finally:
        srv.terminate()


def test_decompression_bomb_and_corrupt_and_size_limits(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buf, "PNG")  # ~50 kB on disk, 400 megapixels decoded
    assert len(buf.getvalue()) < 200_000
    with pytest.raises(FetchError, match="decompression bomb"):
        decode_image(buf.getvalue(), max_pixels=100_000_000)
    with pytest.raises(FetchError, match="not a readable image"):
        decode_image(b"\x89PNG\r\n\x1a\n garbage", max_pixels=10**8)
    big = tmp_path / "big.jpg"
    big.write_bytes(_jpeg(400, 400))
    f = ImageFetcher(load_settings(cache_dir=tmp_path / "c", local_roots=[tmp_path], max_image_bytes=100))
    assert "LABELLOOP_MAX_IMAGE_BYTES" in f.load(str(big)).error


def test_local_paths_only_under_configured_roots(tmp_path: Path) -> None:
    (tmp_path / "ok").mkdir()
    (tmp_path / "ok" / "a.jpg").write_bytes(_jpeg())
    f = ImageFetcher(load_settings(cache_dir=tmp_path / "c", local_roots=[tmp_path / "ok"]))
    assert f.load(str(tmp_path / "ok" / "a.jpg")).ok
    assert "LABELLOOP_LOCAL_ROOTS" in f.load("/etc/passwd").error
    assert "LABELLOOP_LOCAL_ROOTS" in f.load(str(tmp_path / "ok" / ".." / "ok" / ".." / "x.jpg")).error
    assert "cannot read" in f.load(str(tmp_path / "ok" / "missing.jpg")).error


def test_disk_cache_is_bounded(tmp_path: Path) -> None:
    from labelloop.backend.inference.images import DiskCache

    c = DiskCache(tmp_path / "cache", max_bytes=10_000)
    for i in range(40):
        c.put(f"k{i}", bytes(1000))
    c.trim()
    total = sum(p.stat().st_size for p in (tmp_path / "cache").rglob("*") if p.is_file())
    assert total <= 10_000 and c.get("k39") == bytes(1000)


@pytest.mark.labelstudio
def test_label_studio_images_need_the_token(label_studio, tmp_path: Path) -> None:
    ls = label_studio
    pid = requests.post(
        f"{ls.url}/api/projects",
        headers=ls.headers(),
        json={
            "title": "auth check",
            "label_config": '<View><Image name="image" value="$image"/><Choices name="c" toName="image">'
            '<Choice value="a"/></Choices></View>',
        },
    ).json()["id"]
    r = requests.post(
        f"{ls.url}/api/projects/{pid}/import?return_task_ids=true",
        headers=ls.headers(),
        files=[("file0", ("a.jpg", _jpeg(), "image/jpeg"))],
    )
    task = requests.get(f"{ls.url}/api/tasks/{r.json()['task_ids'][0]}", headers=ls.headers()).json()
    path = task["data"]["image"]
    f = ImageFetcher(load_settings(cache_dir=tmp_path / "c", image_cache_bytes=0))
    assert "LABELLOOP_LABEL_STUDIO_URL" in f.load(path).error
    assert "LABELLOOP_LABEL_STUDIO_TOKEN" in f.load(path, Credentials(ls.url, None).files()).error
    assert f.load(path, Credentials(ls.url, ls.token).files()).ok


def test_setup_is_cheap_and_bad_requests_get_clear_errors(demo_weights: Path, tmp_path: Path) -> None:
    app = create_app(load_settings(redis_url="redis://127.0.0.1:6379/0"), demo_weights)
    service = app.extensions["labelloop"]
    c = app.test_client()
    r = c.post(
        "/setup",
        json={
            "project": "3.1700000000",
            "schema": "<View/>",
            "hostname": "http://ls:8080",
            "access_token": "abc",
        },
    )
    assert r.status_code == 200 and r.json["model_version"].startswith("demo-shapes-")
    assert not service.loaded, "/setup must not load the model"
    assert c.get("/versions").json["versions"] == [r.json["model_version"]]
    assert c.post("/predict", data="{not json").status_code == 400
    assert "'tasks' must be a list" in c.post("/predict", json={"tasks": "x"}).json["error"]
    no_bool = c.post("/predict", json={"tasks": [], "project": True})  # JSON true is no project id
    assert no_bool.status_code == 400 and "'project' must be" in no_bool.json["error"]
    bad_cfg = c.post(
        "/predict", json={"tasks": [{"id": 1, "data": {"image": "x"}}], "label_config": "<View>"}
    )
    assert bad_cfg.status_code == 422 and "not valid XML" in bad_cfg.json["error"]
    assert c.get("/health").json["status"] == "UP"


def test_webhook_records_event_in_redis(demo_weights: Path, redis_url: str) -> None:
    from redis import Redis

    settings = load_settings(redis_url=redis_url, queue_prefix="webhook-test")
    Redis.from_url(redis_url).delete("webhook-test:events")
    c = create_app(settings, demo_weights).test_client()
    r = c.post(
        "/webhook", json={"action": "ANNOTATION_CREATED", "project": {"id": 7}, "annotation": {"id": 1}}
    )
    assert r.status_code == 200 and r.json["action"] == "ANNOTATION_CREATED"
    event = json.loads(Redis.from_url(redis_url).lpop("webhook-test:events"))
    assert event["action"] == "ANNOTATION_CREATED" and event["project"] == 7


def test_basic_auth_over_gunicorn(backend_factory) -> None:  # type: ignore[no-untyped-def]
    b = backend_factory(LABELLOOP_BASIC_AUTH_USER="ls", LABELLOOP_BASIC_AUTH_PASS="s3cret")
    assert requests.get(f"{b.url}/health").ok  # liveness stays open
    r = requests.post(f"{b.url}/setup", json={"project": "1.1"})
    assert r.status_code == 401 and "basic auth" in r.json()["error"]
    assert requests.post(f"{b.url}/setup", json={"project": "1.1"}, auth=("ls", "wrong")).status_code == 401
    assert requests.post(f"{b.url}/setup", json={"project": "1.1"}, auth=("ls", "s3cret")).ok


def test_cli_reports_user_errors_without_traceback(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "labelloop.cli", "serve", "--model", str(tmp_path / "nope.pt")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "nope.pt does not exist" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "labelloop.cli", "worker"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**__import__("os").environ, "LABELLOOP_CONF": "7"},
    )
    assert r.returncode == 2 and "LABELLOOP_CONF" in r.stderr and "Traceback" not in r.stderr


def test_wheel_install_maps_the_folders(tmp_path: Path) -> None:
    """``pip install .`` (not editable) puts backend/, connectors/, sync/ under labelloop.*, and
    nothing generic like ``sync`` at the top of site-packages."""
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(ROOT),
        ],
        check=True,
        timeout=300,
    )
    assert sorted(p.name for p in target.iterdir() if not p.name.endswith(("-info", "bin"))) == ["labelloop"]
    code = (
        "import labelloop.backend.inference.predictor, labelloop.connectors.formats.labelstudio, labelloop.sync, "
        "labelloop.cli; print(labelloop.backend.inference.predictor.__file__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={"PYTHONPATH": str(target)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith(str(target))
