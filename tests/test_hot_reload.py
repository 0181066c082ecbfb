"""Hot reload with every real part: gunicorn workers following a model line in a real MLflow store
(SQLite in a tmp dir), Redis pub/sub announcements with the alias poll as the fallback, and a real
Label Studio whose project follows the champion.

Versions are registered cheaply: the demo model's weights copied into runs as they are (each
version is named ``<line>-vN`` by the registry, so copies are told apart by their name).
"""

from __future__ import annotations

import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests

from labelloop.backend.registry import lines, tracking
from labelloop.procs import free_port
from labelloop.settings import Settings
from tests.helpers import SHAPES_CONFIG, BackendProcess, shape_images, wait_for


@pytest.fixture
def registry(tmp_path: Path) -> Settings:
    """A fresh MLflow store and a line name of its own (the weights cache is keyed by line)."""
    line = f"hot-{uuid.uuid4().hex[:8]}"
    uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    (tmp_path / "mlflow").mkdir()
    return Settings(
        cache_dir=tmp_path / "cache", registry={"mlflow_tracking_uri": uri}, train={"model_line": line}
    )


def add_version(settings: Settings, weights: Path | bytes, tags: dict[str, str] | None = None) -> int:
    """A registered version whose ``weights/best.pt`` is a copy of ``weights`` (or these bytes)."""
    line = settings.train.model_line
    run_id = tracking.start_run(settings, line, "copy", {}, {})
    src = settings.cache_dir / f"upload-{uuid.uuid4().hex[:6]}" / "best.pt"
    src.parent.mkdir(parents=True)
    if isinstance(weights, bytes):
        src.write_bytes(weights)
    else:
        shutil.copyfile(weights, src)
    tracking.log_artifact(settings, run_id, src, lines.WEIGHTS_DIR)
    tracking.end_run(settings, run_id)
    return lines.register(settings, line, run_id, tracking.run_artifact_uri(settings, run_id), tags or {}).version


_STARTED: list[BackendProcess] = []


@pytest.fixture(autouse=True)
def _stop_backends():  # type: ignore[no-untyped-def]
    """Every backend a test started is stopped after it (each holds gigabytes of models)."""
    yield
    while _STARTED:
        _STARTED.pop().stop()


def backend(
    tmp_path: Path,
    settings: Settings,
    weights: Path,
    redis_url: str,
    *,
    workers: int = 1,
    poll_s: float = 1.0,
    images: Path | None = None,
    imgsz: int | None = 64,
    **extra: str,
) -> BackendProcess:
    env = {
        "LABELLOOP_MLFLOW_TRACKING_URI": str(settings.registry.mlflow_tracking_uri),
        "LABELLOOP_TRAIN_MODEL_LINE": settings.train.model_line,
        "LABELLOOP_SERVE_FOLLOW_LINE": "true",
        "LABELLOOP_SERVE_RELOAD_POLL_S": str(poll_s),
        "LABELLOOP_HTTP_WORKERS": str(workers),
        **({"LABELLOOP_IMGSZ": str(imgsz)} if imgsz else {}),
        **({"LABELLOOP_LOCAL_ROOTS": str(images)} if images else {}),
        **extra,
    }
    b = BackendProcess(tmp_path / f"backend-{uuid.uuid4().hex[:6]}", weights, redis_url, env)
    _STARTED.append(b)
    return b.start(timeout=180)


def served_by_pid(url: str, want: int, timeout: float = 60) -> dict[int, str]:
    """Each worker's model_version, by asking /health until ``want`` distinct workers answered."""
    seen: dict[int, str] = {}

    def enough() -> bool:
        h = requests.get(f"{url}/health", timeout=5).json()
        seen[h["pid"]] = h["model_version"]
        return len(seen) >= want

    wait_for(enough, timeout, every=0.05, what=f"{want} workers answering /health")
    return seen


def wait_all_serve(url: str, pids: set[int], version: str, timeout: float = 15) -> dict[int, float]:
    """Seconds until each worker first answered ``version`` (from now)."""
    t0 = time.monotonic()
    when: dict[int, float] = {}

    def done() -> bool:
        h = requests.get(f"{url}/health", timeout=5).json()
        if h["model_version"] == version and h["pid"] not in when:
            when[h["pid"]] = time.monotonic() - t0
        return pids <= set(when)

    wait_for(done, timeout, every=0.05, what=f"every worker serving {version} (so far {when})")
    return when


