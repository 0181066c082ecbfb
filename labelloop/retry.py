"""One retry policy: exponential backoff with a cap, for failures that may pass (network, 5xx,
429, a database restarting); never for bad input. Every client uses this instead of its own loop."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from labelloop.errors import LabelloopError

T = TypeVar("T")
log = logging.getLogger("labelloop.retry")


@dataclass(frozen=True)
class Backoff:
    retries: int = 4
    base_s: float = 0.5
    cap_s: float = 10.0
    jitter: float = 0.1

    def delay(self, attempt: int) -> float:
        d = min(self.base_s * 2**attempt, self.cap_s)
        return d * (1 + random.uniform(-self.jitter, self.jitter))


def is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, LabelloopError):
        return exc.retryable
    return isinstance(exc, ConnectionError | TimeoutError | OSError)


def retry(
    what: str,
    fn: Callable[[], T],
    policy: Backoff = Backoff(),
    retryable: Callable[[BaseException], bool] = is_retryable,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``fn``; on a retryable failure log one line and try again after a backoff delay. The last
    failure (or the first that is not retryable) is raised as it is."""
    for attempt in range(policy.retries + 1):
        try:
            return fn()
        except Exception as e:
            if attempt >= policy.retries or not retryable(e):
                raise
            delay = policy.delay(attempt)
            log.warning(
                "%s failed (%s); retry %d/%d in %.1fs", what, _short(e), attempt + 1, policy.retries, delay
            )
            sleep(delay)
    raise AssertionError("unreachable")


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text[:200]
