"""``labelloop pull``: what changed on a platform since a cursor, as canonical JSON lines."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from labelloop.cli.common import (
    JsonOpt,
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
from labelloop.sync.prelabel import pull as run_pull


@app.command()
def pull(
    target: Target,
    out: Annotated[Path, typer.Option("--out", "-o", help="JSON lines of changed annotations (canonical)")],
    project: Annotated[int | None, typer.Option(help="Label Studio project")] = None,
    task: Annotated[int | None, typer.Option(help="CVAT task")] = None,
    cursor: Annotated[
        Path | None, typer.Option(help="cursor file: read to pull only what changed, updated after")
    ] = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
    json_out: JsonOpt = None,
) -> None:
    """Dump annotations changed since the cursor, with who, when and QA state, as JSON lines."""
    setup_logging()
    settings = load_settings(**platform_overrides(target, url, token))
    container = project if target == "labelstudio" else task
    if container is None:
        raise LabelloopError(f"--target {target} needs --{'project' if target == 'labelstudio' else 'task'}")
    print_summary(run_pull(settings, target, container, out, cursor, bar=progress_bar), json_out)
