"""Prelabel a pool into a labeling platform, and pull what people did back out.

One path for both platforms, through :class:`~labelloop.connectors.platform.LabelingPlatform`:
local images are predicted, imported (each once, by content), matched to the items the platform
holds, and their prelabels pushed in journaled chunks; items the platform holds without this
model's prelabel and that it can serve (Label Studio tasks from URLs, storages, earlier imports)
are fetched from it, predicted and pushed the same way. Then the priority (the image score) goes
where people sort work, and the platform's model_version follows.

The CLI (``labelloop prelabel`` / ``labelloop pull``) is a thin layer over these functions, which
take a ``bar`` factory for progress so they stay testable and quiet when driven from code.
Everything they write is journaled (see :mod:`labelloop.connectors.journal`): rerun the same
command after a crash or an outage and it continues where it stopped, writing nothing twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from labelloop.backend.inference.images import ImageFetcher, LabelStudioFiles
from labelloop.backend.inference.predictor import Outcome, Predictor
from labelloop.connectors.formats.canonical_json import item_to_dict
from labelloop.connectors.platform import Cursor, LabelingPlatform, PushReport, Target
from labelloop.errors import ConfigError
from labelloop.fsutil import atomic_write, sha256_file
from labelloop.settings import Settings
from labelloop.types import ImageItem

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
Bar = Callable[[str, int], AbstractContextManager[Callable[[int], None]]]
UNCERTAINTY_VIEW = "Most uncertain first"
_NONE = ImageItem("", 0, 0)  # an item the platform does not list


@contextlib.contextmanager
def no_bar(description: str, total: int) -> Iterator[Callable[..., None]]:
    yield lambda n, total=None: None


@dataclass
class Summary:
    """What a command did, printed as a table and returned as JSON."""

    target: str
    where: dict[str, Any]
    counts: dict[str, int | float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps({"target": self.target, **self.where, **self.counts, "notes": self.notes})


def open_platform(
    target: str, settings: Settings, *, segment_size: int | None = None, cvat_project: int | None = None
) -> LabelingPlatform:
    """The platform ``target`` names, from settings. ``segment_size`` and ``cvat_project`` (the CVAT
    project a new task joins) apply to CVAT tasks this run creates."""
    # each platform's client is imported only when asked for: cvat-sdk alone costs ~2 s to import
    if target == "labelstudio":
        from labelloop.connectors.labelstudio import LabelStudioPlatform

        return LabelStudioPlatform.from_settings(settings)
    if target == "cvat":
        from labelloop.connectors.cvat import CvatPlatform

        return CvatPlatform.from_settings(settings, segment_size=segment_size, project_id=cvat_project)
    raise ConfigError(f"--target must be labelstudio or cvat, not {target!r}")


def list_images(paths: Sequence[Path]) -> list[Path]:
    """Image files named directly or found (recursively) under the given folders, sorted."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
        elif p.is_file():
            out.append(p)
        else:
            raise ConfigError(f"{p} is neither an image file nor a folder")
    if not out:
        raise ConfigError(
            f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found in {', '.join(map(str, paths))}"
        )
    return out


def default_journal(settings: Settings, target: Target, model_version: str) -> Path:
    """One journal per server, container and model version: a second server with the same
    project or task id gets its own file."""
    server = hashlib.sha256(target.url.rstrip("/").encode()).hexdigest()[:12]
    return (
        settings.cache_dir
        / "journals"
        / f"{target.platform}-{server}-{target.container}-{model_version}.json"
    )


def _check_labels(resolved: Mapping[str, str | None], where: str, skip: bool) -> list[str]:
    """Model classes with no label in the target; an error unless the user chose to drop them."""
    missing = [n for n, label in resolved.items() if label is None]
    if missing and not skip:
        raise ConfigError(
            f"model classes {missing} have no label in {where}: add them there, map them with "
            'LABELLOOP_LABEL_MAP=\'{"class": "label"}\', or pass --skip-unmapped to leave them out. '
            "Nothing was written"
        )
    return missing


