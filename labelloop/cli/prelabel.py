"""``labelloop prelabel``: a pool of images -> predictions -> Label Studio or CVAT."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

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
from labelloop.sync.prelabel import prelabel as run_prelabel


@app.command()
def prelabel(
    target: Target,
    images: Annotated[
        list[Path] | None, typer.Option("--images", "-i", help="image files or folders (repeatable)")
    ] = None,
    project: Annotated[
        int | None,
        typer.Option(help="Label Studio project (default: create one); CVAT project of a new task"),
    ] = None,
    task: Annotated[int | None, typer.Option(help="CVAT task to prelabel (default: create one)")] = None,
    title: Annotated[
        str | None, typer.Option(help="title of a new project (Label Studio) or task (CVAT)")
    ] = None,
    urls: Annotated[
        Path | None, typer.Option(help="Label Studio: file of image URLs / s3:// gs:// URIs, one per line")
    ] = None,
    local_dir: Annotated[
        Path | None, typer.Option(help="Label Studio: a folder under its LOCAL_FILES_DOCUMENT_ROOT to import")
    ] = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
    journal: Annotated[Path | None, typer.Option(help="resume journal (default: in the cache dir)")] = None,
    chunk: Annotated[int, typer.Option(min=1, help="tasks predicted and pushed per step")] = 200,
    segment_size: Annotated[int | None, typer.Option(help="CVAT: frames per job of a new task")] = None,
    uncertainty_field: Annotated[
        str, typer.Option(help="Label Studio task data field for the image score ('' = none)")
    ] = "uncertainty",
    skip_unmapped: Annotated[
        bool, typer.Option(help="leave out classes the target has no label for instead of stopping")
    ] = False,
    model: ModelOpt = None,
    json_out: JsonOpt = None,
) -> None:
    """Prelabel a pool of images in Label Studio or CVAT, with scores, in bulk and resumably."""
    setup_logging()
    settings = load_settings(model=model, **platform_overrides(target, url, token))
    if target == "cvat" and not images:
        raise LabelloopError("--target cvat needs --images: the files to predict (and upload for a new task)")
    url_list = [u.strip() for u in urls.read_text().splitlines() if u.strip()] if urls else []
    # --project is the Label Studio project; for CVAT, --task is the container and --project the
    # CVAT project a new task joins
    summary = run_prelabel(
        settings,
        resolve_weights(settings),
        target,
        container=project if target == "labelstudio" else task,
        title=title,
        images=images or [],
        urls=url_list,
        local_dir=local_dir,
        journal=journal,
        chunk=chunk,
        priority_field=uncertainty_field or None,
        skip_unmapped=skip_unmapped,
        segment_size=segment_size,
        cvat_project=project if target == "cvat" else None,
        bar=progress_bar,
    )
    print_summary(summary, json_out)
