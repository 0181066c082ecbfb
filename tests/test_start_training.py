"""Label Studio's "Start Training" button: START_TRAINING at /webhook queues one sync + version +
retrain job per project (a second click while it is queued adds nothing), and the job enqueues the
retrain of that version exactly once, on real Redis and the real Label Studio."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from redis import Redis
from rq import Queue

from labelloop.backend.jobs.train import start_training, start_training_job_id
from labelloop.backend.serving.app import create_app
from labelloop.connectors.labelstudio import LabelStudioClient
from labelloop.settings import load_settings
from labelloop.sync.trigger import RETRAIN_JOB, train_queue_name
from tests.helpers import redis_or_fail
from tests.sync_helpers import annotated_tasks, make_project

pytestmark = pytest.mark.labelstudio


def test_start_training_queues_once_and_the_job_enqueues_one_retrain(
    label_studio, demo_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    redis_url = redis_or_fail()
    conn = LabelStudioClient(label_studio.url, label_studio.token)
    project, _ = make_project(conn, "start training", annotated_tasks(4))
    env = {
        "LABELLOOP_REDIS_URL": redis_url,
        "LABELLOOP_QUEUE_PREFIX": f"st{uuid.uuid4().hex[:8]}",
        "LABELLOOP_LABEL_STUDIO_URL": label_studio.url,
        "LABELLOOP_LABEL_STUDIO_TOKEN": label_studio.token,
        "LABELLOOP_STORE_URL": f"sqlite:///{tmp_path / 'store.db'}",
        "LABELLOOP_BLOB_ROOT": str(tmp_path / "blobs"),
        "LABELLOOP_SYNC_FETCH_IMAGES": "false",  # example.com URLs
        "LABELLOOP_MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    settings = load_settings()
    q = Queue(train_queue_name(settings), connection=Redis.from_url(redis_url))
    client = create_app(settings, demo_weights).test_client()
    for _ in range(2):  # a double click
        r = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": project}})
        assert r.status_code == 200
    assert q.get_job_ids() == [start_training_job_id(project)]
    q.empty()

    first = start_training(project)  # what the worker runs
    assert first["retrain_job"] and not first["already_enqueued"]
    (job,) = q.get_jobs()
    assert job.func_name == RETRAIN_JOB and job.args == (first["version"],)
    again = start_training(project)  # the same data: the same version, no second retrain
    assert again["version"] == first["version"] and again["already_enqueued"]
    assert q.count == 1
    q.empty()
