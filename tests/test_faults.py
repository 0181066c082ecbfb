"""Faults injected into real processes, each with its promised outcome (and bounded in time):

- the backend's Redis killed mid-run: /predict keeps answering (background hand-offs of tasks
  past the budget run in a thread of the backend instead of rq) and /health stays up;
- a gunicorn worker SIGKILLed during /predict load: the master boots a new one, only requests in
  flight on the killed worker fail, and none fails (no 5xx either) after recovery;
- the rq worker SIGKILLed during a retrain: nothing promoted, the line lock expires, and rq's
  abandoned-job handling retries the job, which a second worker then runs to a promotion;
- Redis (append-only file, fsync always) SIGKILLed and restarted with a job running and five
  queued: the worker reconnects, every job ends finished or failed with its reason, none lost;
- Redis without persistence (like the shared one) restarted with a retrain queued: Redis forgets
  it, and the next sync pass, which sees that, enqueues it again once (the trigger is recomputed
  from the store);
- PostgreSQL refusing connections during a sync pass: already covered by
  tests/test_sync_service.py::test_a_database_outage_loses_nothing (not repeated here).

Each test writes its figures to ``$LABELLOOP_FAULTS_JSON`` (default bench-results/faults.json)
for ``labelloop bench reliability``. Every process started here is stopped in a fixture teardown.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from redis import Redis

from labelloop.procs import free_port, spawn, stop_group
from tests.helpers import shape_images, wait_for

FAULTS_JSON = Path(os.environ.get("LABELLOOP_FAULTS_JSON", "bench-results/faults.json"))
CONFIG = (
    '<View><Image name="image" value="$image"/><RectangleLabels name="l" toName="image">'
    '<Label value="circle"/><Label value="square"/><Label value="triangle"/></RectangleLabels></View>'
)


def record(name: str, figures: dict[str, Any]) -> None:
    """Merge one fault's figures into the faults JSON (read by ``labelloop bench reliability``,
    which shows fault, promise, requests, 5xx, faults_injected, lost, duplicated and latency_ms
    in its summary and the rest as details). Called only after the test's asserts passed."""
    FAULTS_JSON.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(FAULTS_JSON.read_text()) if FAULTS_JSON.is_file() else {"kind": "faults", "faults": {}}
    data["faults"][name] = {**figures, "date": time.strftime("%Y-%m-%dT%H:%M:%S")}
    FAULTS_JSON.write_text(json.dumps(data, indent=1))


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """A redis-server of this test on a free port (no persistence); killed in teardown."""
    port = free_port()
    proc = spawn(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        dict(os.environ),
        tmp_path / "redis.log",
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        wait_for(lambda: _pings(url), 20, 0.1, what="the test's redis-server")
        yield url, proc
    finally:
        stop_group(proc, timeout=5)


def _pings(url: str) -> bool:
    try:
        return bool(Redis.from_url(url, socket_connect_timeout=0.5).ping())
    except Exception:
        return False


@pytest.fixture
def redis_url(own_redis: tuple[str, subprocess.Popen]) -> str:  # backend_factory's Redis: this test's own
    return own_redis[0]


def _tasks(paths: list[Path], n: int, start: int = 0) -> list[dict[str, Any]]:
    return [{"id": start + i, "data": {"image": str(paths[(start + i) % len(paths)])}} for i in range(n)]


class Load:
    """``clients`` threads posting /predict (``per_request`` tasks each) until stopped; statuses and
    transport errors counted with the time they happened."""

    def __init__(self, url: str, paths: list[Path], clients: int = 4, per_request: int = 2) -> None:
        self.url, self.paths, self.per_request = url, paths, per_request
        self.events: list[tuple[float, str]] = []  # (monotonic time, "200" | "500" | "error: ...")
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            body = {
                "tasks": _tasks(self.paths, self.per_request, i),
                "label_config": CONFIG,
                "project": "1.0",
            }
            i += self.per_request
            try:
                r = requests.post(f"{self.url}/predict", json=body, timeout=60)
                ok = r.status_code == 200 and len(r.json()["results"]) == self.per_request
                what = "200" if ok else str(r.status_code)
            except requests.RequestException as e:
                what = f"error: {type(e).__name__}"
            self.events.append((time.monotonic(), what))

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=70)

    def counts(self, since: float = 0.0, until: float = float("inf")) -> Counter[str]:
        return Counter(w for t, w in list(self.events) if since <= t < until)