@dataclass
class _Run:
    """What one prelabel run has done so far."""

    push: PushReport
    predicted: int = 0
    failures: list[str] = field(default_factory=list)
    empty: int = 0  # images that could not be predicted, pushed as an empty prelabel with score 0
    unmapped: int = 0
    scores: dict[str, float | None] = field(default_factory=dict)


def prelabel(
    settings: Settings,
    weights: Path,
    target: str,
    *,
    container: int | None = None,
    title: str | None = None,
    images: Sequence[Path] = (),
    urls: Sequence[str] = (),
    local_dir: Path | None = None,
    journal: Path | None = None,
    chunk: int = 200,
    priority_field: str | None = "uncertainty",
    skip_unmapped: bool = False,
    segment_size: int | None = None,
    cvat_project: int | None = None,
    bar: Bar = no_bar,
) -> Summary:
    """Predict a pool, import it into ``container`` (made when None) and push every prelabel once;
    write the image score where people sort work and keep the platform's model_version in step."""
    t0 = time.monotonic()
    files = list_images(images) if images else []
    shas = {f: _sha(f) for f in files}
    roots = sorted({f.resolve().parent for f in files})
    s = settings.with_(local_roots=[*settings.fetch.local_roots, *roots]) if roots else settings
    predictor = Predictor(weights, s)
    fetcher = ImageFetcher(s)
    version = predictor.model_version
    names = [predictor.names[k] for k in sorted(predictor.names)]
    platform = open_platform(target, settings, segment_size=segment_size, cvat_project=cvat_project)
    try:
        for option, value in (("--urls", urls), ("--local-dir", local_dir)):
            if value and not hasattr(platform, "import_uris"):
                raise ConfigError(f"{option} imports into Label Studio; {platform.name} takes --images only")
        summary = Summary(platform.name, {"url": platform.url})
        resolved = None
        if container is not None:  # check before anything is written
            resolved = platform.resolve_labels(container, names, predictor.task)
            where = f"{platform.name} {platform.container_kind} {container}"
            _check_labels(resolved, where, skip_unmapped)

        run = _Run(PushReport(0, 0, 0, 0, 0, 0))
        local: dict[str, ImageItem] = {}  # sha256 -> prelabel (or failure) of a local image
        if container is None and platform.orders_new_containers:  # its order needs the scores first
            with bar("predict", len(files)) as advance:
                for f, it in zip(
                    files, _predict(predictor, fetcher, [str(f) for f in files], None, run), strict=True
                ):
                    local[shas[f]] = it
                    advance(1)
        order = {sha: it.score for sha, it in local.items() if not it.metadata.get("failed")}
        with bar("upload", len(files)) as advance:
            imp = platform.import_images(
                container,
                files,
                title=title or f"labelloop {version}",
                labels=[settings.predict.label_map.get(n, n) for n in names],
                task_kind=predictor.task,
                keypoints=predictor.kpt_names or (),
                order=order or None,
                progress=advance,
            )
        container = imp.container
        run.push = PushReport(container, 0, 0, 0, 0, 0)
        summary.where.update({platform.container_kind: container, "model_version": version})
        summary.notes += imp.notes
        unpredicted = {str(f) for f in files if local.get(shas[f], _NONE).metadata.get("failed")}
        summary.notes += [
            f"not imported: {p}: {why}" for p, why in imp.failed.items() if p not in unpredicted
        ]
        imported = imp.created
        if urls:
            imported += platform.import_uris(container, urls).created
        if local_dir is not None:
            stored = platform.import_storage(container, local_dir)
            imported += stored.created
            summary.notes += stored.notes
        if resolved is None:
            resolved = platform.resolve_labels(container, names, predictor.task)
        where = f"{platform.name} {platform.container_kind} {container}"
        missing = _check_labels(resolved, where, skip_unmapped)
        if missing:
            summary.notes.append(f"classes left out (no label): {missing}")

        journal = journal or default_journal(
            settings, Target(platform.name, platform.url, container), version
        )
        summary.where["journal"] = str(journal)
        listing = platform.images(container, version)
        held = {int(it.metadata["task_id"]): it for it in listing}
        already = sum(1 for it in listing if it.metadata.get("has_prelabel"))
        path_of = {sha: f for f, sha in reversed(list(shas.items()))}  # the first file of each content
        ours = {tid: sha for sha, tid in imp.task_ids.items() if sha in path_of}
        todo = [
            (tid, sha) for tid, sha in ours.items() if not held.get(tid, _NONE).metadata.get("has_prelabel")
        ]
        remote = [
            it for tid, it in held.items() if it.metadata.get("has_prelabel") is False and tid not in ours
        ]
        access = platform.fetch_access
        files_access = LabelStudioFiles(access.url, access.headers) if access else None
        if remote and files_access is None:
            summary.notes.append(f"{len(remote)} item(s) without a local image were left alone")
            remote = []

        with bar("prelabel", len(todo) + len(remote)) as advance:
            for lo in range(0, len(todo), max(1, chunk)):
                part = todo[lo : lo + chunk]
                fresh = [sha for _, sha in part if sha not in local]
                predicted = _predict(predictor, fetcher, [str(path_of[sha]) for sha in fresh], None, run)
                local.update(zip(fresh, predicted, strict=True))
                _push(
                    platform,
                    container,
                    version,
                    journal,
                    [(tid, local[sha]) for tid, sha in part],
                    resolved,
                    run,
                )
                advance(len(part))
            for lo in range(0, len(remote), max(1, chunk)):
                part = remote[lo : lo + chunk]
                predicted = _predict(predictor, fetcher, [it.uri for it in part], files_access, run)
                ids = [int(it.metadata["task_id"]) for it in part]
                _push(
                    platform,
                    container,
                    version,
                    journal,
                    list(zip(ids, predicted, strict=True)),
                    resolved,
                    run,
                )
                advance(len(part))
        report = run.push
        with bar("priority", len(run.scores)) as advance:
            priority = platform.write_priority(
                container,
                run.scores,
                field_name=priority_field or None,
                view=UNCERTAINTY_VIEW,
                by_prelabel_score=True,
                progress=advance,
            )
        if report.written or report.already_there or report.resumed or already:
            # Label Studio refuses a version it has no prediction of
            platform.set_model_version(container, version)
    finally:
        platform.close()
    if priority.view is not None:
        summary.where["view"] = priority.view
    skipped = report.resumed + report.already_there
    summary.counts.update(
        images=len(files),
        imported=imported,
        tasks=len(listing),
        predicted=run.predicted,
        image_failures=len(run.failures),
        written=report.written,
        already_had_prediction=already + skipped,
        pushed_frames=report.written,
        skipped_frames=skipped,
        shapes=report.regions,
        requests=report.requests,
        regions_without_label=run.unmapped,
        seconds=round(time.monotonic() - t0, 1),
    )
    if priority_field and priority.written:
        summary.counts["uncertainty_written"] = priority.written
    if run.empty:
        summary.notes.append(
            f"{run.empty} image(s) could not be predicted; they got an empty prelabel with score 0 "
            "(so they sort first)"
        )
    summary.notes += [f"image failed: {m}" for m in run.failures[:20]]
    summary.notes += priority.notes
    return summary


