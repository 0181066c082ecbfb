"""Shared fixtures: offline Ultralytics, the demo model, a real Label Studio, real gunicorn backends.

Nothing here is mocked: Label Studio runs from its own venv, the backend runs under gunicorn in a
subprocess, background jobs go through the real Redis on 127.0.0.1:6379.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

_TMP = Path(tempfile.mkdtemp(prefix="labelloop-tests-"))
os.environ.setdefault("YOLO_CONFIG_DIR", str(_TMP / "ultralytics"))
os.environ.setdefault("MPLCONFIGDIR", str(_TMP / "mpl"))
os.environ.setdefault("YOLO_OFFLINE", "1")

from tests.helpers import BackendProcess, redis_or_fail  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    # pycocotools' own RLE decoding trips numpy 2's copy-keyword deprecation hundreds of times per
    # run; it is theirs to fix and drowns out warnings about our code
    config.addinivalue_line(
        "filterwarnings", "ignore:__array__ implementation:DeprecationWarning:pycocotools"
    )


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    from labelloop.settings import default_cache_dir

    return default_cache_dir()


@pytest.fixture(scope="session")
def demo_weights(cache_dir: Path) -> Path:
    from labelloop.backend.inference.demo_model import build_demo_model

    return build_demo_model(cache_dir)


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from labelloop.connectors.labelstudio.server import LabelStudioServer

    server = LabelStudioServer(tmp_path_factory.mktemp("label-studio"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url() -> str:
    return redis_or_fail()


@pytest.fixture
def backend_factory(tmp_path: Path, demo_weights: Path, redis_url: str):  # type: ignore[no-untyped-def]
    started: list[BackendProcess] = []

    def start(**env: str) -> BackendProcess:
        b = BackendProcess(tmp_path / f"backend-{len(started)}", demo_weights, redis_url, env)
        started.append(b)
        return b.start()

    yield start
    for b in started:
        b.stop()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """An S3-compatible server (moto's, run as a real HTTP process) for cloud-storage imports:
    AWS itself is unreachable here, and Label Studio and boto3 talk to it as to any S3 endpoint."""
    import sys

    from labelloop.procs import free_port, spawn, stop_group, tail
    from tests.helpers import wait_for

    port = free_port()
    log = tmp_path_factory.mktemp("s3") / "moto.log"
    proc = spawn(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], dict(os.environ), log
    )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        import requests

        if proc.poll() is not None:
            raise AssertionError(f"moto S3 server exited (is moto[server] installed?):\n{tail(log)}")
        try:
            return requests.get(url, timeout=1).status_code < 500
        except requests.RequestException:
            return False

    wait_for(up, 60, what="the S3 test server")
    yield url
    stop_group(proc)
