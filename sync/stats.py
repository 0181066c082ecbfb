"""Agreement between annotators and effort against the prelabel, now or as of a version.

**Agreement.** Where one task has two or more live, not cancelled, human annotations (ground truth
included), each pair's agreement is the matched-region F1: regions matched one-to-one at IoU >= 0.5
with the same class (:func:`labelloop.geometry.match_regions`), ``F1 = 2 * matched / (n_a + n_b)``
(two empty annotations agree: 1.0). A task's agreement is the mean over its pairs; an annotator's is
the mean over the pairs they are in; a version's is the mean over its tasks. Tasks under
``settings.sync.agreement_threshold`` are the ones :func:`disagreements` returns (the sync writes
them back to the platform, e.g. a Label Studio view "Annotators disagree").

**Effort against the prelabel**, per annotation that started from a prelabel, final regions
against the prelabel's: first match with the same class at IoU >= ``MATCH_IOU`` (0.5); a match at
IoU >= ``KEEP_IOU`` (0.9) is *kept*, below it *moved*. Then the leftovers are matched regardless of
class at IoU >= 0.5: *relabelled*. Prelabel regions left are *deleted*, final regions left are
*added*. ``from_prelabel = kept + moved + relabelled``; ``share_from_prelabel = from_prelabel /
final regions`` (how much of the final label the model supplied) and ``kept_share = kept / final``.
Rolled up per model_version by summing the counts, so the shares weigh every region alike.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from itertools import combinations
from typing import Any

from sqlalchemy.orm import Session

from labelloop.geometry import match_regions
from labelloop.sync.store.engine import Store
from labelloop.sync.store.live import LiveRevision, live_revisions, prelabels, regions
from labelloop.sync.versions import VersionInfo, get_version
from labelloop.types import Region, Source

MATCH_IOU = 0.5
KEEP_IOU = 0.9


# ------------------------------------------------------------------------------ agreement


def pair_f1(a: Sequence[Region], b: Sequence[Region], iou_min: float = MATCH_IOU) -> float:
    if not a and not b:
        return 1.0
    matched = len(match_regions(a, b, iou_min=iou_min, same_label=True))
    return 2.0 * matched / (len(a) + len(b))


@dataclass
class TaskAgreement:
    source_key: str
    task_id: str
    item_sha: str
    f1: float
    annotations: list[str]
    annotators: list[str | None]
    pairs: list[tuple[str, str, float]]  # (annotation a, annotation b, F1)


@dataclass
class AgreementReport:
    threshold: float
    mean: float | None  # over tasks with >= 2 annotations; None when there are none
    tasks: list[TaskAgreement]
    per_annotator: dict[str, dict[str, float]]  # annotator -> {"mean": F1, "pairs": n}
    flagged: list[TaskAgreement] = field(default_factory=list)

    def to_dict(self, with_tasks: bool = False) -> dict[str, Any]:
        d: dict[str, Any] = {
            "threshold": self.threshold,
            "mean": self.mean,
            "tasks": len(self.tasks),
            "flagged": len(self.flagged),
            "per_annotator": self.per_annotator,
            "flagged_tasks": [
                {"source": t.source_key, "task_id": t.task_id, "item": t.item_sha, "f1": round(t.f1, 4)}
                for t in self.flagged
            ],
        }
        if with_tasks:
            d["by_task"] = [asdict(t) for t in self.tasks]
        return d


def _is_people(r: LiveRevision) -> bool:
    return not r.cancelled and r.label_source == str(Source.HUMAN) and r.review_state != "rejected"


def agreement_of(
    live: Iterable[LiveRevision], regs: dict[int, list[Region]], threshold: float, iou_min: float = MATCH_IOU
) -> AgreementReport:
    by_task: dict[tuple[str, str], list[LiveRevision]] = defaultdict(list)
    for r in live:
        if _is_people(r):
            by_task[(r.source_key, r.task_id)].append(r)
    tasks: list[TaskAgreement] = []
    per: dict[str, list[float]] = defaultdict(list)
    for (src, task), revs in sorted(by_task.items()):
        if len(revs) < 2:
            continue
        pairs = []
        for a, b in combinations(revs, 2):
            f1 = pair_f1(regs.get(a.id, []), regs.get(b.id, []), iou_min)
            pairs.append((a.annotation_id, b.annotation_id, f1))
            for who in {a.annotator or "unknown", b.annotator or "unknown"}:
                per[who].append(f1)
        mean = sum(p[2] for p in pairs) / len(pairs)
        tasks.append(
            TaskAgreement(
                src,
                task,
                revs[0].item_sha,
                mean,
                [r.annotation_id for r in revs],
                [r.annotator for r in revs],
                pairs,
            )
        )
    overall = sum(t.f1 for t in tasks) / len(tasks) if tasks else None
    per_annotator = {
        who: {"mean": round(sum(v) / len(v), 4), "pairs": len(v)} for who, v in sorted(per.items())
    }
    flagged = [t for t in tasks if t.f1 < threshold]
    return AgreementReport(threshold, overall, tasks, per_annotator, flagged)


def _live_at(s: Session, version: VersionInfo | str | None) -> list[LiveRevision]:
    if version is None:
        return live_revisions(s)
    v = get_version(s, version) if isinstance(version, str) else version
    return live_revisions(s, max_revision_id=v.max_revision_id, max_tombstone_id=v.max_tombstone_id)


def _threshold(threshold: float | None) -> float:
    if threshold is not None:
        return threshold
    from labelloop.settings import load_settings

    return load_settings().sync.agreement_threshold


def agreement(
    store_or_session: Store | Session,
    *,
    version: VersionInfo | str | None = None,
    threshold: float | None = None,
) -> AgreementReport:
    """Agreement now (``version`` None) or as of a version; ``threshold`` defaults to
    ``settings.sync.agreement_threshold``."""
    if isinstance(store_or_session, Store):
        with store_or_session.session() as s:
            return agreement(s, version=version, threshold=threshold)
    s = store_or_session
    live = _live_at(s, version)
    multi: dict[tuple[str, str], int] = defaultdict(int)
    for r in live:
        if _is_people(r):
            multi[(r.source_key, r.task_id)] += 1
    ids = [r.id for r in live if _is_people(r) and multi[(r.source_key, r.task_id)] >= 2]
    return agreement_of(live, regions(s, ids), _threshold(threshold))


def disagreements(
    store_or_session: Store | Session,
    *,
    threshold: float | None = None,
    version: VersionInfo | str | None = None,
) -> list[TaskAgreement]:
    """Tasks whose annotators agree less than ``threshold`` (default from settings)."""
    return agreement(store_or_session, version=version, threshold=threshold).flagged


# ------------------------------------------------------------------------------ effort


@dataclass
class Effort:
    kept: int = 0
    moved: int = 0
    relabelled: int = 0
    deleted: int = 0
    added: int = 0
    final: int = 0  # regions in the final annotation
    prelabel: int = 0  # regions in the prelabel
    annotations: int = 1

    @property
    def from_prelabel(self) -> int:
        return self.kept + self.moved + self.relabelled

    @property
    def share_from_prelabel(self) -> float | None:
        return self.from_prelabel / self.final if self.final else None

    @property
    def kept_share(self) -> float | None:
        return self.kept / self.final if self.final else None

    def __add__(self, other: Effort) -> Effort:
        return Effort(
            *(
                getattr(self, f) + getattr(other, f)
                for f in (
                    "kept",
                    "moved",
                    "relabelled",
                    "deleted",
                    "added",
                    "final",
                    "prelabel",
                    "annotations",
                )
            )
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(
            from_prelabel=self.from_prelabel,
            share_from_prelabel=None
            if self.share_from_prelabel is None
            else round(self.share_from_prelabel, 4),
            kept_share=None if self.kept_share is None else round(self.kept_share, 4),
        )
        return d


def effort(
    prelabel: Sequence[Region],
    final: Sequence[Region],
    *,
    keep_iou: float = KEEP_IOU,
    match_iou: float = MATCH_IOU,
) -> Effort:
    """What the annotator did to the prelabel (see the module doc)."""
    e = Effort(final=len(final), prelabel=len(prelabel))
    same = match_regions(final, prelabel, iou_min=match_iou, same_label=True)
    for _, _, iou in same:
        if iou >= keep_iou:
            e.kept += 1
        else:
            e.moved += 1
    rest_f = [i for i in range(len(final)) if i not in {p[0] for p in same}]
    rest_p = [j for j in range(len(prelabel)) if j not in {p[1] for p in same}]
    other = match_regions(
        [final[i] for i in rest_f], [prelabel[j] for j in rest_p], iou_min=match_iou, same_label=False
    )
    e.relabelled = len(other)
    e.added = len(rest_f) - len(other)
    e.deleted = len(rest_p) - len(other)
    return e


@dataclass
class AnnotationEffort:
    source_key: str
    task_id: str
    annotation_id: str
    revision_id: int
    annotator: str | None
    model_version: str | None
    effort: Effort


def effort_per_annotation(
    store_or_session: Store | Session, *, version: VersionInfo | str | None = None
) -> list[AnnotationEffort]:
    """Every live, not cancelled, human annotation that started from a prelabel."""
    if isinstance(store_or_session, Store):
        with store_or_session.session() as s:
            return effort_per_annotation(s, version=version)
    s = store_or_session
    live = [r for r in _live_at(s, version) if r.has_prelabel and _is_people(r)]
    pre = prelabels(s, [r.id for r in live])
    fin = regions(s, [r.id for r in live])
    return [
        AnnotationEffort(
            r.source_key,
            r.task_id,
            r.annotation_id,
            r.id,
            r.annotator,
            r.prelabel_model_version,
            effort(pre.get(r.id, []), fin.get(r.id, [])),
        )
        for r in live
    ]


def effort_by_model(rows: Iterable[AnnotationEffort]) -> dict[str, Effort]:
    """Efforts summed per prelabel model_version ("unknown" when the platform did not say)."""
    out: dict[str, Effort] = {}
    for row in rows:
        key = row.model_version or "unknown"
        out[key] = out[key] + row.effort if key in out else row.effort
    return dict(sorted(out.items()))


# ------------------------------------------------------------------------------ a version's stats


def version_stats(
    store_or_session: Store | Session, ref: str, *, threshold: float | None = None
) -> dict[str, Any]:
    """What ``labelloop dataset stats V`` shows: counts per class and split, agreement, effort per
    model_version, all as of version ``ref``."""
    if isinstance(store_or_session, Store):
        with store_or_session.session() as s:
            return version_stats(s, ref, threshold=threshold)
    s = store_or_session
    v = get_version(s, ref)
    agree = agreement(s, version=v, threshold=threshold)
    eff = effort_by_model(effort_per_annotation(s, version=v))
    return {
        "version": v.id,
        "number": v.number,
        "counts": v.counts,
        "agreement": agree.to_dict(),
        "effort": {k: e.to_dict() for k, e in eff.items()},
    }
