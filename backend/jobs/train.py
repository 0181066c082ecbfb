"""The rq retrain job: ``labelloop.backend.jobs.train.retrain(version_id)``, enqueued by the sync's trigger.

It runs :func:`labelloop.backend.training.retrain.run_training` (the same code as ``labelloop
train``) under a single-flight lock per model line: a Redis lock with a TTL, renewed by a thread
while training, so two workers never train one line at once and a worker that dies frees the lock
within the TTL. Progress (stage, epoch, metrics) goes to ``job.meta`` for rq-dashboard and
``labelloop jobs list``. Cancellation is cooperative (``labelloop jobs cancel``, checked between
epochs); a killed job never promotes, because promotion is the last step of a training.

Retries: rq retries infrastructure failures (Redis, MLflow, the store unreachable) as the job was
enqueued; bad data, bad configuration and a cancel are never retried (see :func:`no_retry_for`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from typing import Any

from redis import Redis
from rq import get_current_job
from rq.job import Job

from labelloop.errors import ErrorKind, LabelloopError, TrainingCancelled
from labelloop.settings import Settings, load_settings

log = logging.getLogger(__name__)
LOCK_TTL_S = 120
LOCK_TTL_ENV = "LABELLOOP_TRAIN_LOCK_TTL_S"  # overrides LOCK_TTL_S (tests of a killed worker)


def lock_ttl_s() -> int:
    """How long the line lock outlives a worker that died holding it (renewed every TTL/4 while
    alive): LABELLOOP_TRAIN_LOCK_TTL_S, else LOCK_TTL_S."""
    raw = os.environ.get(LOCK_TTL_ENV, "")
    return max(2, int(raw)) if raw.strip() else LOCK_TTL_S


NOT_RETRIED = {
    ErrorKind.DATA,
    ErrorKind.CONFIG,
    ErrorKind.CANCELLED,
    ErrorKind.MODEL,
    ErrorKind.MISSING,
    ErrorKind.AUTH,
    ErrorKind.REJECTED,
}


def lock_key(settings: Settings, line: str) -> str:
    return f"{settings.queue.prefix}:train-lock:{line}"


def cancel_key(settings: Settings, job_id: str) -> str:
    return f"{settings.queue.prefix}:cancel:{job_id}"


def request_cancel(settings: Settings, conn: Redis, job_id: str) -> None:
    """Ask a running (or queued) retrain to stop at its next epoch boundary."""
    conn.set(cancel_key(settings, job_id), "1", ex=7 * 24 * 3600)


class LineLock:
    """A Redis lock for one model line, held while a training runs and renewed every TTL/4."""

    def __init__(self, conn: Redis, key: str, ttl_s: int | None = None) -> None:
        self.conn, self.key, self.ttl_s = conn, key, ttl_s or lock_ttl_s()
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self, *, wait_s: float, on_wait: Any = None, cancelled: Any = None) -> None:
        deadline = time.monotonic() + wait_s
        while not self.conn.set(self.key, self.token, nx=True, ex=self.ttl_s):
            if cancelled is not None and cancelled():
                raise TrainingCancelled("cancelled while waiting for the model line's lock")
            if time.monotonic() > deadline:
                holder = self.conn.get(self.key)
                raise LabelloopError(
                    f"model line lock {self.key} still held after {wait_s:.0f}s (by {holder!r})",
                    kind=ErrorKind.REMOTE_DOWN,
                )
            if on_wait is not None:
                on_wait()
            time.sleep(1.0)
        self._thread = threading.Thread(target=self._renew, name="train-lock", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl_s / 4):
            try:  # only our own lock: compare the token, then extend
                if self.conn.get(self.key) == self.token.encode():
                    self.conn.expire(self.key, self.ttl_s)
            except Exception as e:
                log.warning("could not renew %s: %s", self.key, e)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        release = (
            "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
        )
        try:
            self.conn.eval(release, 1, self.key, self.token)
        except Exception as e:
            log.warning("could not release %s (it expires in %ds): %s", self.key, self.ttl_s, e)


def retrain(version_id: str, line: str | None = None) -> dict[str, Any]:
    """Train on dataset version ``version_id``; returns the outcome (run, model version, decision)."""
    from labelloop.backend.registry import lines
    from labelloop.backend.training.retrain import run_training

    settings = load_settings()
    job = get_current_job()
    conn: Redis = job.connection if job else Redis.from_url(settings.queue.redis_url)
    line = lines.line_of(settings, line)
    job_id = job.id if job else f"local-{uuid.uuid4().hex[:8]}"

    def meta(**values: Any) -> None:
        if job is not None:
            job.meta.update(values)
            job.save_meta()

    def cancelled() -> bool:
        return bool(conn.exists(cancel_key(settings, job_id)))

    meta(stage="waiting for lock", line=line, version=version_id)
    lock = LineLock(conn, lock_key(settings, line))
    lock.acquire(wait_s=6 * 3600, cancelled=cancelled)
    meta(lock_key=lock.key, lock_token=lock.token)  # recover_abandoned: alive while it holds this
    try:
        current = lines.champion(settings, line, fetch=False)
        if current is not None and current.dataset_version == version_id:
            meta(stage="skipped", reason=f"{current.model_version} is already trained on this version")
            return {"skipped": True, "reason": f"the champion {current.model_version} is trained on it"}
        meta(stage="training")

        def progress(p: Any) -> None:  # the last epoch's metrics stay when later stages have none
            meta(**{k: v for k, v in p.to_dict().items() if k != "metrics" or v})

        outcome = run_training(settings, version_id, line=line, progress=progress, cancel=cancelled)
        pseudo = pseudo_after(settings, line, meta) if outcome.promoted else None
        meta(
            stage="done",
            model_version=outcome.model_version,
            promoted=outcome.promoted,
            reason=outcome.reason,
            run_id=outcome.run_id,
        )
        return outcome.to_dict() | ({"pseudo": pseudo} if pseudo is not None else {})
    finally:
        lock.release()


def pseudo_after(settings: Settings, line: str, meta: Any) -> dict[str, Any] | None:
    """With ``settings.pseudo.after_promotion``, pseudo-label the store's unlabeled items with the
    champion just promoted (the next version trains on them). The promotion stands whatever
    happens here: a failure is logged and reported, not raised."""
    if not settings.pseudo.after_promotion:
        return None
    from labelloop.backend.active.pseudo import refresh_pseudo
    from labelloop.backend.registry import lines
    from labelloop.sync.store import Store

    meta(stage="pseudo-labelling")
    try:
        champion = lines.champion(settings, line)
        if champion is None or champion.weights is None:
            return {"error": "no champion weights to pseudo-label with"}
        with Store.open(settings=settings) as store:
            return refresh_pseudo(settings, store, champion.weights)
    except Exception as e:
        log.warning("pseudo-labelling after promotion failed: %s", e)
        return {"error": f"{type(e).__name__}: {e}"}


def recover_abandoned(settings: Settings, conn: Redis) -> list[str]:
    """Retrain jobs whose worker died (SIGKILL, OOM, a lost host): retried now, or failed with the
    reason when no retry is left. Returns their ids.

    rq 3.0 calls a job abandoned only when its StartedJobRegistry entry expires, and a SimpleWorker
    scores that entry at the job's timeout (6 h for a retrain) + 60 s, so a killed training would
    sit "started" for hours. A live retrain renews its model line's lock every TTL/4 and records the
    lock's token in job.meta: a started retrain whose lock no longer holds its token has lost its
    worker (the lock expires LOCK_TTL_S after the death). Jobs still waiting for the lock carry no
    token and are left alone. ``labelloop worker`` runs this at start and every TTL/2."""
    from rq import Queue
    from rq.registry import FailedJobRegistry, StartedJobRegistry

    from labelloop.sync.trigger import train_queue_name

    queue = Queue(train_queue_name(settings), connection=conn)
    started = StartedJobRegistry(queue=queue)
    recovered = []
    for job_id in started.get_job_ids(cleanup=False):
        try:
            job = Job.fetch(job_id, connection=conn)
        except Exception:
            continue
        key, token = job.meta.get("lock_key"), job.meta.get("lock_token")
        if job.get_status() != "started" or not key or not token or conn.get(key) == token.encode():
            continue
        started.remove_executions(job)
        job.meta.update(stage="abandoned", abandoned="its worker died (the line lock expired)")
        job.meta.pop("lock_token", None)
        job.save_meta()
        if job.retries_left:
            job.retries_left -= 1  # a dead worker is not an outage: no retry interval
            queue.enqueue_job(job)
            log.warning(
                "retrain %s lost its worker: enqueued again (%d retries left)", job_id, job.retries_left
            )
        else:
            FailedJobRegistry(queue=queue).add(job, exc_string="abandoned: its worker died mid-training")
            job.set_status("failed")
            log.warning("retrain %s lost its worker and has no retry left: failed", job_id)
        recovered.append(job_id)
    return recovered


def no_retry_for(job: Job, exc_type: type, exc_value: BaseException, tb: Any) -> bool:
    """rq exception handler: bad data, configuration or a cancel fail the job at once, with its
    reason, instead of using up retries meant for outages. Runs before rq decides on a retry."""
    kind = getattr(exc_value, "kind", None)
    if isinstance(exc_value, LabelloopError) and kind in NOT_RETRIED:
        job.retries_left = 0
        job.meta["failure"] = f"{kind}: {exc_value}"
        job.save_meta()
    return True  # go on to rq's own handling (the failed registry)


def start_training_job_id(project: int) -> str:
    return f"start-training-{project}"


def start_training(project: int) -> dict[str, Any]:
    """Label Studio's "Start Training" (START_TRAINING at /webhook): one sync pass of the project,
    a version of what the store then holds, and the retrain of that version enqueued exactly once
    (a second click on the same data finds the version's claim and enqueues nothing)."""
    from labelloop.backend.serving.project_access import ProjectAccess, project_id
    from labelloop.settings import SyncSource
    from labelloop.sync.service import SyncService
    from labelloop.sync.store import Store
    from labelloop.sync.trigger import enqueue_retrain
    from labelloop.sync.versions import snapshot

    settings = load_settings()
    known = ProjectAccess(settings)
    access = known.lookup(str(project))  # the configured server wins
    if access is None:  # else the newest "<id>.<created>" that sent /setup for this id
        mine = {p: c for p, c in known.projects().items() if project_id(p) == str(project)}
        if mine:
            access = mine[max(mine, key=lambda p: p.split(".", 1)[-1])]
    if access is None:
        raise LabelloopError(
            f"no Label Studio server known for project {project}: set LABELLOOP_LABEL_STUDIO_URL and "
            "LABELLOOP_LABEL_STUDIO_TOKEN for the worker",
            kind=ErrorKind.CONFIG,
        )
    settings = settings.with_(labelstudio={"url": access.url, "token": access.token})
    with Store.open(settings=settings) as store:
        source = SyncSource(platform="labelstudio", project=project)
        svc = SyncService(settings, store, [source], enqueue=False)
        try:
            report = svc.run_once(force_reconcile=True)
        finally:
            svc.close()
        if not report.ok:
            first = next((s.error for s in report.sources if s.error), None) or "; ".join(report.errors)
            raise LabelloopError(f"sync of project {project} failed: {first}", kind=ErrorKind.REMOTE_DOWN)
        version = snapshot(store, f"Start Training in Label Studio project {project}").version
    job_id = enqueue_retrain(settings, version.id, f"Start Training in Label Studio project {project}")
    return {"version": version.id, "retrain_job": job_id, "already_enqueued": job_id is None}


def enqueue_start_training(settings: Settings, conn: Redis, project: int) -> str | None:
    """Queue :func:`start_training` unless one for this project is already queued or running."""
    from rq import Queue
    from rq.exceptions import NoSuchJobError

    from labelloop.sync.trigger import train_queue_name

    job_id = start_training_job_id(project)
    try:
        status = Job.fetch(job_id, connection=conn).get_status(refresh=True)
        if status in ("queued", "started", "scheduled", "deferred"):
            return None
    except NoSuchJobError:
        pass
    Queue(train_queue_name(settings), connection=conn).enqueue(
        "labelloop.backend.jobs.train.start_training",
        project,
        job_id=job_id,
        job_timeout=3600,
        result_ttl=24 * 3600,
        failure_ttl=7 * 24 * 3600,
        description=f"Start Training from Label Studio project {project}: sync, version, retrain",
    )
    return job_id
