"""The backend's parts on their own: fetch errors carry their kind, metrics count by kind, the
per-project Label Studio credentials are kept per server with a TTL, the Ultralytics conversion
needs no torch."""

from __future__ import annotations

import http.server
import io
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from prometheus_client import REGISTRY

from labelloop.backend.inference.images import ImageFetcher, LabelStudioFiles
from labelloop.backend.serving import metrics, predict_service
from labelloop.backend.serving.project_access import Credentials, ProjectAccess
from labelloop.connectors.formats.ultralytics import max_candidate, result_to_regions
from labelloop.errors import ErrorKind
from labelloop.settings import load_settings
from labelloop.types import Box, Keypoints, RotatedBox, Source


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path.startswith("/data/") and self.headers.get("Authorization") != "Token good":
            self.send_response(401)
            self.end_headers()
            return
        if self.path.endswith("/boom.jpg"):
            self.send_response(500)
            self.end_headers()
            return
        if self.path.endswith("/missing.jpg"):
            self.send_response(404)
            self.end_headers()
            return
        body = _jpeg()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a: object) -> None:
        pass


@pytest.fixture(scope="module")
def http_url():  # type: ignore[no-untyped-def]
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


def test_fetch_errors_carry_their_kind(tmp_path: Path, http_url: str) -> None:
    (tmp_path / "ok").mkdir()
    (tmp_path / "ok" / "corrupt.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    (tmp_path / "ok" / "big.jpg").write_bytes(bytes(5000))
    settings = load_settings(
        cache_dir=tmp_path / "c", local_roots=[tmp_path / "ok"], max_image_bytes=4000, image_cache_bytes=0
    )
    f = ImageFetcher(settings)
    allowed = ImageFetcher(settings.with_(allow_private_urls=True))
    cases = {
        str(tmp_path / "ok" / "corrupt.jpg"): (f, ErrorKind.FETCH_UNREADABLE),
        str(tmp_path / "ok" / "big.jpg"): (f, ErrorKind.FETCH_TOO_LARGE),
        str(tmp_path / "ok" / "nope.jpg"): (f, ErrorKind.FETCH_MISSING),
        "/etc/passwd": (f, ErrorKind.FETCH_REFUSED),
        f"{http_url}/a.jpg": (f, ErrorKind.FETCH_REFUSED),  # loopback
        f"{http_url}/missing.jpg": (allowed, ErrorKind.FETCH_MISSING),
        f"{http_url}/boom.jpg": (allowed, ErrorKind.FETCH_FAILED),
        "http://127.0.0.1:1/x.jpg": (allowed, ErrorKind.FETCH_FAILED),  # nothing listens
        "/data/upload/1/a.jpg": (f, ErrorKind.CONFIG),  # a Label Studio file, no Label Studio given
        "": (f, ErrorKind.FETCH_MISSING),
    }
    for uri, (fetcher, kind) in cases.items():
        got = fetcher.load(uri)
        assert not got.ok and got.kind is kind, (uri, got.error)
    assert allowed.load(f"{http_url}/a.jpg").ok and allowed.load(f"{http_url}/a.jpg").kind is None


def test_label_studio_headers_come_from_the_caller(tmp_path: Path, http_url: str) -> None:
    """Inference sends what it is given (a mapping or a callable asked per download), nothing else."""
    f = ImageFetcher(load_settings(cache_dir=tmp_path / "c", image_cache_bytes=0))
    assert f.load("/data/upload/1/a.jpg", LabelStudioFiles(http_url)).kind is ErrorKind.AUTH
    assert f.load("/data/upload/1/a.jpg", LabelStudioFiles(http_url, {"Authorization": "Token good"})).ok
    asked = []
    files = LabelStudioFiles(http_url, lambda: asked.append(1) or {"Authorization": "Token good"})
    assert f.load("/data/upload/1/a.jpg", files).ok and f.load(f"{http_url}/data/x.jpg", files).ok
    assert len(asked) == 2
    assert Credentials(http_url, "good").files().auth_headers() == {"Authorization": "Token good"}


def _count(kind: str) -> float:
    return REGISTRY.get_sample_value("labelloop_errors_total", {"kind": kind}) or 0.0


def test_metrics_count_errors_by_kind_not_by_message() -> None:
    assert not hasattr(predict_service, "error_kind"), "no classifying of message text"
    before = {k: _count(k) for k in ("image_unreadable", "image_auth", "image_missing", "config")}
    metrics.predicted(3, 1.0, {ErrorKind.FETCH_UNREADABLE: 2, ErrorKind.AUTH: 1}, unmapped=0)
    metrics.error(ErrorKind.CONFIG)
    assert _count("image_unreadable") == before["image_unreadable"] + 2
    assert _count("image_auth") == before["image_auth"] + 1
    assert _count("image_missing") == before["image_missing"]
    assert _count("config") == before["config"] + 1


def test_predict_counts_failed_images_by_their_kind(demo_weights: Path, tmp_path: Path) -> None:
    from labelloop.backend.serving.app import create_app

    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "corrupt.jpg").write_bytes(b"\xff\xd8 401 http private: not a jpeg")
    cfg = (
        '<View><Image name="image" value="$image"/><RectangleLabels name="l" toName="image">'
        '<Label value="circle"/></RectangleLabels></View>'
    )
    settings = load_settings(
        cache_dir=tmp_path / "c", local_roots=[tmp_path / "img"], runtime="torch", device="cpu"
    )
    c = create_app(settings, demo_weights).test_client()
    before = {k: _count(k) for k in ("image_unreadable", "image_missing", "image_refused")}
    tasks = [
        {"id": 1, "data": {"image": str(tmp_path / "img" / "corrupt.jpg")}},  # its text says 401 and http
        {"id": 2, "data": {"image": str(tmp_path / "img" / "gone.jpg")}},
        {"id": 3, "data": {"image": "/etc/hostname"}},
    ]
    r = c.post("/predict", json={"tasks": tasks, "label_config": cfg, "project": "1.1"})
    assert r.status_code == 200 and [x["score"] for x in r.json["results"]] == [0.0, 0.0, 0.0]
    assert {k: _count(k) - v for k, v in before.items()} == {
        "image_unreadable": 1,
        "image_missing": 1,
        "image_refused": 1,
    }


