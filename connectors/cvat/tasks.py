"""A CVAT task: create it from local images, find it by name, its labels, its frames and its jobs.

CVAT has no sortable custom field on tasks or jobs, so ordering is carried by the data itself:
:func:`create_task` uploads frames least-confident first with ``sorting_method="predefined"``
(CVAT keeps that order), and ``segment_size`` cuts them into jobs, so job 1 holds the hardest
frames and ``sort=id`` is "most uncertain first".

A ground-truth job covers the frames it was made of, not its frame range: CVAT 2.73 answers
``POST /api/jobs {"type": "ground_truth", "frames": [0, 7, 12]}`` with ``start_frame 0,
stop_frame 19`` (the task's whole range) and lists the real ones as ``included_frames`` in the
job's ``/data/meta``; the others are placeholders. :func:`job_frames` reads which.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cvat_sdk import models
from cvat_sdk.core.exceptions import BackgroundRequestException
from cvat_sdk.core.helpers import get_paginated_collection
from PIL import Image

from labelloop.connectors.cvat.client import CvatClient, model, value
from labelloop.connectors.formats import cvat as fmt
from labelloop.errors import ConfigError, FetchError, RemoteError


@dataclass(frozen=True)
class TaskLabels:
    ids: dict[str, int]  # top-level label name -> id
    names: dict[int, str]  # every label id, skeleton sublabels too -> name
    attribute_ids: dict[str, dict[str, int]]  # label name -> attribute name -> spec id
    attribute_names: dict[int, str]  # spec id -> attribute name
    created: str | None = None  # the task's created_date: a reinstalled CVAT reuses task ids


@dataclass(frozen=True)
class CreatedTask:
    task_id: int
    frames: list[str]  # frame names in CVAT's frame order (least confident first when scored)
    job_ids: list[int]


@dataclass(frozen=True)
class Frame:
    number: int
    name: str
    width: int
    height: int


def check_images(images: Sequence[Path]) -> dict[Path, str]:
    """Images CVAT could not decode -> why (checked here, before anything exists on the server)."""
    bad = {}
    for p in images:
        try:
            with Image.open(p) as im:
                im.verify()
        except Exception as e:
            bad[Path(p)] = f"{type(e).__name__}: {e}"
    return bad


def create_task(
    client: CvatClient,
    name: str,
    images: Sequence[Path],
    labels: Sequence[str],
    *,
    scores: Mapping[str, float | None] | None = None,
    segment_size: int | None = None,
    project_id: int | None = None,
    subset: str | None = None,
    chunk_size: int | None = None,
) -> CreatedTask:
    """Create a task from local images; with ``scores`` (image name -> confidence) the frames
    are uploaded least-confident first so the first jobs hold the images most worth a look."""
    images = [Path(p) for p in images]
    if not images:
        raise ConfigError(f"task {name!r}: no images given")
    dupes = [n for n, c in Counter(p.name for p in images).items() if c > 1]
    if dupes:
        raise ConfigError(f"task {name!r}: image file names must be unique in a task; repeated: {dupes[:5]}")
    for p, why in check_images(images).items():  # fail before anything exists on the server
        raise FetchError(f"image {p} cannot be loaded ({why}); fix or drop it")
    if scores is not None:
        images.sort(key=lambda p: (scores.get(p.name) is None, scores.get(p.name) or 0.0))
    spec: dict[str, Any] = {"name": name}
    if project_id is not None:
        project = client.call(f"read project {project_id}", lambda: client.sdk.projects.retrieve(project_id))
        have = {lb.name for lb in project.get_labels()}
        missing = [lb for lb in labels if lb not in have]
        if missing:
            raise ConfigError(
                f"labels {missing} are missing in CVAT project {project_id} ({project.name!r}); "
                f"it has {sorted(have)}. Add them to the project or map them with label_map"
            )
        spec["project_id"] = project_id
    else:
        if not labels:
            raise ConfigError(f"task {name!r}: no labels given")
        # a text attribute per label records which model made each prelabel (read back on pull)
        version_attr = {
            "name": fmt.MODEL_VERSION_ATTRIBUTE,
            "mutable": True,
            "input_type": "text",
            "default_value": "",
            "values": [""],
        }
        spec["labels"] = [{"name": lb, "attributes": [version_attr]} for lb in labels]
    if segment_size:
        spec["segment_size"] = segment_size
    if subset:
        spec["subset"] = subset
    task_spec = model(spec, models.TaskWriteRequest)
    task = client.call(f"create task {name!r}", lambda: client.sdk.tasks.create(task_spec))
    params: dict[str, Any] = {"sorting_method": "predefined", "image_quality": 95}
    if chunk_size:
        params["chunk_size"] = chunk_size
    try:
        client.call(
            f"upload {len(images)} images to task {task.id}",
            lambda: task.upload_data(images, params=params),
            retry_it=False,  # a data upload cannot be repeated on the same task
        )
    except BackgroundRequestException as e:
        raise RemoteError(
            f"CVAT could not build task {task.id} ({name!r}) from the images: {e}; "
            "the empty task was left in place for inspection"
        ) from e
    except RemoteError as e:
        raise RemoteError(
            f"{e}. Task {task.id} was created without data; delete it and retry", e.status
        ) from e
    meta = client.call(f"read task {task.id} frames", task.get_meta)
    jobs = client.call(f"list jobs of task {task.id}", task.get_jobs)
    return CreatedTask(task.id, [f.name for f in meta.frames], sorted(j.id for j in jobs))


def find_tasks(client: CvatClient, name: str) -> list[dict[str, Any]]:
    """Tasks named exactly ``name`` that the user can see, oldest first."""
    found = client.raw_list("/api/tasks", name=name)
    return sorted((t for t in found if t.get("name") == name), key=lambda t: int(t["id"]))


def delete_tasks(client: CvatClient, ids: Sequence[int]) -> None:
    if ids:
        client.call(f"delete tasks {list(ids)}", lambda: client.sdk.tasks.remove_by_ids(list(ids)))


def task_labels(client: CvatClient, task_id: int) -> TaskLabels:
    task = client.call(f"read task {task_id}", lambda: client.sdk.tasks.retrieve(task_id))
    labels = client.call(f"read labels of task {task_id}", task.get_labels)
    created = getattr(task, "created_date", None)
    out = TaskLabels({}, {}, {}, {}, created.isoformat() if hasattr(created, "isoformat") else created)
    for lb in labels:
        if not getattr(lb, "parent_id", None):
            out.ids[lb.name] = lb.id
        out.names[lb.id] = lb.name
        for sub in getattr(lb, "sublabels", None) or []:
            out.names[sub.id] = sub.name
        for a in getattr(lb, "attributes", None) or []:
            out.attribute_ids.setdefault(lb.name, {})[a.name] = a.id
            out.attribute_names[a.id] = a.name
    return out


def frames(client: CvatClient, task_id: int) -> list[Frame]:
    """The task's frames in order (name and size of each)."""
    meta, _ = client.call(
        f"read frames of task {task_id}", lambda: client.api.tasks_api.retrieve_data_meta(task_id)
    )
    return [Frame(i, f.name, int(f.width or 0), int(f.height or 0)) for i, f in enumerate(meta.frames)]


