"""The retrain job on real Redis and a real rq worker process: enqueued by the trigger, trained once,
progress in job.meta, bad data failed without retries, cancel, the single-flight line lock."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from redis import Redis
from rq import Queue
from rq.job import Job
from rq.registry import FailedJobRegistry

from labelloop.backend.jobs.train import LineLock, lock_key, request_cancel
from labelloop.backend.registry import lines
from labelloop.errors import LabelloopError
from labelloop.settings import Settings
from labelloop.sync.store import Store
from labelloop.sync.trigger import enqueue_retrain, train_queue_name
from labelloop.sync.versions import snapshot
from tests.helpers import redis_or_fail
from tests.store_fixtures import LS, ann, box, result
from tests.training_fixtures import shapes_version, training_settings


@pytest.fixture
def settings(tmp_path: Path, demo_weights: Path) -> Settings:
    redis_or_fail()
    s = training_settings(tmp_path, demo_weights)
    return s.with_(queue={"prefix": f"tj{uuid.uuid4().hex[:8]}"})


def _worker(settings: Settings, timeout: float = 600) -> subprocess.CompletedProcess:
    """``labelloop worker --queues train --burst`` in its own process, with these settings."""
    env = {**os.environ, **settings.environment(), "YOLO_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "labelloop.cli", "worker", "--queues", "train", "--burst"]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def _conn(settings: Settings) -> Redis:
    return Redis.from_url(settings.queue.redis_url)


def test_the_triggered_job_trains_once_reports_progress_and_promotes(settings: Settings) -> None:
    version = shapes_version(settings, 20)
    job_id = enqueue_retrain(settings, version, "test: 20 new labels")
    assert job_id and enqueue_retrain(settings, version, "again") is None  # exactly once
    done = _worker(settings)
    assert done.returncode == 0, done.stderr[-3000:]
    job = Job.fetch(job_id, connection=_conn(settings))
    assert job.get_status() == "finished", done.stderr[-3000:]
    out = job.return_value()
    assert out["promoted"] and out["dataset_version"] == version
    assert job.meta["stage"] == "done" and job.meta["epochs"] == 2 and job.meta["epoch"] == 2
    assert "val/mAP50-95" in job.meta["metrics"], job.meta
    champ = lines.champion(settings, fetch=False)
    assert (
        champ is not None and champ.dataset_version == version and champ.model_version == out["model_version"]
    )
    assert not _conn(settings).exists(lock_key(settings, "shapes"))  # released


def test_bad_data_fails_at_once_with_its_reason_and_is_not_retried(settings: Settings) -> None:
    with Store.open(settings=settings) as store:  # a version with labels but no image bytes
        ingest_one(store)
        version = snapshot(store, "no bytes", val_fraction=0.5).version.id
    job_id = enqueue_retrain(settings, version, "test: bad data")
    assert job_id
    _worker(settings)
    conn = _conn(settings)
    job = Job.fetch(job_id, connection=conn)
    assert job.get_status() == "failed" and job.retries_left == 0
    assert job_id in FailedJobRegistry(train_queue_name(settings), connection=conn).get_job_ids()
    assert job.meta["failure"].startswith(("data:", "config:"))
    assert lines.champion(settings, fetch=False) is None


def ingest_one(store: Store) -> None:
    from labelloop.sync.ingest import ingest

    anns = [ann(i, i, [box("circle", 1, 1, 9, 9)], item_kw={"w": 96, "h": 96}) for i in range(4)]
    ingest(store, LS, result(anns, present={}))


def test_a_cancelled_job_promotes_nothing_and_is_not_retried(settings: Settings) -> None:
    version = shapes_version(settings, 20)
    job_id = enqueue_retrain(settings, version, "test: cancel")
    assert job_id
    request_cancel(settings, _conn(settings), job_id)
    _worker(settings)
    job = Job.fetch(job_id, connection=_conn(settings))
    assert job.get_status() == "failed" and job.retries_left == 0
    assert job.meta["failure"].startswith("cancelled:")
    assert lines.champion(settings, fetch=False) is None


def test_the_line_lock_is_single_flight_and_renewed_while_held(settings: Settings) -> None:
    conn = _conn(settings)
    key = lock_key(settings, "line-x")
    first = LineLock(conn, key, ttl_s=2)
    first.acquire(wait_s=1)
    second = LineLock(conn, key, ttl_s=2)
    got = threading.Event()

    def take() -> None:
        second.acquire(wait_s=30)
        got.set()

    t = threading.Thread(target=take)
    t.start()
    time.sleep(4)  # twice the TTL: still held, because it is renewed
    assert not got.is_set() and conn.get(key) == first.token.encode()
    first.release()
    assert got.wait(10) and conn.get(key) == second.token.encode()
    second.release()
    t.join()
    assert not conn.exists(key)
    conn.set(key, "someone", ex=5)
    with pytest.raises(LabelloopError, match="still held"):
        LineLock(conn, key).acquire(wait_s=0)
    conn.delete(key)


def test_worker_refuses_an_unknown_queue(settings: Settings) -> None:
    env = {**os.environ, **settings.environment()}
    cmd = [sys.executable, "-m", "labelloop.cli", "worker", "--queues", "gpu", "--burst"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--queues takes train, predict" in r.stderr and "Traceback" not in r.stderr
    Queue(train_queue_name(settings), connection=_conn(settings)).empty()
