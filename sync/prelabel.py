"""Prelabel a whole pool into Label Studio or CVAT, and pull what people did back out.

The CLI (``labelloop prelabel`` / ``labelloop pull``) is a thin layer over these functions, which
take a ``bar`` factory for progress so they stay testable and quiet when driven from code.
Everything they write is journaled (see :mod:`labelloop.connectors.journal`): rerun the same command after a
crash or an outage and it continues where it stopped, writing nothing twice.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from labelloop.errors import ConfigError
from labelloop.settings import Settings
from labelloop.types import ImageItem

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
Bar = Callable[[str, int], AbstractContextManager[Callable[[int], None]]]


@contextlib.contextmanager
def no_bar(description: str, total: int) -> Iterator[Callable[[int], None]]:
    yield lambda n: None


@dataclass
class Summary:
    """What a command did, printed as a table and returned as JSON."""

    target: str
    where: dict[str, Any]
    counts: dict[str, int | float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps({"target": self.target, **self.where, **self.counts, "notes": self.notes})


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


def _journal_path(settings: Settings, journal: Path | None, name: str) -> Path:
    return journal or settings.cache_dir / "journals" / f"{name}.json"


def _check_labels(
    names: Sequence[str], resolve: Callable[[str], str | None], where: str, skip: bool
) -> list[str]:
    """Model classes with no label in the target; an error unless the user chose to drop them."""
    missing = [n for n in names if resolve(n) is None]
    if missing and not skip:
        raise ConfigError(
            f"model classes {missing} have no label in {where}: add them there, map them with "
            'LABELLOOP_LABEL_MAP=\'{"class": "label"}\', or pass --skip-unmapped to leave them out. '
            "Nothing was written"
        )
    return missing


# ---------------------------------------------------------------------- Label Studio


def prelabel_labelstudio(
    settings: Settings,
    weights: Path,
    *,
    project: int | None = None,
    title: str | None = None,
    images: Sequence[Path] = (),
    urls: Sequence[str] = (),
    local_dir: Path | None = None,
    journal: Path | None = None,
    chunk: int = 200,
    uncertainty_field: str | None = "uncertainty",
    skip_unmapped: bool = False,
    bar: Bar = no_bar,
) -> Summary:
    """Import images (optional), predict every task lacking this model's prediction, push in bulk,
    write the image uncertainty into ``data[uncertainty_field]``, and keep the project's
    model_version and "Most uncertain first" view in step."""
    from labelloop.backend.inference.images import LabelStudioAccess
    from labelloop.backend.serving.predict_service import PredictionService
    from labelloop.connectors.formats.labelstudio import generate_label_config, label_resolver
    from labelloop.connectors.journal import PushJournal
    from labelloop.connectors.labelstudio.connector import LabelStudioConnector

    if not settings.labelstudio.url:
        raise ConfigError("no Label Studio URL: set LABELLOOP_LABEL_STUDIO_URL or pass --url")
    t0 = time.monotonic()
    conn = LabelStudioConnector(settings.labelstudio.url, settings.labelstudio.token)
    service = PredictionService(settings, weights)
    predictor = service.predictor
    version = predictor.model_version
    names = [predictor.names[k] for k in sorted(predictor.names)]
    summary = Summary("labelstudio", {"url": conn.url})
    if project is None:
        labels = [settings.predict.label_map.get(n, n) for n in names]
        config = generate_label_config(
            predictor.task, list(dict.fromkeys(labels)), keypoint_labels=predictor.kpt_names
        )
        project = conn.create_project(title or f"labelloop {version}", config)
        summary.notes.append(f"created project {project} with labels {labels}")
    info = conn.project(project)
    label_config = info.get("label_config") or ""
    plan = service.plan(label_config)
    missing = _check_labels(
        names,
        label_resolver(plan.main, settings.predict.label_map),
        f"Label Studio project {project}",
        skip_unmapped,
    )
    if missing:
        summary.notes.append(f"classes left out (no label): {missing}")
    summary.where.update(project=project, model_version=version)

    new: list[int] = []
    if images:
        files = list_images(images)
        with bar("upload", len(files)) as advance:
            for lo in range(0, len(files), 50):
                new += conn.upload_images(project, files[lo : lo + 50])
                advance(len(files[lo : lo + 50]))
    if urls:
        new += conn.import_tasks(project, [{plan.image_key: u} for u in urls])
    if local_dir is not None:
        before = sum(1 for _ in conn.tasks(project, include="id"))
        conn.add_local_storage(project, local_dir)
        summary.notes.append(f"local files storage on {local_dir} synced")
        summary.counts["imported"] = sum(1 for _ in conn.tasks(project, include="id")) - before
    summary.counts.setdefault("imported", len(new))

    state = PushJournal.load(
        _journal_path(settings, journal, f"ls-{project}-{version}"),
        # created_at: a reinstalled Label Studio reuses project ids
        {"server": conn.url, "project": project, "created": info.get("created_at"), "model_version": version},
    )
    done0 = set(state.done)
    listed = conn.tasks(project, include="id,data,predictions_model_versions")
    tasks = [t for t in listed if int(t["id"]) not in done0]
    todo = [t for t in tasks if version not in (t.get("predictions_model_versions") or "").split(",")]
    access = LabelStudioAccess(conn.url, settings.labelstudio.token)
    written = failed = unmapped = 0
    scores: dict[int, dict[str, Any]] = {}
    with bar("prelabel", len(todo)) as advance:
        for lo in range(0, len(todo), chunk):
            part = todo[lo : lo + chunk]
            report = service.predict_tasks(part, label_config, access)
            preds = []
            for task, pred in zip(part, report.results, strict=True):
                if pred is None:
                    continue
                preds.append(
                    {k: pred[k] for k in ("result", "score", "model_version")} | {"task": task["id"]}
                )
                scores[int(task["id"])] = {uncertainty_field: pred["score"]} if uncertainty_field else {}
            written += conn.push_pool(project, preds, journal=state).written
            failed += sum(report.failed.values())
            unmapped += report.unmapped
            advance(len(part))
    if uncertainty_field and scores:
        with bar("uncertainty field", len(scores)) as advance:
            patched = conn.set_task_data(
                [t for t in todo if int(t["id"]) in scores], scores, progress=advance
            )
        summary.counts["uncertainty_written"] = patched
    if written or done0 or len(tasks) > len(todo):  # Label Studio refuses a version it has no prediction of
        conn.set_model_version(project, version)
    view = conn.create_uncertainty_view(project)
    summary.where["view"] = view
    summary.counts.update(
        tasks=len(tasks) + len(done0),
        predicted=len(todo) - failed,
        written=written,
        already_had_prediction=len(tasks) - len(todo) + len(done0),
        image_failures=failed,
        regions_without_label=unmapped,
        seconds=round(time.monotonic() - t0, 1),
    )
    if failed:
        summary.notes.append(
            f"{failed} task(s) had no usable image; they got an empty prediction with score 0"
        )
    return summary


def pull_labelstudio(
    settings: Settings, project: int, out: Path, cursor_path: Path | None = None, bar: Bar = no_bar
) -> Summary:
    """Annotations changed since the cursor file's time, as canonical JSON lines, then the cursor."""
    from labelloop.connectors.formats.canonical_json import item_to_dict
    from labelloop.connectors.labelstudio.connector import LabelStudioConnector, PullCursor

    if not settings.labelstudio.url:
        raise ConfigError("no Label Studio URL: set LABELLOOP_LABEL_STUDIO_URL or pass --url")
    conn = LabelStudioConnector(settings.labelstudio.url, settings.labelstudio.token)
    cursor = _read_cursor(cursor_path, PullCursor.from_json) or PullCursor()
    with bar("pull", 1) as advance:
        res = conn.pull(project, cursor)
        advance(1)
    _write_jsonl(out, (item_to_dict(it) for it in res.items))
    if cursor_path:
        _write_atomic(cursor_path, res.cursor.to_json())
    meta = [it.metadata for it in res.items]
    summary = Summary("labelstudio", {"url": conn.url, "project": project, "out": str(out)})
    summary.counts.update(
        tasks_changed=len(res.tasks),
        annotations=len(res.items),
        cancelled=sum(m["was_cancelled"] for m in meta),
        ground_truth=sum(m["ground_truth"] for m in meta),
        from_prediction=sum(m["parent_prediction"] is not None for m in meta),
        regions=sum(len(it.regions) for it in res.items),
        annotators=len({r.provenance.annotator for it in res.items for r in it.regions}),
    )
    summary.where.update(since=cursor.since, next_since=res.cursor.since, edition=res.edition)
    if not res.reviews_available:
        summary.notes.append(f"reviews: not available on Label Studio {res.edition} (an Enterprise feature)")
    return summary


