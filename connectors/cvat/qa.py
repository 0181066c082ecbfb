"""The QA trail of a CVAT task: jobs' stage, state and assignee, issues with their replies, quality
reports, and which jobs are least confident.

How CVAT 2.73 behaves, and what follows from it:

- a job's ``state`` stays "new" after annotation writes; only a person (or this module) moves it;
- ``PATCH /api/jobs/{id} {"stage": ...}`` alone resets the state to "new", while stage and state
  in one request keep the given state: :func:`move_job` always sends both;
- a reply does not change its issue's ``updated_date`` (resolving or assigning does), and no issue
  activity changes the job's ``updated_date``: a pull learns of replies from the comments
  themselves (:attr:`Issue.last_activity`, :attr:`Issue.state`);
- without an organization, a reply needs its author to be the issue's owner or assignee or staff
  of its job or task (else 403 "You do not have permission to perform this action."), and reading
  any of this needs permission to view the task;
- cvat-sdk 2.80's ``QualityReport`` model requires ``summary.jobs.completed``, which a 2.73 server
  does not send: quality reports are read as plain JSON.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from labelloop.connectors.cvat.client import CvatClient, username, value
from labelloop.connectors.cvat.tasks import job, jobs

REVIEW_STAGES = frozenset({"validation", "acceptance"})


@dataclass(frozen=True)
class Comment:
    id: int
    owner: str | None
    message: str
    created_date: str


@dataclass(frozen=True)
class Issue:
    id: int
    job_id: int
    frame: int
    position: list[float]
    resolved: bool
    owner: str | None
    assignee: str | None
    updated_date: str
    comments: list[Comment]

    @property
    def last_activity(self) -> str:
        """A reply leaves the issue's own date alone, so its newest comment counts too."""
        return max([self.updated_date, *(c.created_date for c in self.comments)])

    @property
    def state(self) -> str:
        """What a pull remembers of it: a late reply dated below the newest one changes the count."""
        return f"{self.last_activity}#{len(self.comments)}#{int(self.resolved)}"


@dataclass(frozen=True)
class JobQA:
    id: int
    task_id: int
    type: str  # annotation | ground_truth | consensus_replica
    stage: str  # annotation | validation | acceptance
    state: str  # new | in progress | completed | rejected
    assignee: str | None
    updated_date: str
    start_frame: int
    stop_frame: int
    issues: list[Issue] = field(default_factory=list)


@dataclass(frozen=True)
class JobUncertainty:
    job_id: int
    start_frame: int
    stop_frame: int
    mean_confidence: float | None
    min_confidence: float | None
    stage: str
    assignee: str | None


def job_qa(task_id: int, job: Any, issues: list[Issue], updated_date: str) -> JobQA:
    return JobQA(
        job.id,
        task_id,
        value(job.type),
        value(job.stage),
        value(job.state),
        username(job.assignee),
        updated_date,
        job.start_frame,
        job.stop_frame,
        [i for i in issues if i.job_id == job.id],
    )


def issues(client: CvatClient, task_id: int) -> list[Issue]:
    """Every issue of the task with its comments (one comment listing per job with issues)."""
    raw = client.raw_list("/api/issues", task_id=task_id)
    comments: dict[int, list[Comment]] = {}
    for job_id in sorted({i["job"] for i in raw}):
        for c in client.raw_list("/api/comments", job_id=job_id):
            comments.setdefault(c["issue"], []).append(
                Comment(c["id"], username(c.get("owner")), c["message"], c["created_date"])
            )
    return [
        Issue(
            i["id"],
            i["job"],
            i["frame"],
            list(i.get("position") or []),
            bool(i.get("resolved")),
            username(i.get("owner")),
            username(i.get("assignee")),
            i["updated_date"],
            sorted(comments.get(i["id"], []), key=lambda c: c.id),
        )
        for i in raw
    ]


def quality_reports(client: CvatClient, task_id: int) -> list[dict[str, Any]]:
    """Task and job quality reports, newest first, as CVAT sends them (plain JSON: see above)."""
    return client.raw_list("/api/quality/reports", task_id=task_id)


def move_job(client: CvatClient, job_id: int, stage: str, state: str | None = None) -> Any:
    """Send a job to ``stage`` (e.g. "validation" for review) keeping its state, or setting
    ``state``: CVAT resets the state to "new" when a stage comes alone."""
    keep = state or value(job(client, job_id).state)
    return client.raw(
        "PATCH", f"/api/jobs/{job_id}", f"move job {job_id} to {stage}", body={"stage": stage, "state": keep}
    )


def reply(client: CvatClient, issue_id: int, message: str) -> int:
    """Add a comment to an issue; the comment's id."""
    body = {"issue": issue_id, "message": message}
    return int(client.raw("POST", "/api/comments", f"reply to issue {issue_id}", body=body)["id"])


def job_uncertainty(
    client: CvatClient, task_id: int, scores: Mapping[int, float | None]
) -> list[JobUncertainty]:
    """Per annotation job: mean/min confidence of its frames (``scores``: frame -> image
    confidence), least confident job first."""
    out = []
    for j in jobs(client, task_id, type="annotation"):
        vals = [v for f, v in scores.items() if j.start_frame <= f <= j.stop_frame and v is not None]
        out.append(
            JobUncertainty(
                j.id,
                j.start_frame,
                j.stop_frame,
                sum(vals) / len(vals) if vals else None,
                min(vals) if vals else None,
                value(j.stage),
                username(j.assignee),
            )
        )
    return sorted(out, key=lambda j: (j.mean_confidence is None, j.mean_confidence or 0.0))
