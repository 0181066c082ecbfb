"""Test helpers that start real processes and talk to real servers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import requests

from labelloop.connectors.labelstudio_server import free_port


def redis_or_fail(url: str = "redis://127.0.0.1:6379/0") -> str:
    from redis import Redis

    try:
        Redis.from_url(url, socket_connect_timeout=2).ping()
    except Exception as e:
        raise AssertionError(f"these tests need Redis at {url} (start redis-server): {e}") from e
    return url


class BackendProcess:
    """``labelloop serve`` (gunicorn + rq worker) in a subprocess on a free port."""

    def __init__(self, workdir: Path, weights: Path, redis_url: str, env: dict[str, str]) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.prefix = f"test-{uuid.uuid4().hex[:8]}"
        workdir.mkdir(parents=True, exist_ok=True)
        self.env = {
            **os.environ,
            "LABELLOOP_MODEL": str(weights),
            "LABELLOOP_REDIS_URL": redis_url,
            "LABELLOOP_QUEUE_PREFIX": self.prefix,
            "LABELLOOP_HOST": "127.0.0.1",
            "LABELLOOP_PORT": str(self.port),
            **env,
        }
        self.log_path = workdir / "backend.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120) -> BackendProcess:
        self.proc = subprocess.Popen([sys.executable, "-m", "labelloop.cli", "serve"], env=self.env,
                                     stdout=open(self.log_path, "wb"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            assert self.proc.poll() is None, f"backend exited:\n{self.log()}"
            try:
                h = requests.get(f"{self.url}/health", timeout=1).json()
                if h.get("model_loaded"):
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.3)
        raise AssertionError(f"backend not ready in {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:] if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)


def wait_for(pred, timeout: float, every: float = 0.5, what: str = "condition"):  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    last = None
    while time.monotonic() < end:
        last = pred()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
