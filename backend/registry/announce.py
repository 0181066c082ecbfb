"""Announcing a new champion: one Redis pub/sub message that wakes every backend process at once.

``promote`` and ``rollback`` call ``announce`` after the alias has moved; the receivers re-read the
alias rather than trust the message, so order and duplicates do not matter, and a message lost
(Redis down, a subscriber reconnecting) only delays the swap to the next poll
(``serve.reload_poll_s``; see :mod:`labelloop.backend.registry.slot`).
"""

from __future__ import annotations

import json
import logging

from redis import Redis

from labelloop.settings import Settings

log = logging.getLogger(__name__)


def channel(settings: Settings) -> str:
    return f"{settings.queue.prefix}:champion"


def announce(settings: Settings, line: str, model_version: str) -> int:
    """Tell every backend that ``line``'s champion is now ``model_version``; how many processes
    heard it. Redis down is a warning, not an error: the alias moved, and pollers read it."""
    try:
        conn = Redis.from_url(settings.queue.redis_url, socket_connect_timeout=1, socket_timeout=2)
        message = json.dumps({"line": line, "model_version": model_version})
        return int(conn.publish(channel(settings), message))
    except Exception as e:
        log.warning(
            "cannot announce %s on Redis %s (%s); backends pick it up within %.0fs by polling",
            model_version,
            settings.queue.redis_url,
            e,
            settings.serve.reload_poll_s,
        )
        return 0
