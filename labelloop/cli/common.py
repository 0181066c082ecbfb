"""What every command shares: the Typer app, option types, logging, the progress bar and the
summary table. Command modules register on ``app``; nothing here knows any command."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from labelloop.errors import LabelloopError

app = typer.Typer(
    help="Close the loop between a YOLO model and the people who label for it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)

ModelOpt = Annotated[Path | None, typer.Option("--model", "-m", help="YOLO weights; default: the demo model")]
Target = Annotated[str, typer.Option("--target", "-t", help="labelstudio or cvat")]
UrlOpt = Annotated[str | None, typer.Option(help="platform URL (LABELLOOP_LABEL_STUDIO_URL / CVAT_URL)")]
TokenOpt = Annotated[
    str | None, typer.Option(help="platform token (LABELLOOP_LABEL_STUDIO_TOKEN / CVAT_ACCESS_TOKEN)")
]
JsonOpt = Annotated[Path | None, typer.Option("--json", help="also write the summary as JSON")]


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not verbose:  # their INFO lines (migration plugins, HTTP requests, MLflow's tables) drown ours
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow is imported
        for name in ("alembic", "httpx", "urllib3", "mlflow"):
            logging.getLogger(name).setLevel(logging.WARNING)


def platform_overrides(target: str, url: str | None, token: str | None) -> dict[str, Any]:
    """Settings overrides for the chosen platform's URL and token."""
    if target not in ("labelstudio", "cvat"):
        raise LabelloopError(f"--target must be labelstudio or cvat, not {target!r}")
    section = "cvat" if target == "cvat" else "labelstudio"
    key = "access_token" if target == "cvat" else "token"
    given = {k: v for k, v in (("url", url), (key, token)) if v}
    return {section: given} if given else {}


@contextlib.contextmanager
def progress_bar(description: str, total: int) -> Iterator[Callable[[int], None]]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(description, total=total)
        # a pull learns its total from its first page: advance(0, total=N) sets it
        yield lambda n, total=None: progress.update(task, advance=n, **({"total": total} if total else {}))


def print_summary(summary: Any, json_out: Path | None) -> None:
    """A summary table on the terminal; ``json_out`` also gets it as JSON for scripts."""
    from rich.table import Table

    table = Table(title=f"{summary.target}", show_header=False)
    for k, v in {**summary.where, **summary.counts}.items():
        table.add_row(k, str(v))
    Console().print(table)
    for note in summary.notes:
        Console().print(f"- {note}")
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(summary.to_json())


def emit_json(data: Any) -> None:
    """``--json`` output of a command: one JSON document on stdout, nothing else there."""
    typer.echo(json.dumps(data, indent=2, default=str))
