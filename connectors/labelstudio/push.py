"""Predictions into a Label Studio project in bulk, once per (task, model_version).

Writes go through ``/api/projects/{id}/import/predictions`` in chunks. Before each chunk is sent,
and again before it is retried, the tasks that already hold a prediction of that version are
dropped from it, so a lost answer or a rerun never duplicates one. A
:class:`~labelloop.connectors.journal.PushJournal` makes a pool push resumable without re-reading
what is known to be done.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from labelloop.connectors.journal import PushJournal
from labelloop.connectors.labelstudio.client import LabelStudioClient
from labelloop.connectors.labelstudio.tasks import versions_present
from labelloop.connectors.platform import Progress, PushReport
from labelloop.errors import RemoteError
from labelloop.retry import retry


def write_predictions(
    client: LabelStudioClient,
    project: int,
    predictions: Sequence[Mapping[str, Any]],
    *,
    journal: PushJournal | None = None,
    chunk: int = 500,
    progress: Progress | None = None,
) -> PushReport:
    """Import ready Label Studio predictions (``task``, ``result``, ``score``, ``model_version``)."""
    t0 = time.monotonic()
    done = journal.done if journal else set()
    todo = [p for p in predictions if int(p["task"]) not in done]
    resumed = len(predictions) - len(todo)
    if progress and resumed:
        progress(resumed)
    written = already = chunks = requests = regions = 0
    for lo in range(0, len(todo), max(1, chunk)):
        part = todo[lo : lo + chunk]
        ids = [int(p["task"]) for p in part]
        if journal:
            journal.begin(ids)
        sent, tries = _write_chunk(client, project, part, journal)
        written += len(sent)
        regions += sum(len(p.get("result") or []) for p in sent)
        already += len(part) - len(sent)
        chunks += 1
        requests += tries
        if journal:
            journal.commit(ids, written=len(sent))
        if progress:
            progress(len(part))
    return PushReport(
        container=project,
        offered=len(predictions),
        written=written,
        already_there=already,
        resumed=resumed,
        requests=requests,
        seconds=time.monotonic() - t0,
        chunks=chunks,
        regions=regions,
    )


def _write_chunk(
    client: LabelStudioClient,
    project: int,
    part: Sequence[Mapping[str, Any]],
    journal: PushJournal | None,
) -> tuple[list[Mapping[str, Any]], int]:
    """The predictions this chunk wrote, and how many POSTs that took."""
    tries = 0

    def send() -> list[Mapping[str, Any]]:
        nonlocal tries
        # re-read what exists on every attempt: a POST whose answer was lost may have landed
        present = versions_present(client, project, [int(p["task"]) for p in part])
        todo = [p for p in part if p.get("model_version") not in present.get(int(p["task"]), set())]
        if todo:
            tries += 1
            client.request("POST", f"/api/projects/{project}/import/predictions", retries=0, json=list(todo))
        return todo

    try:
        sent = retry(f"write {len(part)} predictions to project {project}", send, client.policy())
    except RemoteError as e:
        if not e.retryable:
            raise  # a bad payload or a bad token: retrying could not help, resuming cannot either
        where = f" ({len(journal.done)} tasks are recorded in {journal.path})" if journal else ""
        raise RemoteError(
            f"{e}; the journal records what was written{where}, rerun to resume", e.status
        ) from e
    return sent, tries


def push_predictions(
    url: str, token: str | None, project: int, predictions: Iterable[dict[str, Any]], *, chunk: int = 500
) -> int:
    """Bulk import, idempotent per (task, model_version); returns how many were written."""
    return write_predictions(LabelStudioClient(url, token), project, list(predictions), chunk=chunk).written