def full_log(b: BackendProcess) -> str:
    return b.log_path.read_text(errors="replace")


class Hammer:
    """Threads sending /predict in a loop; every answer's status and model_version is kept."""

    def __init__(self, url: str, image: Path, threads: int = 3) -> None:
        self.url, self.image = url, image
        self.answers: list[tuple[int, str | None, set[str]]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        body = {"tasks": [{"id": 1, "data": {"image": str(self.image)}}], "label_config": SHAPES_CONFIG}
        while not self._stop.is_set():
            try:
                r = requests.post(f"{self.url}/predict", json=body, timeout=30)
                data = r.json()
                inner = {res.get("model_version") for res in data.get("results", []) if res}
                self.answers.append((r.status_code, data.get("model_version"), inner))
            except Exception as e:  # a refused or dropped connection is a failed request too
                self.errors.append(f"{type(e).__name__}: {e}")

    def __enter__(self) -> Hammer:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)


def test_promote_reaches_every_worker_with_no_failed_request(
    tmp_path: Path, registry: Settings, demo_weights: Path, redis_url: str
) -> None:
    """Two workers, the poll set to 30 s so the swap within 5 s is the pub/sub's doing; three
    threads hammer /predict through a promotion and a rollback."""
    s = registry.with_(redis_url=redis_url)
    line = s.train.model_line
    v1, v2 = add_version(s, demo_weights), add_version(s, demo_weights)
    lines.promote(s, line, v1)
    image = shape_images(tmp_path / "img", 1, size=64)[0]
    b = backend(tmp_path, s, demo_weights, redis_url, workers=2, poll_s=30, images=tmp_path / "img")
    settings = s.with_(queue_prefix=b.prefix)  # announce on the backend's channel
    pids = served_by_pid(b.url, 2)
    assert set(pids.values()) == {f"{line}-v1"}, pids  # started on the champion, not --model
    with Hammer(b.url, image) as hammer:
        wait_for(lambda: len(hammer.answers) >= 3, 60, what="/predict answers before the swap")
        lines.promote(settings, line, v2)
        to_v2 = wait_all_serve(b.url, set(pids), f"{line}-v2")
        n_mid = len(hammer.answers)
        wait_for(lambda: len(hammer.answers) >= n_mid + 3, 60, what="/predict answers after the swap")
        lines.rollback(settings, line)
        to_v1 = wait_all_serve(b.url, set(pids), f"{line}-v1")
        n_end = len(hammer.answers)
        wait_for(lambda: len(hammer.answers) >= n_end + 3, 60, what="/predict answers after the rollback")
    print(f"promote->served per worker: v2 {to_v2}, rollback v1 {to_v1}; {len(hammer.answers)} requests")
    assert max(to_v2.values()) < 5 and max(to_v1.values()) < 5, (to_v2, to_v1)
    assert not hammer.errors, hammer.errors[:3]
    assert {code for code, _, _ in hammer.answers} == {200}
    assert {top for _, top, _ in hammer.answers} == {f"{line}-v1", f"{line}-v2"}
    for _, top, inner in hammer.answers:  # a batch is answered by one model, and says which
        assert inner == {top}
    assert full_log(b).count("now serving") == 2 * 3  # start, promote, rollback in each worker
    assert requests.get(f"{b.url}/versions", timeout=5).json()["model_version"] == f"{line}-v1"


