"""Child services (Label Studio, the backend, the sync, a worker): one port finder and one launcher
that starts a process in its own group (so stopping it also stops what it started: gunicorn
workers, the rq worker) and waits until a health check passes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from labelloop.errors import ErrorKind, RemoteError


def free_port(preferred: int | None = None) -> int:
    """``preferred`` when it is free on 127.0.0.1, else any free port (a busy port must not make a
    child silently move to another one)."""
    if preferred:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", preferred))
                return preferred
            except OSError:
                pass
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn(cmd: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def stop_group(proc: subprocess.Popen | None, timeout: float = 30) -> None:
    if proc is None or proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def tail(path: Path, n: int = 6000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


class Child:
    """A service process: ``start()`` spawns it and waits for ``healthy()``; ``stop()`` ends its group."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name, self.cmd, self.env, self.log_path = name, cmd, env, log_path
        self.proc: subprocess.Popen | None = None

    def start(self, healthy: Callable[[], bool], timeout: float = 120, poll_s: float = 0.3) -> Child:
        self.proc = spawn(self.cmd, self.env, self.log_path)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RemoteError(
                    f"{self.name} exited (code {self.proc.returncode}):\n{self.log()}",
                    kind=ErrorKind.REMOTE_DOWN,
                )
            try:
                if healthy():
                    return self
            except Exception:  # not up yet: connection refused, bad JSON while starting
                pass
            time.sleep(poll_s)
        self.stop()
        raise RemoteError(
            f"{self.name} was not ready in {timeout:.0f}s:\n{self.log()}", kind=ErrorKind.REMOTE_DOWN
        )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return tail(self.log_path)

    def stop(self) -> None:
        stop_group(self.proc)
        self.proc = None
