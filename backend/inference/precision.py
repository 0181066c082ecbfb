"""Which exported artifact of a model to serve on this CPU: the fastest that passed validation.

Precisions are tried fastest first, int8, then bf16, then fp32, from the one asked for
(``predict.precision``; ``auto`` starts at int8). A reduced-precision artifact (int8, bf16) passes
when its export report has mAP50-95 on a dataset version's human-verified val split (exported with
``--calibration VERSION``) no more than ``gate.max_quant_drop`` below its fp32 model's, and none of
those val images is one the model was trained on (a version with another split seed); bf16 also
needs a CPU with bf16 instructions (without them OpenVINO runs the IR in fp32 anyway). An fp32
artifact is the same arithmetic as the weights and always passes. Within one precision the faster
runtime comes first, in the order measured in issue 14 on a real YOLOv8 (images/s vs ONNX Runtime
fp32: OpenVINO INT8 3.4x, ONNX Runtime INT8 3.0x, OpenVINO bf16 2.0x).

Pure: the candidates come from the registry (``labelloop.backend.registry.exports``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

PRECISIONS = ("int8", "bf16", "fp32")  # fastest first
PRECISION_OF = {"openvino-int8": "int8", "onnx-int8": "int8", "openvino-bf16": "bf16",
                "openvino": "fp32", "onnx": "fp32"}  # fmt: skip
SPEED_ORDER = tuple(PRECISION_OF)  # fastest first (issue 14's measurements)


@dataclass(frozen=True)
class Candidate:
    """One exported artifact of a model version and its export report (``ExportReport.to_dict``)."""

    format: str
    imgsz: int
    report: dict[str, Any]
    location: str  # where it is stored (the run artifact dir)

    @property
    def precision(self) -> str:
        return PRECISION_OF[self.format]


@dataclass
class Choice:
    """The artifact to serve (None: serve the weights as they are) and why the faster ones were not."""

    candidate: Candidate | None
    refused: list[str] = field(default_factory=list)
    asked: str = "auto"

    def summary(self) -> str:
        """One line for the log and /health."""
        if self.candidate is None:
            what = "the weights as they are (no exported artifact passed)"
        else:
            c = self.candidate
            what = f"{c.format} ({c.precision}, imgsz {c.imgsz})"
        why = f"; passed over: {'; '.join(self.refused)}" if self.refused else ""
        return f"precision {self.asked}: serving {what}{why}"

    def to_dict(self) -> dict[str, Any]:
        c = self.candidate
        return {
            "asked": self.asked,
            "format": c.format if c else None,
            "precision": c.precision if c else None,
            "imgsz": c.imgsz if c else None,
            "refused": list(self.refused),
            "summary": self.summary(),
        }


@lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 instructions (AVX-512 BF16 or AMX), read from /proc/cpuinfo."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def verdict(c: Candidate, max_quant_drop: float, bf16_ok: bool) -> str | None:
    """None when ``c`` may be served, else why not (one clause naming the artifact)."""
    if c.precision == "fp32":
        return None
    if c.precision == "bf16" and not bf16_ok:
        return f"{c.format}: this CPU has no bf16 instructions (it would run in fp32)"
    val = c.report.get("val") or {}
    version = (c.report.get("calibration") or {}).get("version")
    if "map50_95_drop" not in val or not version:
        return (
            f"{c.format}: no mAP on a dataset version's human-verified val split "
            "(export it with --calibration VERSION)"
        )
    seen = (c.report.get("calibration") or {}).get("val_seen_in_training")
    if seen:
        learnt = c.report["calibration"]["model_trained_on"]
        return (
            f"{c.format}: {seen} val image(s) of {version[:12]} are in the train split of {learnt[:12]}, "
            f"which the model learnt from (export it with --calibration {learnt[:12]} or a later version)"
        )
    drop = float(val["map50_95_drop"])
    if drop > max_quant_drop:
        return (
            f"{c.format}: mAP50-95 {val['map50_95']:.4f} is {drop:.4f} below fp32's "
            f"{val['fp32_map50_95']:.4f} on the val split of {version[:12]} (max_quant_drop {max_quant_drop})"
        )
    return None


def choose(
    candidates: list[Candidate],
    precision: str = "auto",
    max_quant_drop: float = 0.01,
    *,
    imgsz: int | None = None,
    bf16_ok: bool | None = None,
) -> Choice:
    """The fastest candidate that passes, at ``precision`` or a wider one (see the module doc);
    ``imgsz``: only artifacts exported at this size (None: any)."""
    start = PRECISIONS.index(precision) if precision != "auto" else 0
    allowed = PRECISIONS[start:]
    bf16 = cpu_has_bf16() if bf16_ok is None else bf16_ok
    usable = [c for c in candidates if c.format in PRECISION_OF and (imgsz is None or c.imgsz == imgsz)]
    usable.sort(key=lambda c: (PRECISIONS.index(c.precision), SPEED_ORDER.index(c.format)))
    choice = Choice(None, asked=precision)
    for c in usable:
        if c.precision not in allowed:
            continue
        why = verdict(c, max_quant_drop, bf16)
        if why is None:
            choice.candidate = c
            return choice
        choice.refused.append(why)
    return choice