def _health(url: str) -> tuple[int, float]:
    t = time.monotonic()
    r = requests.get(f"{url}/health", timeout=5)
    return r.status_code, time.monotonic() - t


def test_redis_killed_mid_run_predict_and_health_keep_answering(  # type: ignore[no-untyped-def]
    backend_factory, own_redis, tmp_path: Path
) -> None:
    paths = shape_images(tmp_path / "img", 8, size=320)
    b = backend_factory(
        LABELLOOP_LOCAL_ROOTS=str(tmp_path / "img"),
        LABELLOOP_HTTP_WORKERS="1",
        # a budget far below a 48-task batch: the rest is handed off (rq while Redis is up, then a
        # thread of the backend) to be written to "Label Studio", here a closed port
        LABELLOOP_PREDICT_BUDGET_S="0.3",
        LABELLOOP_LABEL_STUDIO_URL=f"http://127.0.0.1:{free_port()}",
        LABELLOOP_LABEL_STUDIO_TOKEN="t",
    )
    url, redis_proc = own_redis

    def big() -> requests.Response:
        body = {"tasks": _tasks(paths, 48), "label_config": CONFIG, "project": "1.0"}
        return requests.post(f"{b.url}/predict", json=body, timeout=60)

    assert big().status_code == 200
    with Load(b.url, paths, clients=3) as load:
        # answers before the fault, however slow this host is now (a fixed 3 s saw none in CI)
        wait_for(lambda: load.counts()["200"] >= 3, 180, what="3 answers before the kill")
        redis_proc.send_signal(signal.SIGKILL)
        redis_proc.wait(timeout=10)
        killed = time.monotonic()
        assert not _pings(url)
        health = [_health(b.url) for _ in range(20)]
        after = [big() for _ in range(3)]  # hand-offs with Redis gone
        wait_for(lambda: load.counts(since=killed)["200"] >= 5, 180, what="5 answers after the kill")
    before, during = load.counts(until=killed), load.counts(since=killed)
    assert set(before) == {"200"} and set(during) == {"200"}, (before, during)
    assert during["200"] >= 5
    assert all(r.status_code == 200 and len(r.json()["results"]) == 48 for r in after)
    assert all(code == 200 for code, _ in health), health
    worst = max(s for _, s in health)
    assert worst < 1.0, health
    log = b.log_path.read_text()
    assert "running it in this process instead" in log, log[-3000:]
    assert b.running
    record(
        "redis_killed",
        {
            "fault": "the backend's redis-server SIGKILLed under /predict load (3 clients)",
            "promise": "/predict keeps answering (hand-offs run in a thread of the backend), /health up",
            "requests": sum((before + during).values()) + len(after) + len(health),
            "faults_injected": 1,
            "lost": 0,  # every /predict answered with one result per task
            "latency_ms": {"max": round(worst * 1000, 1)},  # /health after the kill
            "predict_before": dict(before),
            "predict_after_kill": dict(during),
            "big_predicts_after_kill_ok": len(after),
            "health_after_kill": len(health),
            "health_max_ms": round(worst * 1000, 1),
            "handoff_fallback_in_process": True,
            "5xx": sum(v for k, v in (before + during).items() if k.startswith("5")),
        },
    )


def _worker_pids(url: str) -> set[int]:
    return {requests.get(f"{url}/health", timeout=5).json()["pid"] for _ in range(30)}


def _two_workers(url: str, without: int | None = None) -> set[int] | None:
    pids = _worker_pids(url)
    return pids if len(pids) == 2 and without not in pids else None


