"""Which weights to serve and what version they are, decided once: a configured path (checked), or
the embedded demo detector (built and cached on first use), and ``model_version`` computed
without loading the model (cheap enough for /setup)."""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path

from labelloop.backend.inference.demo_model import build_demo_model, demo_model_path
from labelloop.errors import ModelError
from labelloop.fsutil import sha256_file
from labelloop.settings import Settings

log = logging.getLogger(__name__)


def resolve_weights(settings: Settings) -> Path:
    """The configured weights (``--model`` / LABELLOOP_MODEL), or the demo model."""
    path = settings.predict.model
    if path is not None:
        if not (path.is_file() or path.is_dir()):  # a dir: an exported OpenVINO IR
            raise ModelError(f"model file {path} does not exist (--model / LABELLOOP_MODEL)")
        return path
    if not demo_model_path(settings.cache_dir).exists():
        log.info("no --model given: building the demo detector (one time, a few minutes on CPU)")
    return build_demo_model(settings.cache_dir)


@lru_cache(maxsize=32)
def _file_sha256(path: str, mtime_ns: int, size: int) -> str:
    return sha256_file(Path(path))  # cached by (path, mtime, size): /setup asks on every predict


def weights_sha256(path: Path) -> str:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ModelError(f"model file {path} does not exist; pass --model or set LABELLOOP_MODEL") from None
    if path.is_dir():  # an OpenVINO IR dir: its graph and weights
        return sha256_file(next(path.glob("*.bin"), None) or next(path.glob("*.xml")))
    return _file_sha256(str(path.resolve()), st.st_mtime_ns, st.st_size)


def model_version_of(path: Path) -> str:
    """A version that changes whenever the weights do, cheap enough for /setup (no model load).

    A registry may write ``<weights>.version`` beside the file to give it a readable name.
    """
    sidecar = Path(f"{path}.version")
    if sidecar.is_file():
        return sidecar.read_text().strip()
    return f"{path.stem}-{weights_sha256(path)[:12]}"
