"""Prelabels into a CVAT task in bulk: one PATCH of task annotations per chunk of frames.

Each region is written as a prelabel (``formats.cvat`` makes that ``source="auto"`` with the
model's confidence as ``score`` and its model_version as an attribute). The push is resumable: a
small journal records which frames are in CVAT and which chunk was in flight, and a chunk whose
answer was lost is checked against the server (CVAT applies a PATCH all-or-nothing) before it is
sent again, so a rerun never duplicates shapes. Objects are created without ``id``: CVAT refuses
one on create (``400 {"shapes": [{"id": ["must be absent"]}]}``).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from labelloop.connectors.cvat.client import CvatClient
from labelloop.connectors.cvat.tasks import frames, task_labels
from labelloop.connectors.formats import cvat as fmt
from labelloop.connectors.journal import PushJournal
from labelloop.connectors.platform import Progress, PushReport
from labelloop.errors import ConfigError, RemoteError
from labelloop.retry import Backoff, retry
from labelloop.types import ImageItem, Source


def push_prelabels(
    client: CvatClient,
    task_id: int,
    items: Sequence[ImageItem],
    *,
    model_version: str | None = None,
    journal: Path | None = None,
    chunk_frames: int = 200,
    progress: Progress | None = None,
) -> PushReport:
    """Write the items' regions as prelabels of ``model_version`` (a region's own model_version
    stands when it has one). An item's frame is ``metadata["frame"]`` or ``metadata["task_id"]``,
    else the frame of its file name. Frames the journal lists are skipped."""
    t0 = time.monotonic()
    info = task_labels(client, task_id)
    used = sorted({r.label for it in items for r in it.regions})
    missing = [lb for lb in used if lb not in info.ids]
    if missing:
        raise ConfigError(
            f"labels {missing} are missing in CVAT task {task_id}; it has {sorted(info.ids)}. "
            "Add them to the task/project or map them with label_map; nothing was written"
        )
    placed = _frames_of(client, task_id, items)
    scope = {"server": client.url, "task_id": task_id, "created": info.created}
    state = PushJournal.load(journal, scope) if journal else None
    if state and state.in_flight:
        _reconcile(client, task_id, state)
    done = state.done if state else set()
    todo = sorted(((f, it) for f, it in placed if f not in done), key=lambda x: x[0])
    resumed = len(placed) - len(todo)
    if progress and resumed:
        progress(resumed)
    written = regions = requests = chunks = 0
    for start in range(0, len(todo), max(1, chunk_frames)):
        chunk = todo[start : start + chunk_frames]
        shapes: list[dict[str, Any]] = []
        tags: list[dict[str, Any]] = []
        for f, it in chunk:
            s, t = fmt.regions_to_cvat(
                _as_prelabels(it, model_version), f, info.ids, attribute_ids=info.attribute_ids
            )
            shapes.extend(s)
            tags.extend(t)
        for obj in (*shapes, *tags):
            obj.pop("id", None)  # a region read from CVAT keeps its id; a new object must not have one
        # shapes come from formats.cvat, whose output is tested against cvat-sdk's request models;
        # validating every shape again here cost more than the HTTP round trip (CVAT validates too)
        body = {"shapes": shapes, "tags": tags}
        ids = [f for f, _ in chunk]
        if state:
            state.begin(ids, signature=signature(shapes))
        requests += _send_chunk(client, task_id, body, ids, shapes, state)
        written += len(chunk)
        regions += len(shapes) + len(tags)
        chunks += 1
        if progress:
            progress(len(chunk))
    return PushReport(
        container=task_id,
        offered=len(placed),
        written=written,
        already_there=0,
        resumed=resumed,
        requests=requests,
        seconds=time.monotonic() - t0,
        chunks=chunks,
        regions=regions,
    )


def _as_prelabels(item: ImageItem, model_version: str | None) -> list[Any]:
    """The item's regions as prelabels: what a prelabel push writes, whatever made them."""
    return [
        r.with_(
            provenance=replace(
                r.provenance,
                source=Source.PRELABEL,
                model_version=r.provenance.model_version or model_version,
            )
        )
        for r in item.regions
    ]


def _frames_of(client: CvatClient, task_id: int, items: Sequence[ImageItem]) -> list[tuple[int, ImageItem]]:
    index: dict[str, int] | None = None
    out = []
    for it in items:
        f = it.metadata.get("frame", it.metadata.get("task_id"))
        if f is None:
            if index is None:
                index = {fr.name: fr.number for fr in frames(client, task_id)}
            name = Path(it.uri.split("?")[0]).name
            if name not in index:
                raise ConfigError(
                    f"image {it.uri!r} is not a frame of CVAT task {task_id}; nothing was written"
                )
            f = index[name]
        out.append((int(f), it))
    return out


def signature(shapes: Iterable[Mapping[str, Any]]) -> list[str]:
    """Order-free identity of written shapes, to recognise a chunk CVAT applied but did not confirm."""
    return sorted(
        json.dumps(
            [s["frame"], s["label_id"], str(s["type"]), [round(float(p), 2) for p in s.get("points", [])]]
        )
        for s in shapes
    )


def _send_chunk(
    client: CvatClient,
    task_id: int,
    body: Any,
    frames_ids: list[int],
    shapes: list[dict[str, Any]],
    state: PushJournal | None,
) -> int:
    """One PATCH per try; before a try after a failure, CVAT is asked whether the chunk landed.
    Returns how many PATCHes were sent."""
    sent = 0
    what = f"write {len(shapes)} shapes on {len(frames_ids)} frames of task {task_id}"

    def attempt() -> None:
        nonlocal sent
        if sent and _landed(client, task_id, frames_ids, signature(shapes)):
            return  # the last try was applied, its answer lost
        sent += 1
        client.call(
            what,
            lambda: client.api.call_api(
                f"/api/tasks/{task_id}/annotations/",
                "PATCH",
                query_params=[("action", "create")],
                header_params={"Content-Type": "application/json"},
                body=body,
                _parse_response=False,
            ),
            retry_it=False,
        )

    try:
        retry(what, attempt, Backoff(retries=client.retries, base_s=client.backoff_s))
    except RemoteError as e:
        if not e.retryable:
            raise
        where = f"; {len(state.done)} frames are recorded in {state.path}, rerun to resume" if state else ""
        raise RemoteError(f"{e}{where}", e.status, kind=e.kind) from e
    if state:
        state.commit(frames_ids, shapes=len(shapes))
    return sent


def _landed(client: CvatClient, task_id: int, frames_ids: list[int], wanted_signature: list[str]) -> bool:
    """True when every shape of the chunk is on the server (CVAT applies a PATCH all-or-nothing)."""
    data, _ = client.call(
        f"read annotations of task {task_id}", lambda: client.api.tasks_api.retrieve_annotations(task_id)
    )
    wanted = set(frames_ids)
    on_server = Counter(
        signature(
            s.to_dict()
            for s in data.shapes
            if s.frame in wanted and fmt.source_of(s.to_dict()) is not Source.HUMAN
        )
    )
    return not (Counter(wanted_signature) - on_server)


def _reconcile(client: CvatClient, task_id: int, state: PushJournal) -> None:
    flight = state.in_flight or {}
    ids = flight.get("ids", [])
    if _landed(client, task_id, ids, flight.get("signature", [])):
        state.commit(ids, reconciled=True)
    else:
        state.in_flight = None
        state.save()
