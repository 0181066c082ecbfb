"""``labelloop demo`` and ``labelloop model demo``."""

from __future__ import annotations

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
    images: Annotated[int, typer.Option(help="sample images to create")] = 24,
    keep_running: Annotated[bool, typer.Option(help="keep the servers up until Ctrl-C")] = True,
) -> None:
    """Start Label Studio and the ML backend, create a project of sample images with prelabels."""
    setup_logging()
    from labelloop.demo import run_demo

    run_demo(
        load_settings(), port=port, backend_port=backend_port, n_images=images, keep_running=keep_running
    )
