"""Experiment tracking on MLflow: where the store is, one experiment per model line, runs with
params, metrics and artifacts.

The store is ``settings.registry.mlflow_tracking_uri`` (``LABELLOOP_MLFLOW_TRACKING_URI``: a team's
MLflow server), by default ``sqlite:///<data dir>/mlflow/mlflow.db`` with artifacts beside it. A
database store, not MLflow's file store: it is MLflow 3's default, holds the model registry and its
aliases, and takes the transactions that make an alias move atomic. Browse it with
``mlflow ui --backend-store-uri <uri>``. All calls go through one ``MlflowClient`` per URI (no
global ``mlflow.set_tracking_uri``, so nothing else in the process is redirected).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from labelloop.errors import ErrorKind, RegistryError
from labelloop.settings import Settings

PARAM_MAX = 6000  # MLflow's limit on a param value
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no tqdm bars in our logs


def tracking_uri(settings: Settings) -> str:
    uri = settings.registry.mlflow_tracking_uri
    if uri:
        return uri
    root = settings.data_dir / "mlflow"
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(root / 'mlflow.db').resolve()}"


def local_artifact_root(uri: str) -> str | None:
    """Artifacts beside a local SQLite store (MLflow would put them under the working directory);
    None for a server, which decides itself."""
    if not uri.startswith("sqlite:///"):
        return None
    db = Path(unquote(uri[len("sqlite:///") :]))
    return (db.parent / "artifacts").resolve().as_uri()


@lru_cache(maxsize=8)
def _client(uri: str) -> Any:
    from mlflow import MlflowClient  # lazy: importing mlflow costs a second

    try:
        return MlflowClient(tracking_uri=uri, registry_uri=uri)
    except Exception as e:
        raise RegistryError(f"cannot open the MLflow store at {safe_uri(uri)}: {_line(e)}") from e


def client(settings: Settings) -> Any:
    """The ``MlflowClient`` of the configured store (created, and migrated, on first use)."""
    return _client(tracking_uri(settings))


def safe_uri(uri: str) -> str:
    p = urlparse(uri)
    if p.password:
        return uri.replace(f":{p.password}@", ":***@")
    return uri


def _line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


def registry_call(what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args)``; an MLflow failure becomes a RegistryError saying what was being done (a
    missing model or version is MISSING, a refused request REJECTED, the rest REMOTE_DOWN)."""
    try:
        return fn(*args, **kwargs)
    except RegistryError:
        raise
    except Exception as e:
        code = getattr(e, "error_code", "")
        kind = {
            "RESOURCE_DOES_NOT_EXIST": ErrorKind.MISSING,
            "INVALID_PARAMETER_VALUE": ErrorKind.REJECTED,
            "RESOURCE_ALREADY_EXISTS": ErrorKind.REJECTED,
        }.get(code, ErrorKind.REMOTE_DOWN)
        raise RegistryError(f"MLflow: {what} failed: {_line(e)}", kind) from e


def experiment_id(settings: Settings, line: str) -> str:
    """The experiment of model line ``line`` (same name), created on first use."""
    c = client(settings)
    exp = registry_call(f"looking up experiment {line!r}", c.get_experiment_by_name, line)
    if exp is not None:
        return str(exp.experiment_id)
    location = local_artifact_root(tracking_uri(settings))
    if location:
        location = f"{location}/{line}"
    try:
        return str(c.create_experiment(line, artifact_location=location, tags={"labelloop.line": line}))
    except Exception:  # another process created it first
        exp = registry_call(f"creating experiment {line!r}", c.get_experiment_by_name, line)
        if exp is None:
            raise
        return str(exp.experiment_id)


def code_version() -> str:
    """The git commit of the running code when it is a checkout (``+dirty`` with local changes),
    else the installed package's version."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return f"git:{sha}{'+dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        from importlib.metadata import PackageNotFoundError, version

        try:
            return f"labelloop=={version('labelloop')}"
        except PackageNotFoundError:
            return "unknown"


def start_run(
    settings: Settings, line: str, name: str, params: Mapping[str, Any], tags: Mapping[str, str]
) -> str:
    """A new run in the line's experiment with ``params`` and ``tags``; its id."""
    from mlflow.entities import Param

    c = client(settings)
    run = registry_call(
        "starting a run", c.create_run, experiment_id(settings, line), run_name=name, tags=dict(tags)
    )
    run_id = run.info.run_id
    items = [Param(k, str(v)[:PARAM_MAX]) for k, v in params.items()]
    for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
        registry_call("logging params", c.log_batch, run_id, params=items[i : i + 100])
    return run_id


def log_metrics(
    settings: Settings, run_id: str, metrics: Mapping[str, float], step: int | None = None
) -> None:
    import time

    from mlflow.entities import Metric

    ts = int(time.time() * 1000)
    batch = [Metric(k, float(v), ts, step or 0) for k, v in metrics.items()]
    if batch:
        registry_call("logging metrics", client(settings).log_batch, run_id, metrics=batch)


def log_artifact(settings: Settings, run_id: str, path: Path, artifact_path: str | None = None) -> None:
    registry_call(f"uploading {path.name}", client(settings).log_artifact, run_id, str(path), artifact_path)


def set_tags(settings: Settings, run_id: str, tags: Mapping[str, str]) -> None:
    c = client(settings)
    for k, v in tags.items():
        registry_call(f"tagging run {run_id}", c.set_tag, run_id, k, str(v)[:PARAM_MAX])


def end_run(settings: Settings, run_id: str, status: str = "FINISHED") -> None:
    """``status``: FINISHED, FAILED or KILLED (cancelled)."""
    registry_call("ending the run", client(settings).set_terminated, run_id, status)


def run_artifact_uri(settings: Settings, run_id: str) -> str:
    return registry_call("reading the run", client(settings).get_run, run_id).info.artifact_uri