def test_project_access_is_per_server_and_project_with_a_ttl(redis_url: str) -> None:
    from uuid import uuid4

    settings = load_settings(redis_url=redis_url, queue_prefix=f"access-{uuid4().hex[:8]}")
    a = ProjectAccess(settings)
    # two Label Studio servers, each with a project 3 (created at different times)
    a.remember("3.1700000000", "http://ls-a:8080/", "token-a")
    a.remember("3.1700000555", "http://ls-b:8080", "token-b")
    other_worker = ProjectAccess(settings)  # another gunicorn worker or host: only Redis in common
    for access in (a, other_worker):
        assert access.lookup("3.1700000000") == Credentials("http://ls-a:8080", "token-a")
        assert access.lookup("3.1700000555") == Credentials("http://ls-b:8080", "token-b")
        assert access.lookup("3.1699999999") is None
    # the same project string from two servers: the one that sent /setup last (just before /predict)
    a.remember("4.1700000000", "http://ls-a:8080", "token-a")
    time.sleep(0.01)
    a.remember("4.1700000000", "http://ls-b:8080", "token-b")
    assert other_worker.lookup("4.1700000000") == Credentials("http://ls-b:8080", "token-b")
    # configured settings win over what a request said
    fixed = ProjectAccess(settings.with_(labelstudio={"url": "http://mine:8080", "token": "t"}))
    assert fixed.lookup("3.1700000000") == Credentials("http://mine:8080", "t")

    short = ProjectAccess(settings, ttl_s=1)
    short.remember("5.1700000000", "http://ls-a:8080", "token-a")
    ttl = a._redis.ttl(f"{settings.queue.prefix}:ls-access:5.1700000000")
    assert 0 < ttl <= 1
    assert short.lookup("5.1700000000") is not None
    time.sleep(1.2)
    assert (
        short.lookup("5.1700000000") is None
        and ProjectAccess(settings, ttl_s=1).lookup("5.1700000000") is None
    )


# ---------------------------------------------------------------------- Ultralytics results -> regions


class _Boxes:
    def __init__(self, **arrays: np.ndarray) -> None:
        self.__dict__.update(arrays)

    def __len__(self) -> int:
        return len(self.cls)


def test_ultralytics_conversion_takes_plain_arrays_and_needs_no_torch() -> None:
    names = {0: "circle", 1: "square"}
    r = SimpleNamespace(
        boxes=_Boxes(
            xyxy=np.array([[1, 2, 30, 40], [5, 5, 9, 9]], np.float32),
            cls=np.array([1, 0]),
            conf=np.array([0.9, 0.4], np.float32),
        ),
        feats=np.array([[0.05, 0.9], [0.4, 0.1]], np.float32),
        max_candidate=0.93,
    )
    regions = result_to_regions(r, "detect", names, attributes_of=lambda v: {"n": len(v)})
    assert [g.label for g in regions] == ["square", "circle"]
    assert regions[0].geometry == Box(1.0, 2.0, 30.0, 40.0) and regions[0].score == pytest.approx(0.9)
    assert regions[0].probs == {"circle": pytest.approx(0.05), "square": pytest.approx(0.9)}
    assert regions[0].attributes == {"n": 2} and regions[0].provenance.source == Source.HUMAN
    assert max_candidate(r) == pytest.approx(0.93)

    pose = SimpleNamespace(
        boxes=r.boxes, keypoints=SimpleNamespace(data=np.array([[[1, 1, 0.9], [2, 2, 0.1]]] * 2, np.float32))
    )
    kps = result_to_regions(pose, "pose", names, kpt_names=["nose", "tail"])
    assert all(isinstance(g.geometry, Keypoints) for g in kps) and kps[0].probs is None
    assert [(p.name, p.visible) for p in kps[0].geometry.points] == [("nose", True), ("tail", False)]

    obb = SimpleNamespace(
        obb=_Boxes(
            xywhr=np.array([[10, 10, 4, 2, np.pi / 2]], np.float32),
            cls=np.array([0]),
            conf=np.array([0.5], np.float32),
        )
    )
    [rot] = result_to_regions(obb, "obb", names)
    assert isinstance(rot.geometry, RotatedBox) and rot.geometry.angle == pytest.approx(90.0)
    assert result_to_regions(SimpleNamespace(boxes=None), "detect", names) == []

    code = "import sys, labelloop.connectors.formats.ultralytics; print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "False"
