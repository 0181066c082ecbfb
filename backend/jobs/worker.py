"""``labelloop worker``: an rq worker on any host that reaches Redis.

A ``SimpleWorker`` runs jobs in its own process, so the model a predict job loaded stays loaded for
the next job (a forking worker would load it again for every job).
"""

from __future__ import annotations

from collections.abc import Sequence

from rq import Queue, SimpleWorker

from labelloop.backend.jobs.queues import PREDICT, queue_name, redis
from labelloop.settings import Settings


def run_worker(settings: Settings, burst: bool = False, kinds: Sequence[str] = (PREDICT,)) -> None:
    conn = redis(settings, connect_timeout=5)
    queues = [Queue(queue_name(settings, kind), connection=conn) for kind in kinds]
    SimpleWorker(queues, connection=conn).work(burst=burst, with_scheduler=True)