def _sha(path: Path) -> str:
    try:
        return sha256_file(path)
    except OSError as e:
        raise ConfigError(f"cannot read image {path} ({e}); fix or drop it") from e


def _predict(
    predictor: Predictor,
    fetcher: ImageFetcher,
    uris: Sequence[str],
    access: LabelStudioFiles | None,
    run: _Run,
) -> list[ImageItem]:
    """The prelabel of each image, in order; one that cannot be predicted gets an empty one with
    score 0 (it then sorts first for a person to look at)."""
    local = access is None
    wanted = [str(Path(u).resolve()) if local else u for u in uris]
    out = []
    for uri, outcome in zip(uris, predictor.predict_fetched(fetcher.load_many(wanted, access)), strict=True):
        out.append(_item(outcome, uri, run))
    return out


def _item(outcome: Outcome, uri: str, run: _Run) -> ImageItem:
    if outcome.item is not None:
        run.predicted += 1
        return replace(outcome.item, uri=uri)
    run.failures.append(f"{uri}: {outcome.error}")
    return ImageItem(uri, 0, 0, [], score=0.0, metadata={"failed": True})


def _push(
    platform: LabelingPlatform,
    container: int,
    version: str,
    journal: Path,
    items: Iterable[tuple[int, ImageItem]],
    resolved: Mapping[str, str | None],
    run: _Run,
) -> None:
    ready = []
    for tid, it in items:
        regions = [r.with_(label=resolved[r.label]) for r in it.regions if resolved.get(r.label)]
        run.unmapped += len(it.regions) - len(regions)
        run.empty += bool(it.metadata.get("failed"))
        ready.append(replace(it, regions=regions, metadata={**it.metadata, "task_id": tid}))
        run.scores[str(tid)] = it.score
    if ready:
        run.push = run.push + platform.push_prelabels(container, ready, version, journal=journal)


