"""Trust and secrets, end to end: a /setup hostname is used only when trusted (else the private
address rules apply and the answer says why); auth covers every route but /health; no token or
password reaches a log line, an rq job's arguments or an MLflow run.

The leak test greps what a real gunicorn backend and its rq worker wrote (their log, every rq job
hash in Redis) after a /setup, a /predict that hands tasks to a background job, bad credentials and
the job's failure; a fake Label Studio (a local HTTP server) answers the image reads and fails the
prediction import.
"""

from __future__ import annotations

import http.server
import io
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import requests
from PIL import Image
from redis import Redis

from labelloop.backend.serving.app import create_app
from labelloop.backend.serving.project_access import ProjectAccess
from labelloop.settings import load_settings

CONFIG = (
    '<View><Image name="image" value="$image"/><RectangleLabels name="l" toName="image">'
    '<Label value="circle"/></RectangleLabels></View>'
)
SECRETS = {
    "LABELLOOP_BEARER_TOKEN": "bearer-S3CRET-b7",
    "LABELLOOP_BASIC_AUTH_USER": "ls",
    "LABELLOOP_BASIC_AUTH_PASS": "pass-S3CRET-p9",
    "LABELLOOP_LABEL_STUDIO_TOKEN": "lstoken-S3CRET-t3",
}
SETUP_TOKEN = "setup-S3CRET-s1"
WRONG = "wrong-S3CRET-w0"


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


class _FakeLabelStudio(http.server.BaseHTTPRequestHandler):
    """Images under /data/ for any caller; every API call fails (the import of predictions)."""

    seen: ClassVar[list[tuple[str, str, str | None]]] = []

    def _answer(self) -> None:
        self.seen.append((self.command, self.path, self.headers.get("Authorization")))
        body, code = (_jpeg(), 200) if self.path.startswith("/data/") else (b'{"detail":"down"}', 500)
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PATCH = _answer

    def log_message(self, *a: object) -> None:
        pass


@pytest.fixture
def fake_ls() -> Iterator[str]:
    _FakeLabelStudio.seen.clear()
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeLabelStudio)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


def test_setup_hostname_is_trusted_only_when_allowlisted(
    demo_weights: Path, redis_url: str, fake_ls: str, tmp_path: Path
) -> None:
    settings = load_settings(
        redis_url=redis_url, queue_prefix=f"trust-{uuid.uuid4().hex[:8]}", cache_dir=tmp_path / "c"
    )
    c = create_app(settings, demo_weights).test_client()
    for hostname in (
        fake_ls,
        "http://169.254.169.254",
        "http://[::ffff:10.0.0.1]:8080",
        "http://0x7f.1:8080",
    ):
        r = c.post("/setup", json={"project": "3.17", "hostname": hostname, "access_token": SETUP_TOKEN})
        assert r.status_code == 400 and "LABELLOOP_TRUSTED_LABEL_STUDIO_URLS" in r.json["error"], r.json
        assert SETUP_TOKEN not in r.json["error"]
    assert ProjectAccess(settings).lookup("3.17") is None, "a refused hostname is not kept"
    for bad in ("gopher://127.0.0.1:6379/_x", "file:///etc/passwd", "not a url"):
        r = c.post("/setup", json={"project": "3.17", "hostname": bad})
        assert r.status_code == 400 and "not an http(s) URL" in r.json["error"]
    assert "'hostname' must be a string" in c.post("/setup", json={"hostname": 5}).json["error"]

    trusted = settings.with_(serve={"trusted_label_studio_urls": [fake_ls + "/"]})
    c = create_app(trusted, demo_weights).test_client()
    r = c.post("/setup", json={"project": "3.17", "hostname": fake_ls, "access_token": "Tk"})
    assert r.status_code == 200
    creds = ProjectAccess(trusted).lookup("3.17")
    assert creds is not None and creds.trusted and creds.project == "3.17" and "Tk" not in repr(creds)
    task = {"id": 1, "data": {"image": "/data/upload/1/a.jpg"}}
    r = c.post("/predict", json={"tasks": [task], "label_config": CONFIG, "project": "3.17"})
    assert r.status_code == 200 and len(r.json["results"]) == 1
    assert ("GET", "/data/upload/1/a.jpg", "Token Tk") in _FakeLabelStudio.seen


def _rq_job_bytes(conn: Redis, prefix: str) -> bytes:
    """Every rq job hash of this backend's queues, decompressed where rq compressed it."""
    out = b""
    for key in conn.scan_iter(match="rq:*", count=1000):
        if conn.type(key) != b"hash":
            continue
        values = conn.hgetall(key)
        if not any(prefix.encode() in v for v in values.values() if isinstance(v, bytes)) and not any(
            prefix.encode() in _inflate(v) for v in values.values()
        ):
            continue
        out += key + b"".join(k + b"=" + _inflate(v) for k, v in values.items())
    return out


def _inflate(v: bytes) -> bytes:
    try:
        return zlib.decompress(v)
    except zlib.error:
        return v


