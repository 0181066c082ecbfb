"""The validation gate: challenger and champion measured on the same human-verified val split, and a
pure ``decide`` that says whether the challenger is promoted, and why.

Measuring is Ultralytics' own validator (``model.val`` on the exported ``data.yaml``), one image per
forward so the latency is what serving sees. Rules (``settings.gate``): the challenger's mAP50-95
must reach the champion's + ``min_delta``; no class's AP50-95 may drop by more than
``max_class_drop``; its latency per image must stay within ``max_latency_ms`` when that is set. The
first model of a line (no champion) must reach ``floor_map50_95``.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from labelloop.backend.inference.yolo_env import ensure_yolo_env, without_ultralytics_mlflow
from labelloop.errors import ModelError
from labelloop.settings import GateSettings

EPS = 1e-9  # float noise never decides a tie


@dataclass(frozen=True)
class EvalMetrics:
    map50: float
    map50_95: float
    precision: float
    recall: float
    per_class: dict[str, float]  # AP50-95 of each class present in val
    latency_ms: float  # preprocess + inference + postprocess, per image
    seconds: float = 0.0  # wall time of the whole evaluation

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvalMetrics:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reason: str  # one line: the failed rules, or the rules passed
    challenger: EvalMetrics
    champion: EvalMetrics | None = None
    failed: list[str] = field(default_factory=list)
    passed: list[str] = field(default_factory=list)
    rules: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def model_names(weights: Path) -> list[str]:
    """The class names a checkpoint predicts, in index order."""
    ensure_yolo_env()
    from ultralytics import YOLO

    try:
        names = YOLO(str(weights)).names
    except Exception as e:
        raise ModelError(f"cannot load {weights}: {e}") from e
    return [str(names[i]) for i in sorted(names)]


def evaluate(
    weights: Path, data_yaml: Path, *, imgsz: int, device: str = "cpu", workdir: Path | None = None
) -> EvalMetrics:
    """mAP50, mAP50-95, per-class AP, precision, recall and latency of ``weights`` on the val split
    of ``data_yaml``."""
    ensure_yolo_env()
    from ultralytics import YOLO

    without_ultralytics_mlflow()
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="labelloop-eval-", dir=workdir) as tmp:
        try:
            model = YOLO(str(weights))
        except Exception as e:
            raise ModelError(f"cannot load {weights} for evaluation: {e}") from e
        res = model.val(
            data=str(data_yaml),
            split="val",
            imgsz=imgsz,
            batch=1,
            device=device,
            workers=0,
            plots=False,
            save_json=False,
            verbose=False,
            project=tmp,
            name="val",
            exist_ok=True,
        )
    box = res.box
    names = model.names
    per_class = {str(names[int(c)]): float(ap) for c, ap in zip(box.ap_class_index, box.ap, strict=True)}
    speed = res.speed or {}
    latency = sum(float(speed.get(k, 0.0)) for k in ("preprocess", "inference", "postprocess"))
    return EvalMetrics(
        map50=float(box.map50),
        map50_95=float(box.map),
        precision=float(box.mp),
        recall=float(box.mr),
        per_class=per_class,
        latency_ms=latency,
        seconds=time.monotonic() - t0,
    )


def decide(
    challenger: EvalMetrics,
    champion: EvalMetrics | None,
    rules: GateSettings,
    *,
    no_champion: str = "first model of the line",
) -> GateDecision:
    """Promote or not, with a one-line reason naming each metric that decided it; ``no_champion``
    says in that reason why the floor judges (there is no champion, or it cannot be compared)."""
    failed: list[str] = []
    passed: list[str] = []

    def check(ok: bool, yes: str, no: str) -> None:
        (passed if ok else failed).append(yes if ok else no)

    new = challenger.map50_95
    if not math.isfinite(new):
        failed.append("challenger mAP50-95 is not a number")
    elif champion is None:
        check(
            new + EPS >= rules.floor_map50_95,
            f"{no_champion}: mAP50-95 {new:.4f} >= floor {rules.floor_map50_95:.4f}",
            f"{no_champion}: mAP50-95 {new:.4f} < floor {rules.floor_map50_95:.4f}",
        )
    else:
        need = champion.map50_95 + rules.min_delta
        check(
            new + EPS >= need,
            f"mAP50-95 {new:.4f} >= champion {champion.map50_95:.4f} + min_delta {rules.min_delta:.4f}",
            f"mAP50-95 {new:.4f} < champion {champion.map50_95:.4f} + min_delta {rules.min_delta:.4f}",
        )
        drops = {
            name: old - challenger.per_class.get(name, 0.0)
            for name, old in champion.per_class.items()
            if old - challenger.per_class.get(name, 0.0) > rules.max_class_drop + EPS
        }
        check(
            not drops,
            f"no class AP50-95 dropped more than {rules.max_class_drop:.4f}",
            "class AP50-95 dropped more than "
            f"{rules.max_class_drop:.4f}: "
            + ", ".join(
                f"{n} {champion.per_class[n]:.4f} -> {challenger.per_class.get(n, 0.0):.4f}"
                for n in sorted(drops, key=drops.__getitem__, reverse=True)
            ),
        )
    if rules.max_latency_ms is not None:
        lat = challenger.latency_ms
        check(
            math.isfinite(lat) and lat <= rules.max_latency_ms + EPS,
            f"latency {lat:.1f} ms/image <= budget {rules.max_latency_ms:.1f} ms",
            f"latency {lat:.1f} ms/image > budget {rules.max_latency_ms:.1f} ms",
        )
    promote = not failed
    reason = ("promoted: " + "; ".join(passed)) if promote else ("rejected: " + "; ".join(failed))
    return GateDecision(promote, reason, challenger, champion, failed, passed, rules.model_dump(mode="json"))
