"""Webhook wake-ups for the sync: the backend records Label Studio's events here, the sync waits on them.

Label Studio's webhooks are synchronous with a ~1 s timeout and no retry, so an event is only a
hint that something changed: it is pushed onto a bounded Redis list (``<prefix>:events``, newest
first, kept for people and tools to read) and announced on the channel ``<prefix>:events:wake``.
The sync subscribes to the channel and also compares the list's length and head between waits, so
a wake-up published while it was not subscribed still ends its wait early. The list is never
consumed: any number of syncs can watch it. Polling stays the path that guarantees nothing is lost.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from redis import Redis
from redis.exceptions import RedisError

from labelloop.settings import Settings

log = logging.getLogger(__name__)
KEEP = 10_000


def events_key(settings: Settings) -> str:
    return f"{settings.queue.prefix}:events"


def wake_channel(settings: Settings) -> str:
    return f"{settings.queue.prefix}:events:wake"


def record_event(conn: Redis, settings: Settings, event: dict[str, Any]) -> None:
    """Keep ``event`` on the list and wake every waiting sync (raises RedisError on an outage)."""
    text = json.dumps(event)
    pipe = conn.pipeline()
    pipe.lpush(events_key(settings), text)
    pipe.ltrim(events_key(settings), 0, KEEP - 1)
    pipe.publish(wake_channel(settings), text)
    pipe.execute()


@dataclass
class Wake:
    reason: str  # "event", "timeout", "stopped"
    events: list[dict[str, Any]]


class EventWatcher:
    """Sleep until an event arrives or ``timeout`` passes. Without Redis it sleeps the timeout (one
    log line per outage): the poll interval is the guarantee, events only shorten it."""

    def __init__(self, settings: Settings, conn: Redis | None = None) -> None:
        self.settings = settings
        self.conn = conn or Redis.from_url(
            settings.queue.redis_url, socket_connect_timeout=2, socket_timeout=5
        )
        self._pubsub: Any = None
        self._seen: tuple[int, bytes | None] | None = None
        self._down = False

    def _head(self) -> tuple[int, bytes | None]:
        pipe = self.conn.pipeline()
        pipe.llen(events_key(self.settings))
        pipe.lindex(events_key(self.settings), 0)
        n, head = pipe.execute()
        return int(n), head

    def _subscribe(self) -> None:
        if self._pubsub is None:
            self._pubsub = self.conn.pubsub(ignore_subscribe_messages=True)
            self._pubsub.subscribe(wake_channel(self.settings))
            self._seen = self._head()

    def wait(self, timeout: float, stop: Any = None) -> Wake:
        """``stop``: an object with ``is_set()`` (a threading.Event), checked every half second."""
        deadline = time.monotonic() + timeout
        events: list[dict[str, Any]] = []
        while True:
            left = deadline - time.monotonic()
            if stop is not None and stop.is_set():
                return Wake("stopped", events)
            if left <= 0:
                return Wake("timeout", events)
            try:
                self._subscribe()
                msg = self._pubsub.get_message(timeout=min(0.5, left))
                if msg and msg.get("type") == "message":
                    events.append(_parse(msg.get("data")))
                    self._seen = self._head()
                    return Wake("event", events)
                head = self._head()
                if head != self._seen:  # published while we were not listening
                    self._seen = head
                    return Wake("event", events)
                if self._down:
                    log.info("Redis is back: webhook events wake the sync again")
                    self._down = False
            except (RedisError, OSError) as e:
                if not self._down:
                    log.warning(
                        "Redis unreachable (%s): the sync polls every %.0fs without wake-ups", e, timeout
                    )
                    self._down = True
                self._close_pubsub()
                time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))

    def _close_pubsub(self) -> None:
        if self._pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                self._pubsub.close()
            self._pubsub = None

    def close(self) -> None:
        self._close_pubsub()


def _parse(data: Any) -> dict[str, Any]:
    try:
        out = json.loads(data)
        return out if isinstance(out, dict) else {"event": out}
    except (TypeError, ValueError):
        return {"event": str(data)}


def heartbeat_key(settings: Settings, host: str) -> str:
    return f"{settings.queue.prefix}:sync:heartbeat:{host}"


def beat(conn: Redis, settings: Settings, host: str, info: dict[str, Any]) -> None:
    """Say this host's sync finished a pass (what a container healthcheck reads); it expires
    after three intervals, so a hung or dead sync drops out."""
    ttl = int(3 * settings.sync.interval_s + 60)
    conn.set(heartbeat_key(settings, host), json.dumps({"at": time.time(), **info}), ex=ttl)
