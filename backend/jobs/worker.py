"""``labelloop worker``: an rq worker on any host that reaches Redis.

A ``SimpleWorker`` runs jobs in its own process, so the model a predict job loaded stays loaded for
the next job (a forking worker would load it again for every job). ``kinds`` picks the queues: a
GPU host takes only ``train``; any number of workers on any hosts share one Redis.
"""

from __future__ import annotations

from collections.abc import Sequence

from rq import Queue, SimpleWorker

from labelloop.backend.jobs.queues import PREDICT, TRAIN, queue_name, redis
from labelloop.backend.jobs.train import no_retry_for
from labelloop.errors import ConfigError
from labelloop.settings import Settings

KINDS = (TRAIN, PREDICT)


def run_worker(settings: Settings, burst: bool = False, kinds: Sequence[str] = (PREDICT,)) -> None:
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise ConfigError(f"--queues takes {', '.join(KINDS)} (comma-separated), not {','.join(kinds)!r}")
    conn = redis(settings, connect_timeout=5)
    queues = [Queue(queue_name(settings, kind), connection=conn) for kind in kinds]
    worker = SimpleWorker(queues, connection=conn, exception_handlers=[no_retry_for])
    worker.work(burst=burst, with_scheduler=True)
