"""What changed in a CVAT task since a cursor: one :class:`PulledAnnotation` per frame of each
changed job (its shapes and tags on that frame), the jobs' QA, and new quality reports.

CVAT stamps ``updated_date`` (and a comment's ``created_date``) when a write starts, so a slow
write can commit after a pull read newer ones, dated below that pull's cursor. Each pull therefore
reaches ``PULL_OVERLAP`` back and skips what it already read in the state it still has
(``seen``): nothing is lost and nothing unchanged comes back. The cursor also remembers who had
each job while it was in the annotation stage, because CVAT keeps only the current assignee:
once a job moves to validation the assignee is the reviewer.

A frame holds one annotation per job that covers it: its annotation job, and a ground-truth job
when the frame is one of that job's ``included_frames`` (never the rest of its range).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from labelloop.connectors.cvat import qa
from labelloop.connectors.cvat.client import CvatClient, username, value
from labelloop.connectors.cvat.tasks import Frame, TaskLabels, frames, job, job_frames, jobs, task_labels
from labelloop.connectors.formats import cvat as fmt
from labelloop.connectors.platform import Cursor, PulledAnnotation, PullProgress, PullResult
from labelloop.types import ImageItem, Region

# how far back each pull lists again, for writes that commit after a newer one was listed
PULL_OVERLAP = timedelta(seconds=5)


@dataclass
class PullCursor:
    """The CVAT state inside a :class:`~labelloop.connectors.platform.Cursor`."""

    since: str | None = None
    annotators: dict[int, str] = field(default_factory=dict)
    # what was read within PULL_OVERLAP of ``since``: "job:ID" / "issue:ID" / "report:ID" -> state
    seen: dict[str, str] = field(default_factory=dict)

    def to_cursor(self) -> Cursor:
        annotators = {str(k): v for k, v in self.annotators.items()}
        return Cursor("cvat", {"since": self.since, "annotators": annotators, "seen": self.seen})

    @classmethod
    def from_cursor(cls, cursor: Cursor | None) -> PullCursor:
        d = cursor.state if cursor else {}
        annotators = {int(k): v for k, v in (d.get("annotators") or {}).items()}
        # cursors written before issues and reports were remembered keyed jobs by bare id
        seen = {(f"job:{k}" if k.isdigit() else k): v for k, v in (d.get("seen") or {}).items()}
        return cls(d.get("since"), annotators, seen)

    def is_news(self, key: str, stamp: str, state: str | None = None) -> bool:
        """Dated within ``PULL_OVERLAP`` of the cursor or later, and not read in this state."""
        floor = shift(self.since, -PULL_OVERLAP)
        return (floor is None or stamp >= floor) and self.seen.get(key) != (state or stamp)


def pull_changes(
    client: CvatClient,
    task_id: int,
    cursor: Cursor | None = None,
    *,
    reconcile: bool = True,
    progress: PullProgress | None = None,
) -> PullResult:
    """Annotations and QA metadata of the jobs updated since the cursor (all when None).

    CVAT's lists leave out what the user may not see, so a user without permission to view the
    task would read an empty task: the task is read first, and a refusal is an error."""
    client.call(f"read task {task_id}", lambda: client.api.tasks_api.retrieve(task_id))
    cur = PullCursor.from_cursor(cursor)
    annotators = dict(cur.annotators)
    listed = jobs(client, task_id, since=shift(cur.since, -PULL_OVERLAP))
    changed = [j for j in listed if cur.is_news(f"job:{j.id}", iso(j.updated_date))]
    issues = qa.issues(client, task_id)
    active = [i for i in issues if cur.is_news(f"issue:{i.id}", i.last_activity, i.state)]
    # a job whose only news is an issue or a reply comes back with its QA, without annotations
    qa_only = sorted({i.job_id for i in active} - {j.id for j in changed})
    task_frames = frames(client, task_id) if changed or reconcile else []
    labels = task_labels(client, task_id) if changed else None
    covered = _frames_by_job(client, task_id) if changed else {}
    annotations: list[PulledAnnotation] = []
    out_jobs: list[qa.JobQA] = []
    step = progress or (lambda n, total=None: None)
    step(0, len(changed) + len(qa_only))
    for j in [*changed, *(job(client, jid) for jid in qa_only)]:
        step(1)
        out_jobs.append(qa.job_qa(task_id, j, issues, iso(j.updated_date)))
        if j.id in qa_only or labels is None:
            continue
        stage, assignee = value(j.stage), username(j.assignee)
        if stage == "annotation" and assignee:
            annotators[j.id] = assignee
        annotations += _job_annotations(
            client, task_id, j, covered[j.id], task_frames, labels, annotators.get(j.id)
        )
    present: dict[str, list[str]] = {}
    for a in annotations:
        f = int(a.task_id.removeprefix("frame:"))
        present[a.task_id] = [f"job:{jid}:frame:{f}" for jid, fs in sorted(covered.items()) if f in fs]
    all_reports = qa.quality_reports(client, task_id)
    reports = [r for r in all_reports if cur.is_news(f"report:{r['id']}", r["created_date"])]
    # everything read, with the date it is news by and the state it was read in
    read = [
        *((f"job:{j.id}", iso(j.updated_date), iso(j.updated_date)) for j in listed),
        *((f"issue:{i.id}", i.last_activity, i.state) for i in issues),
        *((f"report:{r['id']}", r["created_date"], r["created_date"]) for r in all_reports),
    ]
    news = [stamp for key, stamp, state in read if cur.is_news(key, stamp, state)]
    newest = max(filter(None, [cur.since, *news]), default=None)
    floor = shift(newest, -PULL_OVERLAP)
    seen = {key: state for key, stamp, state in read if floor is None or stamp >= floor}
    return PullResult(
        annotations=annotations,
        present=present,
        cursor=PullCursor(newest, annotators, seen).to_cursor(),
        all_tasks=[f"frame:{fr.number}" for fr in task_frames] if reconcile else None,
        qa=out_jobs,
        quality_reports=reports,
    )


def _frames_by_job(client: CvatClient, task_id: int) -> dict[int, set[int]]:
    """Every job of the task -> the frames it annotates."""
    return {j.id: set(job_frames(client, j)) for j in jobs(client, task_id)}


def _job_annotations(
    client: CvatClient,
    task_id: int,
    j: Any,
    job_frame_set: set[int],
    task_frames: list[Frame],
    labels: TaskLabels,
    annotator: str | None,
) -> list[PulledAnnotation]:
    data, _ = client.call(
        f"read annotations of job {j.id}", lambda: client.api.jobs_api.retrieve_annotations(j.id)
    )
    stage, assignee = value(j.stage), username(j.assignee)
    reviewer = assignee if stage in qa.REVIEW_STAGES else None
    updated = iso(j.updated_date)
    is_gt = value(j.type) == "ground_truth"
    by_frame: dict[int, list[Region]] = {f: [] for f in sorted(job_frame_set)}
    unusable: dict[int, str] = {}  # frame -> why one of its objects cannot be read
    for kind in ("shapes", "tags"):
        for obj in getattr(data, kind):
            d = obj.to_dict()
            f = int(d["frame"])
            meta = task_frames[f] if f < len(task_frames) else None
            try:
                regions = fmt.cvat_to_regions(
                    [d] if kind == "shapes" else [],
                    [d] if kind == "tags" else [],
                    labels.names,
                    width=meta.width if meta else None,
                    height=meta.height if meta else None,
                    attribute_names=labels.attribute_names,
                )
            except Exception as e:
                unusable.setdefault(
                    f,
                    f"{kind[:-1]} {d.get('id')} on frame {f} of job {j.id} cannot be read "
                    f"({type(e).__name__}: {e}); fix it in CVAT",
                )
                continue
            by_frame.setdefault(f, []).extend(
                r.with_(
                    provenance=replace(
                        r.provenance, annotator=annotator, reviewer=reviewer, updated_at=updated
                    )
                )
                for r in regions
            )
    out = []
    for f, regions in sorted(by_frame.items()):
        meta = task_frames[f] if f < len(task_frames) else None
        metadata: dict[str, Any] = {"cvat_task_id": task_id, "cvat_job_id": j.id, "cvat_frame": f}
        if is_gt:
            metadata["ground_truth"] = True
        item = ImageItem(
            uri=meta.name if meta else str(f),
            width=meta.width if meta else 0,
            height=meta.height if meta else 0,
            regions=regions,
            metadata=metadata,
        )
        out.append(
            PulledAnnotation(
                platform="cvat",
                container=task_id,
                task_id=f"frame:{f}",
                annotation_id=f"job:{j.id}:frame:{f}",
                item=item,
                updated_at=updated,
                created_at=iso(j.created_date) if getattr(j, "created_date", None) else None,
                annotator=annotator,
                reviewer=reviewer,
                ground_truth=is_gt,
                job_id=j.id,
                stage=stage,
                state=value(j.state),
                extra={"job_type": value(j.type)},
                error=unusable.get(f),
            )
        )
    return out


def shift(stamp: str | None, delta: timedelta) -> str | None:
    """A CVAT timestamp moved by ``delta``, in the same format (so string order is time order)."""
    if stamp is None:
        return None
    return iso(
        datetime.fromisoformat(stamp.replace("Z", "+00:00")).astimezone(UTC).replace(tzinfo=None) + delta
    )


def iso(d: Any) -> str:
    """CVAT's own timestamp format (what its filters compare against)."""
    if isinstance(d, str):
        return d
    return (
        d.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        if d.tzinfo is None or d.utcoffset().total_seconds() == 0
        else d.isoformat()
    )