# ---------------------------------------------------------------------- CVAT


def prelabel_cvat(
    settings: Settings,
    weights: Path,
    images: Sequence[Path],
    *,
    task: int | None = None,
    name: str | None = None,
    project: int | None = None,
    segment_size: int | None = None,
    journal: Path | None = None,
    skip_unmapped: bool = False,
    bar: Bar = no_bar,
) -> Summary:
    """Predict local images, create a CVAT task ordered least-confident first (unless ``task`` is
    given), and push the prelabels as ``source="auto"`` shapes with their score, resumably."""
    from labelloop.backend.inference.images import ImageFetcher
    from labelloop.backend.inference.predictor import Predictor
    from labelloop.connectors.cvat.connector import CvatConnector

    t0 = time.monotonic()
    files = list_images(images)
    roots = sorted({f.resolve().parent for f in files})
    predictor = Predictor(weights, settings.with_(**{"local_roots": [*settings.fetch.local_roots, *roots]}))
    fetcher = ImageFetcher(predictor.settings)
    version = predictor.model_version
    names = [predictor.names[k] for k in sorted(predictor.names)]
    items = []
    failed: list[str] = []
    with bar("predict", len(files)) as advance:
        outcomes = predictor.predict_fetched(fetcher.load_many(str(f.resolve()) for f in files))
        for f, outcome in zip(files, outcomes, strict=True):
            if outcome.item is None:
                failed.append(f"{f}: {outcome.error}")
            else:
                item = outcome.item
                regions = [
                    r.with_(label=settings.predict.label_map.get(r.label, r.label)) for r in item.regions
                ]
                items.append((f, replace(item, uri=f.name, regions=regions)))
            advance(1)
    summary = Summary("cvat", {"model_version": version})
    with CvatConnector.from_settings(settings) as conn:
        summary.where["url"] = conn.url
        if task is None:
            scores = {f.name: it.score for f, it in items}
            usable = [f for f, _ in items]
            if not usable:
                raise ConfigError("no image could be predicted: " + "; ".join(failed[:5]))
            labels = list(dict.fromkeys(settings.predict.label_map.get(n, n) for n in names))
            created = conn.create_task(
                name or f"labelloop {version}",
                usable,
                labels,
                scores=scores,
                segment_size=segment_size,
                project_id=project,
            )
            task = created.task_id
            summary.notes.append(
                f"created task {task} with {len(created.job_ids)} job(s), least confident first"
            )
        have = conn.task_labels(task)
        missing = _check_labels(
            names,
            lambda n: (
                settings.predict.label_map.get(n, n) if settings.predict.label_map.get(n, n) in have else None
            ),
            f"CVAT task {task}",
            skip_unmapped,
        )
        if missing:
            items = [
                (f, _drop_labels(it, {settings.predict.label_map.get(m, m) for m in missing}))
                for f, it in items
            ]
        state = _journal_path(settings, journal, f"cvat-{task}-{version}")
        with bar("push", len(items)) as advance:
            report = conn.push_prelabels(task, [it for _, it in items], state_path=state)
            advance(len(items))
        jobs = conn.job_uncertainty(task, [it for _, it in items])
    summary.where.update(task=task, journal=str(state))
    summary.counts.update(
        images=len(files),
        predicted=len(items),
        image_failures=len(failed),
        pushed_frames=report.pushed_frames,
        skipped_frames=report.skipped_frames,
        shapes=report.shapes,
        requests=report.requests,
        seconds=round(time.monotonic() - t0, 1),
    )
    summary.notes += [f"image failed: {m}" for m in failed[:20]]
    summary.notes += [
        f"job {j.job_id} frames {j.start_frame}-{j.stop_frame}: min confidence "
        f"{'-' if j.min_confidence is None else f'{j.min_confidence:.2f}'}"
        for j in jobs
    ]
    return summary


