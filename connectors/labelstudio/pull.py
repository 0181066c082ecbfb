"""What changed in a Label Studio project since a cursor, one :class:`PulledAnnotation` each.

A pull reads the tasks changed since the cursor (Data Manager filter ``tasks:updated_at >=``;
Label Studio bumps a task's ``updated_at`` whenever one of its annotations is created, edited or
deleted) with every annotation they hold now, the prediction each started from, and on
Enterprise the review trail. The cursor is the *server's* clock (its ``Date`` header) taken
before the listing starts, so an edit made while a pull runs is read again next time rather than
lost. Deletions never show in an ``updated_at`` poll: ``present`` (task -> annotation ids it
holds now) and ``all_tasks`` (every task id of the project) let the sync find them.

Reviews (accept/reject by a reviewer) exist only in Label Studio Enterprise; the edition is read
from ``/api/version`` and a Community server yields a note instead of errors.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, timedelta
from typing import Any

from labelloop.connectors.formats.labelstudio import ls_to_regions
from labelloop.connectors.labelstudio.client import LabelStudioClient
from labelloop.connectors.labelstudio.imports import SHA_FIELD
from labelloop.connectors.labelstudio.projects import image_key, label_config
from labelloop.connectors.labelstudio.tasks import iter_tasks, task_ids
from labelloop.connectors.platform import Cursor, PulledAnnotation, PullProgress, PullResult
from labelloop.errors import RemoteError
from labelloop.types import ImageItem, Provenance, Source


class Users:
    """User id -> email (what Label Studio shows as the annotator), read once; a user not listed
    in the organisation (removed, invited) is read alone."""

    def __init__(self, client: LabelStudioClient) -> None:
        self.client = client
        self.names = {int(u["id"]): user_name(u) for u in client.request("GET", "/api/users") or []}

    def __call__(self, uid: Any) -> str | None:
        if uid is None:
            return None
        uid = int(uid)
        if uid not in self.names:
            try:
                self.names[uid] = user_name(self.client.request("GET", f"/api/users/{uid}", retries=1))
            except RemoteError:
                self.names[uid] = str(uid)
        return self.names[uid]


def user_name(u: Mapping[str, Any]) -> str:
    return str(u.get("email") or u.get("username") or u["id"])


def pull_changes(
    client: LabelStudioClient,
    project: int,
    cursor: Cursor | None = None,
    *,
    image_field: str | None = None,
    reconcile: bool = True,
    progress: PullProgress | None = None,
) -> PullResult:
    """Every annotation of the tasks changed since ``cursor``, with what Label Studio recorded;
    ``reconcile`` also lists every task id of the project (``all_tasks``)."""
    since = (cursor.state.get("since") if cursor else None) or None
    started = client.server_time() - timedelta(seconds=1)  # Date has whole seconds
    key = image_field or image_key(label_config(client, project))
    users = Users(client)
    edition = client.edition
    reviews_available = edition.lower() == "enterprise"
    trail = _reviews(client, project, users) if reviews_available else {}
    annotations: list[PulledAnnotation] = []
    present: dict[str, list[str]] = {}
    # big pages: Label Studio serialises ~400 tasks/s with all fields either way; fewer round trips help
    step = progress or (lambda n, total=None: None)
    on_total = lambda total: step(0, total)  # noqa: E731 - the bar learns the total from page 1
    for task in iter_tasks(client, project, since=since, page_size=1000, on_total=on_total):
        step(1)
        tid = int(task["id"])
        data = task.get("data") or {}
        preds = {int(p["id"]): p for p in task.get("predictions") or []}
        anns = sorted(task.get("annotations") or [], key=lambda a: int(a["id"]))
        present[str(tid)] = [str(a["id"]) for a in anns]
        for ann in anns:
            reviews = trail.get(int(ann["id"]), []) if reviews_available else None
            try:
                annotations.append(_annotation(project, tid, data, key, ann, preds, reviews, users))
            except Exception as e:
                annotations.append(_unusable(project, tid, ann, e))
    notes = (
        []
        if reviews_available
        else [f"reviews: not available on Label Studio {edition} (an Enterprise feature)"]
    )
    next_since = started.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000000Z")
    return PullResult(
        annotations=annotations,
        present=present,
        cursor=Cursor("labelstudio", {"since": next_since}),
        all_tasks=[str(t) for t in task_ids(client, project)] if reconcile else None,
        notes=notes,
    )


def _annotation(
    project: int,
    tid: int,
    data: Mapping[str, Any],
    key: str,
    ann: Mapping[str, Any],
    preds: Mapping[int, Mapping[str, Any]],
    reviews: list[dict[str, Any]] | None,
    users: Users,
) -> PulledAnnotation:
    last = reviews[-1] if reviews else None
    review_state = None if last is None else "accepted" if last["accepted"] else "rejected"
    reviewer = last["reviewer"] if last and last["accepted"] else None
    annotator = users(ann.get("completed_by"))
    prov = Provenance(
        source=Source.HUMAN,
        annotator=annotator,
        reviewer=reviewer,
        created_at=ann.get("created_at"),
        updated_at=ann.get("updated_at"),
    )
    result = ann.get("result") or []
    parent = preds.get(ann.get("parent_prediction") or -1)
    parent_version = parent.get("model_version") if parent else None
    meta: dict[str, Any] = {
        "ls_project": project,
        "ls_task_id": tid,
        "ls_annotation_id": int(ann["id"]),
        "lead_time": ann.get("lead_time"),
        "was_cancelled": bool(ann.get("was_cancelled")),
        "ground_truth": bool(ann.get("ground_truth")),
        "parent_prediction": ann.get("parent_prediction"),
        "parent_model_version": parent_version,
        "parent_annotation": ann.get("parent_annotation"),
        "updated_by": users(ann.get("updated_by")),
        "last_action": ann.get("last_action"),
    }
    if reviews is not None:
        meta["reviews"] = reviews
        meta["review_state"] = review_state
    sha = data.get(SHA_FIELD)
    item = ImageItem(
        uri=str(data.get(key) or ""),
        width=int(next((r["original_width"] for r in result if "original_width" in r), 0)),
        height=int(next((r["original_height"] for r in result if "original_height" in r), 0)),
        regions=[r.with_(score=None) for r in ls_to_regions(result, prov)],  # a person's: no confidence
        sha256=sha if isinstance(sha, str) and sha else None,
        metadata=meta,
    )
    prelabel = None
    if parent is not None:
        pre_prov = Provenance(source=Source.PRELABEL, model_version=parent_version)
        prelabel = ls_to_regions(parent.get("result") or [], pre_prov)
    return PulledAnnotation(
        platform="labelstudio",
        container=project,
        task_id=str(tid),
        annotation_id=str(ann["id"]),
        item=item,
        updated_at=ann.get("updated_at"),
        created_at=ann.get("created_at"),
        annotator=annotator,
        reviewer=reviewer,
        review_state=review_state,
        lead_time=ann.get("lead_time"),
        cancelled=bool(ann.get("was_cancelled")),
        ground_truth=bool(ann.get("ground_truth")),
        prelabel_id=str(parent["id"]) if parent else None,
        prelabel_model_version=parent_version,
        prelabel=prelabel,
        extra={
            k: meta[k] for k in ("parent_annotation", "updated_by", "last_action", "reviews") if k in meta
        },
    )


def _unusable(project: int, tid: int, ann: Mapping[str, Any], e: Exception) -> PulledAnnotation:
    """An annotation whose result cannot be read: carried with its reason (the first region that
    fails, with its value) and raw result, so the sync quarantines it and a person can fix it in
    Label Studio while the rest of the pull goes on."""
    what = f"{type(e).__name__}: {e}"
    for r in ann.get("result") or []:
        try:
            ls_to_regions([r], Provenance(source=Source.HUMAN))
        except Exception as one:
            what = f"region {r.get('id')} ({r.get('type')}) {json.dumps(r.get('value'))[:300]}: {one}"
            break
    return PulledAnnotation(
        platform="labelstudio",
        container=project,
        task_id=str(tid),
        annotation_id=str(ann.get("id")),
        item=ImageItem(uri="", width=0, height=0, metadata={"ls_project": project, "ls_task_id": tid}),
        updated_at=ann.get("updated_at"),
        created_at=ann.get("created_at"),
        cancelled=bool(ann.get("was_cancelled")),
        extra={"raw_result": ann.get("result")},
        error=f"annotation {ann.get('id')} of task {tid} cannot be read: {what}; fix it in Label Studio",
    )


def _reviews(client: LabelStudioClient, project: int, users: Users) -> dict[int, list[dict[str, Any]]]:
    """Enterprise review trail per annotation (who accepted or rejected it, when), one call for
    the whole project (``annotation__task__project``) instead of one per annotation."""
    data = client.request("GET", "/api/annotation-reviews/", params={"annotation__task__project": project})
    rows = data.get("results", []) if isinstance(data, dict) else data or []
    out: dict[int, list[dict[str, Any]]] = {}
    for r in sorted(rows, key=lambda r: (r.get("created_at") or "", r.get("id") or 0)):
        out.setdefault(int(r["annotation"]), []).append(
            {
                "reviewer": users(r.get("created_by")),
                "accepted": r.get("accepted"),
                "created_at": r.get("created_at"),
                "comment": r.get("comment"),
            }
        )
    return out
