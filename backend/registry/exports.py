"""A model version's exported artifacts (``labelloop export``), stored with it in the registry, and
the one a CPU backend serves in its place.

``labelloop export`` of weights fetched from the registry stores the artifact and its report under
the version's run, at ``exports/<format>-<imgsz>/`` (``store_export``). A backend whose runtime is
``auto`` on the CPU lists them, lets ``inference.precision.choose`` pick the fastest that passed
validation (the int8 gate: ``gate.max_quant_drop`` on the dataset version's val split) and serves it
(``serving_artifact``), downloaded once into the cache beside the version's weights. The artifact
keeps the version's name (``<line>-v<N>``): Label Studio shows the predictions of that version.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

from labelloop.backend.inference.lean import gpu_present
from labelloop.backend.inference.precision import Candidate, Choice, choose
from labelloop.backend.registry import tracking
from labelloop.backend.registry.lines import ModelRef, get_version
from labelloop.errors import LabelloopError
from labelloop.fsutil import atomic_write, file_lock
from labelloop.settings import Settings

log = logging.getLogger(__name__)
EXPORTS_DIR = "exports"
REPORT = "report.json"


def registry_ref_of(settings: Settings, weights: Path) -> ModelRef | None:
    """The registry version ``weights`` were fetched as (their ``.version`` sidecar names
    ``<line>-v<N>``), else None."""
    root = (settings.cache_dir / "models" / "registry").resolve()
    sidecar = Path(f"{weights}.version")
    if not weights.resolve().is_relative_to(root) or not sidecar.is_file():
        return None
    line, _, number = sidecar.read_text().strip().rpartition("-v")
    if not line or not number.isdigit():
        return None
    return get_version(settings, line, int(number))


def registry_run_of(settings: Settings, weights: Path) -> str | None:
    """The MLflow run that produced registry weights ``weights``, else None."""
    ref = registry_ref_of(settings, weights)
    return ref.run_id if ref else None


def trained_on(settings: Settings, weights: Path) -> str | None:
    """The dataset version registry weights ``weights`` were trained on (a version tag), else None."""
    ref = registry_ref_of(settings, weights)
    return ref.dataset_version if ref else None


def store_export(settings: Settings, weights: Path, artifact: Path, report: dict[str, Any]) -> str | None:
    """Log ``artifact`` and its report to the run of ``weights``' registry version; the run id, or
    None when the weights did not come from the registry."""
    run_id = registry_run_of(settings, weights)
    if run_id is None:
        return None
    where = f"{EXPORTS_DIR}/{report['format']}-{report['imgsz']}"
    c = tracking.client(settings)
    if artifact.is_dir():
        tracking.registry_call(f"uploading {artifact.name}", c.log_artifacts, run_id, str(artifact), where)
    else:
        tracking.log_artifact(settings, run_id, artifact, where)
    with tempfile.TemporaryDirectory() as tmp:
        rep = Path(tmp) / REPORT
        rep.write_text(json.dumps({**report, "mlflow_run_id": run_id}, indent=2, default=str))
        tracking.log_artifact(settings, run_id, rep, where)
    key = f"export.{report['format'].replace('-', '_')}.{report['imgsz']}"
    metrics = {f"{key}.recovered": report["agreement"]["recovered"]}
    if report.get("val"):
        metrics[f"{key}.map50_95"] = report["val"]["map50_95"]
    tracking.log_metrics(settings, run_id, metrics)
    return run_id


def stored_exports(settings: Settings, run_id: str) -> list[Candidate]:
    """The exports stored under ``run_id`` with their reports (one without a report is skipped)."""
    c = tracking.client(settings)
    dirs = tracking.registry_call("listing exported artifacts", c.list_artifacts, run_id, EXPORTS_DIR)
    found = []
    with tempfile.TemporaryDirectory() as tmp:
        for d in dirs:
            if not d.is_dir:
                continue
            try:
                got = c.download_artifacts(run_id, f"{d.path}/{REPORT}", tmp)
                report = json.loads(Path(got).read_text())
                found.append(Candidate(str(report["format"]), int(report["imgsz"]), report, d.path))
            except Exception as e:  # a half-written export: the others still count
                log.warning("exported artifact %s of run %s has no readable report: %s", d.path, run_id, e)
    return found


def fetch_export(settings: Settings, weights: Path, run_id: str, cand: Candidate) -> Path:
    """The artifact as a local path beside ``weights`` (downloaded once), named as Ultralytics knows
    it (``.onnx``, ``*_openvino_model``), with the weights' ``.version`` sidecar."""
    name = Path(cand.location).name
    target = weights.parent / EXPORTS_DIR / (f"{name}_openvino_model" if "openvino" in cand.format else name)
    done = target / ".complete"
    if not done.is_file():
        with file_lock(target.with_suffix(".lock")):
            if not done.is_file():
                tmp = target.with_name(f".{target.name}-{uuid.uuid4().hex[:8]}")
                try:
                    got = tracking.registry_call(
                        f"downloading {cand.location}",
                        tracking.client(settings).download_artifacts,
                        run_id,
                        cand.location,
                        str(tmp),
                    )
                    shutil.rmtree(target, ignore_errors=True)
                    Path(got).replace(target)
                    (target / ".complete").touch()
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
    artifact = target if target.name.endswith("_openvino_model") else next(target.glob("*.onnx"))
    sidecar = Path(f"{weights}.version")
    if sidecar.is_file():
        atomic_write(Path(f"{artifact}.version"), sidecar.read_text().strip())
    return artifact


def on_cpu(settings: Settings) -> bool:
    d = settings.predict.device
    return d == "cpu" or (d == "auto" and not gpu_present())


def serving_artifact(settings: Settings, weights: Path) -> tuple[Path, Choice | None]:
    """What to load for ``weights``: the fastest stored export that passes (runtime ``auto`` on the
    CPU, registry weights), else the weights; and the choice made (None: nothing to choose from).

    A registry that cannot be read leaves the weights served, with one log line."""
    if settings.predict.runtime != "auto" or not on_cpu(settings) or weights.suffix != ".pt":
        return weights, None
    try:
        run_id = registry_run_of(settings, weights)
        candidates = stored_exports(settings, run_id) if run_id else []
        if not candidates:
            return weights, None
        choice = choose(
            candidates,
            settings.predict.precision,
            settings.gate.max_quant_drop,
            imgsz=settings.predict.imgsz,
        )
        if choice.candidate is None:
            return weights, choice
        return fetch_export(settings, weights, run_id, choice.candidate), choice  # type: ignore[arg-type]
    except LabelloopError as e:
        log.warning("exported artifacts of %s unavailable (%s): serving the weights", weights, e)
        return weights, None