def jobs(client: CvatClient, task_id: int, *, since: str | None = None, **simple: Any) -> list[Any]:
    """The task's jobs by id (``since``: updated at or after it; ``simple``: CVAT's own filters)."""
    rule: dict[str, Any] = {"and": [{"==": [{"var": "task_id"}, task_id]}]}
    if since:
        rule["and"].append({">=": [{"var": "updated_date"}, since]})
    return client.call(
        f"list jobs of task {task_id}",
        lambda: get_paginated_collection(
            client.api.jobs_api.list_endpoint, filter=json.dumps(rule), sort="id", page_size=100, **simple
        ),
    )


def job(client: CvatClient, job_id: int) -> Any:
    return client.call(f"read job {job_id}", lambda: client.api.jobs_api.retrieve(job_id))[0]


def job_frames(client: CvatClient, job: Any) -> list[int]:
    """The frames a job annotates: its range, or a ground-truth job's ``included_frames``."""
    if value(job.type) != "ground_truth":
        return list(range(job.start_frame, job.stop_frame + 1))
    meta = client.raw("GET", f"/api/jobs/{job.id}/data/meta", f"read frames of job {job.id}")
    included = meta.get("included_frames")
    if included is None:  # a server that names no subset: the whole range
        return list(range(job.start_frame, job.stop_frame + 1))
    return sorted(int(f) for f in included)


def frame_bytes(client: CvatClient, task_id: int, frame: int) -> bytes:
    """The original image of one frame of a task, as uploaded."""
    _, resp = client.call(
        f"read frame {frame} of task {task_id}",
        lambda: client.api.tasks_api.retrieve_data(
            task_id, type="frame", number=frame, quality="original", _parse_response=False
        ),
    )
    return bytes(resp.data)