def test_no_secret_in_logs_job_arguments_or_answers(backend_factory, redis_url: str, fake_ls: str) -> None:  # type: ignore[no-untyped-def]
    b = backend_factory(
        **SECRETS,
        LABELLOOP_LABEL_STUDIO_URL=fake_ls,
        LABELLOOP_PREDICT_BUDGET_S="0.001",  # one task answered, the rest to a background job
        LABELLOOP_IMGSZ="64",
    )
    bearer = {"Authorization": f"Bearer {SECRETS['LABELLOOP_BEARER_TOKEN']}"}
    answers: list[str] = []
    # auth covers every route but /health; errors are JSON with a message
    assert requests.get(f"{b.url}/health", timeout=5).ok
    for method, path in [
        ("post", "/setup"),
        ("post", "/predict"),
        ("get", "/versions"),
        ("post", "/webhook"),
        ("get", "/metrics"),
        ("get", "/openapi.json"),
    ]:
        for headers in ({}, {"Authorization": f"Bearer {WRONG}"}):
            r = requests.request(method, f"{b.url}{path}", json={}, headers=headers, timeout=5)
            assert r.status_code == 401 and r.json()["error"], (path, r.status_code)
            answers.append(r.text)
    r = requests.post(f"{b.url}/setup", json={}, auth=("ls", WRONG), timeout=5)
    assert r.status_code == 401
    assert requests.get(f"{b.url}/versions", auth=("ls", SECRETS["LABELLOOP_BASIC_AUTH_PASS"]), timeout=5).ok
    assert requests.get(f"{b.url}/openapi.json", headers=bearer, timeout=5).json()["openapi"].startswith("3.")
    nope = requests.get(f"{b.url}/nope", headers=bearer, timeout=5)
    assert nope.status_code == 404 and nope.json()["error"]

    r = requests.post(
        f"{b.url}/setup",
        json={"project": "9.17", "hostname": fake_ls, "access_token": SETUP_TOKEN},
        headers=bearer,
        timeout=5,
    )
    assert r.ok, r.text
    tasks = [{"id": i, "data": {"image": f"/data/upload/9/{i}.jpg"}} for i in range(1, 4)]
    r = requests.post(
        f"{b.url}/predict",
        json={"tasks": tasks, "label_config": CONFIG, "project": "9.17"},
        headers=bearer,
        timeout=60,
    )
    assert r.ok and len(r.json()["results"]) == 3
    answers.append(r.text)

    # the backend's rq worker takes the job, reads the images and fails to import (LS answers 500)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and not any(p.startswith("/api/") for _, p, _ in _FakeLabelStudio.seen):
        time.sleep(0.3)
    imports = [s for s in _FakeLabelStudio.seen if s[1].startswith("/api/")]
    assert imports, f"the background job never reached Label Studio: {_FakeLabelStudio.seen}"
    # the worker used its own configured token (the job's arguments carry none)
    assert imports[0][2] == f"Token {SECRETS['LABELLOOP_LABEL_STUDIO_TOKEN']}"
    time.sleep(3)  # let the failure be logged and recorded

    conn = Redis.from_url(redis_url)
    jobs = _rq_job_bytes(conn, b.prefix)
    assert b.prefix.encode() in jobs and b"predict_and_write" in jobs, "the job hash was found"
    log = (b.workdir / "backend.log").read_text(errors="replace")
    assert "POST /predict" in log or "/predict" in log
    for name, secret in [*SECRETS.items(), ("setup access_token", SETUP_TOKEN), ("wrong", WRONG)]:
        if name == "LABELLOOP_BASIC_AUTH_USER":
            continue  # a user name is no secret (the access log shows it)
        assert secret not in log, f"{name} in the backend's log"
        assert secret.encode() not in jobs, f"{name} in an rq job's arguments, meta or exception"
        assert all(secret not in a for a in answers), f"{name} in an answer"


@pytest.mark.slow
def test_no_secret_in_mlflow_params_or_train_job_arguments(
    tmp_path: Path, demo_weights: Path, redis_url: str
) -> None:
    from labelloop.backend.registry import tracking
    from labelloop.backend.training.retrain import run_training
    from labelloop.sync.trigger import enqueue_retrain
    from tests.training_fixtures import shapes_version, training_settings

    settings = training_settings(tmp_path, demo_weights, epochs=1).with_(
        serve={"bearer_token": SECRETS["LABELLOOP_BEARER_TOKEN"], "basic_auth_pass": "pass-S3CRET-p9"},
        labelstudio={"url": "http://ls:8080", "token": SECRETS["LABELLOOP_LABEL_STUDIO_TOKEN"]},
        cvat={"password": "cvat-S3CRET-c4"},
        redis_url=redis_url,
        queue_prefix=f"leak-{uuid.uuid4().hex[:8]}",
    )
    secrets = [*SECRETS.values(), "cvat-S3CRET-c4"]
    secrets.remove("ls")
    version = shapes_version(settings, 12)
    outcome = run_training(settings, version)
    c = tracking.client(settings)
    run = c.get_run(outcome.run_id)
    recorded = repr(run.data.params) + repr(run.data.tags)
    recorded += repr(c.get_model_version(outcome.line, str(outcome.version)).tags)
    recorded += repr(outcome.to_dict())
    job_id = enqueue_retrain(settings, version, "leak test")
    assert job_id is not None
    conn = Redis.from_url(redis_url)
    jobs = b"".join(_inflate(v) for v in conn.hgetall(f"rq:job:{job_id}").values())
    assert version.encode() in jobs
    for secret in secrets:
        assert secret not in recorded, "a secret in the MLflow run or model version"
        assert secret.encode() not in jobs, "a secret in the retrain job"