def test_gunicorn_worker_sigkilled_under_load_is_replaced(backend_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    paths = shape_images(tmp_path / "img", 8, size=320)
    b = backend_factory(LABELLOOP_LOCAL_ROOTS=str(tmp_path / "img"), LABELLOOP_HTTP_WORKERS="2")
    pids = wait_for(lambda: _two_workers(b.url), 60, what="two workers")
    boots = b.log_path.read_text().count("Booting worker")
    victim = min(pids)
    with Load(b.url, paths, clients=4) as load:
        # load on both workers first (a worker's first predict takes seconds on a busy host)
        wait_for(lambda: load.counts()["200"] >= 8, 120, 0.2, what="answers before the kill")
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        new = wait_for(
            lambda: _two_workers(b.url, without=victim),
            90,
            what="the master to replace the killed worker",
        )
        recovered = time.monotonic()
        wait_for(lambda: load.counts(since=recovered + 1.0)["200"] >= 5, 180, what="5 answers after recovery")
    before = load.counts(until=killed)
    during = load.counts(since=killed, until=recovered)
    after = load.counts(since=recovered + 1.0)  # requests that started after recovery
    assert set(before) == {"200"}, before
    failed = sum(v for k, v in during.items() if k != "200")
    # only requests in flight on the killed worker can fail: 4 clients -> at most 4, and not a 5xx
    assert failed <= 4, during
    assert not any(k.startswith("5") for k in during), during
    assert set(after) == {"200"} and after["200"] >= 5, after
    assert b.log_path.read_text().count("Booting worker") == boots + 1
    assert len(new - pids) == 1
    record(
        "gunicorn_worker_sigkilled",
        {
            "fault": "one of 2 gunicorn workers SIGKILLed under /predict load (4 clients)",
            "promise": "the master boots a new worker; only requests in flight on it fail; no 5xx",
            "requests": sum((before + during + after).values()),
            "faults_injected": 1,
            "recovery_s": round(recovered - killed, 2),
            "failed_in_flight": failed,
            "during": dict(during),
            "after_recovery": dict(after),
            "5xx": sum(v for k, v in (before + during + after).items() if k.startswith("5")),
        },
    )


# ---------------------------------------------------------------------------- rq worker SIGKILL


def _worker_proc(settings: Any, env: dict[str, str], log: Path, burst: bool) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "labelloop.cli", "worker", "--queues", "train"] + (
        ["--burst"] if burst else []
    )
    return spawn(cmd, {**os.environ, **settings.environment(), "YOLO_OFFLINE": "1", **env}, log)


def test_rq_worker_sigkilled_mid_training_promotes_nothing_and_the_job_is_retried(  # type: ignore[no-untyped-def]
    tmp_path: Path, demo_weights: Path, own_redis
) -> None:
    """rq 3.0 alone would leave the killed job STARTED until its StartedJobRegistry entry expires,
    which a SimpleWorker scores at the job's timeout (+60 s): 6 h for a retrain (asserted below).
    labelloop's recover_abandoned (run by ``labelloop worker --queues train`` at start and every
    lock TTL/2) retries it as soon as the model line's lock, which a live retrain renews, expires."""
    from rq import Queue
    from rq.job import Job
    from rq.registry import StartedJobRegistry

    from labelloop.backend.jobs.train import LOCK_TTL_ENV, lock_key
    from labelloop.backend.registry import lines
    from labelloop.sync.trigger import enqueue_retrain, train_queue_name
    from tests.training_fixtures import shapes_version, training_settings

    url, _ = own_redis
    settings = training_settings(tmp_path, demo_weights, epochs=6).with_(
        redis_url=url, queue={"prefix": f"ft{uuid.uuid4().hex[:8]}"}
    )
    conn = Redis.from_url(url)
    version = shapes_version(settings, 20)
    job_id = enqueue_retrain(settings, version, "test: worker killed mid-training")
    assert job_id
    lock_ttl = 4
    env = {LOCK_TTL_ENV: str(lock_ttl)}
    first = _worker_proc(settings, env, tmp_path / "worker-1.log", burst=False)
    second = None
    try:
        job = Job.fetch(job_id, connection=conn)

        def training() -> str | None:
            assert first.poll() is None, (tmp_path / "worker-1.log").read_text()[-3000:]
            m = job.get_meta(refresh=True)
            return m["stage"] if m.get("stage") in ("head", "full") and m.get("epoch", 0) >= 1 else None

        stage = wait_for(training, 120, 0.2, what="the retrain to reach a recipe stage")
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
        killed = time.monotonic()
        key = lock_key(settings, "shapes")
        assert conn.exists(key)  # held by the dead worker ...
        wait_for(lambda: not conn.exists(key), lock_ttl + 5, 0.2, what="the line lock to expire")
        lock_freed_s = time.monotonic() - killed  # ... and gone within its TTL
        assert lines.champion(settings, fetch=False) is None  # nothing promoted
        assert job.get_status(refresh=True) == "started"  # rq cannot know

        started = StartedJobRegistry(queue=Queue(train_queue_name(settings), connection=conn))
        (_entry, score), *_ = conn.zrange(started.key, 0, -1, withscores=True)
        rq_abandons_in_s = score - time.time()
        assert rq_abandons_in_s > 3600  # rq's own cleanup would wait for the 6 h job timeout
        started.cleanup()  # what any worker's maintenance does now: nothing yet
        assert job.get_status(refresh=True) == "started"

        second = _worker_proc(settings, env, tmp_path / "worker-2.log", burst=True)
        second.wait(timeout=300)
        log2 = (tmp_path / "worker-2.log").read_text()
        job.refresh()
        assert job.get_status() == "finished", log2[-3000:]
        assert "lost its worker: enqueued again" in log2
        assert job.retries_left == 1 and "worker died" in job.meta["abandoned"]
        out = job.return_value()
        champ = lines.champion(settings, fetch=False)
        assert out["promoted"] and champ is not None and champ.dataset_version == version
        record(
            "rq_worker_sigkilled_mid_training",
            {
                "fault": f"labelloop worker SIGKILLed during the retrain's {stage} stage",
                "promise": "nothing promoted; the line lock expires; the job is retried and a second "
                "worker promotes",
                "faults_injected": 1,
                "lost": 0,
                "duplicated": 0,
                "promoted_after_kill": False,
                "lock_ttl_s": lock_ttl,
                "lock_freed_s": round(lock_freed_s, 2),
                "rq_alone_abandons_after_s": round(rq_abandons_in_s),
                "retried_by": "recover_abandoned in the second worker",
                "retries_left_after": job.retries_left,
                "second_worker_promoted": True,
            },
        )
    finally:
        stop_group(first, timeout=5)
        stop_group(second, timeout=10)


