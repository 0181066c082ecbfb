"""``labelloop train``: one retrain in the foreground, the same code the rq job runs (train -> gate
-> register -> promote or not), with a bar over the epochs; prints the MLflow run, the model version
and the gate's decision with its reason (``--json``: one JSON document on stdout)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from labelloop.cli.common import app, console, emit_json

out = Console()


@app.command("train")
def train_cmd(
    version: Annotated[str, typer.Option("--version", help="dataset version: id, prefix, head, head~N")],
    base_weights: Annotated[
        Path | None,
        typer.Option("--base-weights", help="fine-tune from these (default: the line's champion)"),
    ] = None,
    epochs: Annotated[
        int | None, typer.Option("--epochs", min=1, help="default: LABELLOOP_TRAIN_EPOCHS")
    ] = None,
    imgsz: Annotated[
        int | None, typer.Option("--imgsz", min=32, help="default: LABELLOOP_TRAIN_IMGSZ")
    ] = None,
    line: Annotated[
        str | None, typer.Option("--line", help="model line (default: LABELLOOP_TRAIN_MODEL_LINE)")
    ] = None,
    json_: Annotated[bool, typer.Option("--json", help="print one JSON document on stdout")] = False,
) -> None:
    """Fine-tune on a dataset version, judge it against the champion, register it, promote if better."""
    from labelloop.backend.training.retrain import run_training
    from labelloop.settings import load_settings

    settings = load_settings()
    with _EpochBar() as bar:
        outcome = run_training(
            settings, version, line=line, base_weights=base_weights, epochs=epochs, imgsz=imgsz, progress=bar
        )
    if json_:
        emit_json(outcome.to_dict())
        return
    out.print(f"MLflow run    {outcome.run_id} (experiment {outcome.line})")
    out.print(f"model version {outcome.model_version} (registered model {outcome.line}, v{outcome.version})")
    out.print(f"gate          {outcome.reason}")
    if outcome.promoted:
        out.print(f"champion      {outcome.model_version} (the backend serves it from now on)")


class _EpochBar:
    """A bar over the epochs, fed by the training's progress reports (stage and mAP50 beside it)."""

    def __enter__(self) -> _EpochBar:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("{task.fields[stage]:<8}"),
            BarColumn(),
            TextColumn("epoch"),
            MofNCompleteColumn(),
            TextColumn("{task.fields[note]}"),
            TimeRemainingColumn(),
            console=console,
        )
        self.task: Any = None
        return self

    def __call__(self, p: Any) -> None:
        if self.task is None:  # started on the first report: an early error prints alone
            self.progress.start()
            self.task = self.progress.add_task("train", total=p.epochs, stage=p.stage, note="")
        map50 = p.metrics.get("val/mAP50")
        note = f"mAP50 {map50:.3f}" if map50 is not None else ""
        self.progress.update(self.task, completed=p.epoch, stage=p.stage, **({"note": note} if note else {}))

    def __exit__(self, *exc: object) -> None:
        if self.task is not None:
            self.progress.stop()
