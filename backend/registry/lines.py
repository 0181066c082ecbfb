"""Model lines: one MLflow registered model each, its versions, and the ``champion`` alias that says
which version is served.

Every training registers its model as a new version (promoted or not, so a person can still promote
it by hand); the gate's verdict and the dataset version ride along as version tags. Promotion is
one ``set_registered_model_alias`` call, which the store applies atomically: a reader sees the old
champion or the new one, never neither. The line's tag ``labelloop.champion_history`` lists the
champions in order, so ``rollback`` can move the alias back to the one before.

``champion(settings, line)`` gives what the rest of labelloop needs: the version, its weights as a
local file (downloaded once into the cache, with a ``.version`` sidecar naming it for
``model_version_of``) and the dataset version it was trained on (the sync's trigger counts new
labels from there). ``champion_version`` is the cheap form a hot-reload poller asks; ``promote`` and
``rollback`` announce the new champion on Redis (:mod:`labelloop.backend.registry.announce`).
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from labelloop.backend.registry.announce import announce
from labelloop.backend.registry.tracking import client, registry_call
from labelloop.errors import ErrorKind, RegistryError
from labelloop.fsutil import atomic_write, file_lock
from labelloop.settings import Settings

CHAMPION = "champion"
HISTORY_TAG = "labelloop.champion_history"
WEIGHTS_DIR = "weights"  # run artifact dir a version's source points at
WEIGHTS_FILE = "best.pt"
TAG_DATASET = "labelloop.dataset_version"
TAG_PARENT = "labelloop.parent"
TAG_GATE = "labelloop.gate"  # promoted / rejected
TAG_REASON = "labelloop.gate_reason"
TAG_MAP = "labelloop.map50_95"
TAG_MAX = 5000


@dataclass
class ModelRef:
    line: str
    version: int
    model_version: str  # what the backend serves and Label Studio shows: "<line>-v<N>"
    run_id: str | None
    dataset_version: str | None
    source: str
    is_champion: bool = False
    weights: Path | None = None  # local copy, when fetched
    tags: dict[str, str] = field(default_factory=dict)
    created_at: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["weights"] = str(self.weights) if self.weights else None
        return d


def model_version_name(line: str, version: int | str) -> str:
    return f"{line}-v{version}"


def line_of(settings: Settings, line: str | None) -> str:
    return line or settings.train.model_line


def _ref(mv: Any, champion: int | None) -> ModelRef:
    tags = dict(mv.tags or {})
    created = (
        datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC).isoformat() if mv.creation_timestamp else ""
    )
    return ModelRef(
        line=mv.name,
        version=int(mv.version),
        model_version=model_version_name(mv.name, mv.version),
        run_id=mv.run_id,
        dataset_version=tags.get(TAG_DATASET),
        source=mv.source,
        is_champion=champion is not None and int(mv.version) == champion,
        tags=tags,
        created_at=created,
    )


def ensure_line(settings: Settings, line: str) -> None:
    c = client(settings)
    try:
        c.get_registered_model(line)
    except Exception:
        try:
            c.create_registered_model(line, description=f"labelloop model line {line}")
        except Exception:  # created by another process in between
            registry_call(f"reading model line {line!r}", c.get_registered_model, line)


def register(settings: Settings, line: str, run_id: str, artifact_uri: str, tags: dict[str, str]) -> ModelRef:
    """A new version of ``line`` whose weights are the run's ``weights/`` artifacts."""
    ensure_line(settings, line)
    mv = registry_call(
        f"registering a version of {line!r}",
        client(settings).create_model_version,
        line,
        source=f"{artifact_uri}/{WEIGHTS_DIR}",
        run_id=run_id,
        tags={k: str(v)[:TAG_MAX] for k, v in tags.items()},
    )
    return _ref(mv, champion_version(settings, line))


def tag_version(settings: Settings, line: str, version: int, tags: dict[str, str]) -> None:
    c = client(settings)
    for k, v in tags.items():
        registry_call(
            f"tagging {line} v{version}", c.set_model_version_tag, line, str(version), k, str(v)[:TAG_MAX]
        )


