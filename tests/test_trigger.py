"""The label-volume trigger on real Redis: one retrain job per dataset version, whatever the races."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from redis import Redis
from rq import Queue

from labelloop.settings import TriggerSettings, load_settings
from labelloop.sync.trigger import (
    RETRAIN_JOB,
    enqueue_retrain,
    retrain_job_id,
    should_retrain,
    train_queue_name,
)


@pytest.fixture
def settings():
    s = load_settings(queue_prefix=f"trig-{uuid.uuid4().hex[:8]}")
    conn = Redis.from_url(s.queue.redis_url)
    try:
        conn.ping()
    except Exception as e:
        pytest.fail(f"Redis at {s.queue.redis_url} is needed for this test: {e}")
    yield s
    for key in conn.scan_iter(f"*{s.queue.prefix}*"):
        conn.delete(key)


def test_rules_count_and_age() -> None:
    rules = TriggerSettings(min_new_labels=10, max_age_h=24)
    assert should_retrain(10, 0.5, rules).fire and "10 new" in should_retrain(10, 0.5, rules).reason
    assert not should_retrain(9, 1.0, rules).fire
    assert should_retrain(3, 30.0, rules).fire  # few labels, but old enough
    assert not should_retrain(0, 100.0, rules).fire  # nothing new: nothing to learn from
    assert not should_retrain(3, 30.0, TriggerSettings(min_new_labels=10)).fire  # no age rule


def test_concurrent_syncs_enqueue_one_job_per_version(settings) -> None:
    conn = Redis.from_url(settings.queue.redis_url)
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda _: enqueue_retrain(settings, "v" * 40, "test"), range(16)))
    assert [g for g in got if g] == [retrain_job_id("v" * 40)]
    q = Queue(train_queue_name(settings), connection=conn)
    assert q.job_ids == [retrain_job_id("v" * 40)]
    job = q.fetch_job(q.job_ids[0])
    assert job.func_name == RETRAIN_JOB and job.args == ("v" * 40,) and job.meta["reason"] == "test"
    assert enqueue_retrain(settings, "v" * 40, "again") is None  # a later pass on the same version
    assert enqueue_retrain(settings, "w" * 40, "next version") == retrain_job_id("w" * 40)
    assert len(q) == 2
