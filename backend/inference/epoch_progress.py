"""A terminal progress bar over training epochs, with the time left, fed by Ultralytics' callbacks
(it hooks the trainer; it never runs its own loop). Rich renders it live on a terminal and once,
at the end, anywhere else (a log file, CI)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class EpochProgress:
    """``attach(model)`` before ``model.train(...)``: one step per finished epoch (training and
    validation), the last validation mAP50 beside the bar."""

    def __init__(self, description: str, console: Console | None = None) -> None:
        self.description = description
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("epoch"),
            MofNCompleteColumn(),
            TextColumn("{task.fields[note]}"),
            TimeElapsedColumn(),
            TextColumn("left"),
            TimeRemainingColumn(),
            console=console or Console(stderr=True),
            transient=False,
        )
        self._task: Any = None

    def attach(self, model: Any) -> EpochProgress:
        model.add_callback("on_train_start", self._on_start)
        model.add_callback("on_fit_epoch_end", self._on_epoch)
        model.add_callback("on_train_end", self._on_end)
        return self

    def _on_start(self, trainer: Any) -> None:
        self.progress.start()
        self._task = self.progress.add_task(self.description, total=int(trainer.epochs), note="")

    def _on_epoch(self, trainer: Any) -> None:
        if self._task is None:
            return
        metrics = getattr(trainer, "metrics", None) or {}
        map50 = metrics.get("metrics/mAP50(B)")
        note = f"mAP50 {map50:.2f}" if isinstance(map50, int | float) else ""
        self.progress.update(self._task, completed=int(trainer.epoch) + 1, note=note)

    def _on_end(self, trainer: Any) -> None:
        self.progress.stop()
