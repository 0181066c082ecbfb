"""The tasks of a Label Studio project: listed through the Data Manager API (all fields, a few, or
only those updated since a time), which prediction versions each holds, and their data fields."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from labelloop.connectors.labelstudio.client import LabelStudioClient
from labelloop.connectors.platform import Progress
from labelloop.errors import RemoteError


def iter_tasks(
    client: LabelStudioClient,
    project: int,
    *,
    since: str | None = None,
    page_size: int = 100,
    include: str | None = None,
    on_total: Callable[[int], None] | None = None,
) -> Iterator[dict[str, Any]]:
    """Tasks in id order (all their fields, or the ``include`` list); with ``since``, only those
    updated at or after it (Label Studio bumps a task's ``updated_at`` whenever one of its
    annotations is created, edited or deleted)."""
    query: dict[str, Any] = {"ordering": ["tasks:id"]}
    if since:
        query["filters"] = {
            "conjunction": "and",
            "items": [
                {
                    "filter": "filter:tasks:updated_at",
                    "operator": "greater_or_equal",
                    "type": "Datetime",
                    "value": since,
                }
            ],
        }
    page = 1
    seen = 0
    while True:
        params = {
            "project": project,
            "page": page,
            "page_size": page_size,
            "fields": "all",
            "query": json.dumps(query),
        }
        if include:
            params["include"] = include
        try:
            data = client.request("GET", "/api/tasks", params=params)
        except RemoteError as e:
            if e.status == 404 and page > 1:  # the project shrank while we read it
                return
            raise
        batch = data.get("tasks", []) if isinstance(data, dict) else data
        if page == 1 and on_total is not None and isinstance(data, dict) and "total" in data:
            on_total(int(data["total"]))
        yield from batch
        seen += len(batch)
        total = data.get("total", 0) if isinstance(data, dict) else 0
        if not batch or seen >= total:
            return
        page += 1


def task_ids(client: LabelStudioClient, project: int) -> list[int]:
    """Every task id of the project, listed cheaply (ids only, big pages)."""
    return [int(t["id"]) for t in iter_tasks(client, project, include="id", page_size=1000)]


def versions_present(client: LabelStudioClient, project: int, ids: Sequence[int]) -> dict[int, set[str]]:
    """Model versions of the predictions each of the given tasks already has."""
    listed = tasks_by_id(
        client, project, ids, include="id,predictions_model_versions", batch=max(1, len(ids))
    )
    return {int(t["id"]): split_versions(t.get("predictions_model_versions")) for t in listed}


def split_versions(raw: str | None) -> set[str]:
    """``predictions_model_versions`` as Label Studio lists it ("v1,v2") -> {"v1", "v2"}."""
    return {v.strip() for v in (raw or "").split(",") if v.strip()}


def set_task_data(
    client: LabelStudioClient,
    tasks: Iterable[Mapping[str, Any]],
    values: Mapping[int, Mapping[str, Any]],
    workers: int = 4,
    progress: Progress | None = None,
) -> int:
    """Merge ``values[task_id]`` into each task's data (Label Studio has no bulk update, and a PATCH
    replaces the whole data, so it is one PATCH per task with its current data, a few in parallel);
    returns how many tasks changed."""
    todo = []
    for t in tasks:
        extra = values.get(int(t["id"]))
        data = dict(t.get("data") or {})
        if extra and any(data.get(k) != v for k, v in extra.items()):
            todo.append((int(t["id"]), {**data, **extra}))

    def patch(job: tuple[int, dict[str, Any]]) -> None:
        client.request("PATCH", f"/api/tasks/{job[0]}", json={"data": job[1]})
        if progress:
            progress(1)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(patch, todo))
    return len(todo)


def tasks_by_id(
    client: LabelStudioClient, project: int, ids: Sequence[int], *, include: str = "id,data", batch: int = 500
) -> Iterator[dict[str, Any]]:
    """The given tasks only (a Data Manager selection), ``batch`` ids per request."""
    for lo in range(0, len(ids), batch):
        part = list(ids[lo : lo + batch])
        query = json.dumps({"selectedItems": {"all": False, "included": part}})
        params = {
            "project": project,
            "query": query,
            "page_size": len(part),
            "fields": "all",
            "include": include,
        }
        data = client.request("GET", "/api/tasks", params=params)
        yield from data.get("tasks", []) if isinstance(data, dict) else data or []
