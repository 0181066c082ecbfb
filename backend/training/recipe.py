"""The seed's two-stage fine-tune, as data: what each stage passes to Ultralytics' trainer.

Stage 1 ("head") trains with the backbone frozen (``freeze=10``: yolov8's first ten modules) at
``lr0=0.001``, so the new head settles without wrecking pretrained features; stage 2 ("full")
starts from stage 1's ``last.pt`` with everything unfrozen at ``lr0=0.0003``. Both use SGD
(momentum 0.9, weight decay 5e-4, the seed's choice for detection), a warmup, then cosine decay to
``lr0 * lrf``. Mosaic is turned off for the last ~15% of all epochs (the seed's "minimal augment at
the end"), which fall in stage 2.

The split of epochs follows the seed's 25/75: stage 1 gets ``round(epochs / 4)`` (at least 1),
stage 2 the rest (at least 1); a single epoch is one unfrozen stage. Epochs, imgsz, batch and seed
come from ``settings.train`` (CPU-sized defaults: 10 epochs at 320 px, batch 8).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from labelloop.settings import TrainSettings

STAGE1_SHARE = 0.25
CLOSE_MOSAIC_SHARE = 0.15
FREEZE_BACKBONE = 10

# shared by both stages; keys are Ultralytics train arguments
COMMON: dict[str, Any] = {
    "optimizer": "SGD",  # explicit: "auto" would pick its own lr0 and ignore ours
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "cos_lr": True,
    "lrf": 0.01,
    "warmup_momentum": 0.8,
    "warmup_bias_lr": 0.01,  # not Ultralytics' 0.1: a fine-tune's head is already trained
    "deterministic": True,
    "plots": False,
    "val": True,
    "patience": 0,  # no early stop: the gate judges the result, not the trainer
}


@dataclass(frozen=True)
class Stage:
    name: str
    epochs: int
    lr0: float
    freeze: int | None
    warmup_epochs: float
    close_mosaic: int  # final epochs of this stage without mosaic (0: mosaic throughout)


@dataclass(frozen=True)
class Recipe:
    stages: tuple[Stage, ...]
    imgsz: int
    batch: int
    seed: int
    common: dict[str, Any] = field(default_factory=lambda: dict(COMMON))

    @property
    def epochs(self) -> int:
        return sum(s.epochs for s in self.stages)

    def train_args(self, stage: Stage) -> dict[str, Any]:
        """The arguments this stage gives ``YOLO.train`` (data, device and paths are the trainer's)."""
        return {
            **self.common,
            "epochs": stage.epochs,
            "imgsz": self.imgsz,
            "batch": self.batch,
            "seed": self.seed,
            "lr0": stage.lr0,
            "freeze": stage.freeze,
            "warmup_epochs": stage.warmup_epochs,
            "close_mosaic": stage.close_mosaic,
        }

    def params(self) -> dict[str, Any]:
        """Flat hyperparameters for the experiment record (``stage1.lr0``, ``imgsz``, ...)."""
        out: dict[str, Any] = {
            "epochs": self.epochs,
            "imgsz": self.imgsz,
            "batch": self.batch,
            "seed": self.seed,
        }
        out.update(self.common)
        for i, s in enumerate(self.stages, 1):
            out.update({f"stage{i}.{k}": v for k, v in asdict(s).items()})
        return out


def split_epochs(epochs: int) -> tuple[int, int]:
    """(frozen, unfrozen) epochs: the seed's 25/75, each stage at least one when there are two."""
    if epochs < 2:
        return 0, max(epochs, 1)
    head = min(max(1, round(epochs * STAGE1_SHARE)), epochs - 1)
    return head, epochs - head


def make_recipe(train: TrainSettings, *, epochs: int | None = None, imgsz: int | None = None) -> Recipe:
    """The recipe for ``train`` (settings), with ``epochs`` / ``imgsz`` overriding them."""
    total = epochs or train.epochs
    head, full = split_epochs(total)
    no_mosaic = min(full, math.ceil(total * CLOSE_MOSAIC_SHARE))
    stages = []
    if head:
        stages.append(Stage("head", head, 0.001, FREEZE_BACKBONE, _warmup(head), 0))
    stages.append(Stage("full", full, 0.0003, None, _warmup(full), no_mosaic))
    return Recipe(tuple(stages), imgsz or train.imgsz, train.batch, train.seed)


def _warmup(epochs: int) -> float:
    """A tenth of the stage, at most 3 epochs (Ultralytics warms up for 100 iterations at least)."""
    return round(min(3.0, epochs * 0.1), 3)
