"""``labelloop dataset``: versions of the dataset store: log, show, diff, export, check, snapshot, stats.

Every command takes ``--json`` (one JSON document on stdout, for scripts). A version is given by
its id, a unique id prefix, ``head`` or ``head~N``. The store is the one in the settings
(``LABELLOOP_STORE_URL``, ``LABELLOOP_BLOB_ROOT``) unless ``--store`` / ``--blobs`` say otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from labelloop.cli.common import app, emit_json
from labelloop.errors import ConfigError

dataset_app = typer.Typer(
    help="Dataset versions: log, show, diff, export, check, snapshot, stats.", no_args_is_help=True
)
app.add_typer(dataset_app, name="dataset")

JsonFlag = Annotated[bool, typer.Option("--json", help="print one JSON document on stdout")]
VersionArg = Annotated[str, typer.Argument(help="version id, id prefix, head or head~N")]
LabelsOpt = Annotated[
    str | None, typer.Option("--labels", help="comma-separated label set (default: the parent version's)")
]
out = Console()


@dataset_app.callback()
def _options(
    ctx: typer.Context,
    store: Annotated[
        str | None, typer.Option("--store", help="store URL (default: LABELLOOP_STORE_URL)")
    ] = None,
    blobs: Annotated[
        str | None, typer.Option("--blobs", help="blob root (default: LABELLOOP_BLOB_ROOT)")
    ] = None,
) -> None:
    ctx.obj = {"store": store, "blobs": blobs}


def _open(ctx: typer.Context):  # type: ignore[no-untyped-def]
    from labelloop.settings import load_settings
    from labelloop.sync.store import Store

    opts = ctx.obj or {}
    settings = load_settings(
        store={k: v for k, v in (("url", opts.get("store")), ("blob_root", opts.get("blobs"))) if v}
    )
    return Store.open(settings=settings)


def _labels(labels: str | None) -> list[str] | None:
    if labels is None:
        return None
    names = [x.strip() for x in labels.split(",") if x.strip()]
    if not names:
        raise ConfigError("--labels is empty; give names separated by commas")
    return names


def _when(v: Any) -> str:
    return v.created_at.strftime("%Y-%m-%d %H:%M:%S")


@dataset_app.command("log")
def log_cmd(
    ctx: typer.Context,
    limit: Annotated[int | None, typer.Option("--limit", "-n", help="show only the newest N")] = None,
    json_: JsonFlag = False,
) -> None:
    """Versions, newest first."""
    from labelloop.sync.versions import list_versions

    with _open(ctx) as store, store.session() as s:
        versions = list_versions(s, limit)
    if json_:
        emit_json([v.to_dict() for v in versions])
        return
    if not versions:
        out.print("no versions yet: `labelloop dataset snapshot -m MESSAGE` makes one")
        return
    table = Table("#", "version", "parent", "created (UTC)", "items", "train", "val", "message")
    for v in versions:
        sp = v.counts.get("splits", {})
        table.add_row(
            str(v.number),
            v.short,
            (v.parent_id or "")[:12],
            _when(v),
            str(v.counts.get("items", 0)),
            str(sp.get("train", 0)),
            str(sp.get("val", 0)),
            v.message,
        )
    out.print(table)


@dataset_app.command("show")
def show_cmd(
    ctx: typer.Context,
    version: VersionArg,
    items: Annotated[
        bool, typer.Option("--items", help="list every item with its revision and split")
    ] = False,
    json_: JsonFlag = False,
) -> None:
    """One version: parent, message, counts per split and class."""
    from labelloop.sync.versions import entries, get_version

    with _open(ctx) as store, store.session() as s:
        v = get_version(s, version)
        ents = entries(s, v.id) if items else []
    if json_:
        d = v.to_dict()
        if items:
            d["items"] = [
                {
                    "item": e.item_sha,
                    "revision": e.revision_id,
                    "split": e.split,
                    "verified": e.verified,
                    "label_source": e.label_source,
                    "reason": e.reason,
                }
                for e in ents
            ]
        emit_json(d)
        return
    out.print(f"version {v.id}  (#{v.number})")
    out.print(f"parent  {v.parent_id or '-'}")
    out.print(f"created {_when(v)} UTC   message: {v.message}")
    out.print(f"params  {v.params}")
    c = v.counts
    out.print(f"items {c.get('items', 0)}  splits {c.get('splits', {})}  verified {c.get('verified', 0)}")
    out.print(f"label sources {c.get('label_sources', {})}  chosen by {c.get('reasons', {})}")
    _class_table(c)
    for e in ents:
        out.print(f"{e.item_sha}  rev {e.revision_id}  {e.split:<8} {e.reason:<12} {e.label_source}")


def _class_table(counts: dict[str, Any]) -> None:
    classes = counts.get("classes", {})
    names = sorted({n for per in classes.values() for n in per})
    if not names:
        return
    table = Table("class", "train", "val", "excluded", title="regions per class and split")
    for n in names:
        table.add_row(n, *(str(classes.get(k, {}).get(n, 0)) for k in ("train", "val", "excluded")))
    out.print(table)


@dataset_app.command("diff")
def diff_cmd(ctx: typer.Context, a: VersionArg, b: VersionArg, json_: JsonFlag = False) -> None:
    """Items added, removed, relabelled and moved between splits from version A to B."""
    from labelloop.sync.versions import diff_versions

    with _open(ctx) as store, store.session() as s:
        d = diff_versions(s, a, b)
    if json_:
        emit_json(d.to_dict())
        return
    out.print(f"{d.a[:12]} -> {d.b[:12]}")
    for name in ("added", "removed", "relabelled", "moved"):
        shas = getattr(d, name)
        out.print(f"{name:<10} {len(shas)}" + (f"  {', '.join(x[:12] for x in shas[:8])}" if shas else ""))


@dataset_app.command("export")
def export_cmd(
    ctx: typer.Context,
    version: VersionArg,
    output: Annotated[Path, typer.Option("--output", "-o", help="directory to write (absent or empty)")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="yolo or coco")] = "yolo",
    task: Annotated[
        str | None,
        typer.Option(
            "--task", help="YOLO task: detect, segment, pose, obb, classify (default: from the regions)"
        ),
    ] = None,
    labels: LabelsOpt = None,
    force: Annotated[
        bool, typer.Option("--force", help="replace an earlier export in that directory")
    ] = False,
    json_: JsonFlag = False,
) -> None:
    """Write a version as an Ultralytics dataset (images, labels, data.yaml) or COCO JSON."""
    from labelloop.sync.export import export_version

    with _open(ctx) as store:
        rep = export_version(store, version, output, fmt, task=task, labels=_labels(labels), overwrite=force)
    if json_:
        emit_json(rep.to_dict())
        return
    out.print(
        f"exported {rep.version[:12]} as {rep.format}{f' ({rep.task})' if rep.task else ''} to {rep.out}: "
        f"images {rep.images}, regions {rep.labels}, classes {len(rep.names)}"
    )
    if rep.missing_images:
        out.print(f"- {len(rep.missing_images)} items without image bytes (JSON only)")
    for f in rep.checks.get("findings", []):
        out.print(f"- {f['severity']} {f['check']}: {f['message']}")


@dataset_app.command("check")
def check_cmd(
    ctx: typer.Context,
    version: VersionArg,
    labels: LabelsOpt = None,
    no_images: Annotated[bool, typer.Option("--no-images", help="do not decode image files")] = False,
    json_: JsonFlag = False,
) -> None:
    """Dataset checks; exit status 1 when a check fails with an error (export is blocked)."""
    from labelloop.sync.checks import check_version

    with _open(ctx) as store:
        rep = check_version(store, version, labels=_labels(labels), verify_images=not no_images)
    if json_:
        emit_json(rep.to_dict())
    else:
        out.print(
            f"version {rep.version_id[:12]}: {rep.checked_items} items, {rep.checked_blobs} images decoded; "
            f"{len(rep.errors)} errors, {len(rep.warnings)} warnings"
        )
        for f in rep.findings:
            out.print(f"- {f.line()}")
    if not rep.ok:
        raise typer.Exit(1)


@dataset_app.command("snapshot")
def snapshot_cmd(
    ctx: typer.Context,
    message: Annotated[str, typer.Option("--message", "-m", help="what this version is")],
    val_fraction: Annotated[
        float | None,
        typer.Option("--val-fraction", help="share of groups in val (default: the parent's, else 0.2)"),
    ] = None,
    seed: Annotated[str | None, typer.Option("--seed", help="split seed (default: the parent's)")] = None,
    require_review: Annotated[
        bool | None,
        typer.Option(
            "--require-review/--no-require-review", help="val only from ground truth or accepted reviews"
        ),
    ] = None,
    json_: JsonFlag = False,
) -> None:
    """Make a version of what the store holds now (the latest one when nothing changed)."""
    from labelloop.sync.versions import snapshot

    with _open(ctx) as store:
        res = snapshot(store, message, val_fraction=val_fraction, seed=seed, require_review=require_review)
    v = res.version
    if json_:
        emit_json({"created": res.created, **v.to_dict()})
        return
    if res.created:
        sp = v.counts.get("splits", {})
        out.print(
            f"version {v.id} (#{v.number}): {v.counts.get('items', 0)} items, "
            f"train {sp.get('train', 0)}, val {sp.get('val', 0)}"
        )
    else:
        out.print(f"nothing changed since version {v.id} (#{v.number})")


@dataset_app.command("stats")
def stats_cmd(
    ctx: typer.Context,
    version: VersionArg,
    threshold: Annotated[
        float | None, typer.Option("--threshold", help="agreement under this is flagged (default: settings)")
    ] = None,
    json_: JsonFlag = False,
) -> None:
    """Counts per class and split, annotator agreement, effort against the prelabel per model_version."""
    from labelloop.sync.stats import version_stats

    with _open(ctx) as store:
        st = version_stats(store, version, threshold=threshold)
    if json_:
        emit_json(st)
        return
    c = st["counts"]
    out.print(
        f"version {st['version'][:12]} (#{st['number']}): "
        f"items {c.get('items', 0)}, splits {c.get('splits', {})}"
    )
    _class_table(c)
    ag = st["agreement"]
    mean = "n/a" if ag["mean"] is None else f"{ag['mean']:.3f}"
    out.print(f"agreement: mean F1 {mean} over {ag['tasks']} tasks; {ag['flagged']} under {ag['threshold']}")
    if ag["per_annotator"]:
        table = Table("annotator", "mean F1", "pairs", title="agreement per annotator")
        for who, d in ag["per_annotator"].items():
            table.add_row(who, f"{d['mean']:.3f}", str(d["pairs"]))
        out.print(table)
    if st["effort"]:
        table = Table(
            "model_version",
            "annotations",
            "kept",
            "moved",
            "relabelled",
            "deleted",
            "added",
            "from prelabel",
            title="effort against the prelabel",
        )
        for mv, e in st["effort"].items():
            share = "n/a" if e["share_from_prelabel"] is None else f"{e['share_from_prelabel']:.0%}"
            table.add_row(
                mv,
                str(e["annotations"]),
                *(str(e[k]) for k in ("kept", "moved", "relabelled", "deleted", "added")),
                share,
            )
        out.print(table)
