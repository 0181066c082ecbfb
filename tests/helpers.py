"""Test helpers that start real processes and talk to real servers."""

from __future__ import annotations

import time
from pathlib import Path

from labelloop.backend.serving.gunicorn import BackendProcess  # noqa: F401 - re-exported for the tests

# the demo model's three classes as a Label Studio rectangle config, for backends under test
SHAPES_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <RectangleLabels name="label" toName="image">
    <Label value="circle"/><Label value="square"/><Label value="triangle"/>
  </RectangleLabels>
</View>"""


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


def shape_images(d: Path, n: int, *, size: int = 320, seed: int = 7, broken: int = 0) -> list[Path]:
    """``n`` JPEGs of the demo model's shapes (so predictions are non-trivial), plus ``broken``
    files that claim to be JPEGs and are not."""
    import numpy as np

    from labelloop.backend.inference.demo_model import render_shapes

    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = d / f"shapes_{i:03d}.jpg"
        render_shapes(rng, size)[0].save(p, quality=90)
        paths.append(p)
    for i in range(broken):
        p = d / f"broken_{i}.jpg"
        p.write_bytes(b"\xff\xd8 this is not a jpeg")
        paths.append(p)
    return paths