def pull(
    settings: Settings,
    target: str,
    container: int,
    out: Path,
    cursor_path: Path | None = None,
    bar: Bar = no_bar,
) -> Summary:
    """Annotations changed since the cursor file's cursor, as canonical JSON lines, the QA beside
    them (``OUT.qa.json``: jobs with issues, quality reports), then the new cursor."""
    platform = open_platform(target, settings)
    try:
        cursor = _read_cursor(cursor_path, platform.name)
        with bar("pull", 0) as advance:
            res = platform.pull_changes(container, cursor, progress=advance)
        name, kind, url = platform.name, platform.container_kind, platform.url
    finally:
        platform.close()
    _write_jsonl(out, (item_to_dict(a.item) for a in res.annotations))
    qa = out.with_name(out.name + ".qa.json")
    atomic_write(
        qa,
        json.dumps({"jobs": [asdict(j) for j in res.qa], "quality_reports": res.quality_reports}, indent=1),
    )
    if cursor_path:
        atomic_write(cursor_path, res.cursor.to_json())
    anns = res.annotations
    gt = sum(a.ground_truth for a in anns)
    summary = Summary(name, {"url": url, kind: container, "out": str(out), "qa": str(qa)})
    summary.counts.update(
        tasks_changed=len(res.present),
        annotations=len(anns),
        frames=len(anns) - gt,
        cancelled=sum(a.cancelled for a in anns),
        ground_truth=gt,
        ground_truth_frames=gt,
        from_prediction=sum(a.prelabel_id is not None for a in anns),
        regions=sum(len(a.item.regions) for a in anns),
        machine_regions=sum(r.provenance.source != "human" for a in anns for r in a.item.regions),
        annotators=len({r.provenance.annotator for a in anns for r in a.item.regions}),
        jobs_changed=len(res.qa),
        issues=sum(len(j.issues) for j in res.qa),
        quality_reports=len(res.quality_reports),
    )
    summary.where.update(
        since=(cursor.state.get("since") if cursor else None), next_since=res.cursor.state.get("since")
    )
    summary.notes += res.notes
    return summary


def _read_cursor(path: Path | None, platform: Any) -> Cursor | None:
    if path is None or not path.exists():
        return None
    try:
        return Cursor.from_json(path.read_text(), platform)
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(f"cursor file {path} is unreadable ({e}); delete it to pull everything") from e


def _write_jsonl(path: Path, rows: Iterable[Any]) -> None:
    atomic_write(path, "".join(json.dumps(r) + "\n" for r in rows))