def pull_cvat(
    settings: Settings, task: int, out: Path, cursor_path: Path | None = None, bar: Bar = no_bar
) -> Summary:
    """Job annotations changed since the cursor, as canonical JSON lines, plus a QA file beside them."""
    from dataclasses import asdict

    from labelloop.connectors.cvat.connector import CvatConnector, PullCursor
    from labelloop.connectors.formats.canonical_json import item_to_dict

    cursor = _read_cursor(cursor_path, PullCursor.from_json) or PullCursor()
    with CvatConnector.from_settings(settings) as conn, bar("pull", 1) as advance:
        res = conn.pull(task, cursor)
        advance(1)
        url = conn.url
    rows = [item_to_dict(it) for it in res.items]
    rows += [
        item_to_dict(it) | {"metadata": {**it.metadata, "ground_truth": True}} for it in res.ground_truth
    ]
    _write_jsonl(out, rows)
    qa = out.with_name(out.name + ".qa.json")
    _write_atomic(
        qa,
        json.dumps({"jobs": [asdict(j) for j in res.jobs], "quality_reports": res.quality_reports}, indent=1),
    )
    if cursor_path:
        _write_atomic(cursor_path, res.cursor.to_json())
    summary = Summary("cvat", {"url": url, "task": task, "out": str(out), "qa": str(qa)})
    summary.counts.update(
        jobs_changed=len(res.jobs),
        frames=len(res.items),
        ground_truth_frames=len(res.ground_truth),
        regions=sum(len(it.regions) for it in res.items),
        machine_regions=sum(r.provenance.source != "human" for it in res.items for r in it.regions),
        issues=sum(len(j.issues) for j in res.jobs),
        quality_reports=len(res.quality_reports),
    )
    summary.where.update(since=cursor.since, next_since=res.cursor.since)
    return summary


# ---------------------------------------------------------------------- small helpers


def _drop_labels(item: ImageItem, labels: set[str]) -> ImageItem:
    return replace(item, regions=[r for r in item.regions if r.label not in labels])


def _read_cursor(path: Path | None, parse: Callable[[str], Any]) -> Any:
    if path is None or not path.exists():
        return None
    try:
        return parse(path.read_text())
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(f"cursor file {path} is unreadable ({e}); delete it to pull everything") from e


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _write_jsonl(path: Path, rows: Any) -> None:
    _write_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))
