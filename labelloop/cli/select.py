"""``labelloop select``: the K unlabeled items most worth a person's time, ranked where they work."""

from __future__ import annotations

from typing import Annotated

import typer

from labelloop.backend.active.strategies import STRATEGIES
from labelloop.backend.inference.weights import resolve_weights
from labelloop.cli.common import (
    JsonOpt,
    ModelOpt,
    Target,
    TokenOpt,
    UrlOpt,
    app,
    platform_overrides,
    print_summary,
    progress_bar,
    setup_logging,
)
from labelloop.errors import LabelloopError
from labelloop.settings import load_settings


@app.command()
def select(
    k: Annotated[int, typer.Option("--k", "-k", min=1, help="how many items to choose")],
    target: Target = "labelstudio",
    project: Annotated[int | None, typer.Option(help="Label Studio project")] = None,
    task: Annotated[int | None, typer.Option(help="CVAT task")] = None,
    strategy: Annotated[
        str | None, typer.Option(help=f"one of {', '.join(STRATEGIES)} (default: settings.select.strategy)")
    ] = None,
    seed: Annotated[int, typer.Option(help="seed of the random strategy")] = 0,
    url: UrlOpt = None,
    token: TokenOpt = None,
    model: ModelOpt = None,
    json_out: JsonOpt = None,
) -> None:
    """Score the unlabeled pool and write the ranking back: Label Studio gets the selection_rank
    field and the views "Next to label" and "Review: most edited"; CVAT a job ranking."""
    from labelloop.backend.active.selection import select as run_select

    setup_logging()
    container = project if target == "labelstudio" else task
    if container is None:
        raise LabelloopError("name the container: --project N (Label Studio) or --task N (CVAT)")
    settings = load_settings(model=model, **platform_overrides(target, url, token))
    summary = run_select(
        settings,
        resolve_weights(settings),
        target,
        container,
        k,
        strategy=strategy,
        seed=seed,
        bar=progress_bar,
    )
    print_summary(summary, json_out)