# ---------------------------------------------------------------------------- Redis restarted


class RedisServer:
    """A redis-server of one test on a free port; ``crash_and_restart`` SIGKILLs it and starts it
    again on the same port and directory. ``persist``: an append-only file fsynced on every write
    (what a team's Redis should run with), else no persistence at all (like the shared one)."""

    def __init__(self, d: Path, persist: bool) -> None:
        self.dir, self.port, self.persist = d, free_port(), persist
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None
        d.mkdir(parents=True, exist_ok=True)

    def start(self) -> RedisServer:
        persistence = (
            ["--appendonly", "yes", "--appendfsync", "always"] if self.persist else ["--appendonly", "no"]
        )
        cmd = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir)]
        self.proc = spawn([*cmd, "--save", "", *persistence], dict(os.environ), self.dir / "redis.log")
        wait_for(lambda: _pings(self.url), 20, 0.1, what="the test's redis-server")
        return self

    def crash_and_restart(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.start()

    def stop(self) -> None:
        stop_group(self.proc, timeout=5)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[Any]:
    started: list[RedisServer] = []

    def start(persist: bool) -> RedisServer:
        started.append(RedisServer(tmp_path / f"redis-{len(started)}", persist))
        return started[-1].start()

    yield start
    for s in started:
        s.stop()


def test_redis_restarted_mid_queue_every_job_finishes_or_fails_with_a_reason(  # type: ignore[no-untyped-def]
    tmp_path: Path, redis_server
) -> None:
    """A Redis with an fsynced append-only file crashes and restarts while a worker runs one job
    and five wait: the worker reconnects, and every job ends finished, or failed in rq's failed
    registry with its reason; none is lost."""
    from rq import Queue
    from rq.job import Job
    from rq.registry import FailedJobRegistry

    from labelloop.backend.jobs.queues import PREDICT, queue_name
    from labelloop.settings import Settings

    srv = redis_server(persist=True)
    settings = Settings(
        cache_dir=tmp_path / "cache", redis_url=srv.url, queue={"prefix": f"fr{uuid.uuid4().hex[:8]}"}
    )
    conn = Redis.from_url(srv.url)
    q = Queue(queue_name(settings, PREDICT), connection=conn)
    ids = [
        q.enqueue("time.sleep", 1.5, job_id=f"sleep-{i}", result_ttl=3600, failure_ttl=3600).id
        for i in range(6)
    ]
    log = tmp_path / "worker.log"
    env = {**os.environ, **settings.environment(), "YOLO_OFFLINE": "1"}
    worker = spawn([sys.executable, "-m", "labelloop.cli", "worker", "--queues", "predict"], env, log)
    try:

        def running() -> bool:
            assert worker.poll() is None, log.read_text()[-3000:]
            return any(Job.fetch(i, connection=conn).get_status() == "started" for i in ids)

        wait_for(running, 60, 0.1, what="the worker to start a job")
        queued_at_crash = q.count
        srv.crash_and_restart()
        restarted = time.monotonic()
        conn = Redis.from_url(srv.url)

        def ended() -> dict[str, str] | None:
            assert worker.poll() is None, log.read_text()[-3000:]
            st = {i: Job.fetch(i, connection=conn).get_status() for i in ids}
            return st if set(st.values()) <= {"finished", "failed"} else None

        statuses = wait_for(ended, 120, 0.5, what="every job to finish or fail")
        recovered_s = time.monotonic() - restarted
        failed = FailedJobRegistry(queue=Queue(q.name, connection=conn)).get_job_ids()
        for i, s in statuses.items():
            if s == "failed":  # a failure says why, and sits where an operator looks
                assert i in failed and Job.fetch(i, connection=conn).latest_result().exc_string, i
        assert "could not connect to Redis" in log.read_text() or queued_at_crash == 0
    finally:
        stop_group(worker, timeout=10)
    counts = Counter(statuses.values())
    assert counts["finished"] + counts["failed"] == 6
    record(
        "redis_restarted_mid_queue",
        {
            "promise": "every job ends finished, or failed in rq's failed registry with its reason",
            "faults_injected": 1,
            "duplicated": 0,
            "fault": "redis-server (append-only file, fsync always) SIGKILLed and restarted with 1 job "
            f"running and {queued_at_crash} queued",
            "jobs": len(ids),
            "finished": counts["finished"],
            "failed_with_reason": counts["failed"],
            "lost": 0,
            "all_ended_s": round(recovered_s, 1),
        },
    )


@pytest.mark.labelstudio
def test_redis_without_persistence_forgets_the_retrain_and_the_sync_enqueues_it_again(  # type: ignore[no-untyped-def]
    label_studio, tmp_path: Path, redis_server
) -> None:
    """A Redis without persistence (like the shared one) forgets every queued job on a restart.
    What labelloop promises then: the retrain trigger is recomputed from the store, so the next
    sync pass sees its retrain is gone and enqueues it again (once), with no new label needed."""
    from rq import Queue

    from labelloop.connectors.labelstudio import LabelStudioClient
    from labelloop.sync.service import SyncService
    from labelloop.sync.store import Store
    from labelloop.sync.trigger import train_queue_name
    from tests.sync_helpers import annotated_tasks, make_project, source, sync_settings

    srv = redis_server(persist=False)
    conn = LabelStudioClient(label_studio.url, label_studio.token, backoff_s=0.05)
    project, _ = make_project(conn, "redis forgets", annotated_tasks(4))
    settings = sync_settings(label_studio, tmp_path, trigger={"min_new_labels": 3}).with_(redis_url=srv.url)
    with Store.open(f"sqlite:///{tmp_path / 'store.db'}", blob_root=str(tmp_path / "blobs")) as store:
        svc = SyncService(settings, store, [source(label_studio, project)])
        first = svc.run_once()
        assert first.ok and first.job_id, first.line()

        def queued() -> list[str]:
            return Queue(train_queue_name(settings), connection=Redis.from_url(srv.url)).job_ids

        assert queued() == [first.job_id]
        srv.crash_and_restart()
        assert queued() == []  # forgotten, with its claim
        second = svc.run_once()
        assert second.ok and second.changed == 0 and second.job_id == first.job_id, second.line()
        assert queued() == [first.job_id]
        third = svc.run_once()
        assert third.job_id is None and queued() == [first.job_id]  # once, not every pass
    record(
        "redis_without_persistence_restarted",
        {
            "fault": "redis-server without persistence SIGKILLed and restarted with a retrain queued",
            "promise": "the next sync pass enqueues the forgotten retrain again, once",
            "faults_injected": 1,
            "lost": 0,
            "jobs_forgotten_by_redis": 1,
            "retrain_enqueued_again_by_next_pass": True,
            "duplicated": 0,
        },
    )
