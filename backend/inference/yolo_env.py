"""Keep Ultralytics offline and out of the user's home before it is first imported."""

from __future__ import annotations

import os
from pathlib import Path

from labelloop.settings import default_cache_dir


def ensure_yolo_env(cache_dir: Path | None = None) -> None:
    base = Path(cache_dir or default_cache_dir())
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_VERBOSE", "False")
    for var, sub in (("YOLO_CONFIG_DIR", "ultralytics"), ("MPLCONFIGDIR", "matplotlib")):
        if var not in os.environ:
            (base / sub).mkdir(parents=True, exist_ok=True)
            os.environ[var] = str(base / sub)


def without_ultralytics_mlflow() -> None:
    """Turn off Ultralytics' own MLflow callback (call after importing ultralytics): mlflow is
    installed for the registry, and that callback would start a store in the working directory;
    labelloop records its runs itself."""
    from ultralytics.utils import SETTINGS

    if SETTINGS.get("mlflow") is not False:
        SETTINGS.update({"mlflow": False})
