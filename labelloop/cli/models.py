"""``labelloop models``: the versions of a model line in the MLflow registry, and its ``champion``
alias (what the backend serves): list, show, promote by hand, roll back. Each takes ``--json``."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from labelloop.cli.common import app, emit_json

models_app = typer.Typer(
    help="Model versions in the registry: list, show, promote, rollback.", no_args_is_help=True
)
app.add_typer(models_app, name="models")

JsonFlag = Annotated[bool, typer.Option("--json", help="print one JSON document on stdout")]
LineOpt = Annotated[
    str | None, typer.Option("--line", help="model line (default: LABELLOOP_TRAIN_MODEL_LINE)")
]
VersionArg = Annotated[str, typer.Argument(help="model version number (as `models list` shows it)")]
out = Console()


def _settings():  # type: ignore[no-untyped-def]
    from labelloop.settings import load_settings

    return load_settings()


@models_app.command("list")
def list_cmd(line: LineOpt = None, json_: JsonFlag = False) -> None:
    """Versions of the line, newest first; the champion marked."""
    from labelloop.backend.registry import lines

    settings = _settings()
    name = lines.line_of(settings, line)
    refs = lines.list_versions(settings, name)
    if json_:
        emit_json([r.to_dict() for r in refs])
        return
    if not refs:
        out.print(f"model line {name!r} has no versions yet: `labelloop train --version head` makes one")
        return
    table = Table("", "version", "model_version", "dataset version", "mAP50-95", "gate", "created (UTC)")
    for r in refs:
        table.add_row(
            "champion" if r.is_champion else "",
            str(r.version),
            r.model_version,
            (r.dataset_version or "")[:12],
            r.tags.get(lines.TAG_MAP, ""),
            r.tags.get(lines.TAG_GATE, ""),
            r.created_at[:19].replace("T", " "),
        )
    out.print(table)


@models_app.command("show")
def show_cmd(version: VersionArg, line: LineOpt = None, json_: JsonFlag = False) -> None:
    """One version: its run, dataset version, parent, gate decision and tags."""
    from labelloop.backend.registry import lines

    ref = lines.get_version(_settings(), line, version)
    if json_:
        emit_json(ref.to_dict())
        return
    out.print(f"{ref.model_version}{'  (champion)' if ref.is_champion else ''}")
    out.print(f"run       {ref.run_id}")
    out.print(f"dataset   {ref.dataset_version or '-'}")
    out.print(f"parent    {ref.tags.get(lines.TAG_PARENT) or '-'}")
    out.print(f"gate      {ref.tags.get(lines.TAG_REASON) or '-'}")
    out.print(f"weights   {ref.source}")
    for k, v in sorted(ref.tags.items()):
        if k not in (lines.TAG_GATE, lines.TAG_REASON, lines.TAG_PARENT, lines.TAG_DATASET):
            out.print(f"- {k}: {v}")


@models_app.command("promote")
def promote_cmd(version: VersionArg, line: LineOpt = None, json_: JsonFlag = False) -> None:
    """Make VERSION the champion now, whatever the gate said (rollback undoes it)."""
    from labelloop.backend.registry import lines

    ref = lines.promote(_settings(), line, version, reason="promoted by hand (labelloop models promote)")
    if json_:
        emit_json(ref.to_dict())
        return
    out.print(f"{ref.model_version} is now the champion of {ref.line}")


@models_app.command("rollback")
def rollback_cmd(line: LineOpt = None, json_: JsonFlag = False) -> None:
    """Move the champion back to the previous champion."""
    from labelloop.backend.registry import lines

    ref = lines.rollback(_settings(), line)
    if json_:
        emit_json(ref.to_dict())
        return
    out.print(f"rolled back: {ref.model_version} is the champion of {ref.line} again")
