"""``labelloop demo`` and ``labelloop model demo``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from labelloop.backend.inference.weights import resolve_weights
from labelloop.cli.common import app, setup_logging
from labelloop.settings import load_settings

model_app = typer.Typer(help="Models: build the demo detector.", no_args_is_help=True)
app.add_typer(model_app, name="model")


@model_app.command("demo")
def model_demo() -> None:
    """Build (once) the small demo detector trained on generated shapes; print its path."""
    setup_logging()
    typer.echo(resolve_weights(load_settings()))


@app.command()
def demo(
    port: Annotated[int, typer.Option(help="Label Studio port")] = 8080,
    backend_port: Annotated[int, typer.Option(help="ML backend port")] = 9090,
    images: Annotated[int, typer.Option(help="sample images to create")] = 36,
    corrected: Annotated[
        int | None, typer.Option(help="tasks the simulated annotator corrects before the retrain")
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait/--no-wait", help="keep Label Studio and the backend up until Ctrl-C")
    ] = True,
    json_out: Annotated[Path | None, typer.Option("--json", help="also write the report as JSON")] = None,
) -> None:
    """The whole loop: prelabel, correct, sync, retrain, gate, promote, hot-reload, re-prelabel."""
    setup_logging()
    from labelloop.demo import run_demo

    run_demo(
        load_settings(),
        port=port,
        backend_port=backend_port,
        n_images=images,
        keep_running=wait,
        corrected=corrected,
        json_out=json_out,
    )