def test_poll_fallback_without_redis_and_a_corrupt_champion_keeps_the_old_model(
    tmp_path: Path, registry: Settings, demo_weights: Path, redis_url: str
) -> None:
    s = registry.with_(redis_url=redis_url)
    line = s.train.model_line
    v1, v2 = add_version(s, demo_weights), add_version(s, demo_weights)
    bad = add_version(s, b"this is no model")
    lines.promote(s, line, v1)
    nowhere = f"redis://127.0.0.1:{free_port()}/0"  # the backend's Redis is down for all of this test
    b = backend(tmp_path, s, demo_weights, nowhere, poll_s=1.0)
    assert requests.get(f"{b.url}/versions", timeout=5).json()["model_version"] == f"{line}-v1"
    wait_for(lambda: "pub/sub unavailable" in full_log(b), 20, what="the pub/sub warning")

    lines.promote(s, line, v2)  # announced on a Redis the backend never hears
    took = wait_all_serve(b.url, {requests.get(f"{b.url}/health", timeout=5).json()["pid"]}, f"{line}-v2")
    print(f"poll fallback: promote->served in {took}")
    assert max(took.values()) < 5

    lines.promote(s, line, bad)
    wait_for(lambda: "cannot be served" in full_log(b), 10, what="the corrupt champion's log line")
    time.sleep(3)  # three more polls: logged once, not retried
    failures = [ln for ln in full_log(b).splitlines() if "cannot be served" in ln]
    assert len(failures) == 1, failures
    assert f"{line}-v{bad} cannot be served, still serving {line}-v2" in failures[0]
    assert "registry/slot.py" not in full_log(b)  # no traceback from the reload (the rq worker
    # child of `labelloop serve` does print one: it cannot start without Redis)
    assert requests.get(f"{b.url}/versions", timeout=5).json()["model_version"] == f"{line}-v2"
    image = shape_images(tmp_path / "img", 1, size=64)[0]
    r = requests.post(
        f"{b.url}/predict",
        json={"tasks": [{"id": 1, "data": {"image": str(image)}}], "label_config": SHAPES_CONFIG},
        timeout=60,
    )
    assert r.status_code == 200 and r.json()["model_version"] == f"{line}-v2"


@pytest.mark.labelstudio
def test_label_studio_project_follows_the_champion_and_is_reprelabelled(
    label_studio, tmp_path: Path, registry: Settings, demo_weights: Path, redis_url: str
) -> None:
    ls = label_studio
    s = registry.with_(redis_url=redis_url)
    line = s.train.model_line
    v1, v2 = add_version(s, demo_weights), add_version(s, demo_weights)
    lines.promote(s, line, v1)
    b = backend(
        tmp_path,
        s,
        demo_weights,
        redis_url,
        poll_s=1.0,
        imgsz=None,
        LABELLOOP_TRUSTED_LABEL_STUDIO_URLS=ls.url,
    )
    settings = s.with_(queue_prefix=b.prefix)

    h = ls.headers()
    r = requests.post(
        f"{ls.url}/api/projects", headers=h, json={"title": "hot reload", "label_config": SHAPES_CONFIG}
    )
    assert r.status_code == 201, r.text
    project = int(r.json()["id"])
    files = [
        (f"f{i}", (p.name, p.read_bytes(), "image/jpeg"))
        for i, p in enumerate(shape_images(tmp_path / "ls", 3))
    ]
    r = requests.post(f"{ls.url}/api/projects/{project}/import?return_task_ids=true", headers=h, files=files)
    assert r.status_code == 201, r.text
    tasks = sorted(r.json()["task_ids"])
    human = tasks[0]
    region = {
        "from_name": "label",
        "to_name": "image",
        "type": "rectanglelabels",
        "value": {"x": 10, "y": 10, "width": 20, "height": 20, "rectanglelabels": ["circle"]},
    }
    r = requests.post(f"{ls.url}/api/tasks/{human}/annotations", headers=h, json={"result": [region]})
    assert r.status_code == 201, r.text
    r = requests.post(
        f"{ls.url}/api/ml", headers=h, json={"url": b.url, "project": project, "title": "labelloop"}
    )
    assert r.status_code == 201, r.text  # Label Studio's /setup tells the backend about the project

    lines.promote(settings, line, v2)

    def project_version() -> str:
        return str(
            requests.get(f"{ls.url}/api/projects/{project}", headers=h, timeout=10).json()["model_version"]
        )

    wait_for(
        lambda: project_version() == f"{line}-v2", 20, what=f"project model_version ({full_log(b)[-1500:]})"
    )

    def v2_predictions() -> dict[int, dict]:
        got = requests.get(f"{ls.url}/api/predictions/?project={project}", headers=h, timeout=30).json()
        return {p["task"]: p for p in got if p["model_version"] == f"{line}-v2"}

    preds = wait_for(
        lambda: len(v2_predictions()) >= 2 and v2_predictions(),
        120,
        what=f"re-prelabels ({full_log(b)[-1500:]})",
    )
    assert set(preds) == set(tasks[1:]), "the unannotated tasks, and only those"
    assert any(p["result"] for p in preds.values())
    assert "rollout of" in full_log(b)
