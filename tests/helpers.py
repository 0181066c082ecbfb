"""Test helpers that start real processes and talk to real servers."""

from __future__ import annotations

import time

from labelloop.backend.serve import BackendProcess  # noqa: F401 - re-exported for the tests


def redis_or_fail(url: str = "redis://127.0.0.1:6379/0") -> str:
    from redis import Redis

    try:
        Redis.from_url(url, socket_connect_timeout=2).ping()
    except Exception as e:
        raise AssertionError(f"these tests need Redis at {url} (start redis-server): {e}") from e
    return url


def wait_for(pred, timeout: float, every: float = 0.5, what: str = "condition"):  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    last = None
    while time.monotonic() < end:
        last = pred()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
