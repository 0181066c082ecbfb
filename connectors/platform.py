"""The one protocol both labeling platforms implement, so the CLI, the sync and selection never branch
on which tool they talk to; and the shared result types of its verbs.

Verbs: import images (idempotent by content sha256), push prelabels (journaled, resumable), pull
the changes since a cursor (one ``PulledAnnotation`` per annotation state, plus what the
reconciliation pass needs to find deletions), write task fields / views where people sort work.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from labelloop.types import ImageItem

PlatformName = Literal["labelstudio", "cvat"]


@dataclass(frozen=True)
class Target:
    """Where work lives: a platform server and a container on it (a Label Studio project id or a
    CVAT task id). ``key`` is stable and names the server, so two servers with the same project id
    never share journals, cursors or store rows."""

    platform: PlatformName
    url: str
    container: int

    @property
    def key(self) -> str:
        return f"{self.platform}:{self.url.rstrip('/')}#{self.container}"


@dataclass(frozen=True)
class ImportReport:
    container: int  # the project / task the images are in
    created: int  # tasks (LS) or frames (CVAT) made by this call
    skipped: int  # images already there (same sha256), not imported again
    task_ids: dict[str, int]  # image sha256 -> task id (LS) or frame number (CVAT)
    failed: dict[str, str] = field(default_factory=dict)  # path/uri -> reason
    seconds: float = 0.0


@dataclass(frozen=True)
class PushReport:
    container: int
    offered: int  # prelabels given to push
    written: int  # written by this call
    already_there: int  # the server already held this model_version's prelabel
    resumed: int  # the journal lists them as done (not re-checked)
    requests: int  # writes sent (a retried chunk counts each try)
    seconds: float = 0.0


@dataclass
class Cursor:
    """Where the last pull stopped, opaque to callers: keep ``to_json()`` and pass it back."""

    platform: PlatformName
    state: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"platform": self.platform, "state": self.state}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Cursor:
        d = json.loads(text)
        return cls(d["platform"], d.get("state") or {})


@dataclass
class PulledAnnotation:
    """One annotation as the platform holds it now.

    Label Studio: one per annotation (cancelled ones too). CVAT: one per frame of a changed job
    (the frame's shapes and tags are that job's annotation of it). ``prelabel`` holds the regions
    of the prediction the annotation started from, when the platform keeps it (Label Studio's
    ``parent_prediction``), so effort against the prelabel can be measured.
    """

    platform: PlatformName
    container: int  # LS project / CVAT task
    task_id: str  # LS task id; CVAT "frame:N"
    annotation_id: str  # LS annotation id; CVAT "job:J:frame:N"
    item: ImageItem  # uri, size, sha256 when known, regions with provenance
    updated_at: str | None  # ISO-8601, as the platform stamps it
    created_at: str | None = None
    annotator: str | None = None
    reviewer: str | None = None
    review_state: Literal["accepted", "rejected"] | None = None
    lead_time: float | None = None
    cancelled: bool = False  # LS "skipped"/cancelled: never a label
    ground_truth: bool = False
    job_id: int | None = None
    stage: str | None = None  # CVAT job stage / state
    state: str | None = None
    prelabel_id: str | None = None
    prelabel_model_version: str | None = None
    prelabel: list[Any] | None = None  # list[Region] of that prediction
    extra: dict[str, Any] = field(default_factory=dict)  # platform detail kept for provenance


@dataclass
class PullResult:
    annotations: list[PulledAnnotation]
    # every task the pull read -> the annotation ids it holds now (an id missing here was deleted)
    present: dict[str, list[str]]
    cursor: Cursor
    # every task id in the container now, when the pull listed them (a task missing was deleted)
    all_tasks: list[str] | None = None
    qa: list[Any] = field(default_factory=list)  # CVAT JobQA, quality reports; LS: empty
    notes: list[str] = field(default_factory=list)  # e.g. "Community edition: no reviews"


@runtime_checkable
class LabelingPlatform(Protocol):
    """What the CLI, the sync and selection need of a labeling tool."""

    name: PlatformName
    url: str

    def import_images(
        self,
        container: int | None,
        images: Sequence[Path],
        *,
        title: str | None = None,
        labels: Sequence[str] = (),
        task_kind: str = "detect",
    ) -> ImportReport:
        """Create the container when None; import images not already there (by sha256)."""
        ...

    def push_prelabels(
        self, container: int, items: Sequence[ImageItem], model_version: str, *, journal: Path | None = None
    ) -> PushReport:
        """Write each item's regions as a prelabel of ``model_version``, once per item and version."""
        ...

    def pull_changes(self, container: int, cursor: Cursor | None = None) -> PullResult:
        """Everything annotated or changed since ``cursor``, and what reconciliation needs."""
        ...

    def set_model_version(self, container: int, version: str) -> None:
        """Make ``version`` the one the platform shows and sorts by (a no-op where there is none)."""
        ...

    def write_priority(self, container: int, scores: dict[str, float], *, field_name: str, view: str) -> int:
        """Write a per-task number where people sort work (LS task data + a saved view); returns
        how many tasks got it. CVAT: as far as its API allows (see the connector)."""
        ...
