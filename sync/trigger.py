"""The label-volume trigger: when enough human-verified images are new since the dataset version the
current model was trained on (or the oldest of them has waited too long), enqueue exactly one retrain
of the new version on the rq ``train`` queue.

Exactly once across any number of concurrent syncs on any hosts: the job id is derived from the
version id and a Redis ``SET NX`` claims it before enqueueing, so a second sync that reaches the same
version finds the claim and does nothing. The job is named by its import path (a string), so the
sync never imports the training code above it.
"""

from __future__ import annotations

from dataclasses import dataclass

from redis import Redis
from rq import Queue, Retry
from rq.job import Job

from labelloop.settings import Settings, TriggerSettings

RETRAIN_JOB = "labelloop.backend.jobs.train.retrain"
CLAIM_TTL_S = 30 * 24 * 3600


@dataclass(frozen=True)
class Decision:
    fire: bool
    reason: str


def should_retrain(new_verified: int, oldest_new_age_h: float | None, rules: TriggerSettings) -> Decision:
    """``new_verified``: human-verified images not in the version the champion was trained on."""
    if new_verified >= rules.min_new_labels:
        return Decision(True, f"{new_verified} new human-verified images >= {rules.min_new_labels}")
    if rules.max_age_h is not None and new_verified > 0 and (oldest_new_age_h or 0) >= rules.max_age_h:
        return Decision(
            True,
            f"{new_verified} new images, the oldest waiting {oldest_new_age_h:.1f} h >= {rules.max_age_h} h",
        )
    return Decision(False, f"{new_verified} new human-verified images < {rules.min_new_labels}")


def train_queue_name(settings: Settings) -> str:
    return f"{settings.queue.prefix}-train"


def retrain_job_id(version_id: str) -> str:
    return f"retrain-{version_id}"


def enqueue_retrain(
    settings: Settings, version_id: str, reason: str, *, conn: Redis | None = None
) -> str | None:
    """Enqueue the retrain of ``version_id`` unless some process already did; returns the job id when
    this call enqueued it, else None."""
    conn = conn or Redis.from_url(settings.queue.redis_url, socket_connect_timeout=5)
    claim = f"{settings.queue.prefix}:retrain-claim:{version_id}"
    if not conn.set(claim, reason, nx=True, ex=CLAIM_TTL_S):
        return None
    job_id = retrain_job_id(version_id)
    try:
        Queue(train_queue_name(settings), connection=conn).enqueue(
            RETRAIN_JOB,
            version_id,
            job_id=job_id,
            job_timeout=6 * 3600,
            result_ttl=30 * 24 * 3600,
            failure_ttl=30 * 24 * 3600,
            retry=Retry(max=2, interval=[60, 600]),
            meta={"reason": reason, "version": version_id},
            description=f"retrain on dataset version {version_id[:12]}: {reason}",
        )
    except Exception:
        conn.delete(claim)  # not enqueued: let the next pass try again
        raise
    return job_id


def retrain_known(settings: Settings, job_id: str, *, conn: Redis | None = None) -> bool:
    """Whether Redis still knows the retrain ``job_id`` (queued, running, finished or failed): a
    Redis restarted without persistence forgets the queue, and the sync then weighs again."""
    conn = conn or Redis.from_url(settings.queue.redis_url, socket_connect_timeout=5)
    return bool(Job.exists(job_id, connection=conn))
