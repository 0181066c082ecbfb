"""Start a local Label Studio from its own virtualenv (the demo and the test suite use it).

Label Studio's pins clash with Ultralytics', so it lives in ``.venv-ls`` (made by
``scripts/bootstrap.sh``). A migrated data dir is cached as a template by version: a cold start
(migrations) takes ~35 s, a start from a copy of the template a few seconds.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import requests

from labelloop.errors import ConfigError, RemoteError
from labelloop.procs import spawn, stop_group, tail
from labelloop.settings import default_cache_dir, load_settings

ROOT = Path(__file__).resolve().parents[2]  # the checkout (its .venv-ls)
OFFLINE_ENV = {
    "DJANGO_DB": "sqlite",
    "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
    "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
    "SENTRY_DSN": "",
    "FRONTEND_SENTRY_DSN": "",
    "COLLECT_ANALYTICS": "false",
    "LATEST_VERSION_CHECK": "false",
    "ML_BLOCK_LOCAL_IP": "false",
    "SSRF_PROTECTION_ENABLED": "false",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_label_studio(venv: Path | None = None) -> Path:
    exe = (venv or load_settings().labelstudio.server_venv or ROOT / ".venv-ls") / "bin" / "label-studio"
    if not exe.exists():
        raise ConfigError(
            f"Label Studio is not installed at {exe}: run `bash scripts/bootstrap.sh ls` "
            "(or set LABELLOOP_LS_VENV to a virtualenv with label-studio 1.23)"
        )
    return exe


class LabelStudioServer:
    """A Label Studio process on 127.0.0.1; use as a context manager or call start()/stop()."""

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        username: str = "demo@labelloop.dev",
        password: str = "labelloop-demo",
        token: str = "labelloop0demo0token0000000000000000000",
        cache_dir: Path | None = None,
        venv: Path | None = None,
    ) -> None:
        self.exe = find_label_studio(venv)
        self.workdir = Path(workdir)
        self.port = port or free_port()
        self.username, self.password, self.token = username, password, token
        self.data_dir = self.workdir / "data"
        self.document_root = self.workdir / "files"
        self.cache_dir = cache_dir or default_cache_dir()
        self.log_path = self.workdir / "label-studio.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("HOST", "PORT", "LABEL_STUDIO_HOST")}
        env.update(OFFLINE_ENV)
        env.update(
            LABEL_STUDIO_BASE_DATA_DIR=str(self.data_dir),
            LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=str(self.document_root),
            LABEL_STUDIO_USERNAME=self.username,
            LABEL_STUDIO_PASSWORD=self.password,
            LABEL_STUDIO_USER_TOKEN=self.token,
        )
        return env

    def _user_args(self) -> list[str]:
        return ["--username", self.username, "--password", self.password, "--user-token", self.token]

    def _template(self) -> Path:
        version = self.exe.resolve().parent.parent.name
        tpl = self.cache_dir / f"ls-template-{version}-{self.username}-{self.token[:8]}"
        if (tpl / ".complete").exists():
            return tpl
        shutil.rmtree(tpl, ignore_errors=True)
        (tpl / "data").mkdir(parents=True)
        env = {**self._env(), "LABEL_STUDIO_BASE_DATA_DIR": str(tpl / "data")}
        r = subprocess.run(
            [str(self.exe), "init", "--data-dir", str(tpl / "data"), *self._user_args(), "--no-browser"],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if r.returncode != 0:
            raise RemoteError(f"label-studio init failed:\n{(r.stdout + r.stderr)[-3000:]}")
        (tpl / ".complete").touch()
        return tpl

    def start(self, timeout: float = 180.0) -> LabelStudioServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.document_root.mkdir(parents=True, exist_ok=True)
        if not self.data_dir.exists():
            shutil.copytree(self._template() / "data", self.data_dir)
        self.proc = spawn(
            [
                str(self.exe),
                "start",
                "--no-browser",
                "--internal-host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--data-dir",
                str(self.data_dir),
                *self._user_args(),
                "--enable-legacy-api-token",
            ],
            self._env(),
            self.log_path,
        )
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RemoteError(f"Label Studio exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if requests.get(f"{self.url}/health/", timeout=2).ok and self._token_works():
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.5)
        self.stop()
        raise RemoteError(
            f"Label Studio did not answer on {self.url} within {timeout:.0f}s:\n{self.log_tail()}"
        )

    def _token_works(self) -> bool:
        r = requests.get(f"{self.url}/api/current-user/whoami", headers=self.headers(), timeout=5)
        return r.ok

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Token {self.token}"}

    def log_tail(self, n: int = 4000) -> str:
        return tail(self.log_path, n)

    def stop(self) -> None:
        stop_group(self.proc, timeout=20)
        self.proc = None

    def __enter__(self) -> LabelStudioServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
