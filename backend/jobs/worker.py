"""``labelloop worker``: an rq worker on any host that reaches Redis.

A ``SimpleWorker`` runs jobs in its own process, so the model a predict job loaded stays loaded for
the next job (a forking worker would load it again for every job). ``kinds`` picks the queues: a
GPU host takes only ``train``; any number of workers on any hosts share one Redis.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

from redis import Redis
from rq import Queue, SimpleWorker

from labelloop.backend.jobs.queues import PREDICT, TRAIN, queue_name, redis
from labelloop.backend.jobs.train import lock_ttl_s, no_retry_for, recover_abandoned
from labelloop.errors import ConfigError
from labelloop.settings import Settings

KINDS = (TRAIN, PREDICT)
log = logging.getLogger(__name__)


def run_worker(settings: Settings, burst: bool = False, kinds: Sequence[str] = (PREDICT,)) -> None:
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise ConfigError(f"--queues takes {', '.join(KINDS)} (comma-separated), not {','.join(kinds)!r}")
    conn = redis(settings, connect_timeout=5)
    queues = [Queue(queue_name(settings, kind), connection=conn) for kind in kinds]
    worker = SimpleWorker(queues, connection=conn, exception_handlers=[no_retry_for])
    if TRAIN in kinds:  # retrains whose worker died are retried now, not after rq's 6 h timeout
        _recover(settings, conn)
        if not burst:
            threading.Thread(target=_recover_every, args=(settings, conn), daemon=True).start()
    worker.work(burst=burst, with_scheduler=True)


def _recover(settings: Settings, conn: Redis) -> None:
    try:
        recover_abandoned(settings, conn)
    except Exception as e:  # Redis down: the next round tries again
        log.warning("could not look for abandoned retrains: %s", e)


def _recover_every(settings: Settings, conn: Redis) -> None:
    while True:
        time.sleep(max(1.0, lock_ttl_s() / 2))
        _recover(settings, conn)
