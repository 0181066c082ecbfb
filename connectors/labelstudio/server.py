"""Start a local Label Studio from its own virtualenv (the demo and the test suite use it).

Label Studio's pins clash with Ultralytics', so it lives in ``.venv-ls`` (made by
``scripts/bootstrap.sh``; ``LABELLOOP_LS_VENV`` names another). A migrated data dir is cached as a
template per Label Studio release: a cold start (migrations) takes ~35 s, a start from a copy of
the template a few seconds. The template is built under a file lock in a temporary directory and
renamed into place, so test sessions started at the same time never see, or delete, half of one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import requests

from labelloop.errors import ConfigError, RemoteError
from labelloop.fsutil import file_lock
from labelloop.procs import Child, free_port, tail
from labelloop.settings import Settings, load_settings

__all__ = ["OFFLINE_ENV", "LabelStudioServer", "find_label_studio", "free_port"]

ROOT = Path(__file__).resolve().parents[2]
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


def find_label_studio(venv: Path | None = None) -> Path:
    exe = (venv or ROOT / ".venv-ls") / "bin" / "label-studio"
    if not exe.exists():
        raise ConfigError(
            f"Label Studio is not installed at {exe}: run `bash scripts/bootstrap.sh ls` "
            "(or set LABELLOOP_LS_VENV to a virtualenv with label-studio 1.23)"
        )
    return exe


def _release(exe: Path) -> str:
    """The installed label-studio release (its dist-info), which names the template."""
    venv = exe.resolve().parent.parent
    found = sorted(venv.glob("lib/python*/site-packages/label_studio-*.dist-info"))
    return found[-1].name.removesuffix(".dist-info") if found else venv.name


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
        settings: Settings | None = None,
    ) -> None:
        settings = settings or load_settings()
        self.exe = find_label_studio(venv or settings.labelstudio.server_venv)
        self.workdir = Path(workdir)
        self.port = free_port(port)
        self.username, self.password, self.token = username, password, token
        self.data_dir = self.workdir / "data"
        self.document_root = self.workdir / "files"
        self.cache_dir = Path(cache_dir or settings.cache_dir)
        self.log_path = self.workdir / "label-studio.log"
        self.child: Child | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _env(self, data_dir: Path | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("HOST", "PORT", "LABEL_STUDIO_HOST")}
        env.update(OFFLINE_ENV)
        env.update(
            LABEL_STUDIO_BASE_DATA_DIR=str(data_dir or self.data_dir),
            LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=str(self.document_root),
            LABEL_STUDIO_USERNAME=self.username,
            LABEL_STUDIO_PASSWORD=self.password,
            LABEL_STUDIO_USER_TOKEN=self.token,
        )
        return env

    def _user_args(self) -> list[str]:
        return ["--username", self.username, "--password", self.password, "--user-token", self.token]

    def _template(self) -> Path:
        tpl = self.cache_dir / f"ls-template-{_release(self.exe)}-{self.username}-{self.token[:8]}"
        if (tpl / ".complete").exists():
            return tpl
        with file_lock(tpl.with_name(tpl.name + ".lock")):
            if (tpl / ".complete").exists():  # another process built it while we waited
                return tpl
            building = tpl.with_name(f"{tpl.name}.building-{os.getpid()}")
            shutil.rmtree(building, ignore_errors=True)
            (building / "data").mkdir(parents=True)
            r = subprocess.run(
                [
                    str(self.exe),
                    "init",
                    "--data-dir",
                    str(building / "data"),
                    *self._user_args(),
                    "--no-browser",
                ],
                env=self._env(building / "data"),
                capture_output=True,
                text=True,
                timeout=600,
            )
            if r.returncode != 0:
                shutil.rmtree(building, ignore_errors=True)
                raise RemoteError(f"label-studio init failed:\n{(r.stdout + r.stderr)[-3000:]}")
            (building / ".complete").touch()
            shutil.rmtree(tpl, ignore_errors=True)  # an incomplete one, left by a killed build
            building.rename(tpl)
        return tpl

    def start(self, timeout: float = 180.0) -> LabelStudioServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.document_root.mkdir(parents=True, exist_ok=True)
        if not self.data_dir.exists():
            shutil.copytree(self._template() / "data", self.data_dir)
        cmd = [
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
        ]
        self.child = Child("Label Studio", cmd, self._env(), self.log_path)
        self.child.start(self._ready, timeout=timeout, poll_s=0.5)
        return self

    def _ready(self) -> bool:
        if not requests.get(f"{self.url}/health/", timeout=2).ok:
            return False
        return requests.get(f"{self.url}/api/current-user/whoami", headers=self.headers(), timeout=5).ok

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Token {self.token}"}

    def log_tail(self, n: int = 4000) -> str:
        return tail(self.log_path, n)

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop()
            self.child = None

    def __enter__(self) -> LabelStudioServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