def champion_version(settings: Settings, line: str | None = None) -> int | None:
    """The version the ``champion`` alias points at, or None (no line, or nothing promoted yet)."""
    line = line_of(settings, line)
    c = client(settings)
    try:
        return int(c.get_model_version_by_alias(line, CHAMPION).version)
    except Exception as e:
        if getattr(e, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise RegistryError(f"MLflow: reading the champion of {line!r} failed: {e}") from e


def get_version(settings: Settings, line: str | None, version: int | str) -> ModelRef:
    line = line_of(settings, line)
    v = str(version).lower().removeprefix("v")
    if not v.isdigit():
        raise RegistryError(
            f"model version {version!r}: expected a number (see `labelloop models list`)", ErrorKind.CONFIG
        )
    try:
        mv = client(settings).get_model_version(line, v)
    except Exception as e:
        raise RegistryError(
            f"model line {line!r} has no version {v} (`labelloop models list` shows them)", ErrorKind.MISSING
        ) from e
    return _ref(mv, champion_version(settings, line))


def list_versions(settings: Settings, line: str | None = None) -> list[ModelRef]:
    """The line's versions, newest first (empty when the line does not exist yet)."""
    line = line_of(settings, line)
    c = client(settings)
    found = registry_call("listing model versions", c.search_model_versions, f"name = '{line}'")
    champ = champion_version(settings, line) if found else None
    return sorted((_ref(mv, champ) for mv in found), key=lambda r: r.version, reverse=True)


def champion(settings: Settings, line: str | None = None, *, fetch: bool = True) -> ModelRef | None:
    """The line's champion with its weights fetched into the cache (``fetch``), or None."""
    line = line_of(settings, line)
    v = champion_version(settings, line)
    if v is None:
        return None
    ref = get_version(settings, line, v)
    if fetch:
        ref.weights = fetch_weights(settings, ref)
    return ref


def fetch_weights(settings: Settings, ref: ModelRef) -> Path:
    """The version's ``best.pt`` as a local file, downloaded once per version into the cache; a
    ``best.pt.version`` beside it holds ``<line>-v<N>`` (what ``model_version_of`` reports)."""
    target = settings.cache_dir / "models" / "registry" / ref.line / f"v{ref.version}" / WEIGHTS_FILE
    if target.is_file():
        return target
    with file_lock(target.parent.with_suffix(".lock")):
        if target.is_file():
            return target
        import mlflow

        from labelloop.backend.registry.tracking import tracking_uri

        tmp = target.parent.with_name(f".{target.parent.name}-{uuid.uuid4().hex[:8]}")
        tmp.mkdir(parents=True)
        try:
            got = registry_call(
                f"downloading {ref.model_version}",
                mlflow.artifacts.download_artifacts,
                artifact_uri=f"{ref.source}/{WEIGHTS_FILE}",
                dst_path=str(tmp),
                tracking_uri=tracking_uri(settings),
            )
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(Path(f"{target}.version"), ref.model_version)
            Path(got).replace(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _history(settings: Settings, line: str) -> list[int]:
    rm = registry_call(f"reading model line {line!r}", client(settings).get_registered_model, line)
    try:
        return [int(v) for v in json.loads((rm.tags or {}).get(HISTORY_TAG, "[]"))]
    except (ValueError, TypeError):
        return []


def _set_champion(settings: Settings, line: str, version: int, history: list[int]) -> None:
    c = client(settings)
    registry_call(
        f"moving the champion of {line!r}", c.set_registered_model_alias, line, CHAMPION, str(version)
    )
    registry_call(
        f"recording the champion history of {line!r}",
        c.set_registered_model_tag,
        line,
        HISTORY_TAG,
        json.dumps(history[-200:]),
    )


def promote(settings: Settings, line: str | None, version: int | str, reason: str = "by hand") -> ModelRef:
    """Point ``champion`` at ``version`` (no gate: the retrain runs it before calling this)."""
    line = line_of(settings, line)
    ref = get_version(settings, line, version)
    history = _history(settings, line)
    current = champion_version(settings, line)
    if current is not None and (not history or history[-1] != current):
        history.append(current)  # moved outside labelloop: keep it as the one to come back to
    if not history or history[-1] != ref.version:
        history.append(ref.version)
    _set_champion(settings, line, ref.version, history)
    tag_version(
        settings, line, ref.version, {"labelloop.promoted_at": _now(), "labelloop.promoted_why": reason}
    )
    ref.is_champion = True
    announce(settings, line, ref.model_version)  # backends swap now instead of at their next poll
    return ref


def rollback(settings: Settings, line: str | None = None) -> ModelRef:
    """Move ``champion`` back to the previous champion; the current one leaves the history."""
    line = line_of(settings, line)
    current = champion_version(settings, line)
    if current is None:
        raise RegistryError(f"model line {line!r} has no champion to roll back", ErrorKind.MISSING)
    history = _history(settings, line)
    while history and history[-1] == current:
        history.pop()
    if not history:
        raise RegistryError(
            f"model line {line!r}: v{current} is its first champion; there is none before it to roll back to",
            ErrorKind.MISSING,
        )
    previous = history[-1]
    _set_champion(settings, line, previous, history)
    tag_version(settings, line, current, {"labelloop.rolled_back_at": _now()})
    ref = get_version(settings, line, previous)
    announce(settings, line, ref.model_version)
    return ref


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def trained_on(settings: Settings, line: str | None = None) -> Callable[[], str | None]:
    """For the sync's trigger: the dataset version the line's champion was trained on, asked anew
    on each pass (a promotion anywhere moves the baseline); None before the first champion."""

    def ask() -> str | None:
        ref = champion(settings, line, fetch=False)
        return ref.dataset_version if ref else None

    return ask
