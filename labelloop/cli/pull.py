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
from labelloop.sync.prelabel import pull_cvat, pull_labelstudio


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
    if target == "labelstudio":
        if project is None:
            raise LabelloopError("--target labelstudio needs --project")
        summary = pull_labelstudio(settings, project, out, cursor, bar=progress_bar)
    else:
        if task is None:
            raise LabelloopError("--target cvat needs --task")
        summary = pull_cvat(settings, task, out, cursor, bar=progress_bar)
    print_summary(summary, json_out)
