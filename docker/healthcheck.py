"""Container health checks (copied into the images as /usr/local/bin/labelloop-healthcheck).

    labelloop-healthcheck http URL   GET URL answers 200 (basic auth from HEALTHCHECK_USER/_PASSWORD)
    labelloop-healthcheck worker     an rq worker of this container is registered in Redis (its
                                     heartbeat keeps the key alive, so a hung worker drops out)
    labelloop-healthcheck sync       the store and Redis answer, and this host's sync finished a
                                     pass within three intervals (its heartbeat in Redis)

Exit status 0 healthy, 1 not, with one line saying why. ``http`` needs only the standard library;
the others read settings through labelloop.settings like every labelloop process.
"""

from __future__ import annotations

import base64
import os
import socket
import sys
import urllib.request


def http(url: str) -> str:
    req = urllib.request.Request(url)
    user, password = os.environ.get("HEALTHCHECK_USER"), os.environ.get("HEALTHCHECK_PASSWORD")
    if user:
        token = base64.b64encode(f"{user}:{password or ''}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(req, timeout=4) as r:
        if r.status != 200:
            raise RuntimeError(f"{url} answered {r.status}")
    return f"{url} ok"


def worker() -> str:
    from rq import Worker

    from labelloop.backend.jobs.queues import redis
    from labelloop.settings import load_settings

    conn = redis(load_settings(), connect_timeout=2, timeout=3)
    host = socket.gethostname()
    mine = [w.name for w in Worker.all(connection=conn) if w.hostname == host]
    if not mine:
        raise RuntimeError(f"no rq worker of host {host} is registered in Redis")
    return f"workers {', '.join(mine)} registered"


def sync() -> str:
    from sqlalchemy import create_engine, text

    from labelloop.backend.jobs.queues import redis
    from labelloop.settings import load_settings

    settings = load_settings()
    if not settings.store.url:
        raise RuntimeError("LABELLOOP_STORE_URL is not set")
    engine = create_engine(settings.store.url, pool_pre_ping=True)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    finally:
        engine.dispose()
    import json
    import time

    from labelloop.sync.events import heartbeat_key

    raw = redis(settings, connect_timeout=2, timeout=3).get(heartbeat_key(settings, socket.gethostname()))
    if raw is None:
        raise RuntimeError(f"no sync pass finished in the last {3 * settings.sync.interval_s + 60:.0f}s")
    beat = json.loads(raw)
    ago = time.time() - beat["at"]
    return f"store answers; last pass {beat.get('pass')} {ago:.0f}s ago (ok={beat.get('ok')})"


CHECKS = {"http": http, "worker": worker, "sync": sync}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in CHECKS:
        print(f"usage: labelloop-healthcheck {{{'|'.join(CHECKS)}}} [URL]", file=sys.stderr)
        return 2
    try:
        print(CHECKS[argv[0]](*argv[1:]))
    except Exception as e:  # any failure is "unhealthy", said in one line
        print(f"unhealthy: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
