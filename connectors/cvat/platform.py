"""CVAT as a :class:`~labelloop.connectors.platform.LabelingPlatform`: a task is the container, a
frame the item (``metadata["task_id"]`` / ``["frame"]`` is the frame number)."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from labelloop.connectors.cvat import pull, push, qa, tasks
from labelloop.connectors.cvat.client import CvatClient
from labelloop.connectors.platform import (
    Cursor,
    ImportReport,
    PriorityReport,
    Progress,
    PullProgress,
    PullResult,
    PushReport,
)
from labelloop.errors import ConfigError
from labelloop.fsutil import sha256_file
from labelloop.settings import Settings
from labelloop.types import ImageItem


class CvatPlatform:
    name = "cvat"
    container_kind = "task"
    orders_new_containers = True

    def __init__(
        self,
        client: CvatClient,
        *,
        label_map: Mapping[str, str] | None = None,
        segment_size: int | None = None,
        project_id: int | None = None,
        chunk_size: int | None = None,
    ) -> None:
        """``segment_size`` (frames per job), ``project_id`` (the CVAT project whose labels a new
        task uses) and ``chunk_size`` apply to tasks this platform creates."""
        self.client = client
        self.label_map = dict(label_map or {})
        self.segment_size, self.project_id, self.chunk_size = segment_size, project_id, chunk_size

    @classmethod
    def from_settings(cls, settings: Settings, **options: Any) -> CvatPlatform:
        client_options = {k: options.pop(k) for k in ("retries", "backoff_s", "poll_s") if k in options}
        return cls(
            CvatClient.from_settings(settings, **client_options),
            label_map=settings.predict.label_map,
            **options,
        )

    @property
    def url(self) -> str:
        return self.client.url

    @property
    def fetch_access(self) -> None:
        """CVAT frames are not fetched for prediction: the local images given are predicted."""
        return None

    def image_bytes(self, container: int, task_id: str, uri: str | None) -> bytes | None:
        """A frame's original image, read through CVAT's data API (``task_id`` is "frame:N")."""
        if not task_id.startswith("frame:"):
            return None
        return tasks.frame_bytes(self.client, container, int(task_id.split(":", 1)[1]))

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> CvatPlatform:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def import_images(
        self,
        container: int | None,
        images: Sequence[Path],
        *,
        title: str | None = None,
        labels: Sequence[str] = (),
        task_kind: str = "detect",
        keypoints: Sequence[str] = (),
        order: Mapping[str, float | None] | None = None,
        progress: Progress | None = None,
    ) -> ImportReport:
        """A new task of the images (least confident first by ``order``), or the frames of task
        ``container`` the images are (matched by file name; an image that is not one is an error:
        CVAT cannot add images to a task that has data). Images CVAT could not decode are left
        out, in ``failed``.

        CVAT has no field per frame for a content hash, so a task is the same as before when it
        has the same name and the same frame names: rerunning without a task id finds the task
        made before instead of making a second one (a task of that name left without data by an
        interrupted upload is deleted and made again). Keypoint names are not used: points are
        written as CVAT ``points`` shapes."""
        t0 = time.monotonic()
        paths = [Path(p) for p in images]
        failed = {str(p): why for p, why in tasks.check_images(paths).items()}
        good = [p for p in paths if str(p) not in failed]
        sha = {p: sha256_file(p) for p in good}
        notes: list[str] = []
        created = 0
        if container is None:
            name = title or "labelloop"
            container = self._same_task(name, good, notes)
            if container is None:
                if not good:
                    raise ConfigError(
                        "no image CVAT could load: " + "; ".join(f"{k}: {v}" for k, v in failed.items())
                    )
                scores = {p.name: (order or {}).get(sha[p]) for p in good} if order is not None else None
                made = tasks.create_task(
                    self.client,
                    name,
                    good,
                    list(dict.fromkeys(labels)),
                    scores=scores,
                    segment_size=self.segment_size,
                    project_id=self.project_id,
                    chunk_size=self.chunk_size,
                )
                container, created = made.task_id, len(made.frames)
                notes.append(
                    f"created task {container} with {len(made.job_ids)} job(s), least confident first"
                )
        index = {f.name: f.number for f in tasks.frames(self.client, container)}
        strangers = [str(p) for p in good if p.name not in index]
        if strangers:
            raise ConfigError(
                f"images {strangers[:5]} are not frames of CVAT task {container} (CVAT cannot add images "
                "to a task that has data): leave them out or make a new task; nothing was written"
            )
        task_ids = {sha[p]: index[p.name] for p in good}
        if progress:
            progress(len(paths))
        return ImportReport(
            container=container,
            created=created,
            skipped=len(task_ids) - created,
            task_ids=task_ids,
            failed=failed,
            seconds=time.monotonic() - t0,
            notes=notes,
        )

    def _same_task(self, name: str, images: Sequence[Path], notes: list[str]) -> int | None:
        """A task named ``name`` whose frames are these images (by name); empty ones are deleted."""
        wanted = sorted(p.name for p in images)
        empty = []
        for t in tasks.find_tasks(self.client, name):
            if not t.get("size"):
                empty.append(int(t["id"]))
                continue
            if sorted(f.name for f in tasks.frames(self.client, int(t["id"]))) == wanted:
                tasks.delete_tasks(self.client, empty)
                notes.append(
                    f"reused task {t['id']} ({name!r}, the same images): no second task was made; "
                    f"pass --task {t['id']} to name it"
                )
                return int(t["id"])
        if empty:
            tasks.delete_tasks(self.client, empty)
            notes.append(f"deleted task(s) {empty} ({name!r}) left without data by an interrupted upload")
        return None

    def images(self, container: int, model_version: str | None = None) -> list[ImageItem]:
        """The task's frames; whether a frame holds a prelabel of a version is not known cheaply."""
        return [
            ImageItem(
                f.name,
                f.width,
                f.height,
                metadata={"task_id": f.number, "frame": f.number, "has_prelabel": None},
            )
            for f in tasks.frames(self.client, container)
        ]

    def resolve_labels(self, container: int, names: Sequence[str], task_kind: str) -> dict[str, str | None]:
        """By exact name, after the label map."""
        have = tasks.task_labels(self.client, container).ids
        return {n: (self.label_map.get(n, n) if self.label_map.get(n, n) in have else None) for n in names}

    def push_prelabels(
        self,
        container: int,
        items: Sequence[ImageItem],
        model_version: str,
        *,
        journal: Path | None = None,
        progress: Progress | None = None,
        chunk_frames: int = 200,
    ) -> PushReport:
        return push.push_prelabels(
            self.client,
            container,
            items,
            model_version=model_version,
            journal=journal,
            chunk_frames=chunk_frames,
            progress=progress,
        )

    def pull_changes(
        self,
        container: int,
        cursor: Cursor | None = None,
        *,
        reconcile: bool = True,
        progress: PullProgress | None = None,
    ) -> PullResult:
        return pull.pull_changes(self.client, container, cursor, reconcile=reconcile, progress=progress)

    def set_model_version(self, container: int, version: str) -> None:
        """A no-op: CVAT has no model_version to show; each prelabel carries its own (an attribute)."""

    def write_priority(
        self,
        container: int,
        scores: Mapping[str, float | None],
        *,
        field_name: str | None,
        view: str | None,
        by_prelabel_score: bool = False,
        below: float | None = None,
        progress: Progress | None = None,
    ) -> PriorityReport:
        """What CVAT 2.73's API allows: nothing is written. Tasks and jobs have no custom field, and
        jobs are filtered and sorted only by their own fields (id, stage, state, assignee,
        updated_date...); there are no saved views. The order lives in the data: a task made by
        :meth:`import_images` with ``order`` has its least confident frames first, so its first
        jobs hold them and ``sort=id`` is "most uncertain first". This reports each annotation
        job's confidence from ``scores`` (frame -> score), least confident first, for a QA lead
        to assign reviewers from."""
        ranked = qa.job_uncertainty(self.client, container, {int(k): v for k, v in scores.items()})
        notes = [
            f"job {j.job_id} frames {j.start_frame}-{j.stop_frame}: min confidence "
            f"{'-' if j.min_confidence is None else f'{j.min_confidence:.2f}'}"
            for j in ranked
        ]
        return PriorityReport(container, 0, None, notes)
