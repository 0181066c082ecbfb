"""The one protocol both labeling platforms implement, so the CLI, the sync and selection never branch
on which tool they talk to; and the shared result types of its verbs.

Verbs: import images (idempotent by content sha256), list what a container holds, push prelabels
(journaled, resumable), pull the changes since a cursor (one ``PulledAnnotation`` per annotation
state, plus what the reconciliation pass needs to find deletions), write a per-task priority where
people sort work, and keep the platform's model_version in step.

Ids: a container is a Label Studio project or a CVAT task. Inside it, an *item id* is a Label
Studio task id or a CVAT frame number; items given to :meth:`LabelingPlatform.push_prelabels` carry
it as ``metadata["task_id"]`` (CVAT also reads ``metadata["frame"]``, and falls back to the image's
file name, which is a frame's name in CVAT).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from labelloop.types import ImageItem

PlatformName = Literal["labelstudio", "cvat"]
Progress = Callable[[int], None]  # called with how many more items are done
PullProgress = Callable[..., None]  # (more done: int, total: int | None = None) as the total becomes known


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
    notes: list[str] = field(default_factory=list)  # e.g. "created project 3", "reused task 7"


@dataclass(frozen=True)
class PushReport:
    container: int
    offered: int  # prelabels given to push
    written: int  # written by this call
    already_there: int  # the server already held this model_version's prelabel
    resumed: int  # the journal lists them as done (not re-checked)
    requests: int  # writes sent (a retried chunk counts each try)
    seconds: float = 0.0
    chunks: int = 0  # bulk writes the prelabels were cut into
    regions: int = 0  # regions (LS result entries / CVAT shapes and tags) written

    def __add__(self, other: PushReport) -> PushReport:
        """Two pushes into the same container, as one report."""
        return PushReport(
            self.container,
            self.offered + other.offered,
            self.written + other.written,
            self.already_there + other.already_there,
            self.resumed + other.resumed,
            self.requests + other.requests,
            self.seconds + other.seconds,
            self.chunks + other.chunks,
            self.regions + other.regions,
        )


@dataclass(frozen=True)
class PriorityReport:
    container: int
    written: int  # tasks whose priority field changed
    view: int | None = None  # the saved view that sorts by it, where the platform has views
    notes: list[str] = field(default_factory=list)  # what the platform could not store, and instead


@dataclass(frozen=True)
class FetchAccess:
    """Where the relative URIs a platform lists live, and the headers that may read them (asked
    before each download, so a short-lived token can be renewed)."""

    url: str
    headers: Callable[[], Mapping[str, str]]


@dataclass
class Cursor:
    """Where the last pull stopped, opaque to callers: keep ``to_json()`` and pass it back.

    The JSON is flat (``{"platform": ..., "since": ..., ...}``) so cursor files written before
    there was a platform field still load: ``from_json(text, "cvat")``."""

    platform: PlatformName
    state: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({**self.state, "platform": self.platform}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, platform: PlatformName | None = None) -> Cursor:
        d = json.loads(text)
        if not isinstance(d, dict):
            raise ValueError("a cursor is a JSON object")
        name = d.pop("platform", None) or platform
        if name is None:
            raise ValueError("the cursor names no platform")
        if platform is not None and name != platform:
            raise ValueError(f"the cursor is a {name} cursor, not a {platform} one")
        state = d.pop("state") if isinstance(d.get("state"), dict) else d
        return cls(name, state)


@dataclass
class PulledAnnotation:
    """One annotation as the platform holds it now.

    Label Studio: one per annotation (cancelled ones too). CVAT: one per frame of a changed job
    (the frame's shapes and tags are that job's annotation of it). ``prelabel`` holds the regions
    of the prediction the annotation started from, when the platform keeps it (Label Studio's
    ``parent_prediction``), so effort against the prelabel can be measured. ``item.metadata``
    keeps the platform's own ids and fields, as ``labelloop pull`` writes them.
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
    error: str | None = None  # the platform's record could not be converted: the sync quarantines it


@dataclass
class PullResult:
    annotations: list[PulledAnnotation]
    # every task the pull read -> the annotation ids it holds now (an id missing here was deleted)
    present: dict[str, list[str]]
    cursor: Cursor
    # every task id in the container now, when the pull listed them (a task missing was deleted)
    all_tasks: list[str] | None = None
    qa: list[Any] = field(default_factory=list)  # CVAT JobQA of changed jobs; LS: empty
    notes: list[str] = field(default_factory=list)  # e.g. "Community edition: no reviews"
    quality_reports: list[dict[str, Any]] = field(default_factory=list)  # CVAT, as the server sends them


@runtime_checkable
class LabelingPlatform(Protocol):
    """What the CLI, the sync and selection need of a labeling tool."""

    name: PlatformName
    url: str
    container_kind: str  # what a container is called there: "project" (LS), "task" (CVAT)
    # a new container takes its items' order at creation (CVAT: least confident frames first), so
    # images are predicted before :meth:`import_images` makes it, and ``order`` is given
    orders_new_containers: bool

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
    ) -> ImportReport:
        """Create the container when None; import images not already there (by sha256).

        ``order`` (sha256 -> image confidence) is used where the platform orders work by the
        data itself (CVAT: least confident frames first); ``keypoints`` names a pose model's
        points for a new container's label config."""
        ...

    def images(self, container: int, model_version: str | None = None) -> list[ImageItem]:
        """Every image in the container: ``uri`` as the platform serves it, ``sha256`` when it was
        recorded at import, ``metadata["task_id"]`` its item id and ``metadata["has_prelabel"]``
        whether a prelabel of ``model_version`` is there (None: the platform cannot tell cheaply)."""
        ...

    @property
    def fetch_access(self) -> FetchAccess | None:
        """How the ``uri`` of :meth:`images` can be read, or None when the platform's images are
        not fetched for prediction (CVAT: the local files given are predicted)."""
        ...

    def resolve_labels(self, container: int, names: Sequence[str], task_kind: str) -> dict[str, str | None]:
        """Model class -> the container's label for it (None: it has none), by the platform's rules
        and the label map it was made with."""
        ...

    def push_prelabels(
        self,
        container: int,
        items: Sequence[ImageItem],
        model_version: str,
        *,
        journal: Path | None = None,
        progress: Progress | None = None,
    ) -> PushReport:
        """Write each item's regions as a prelabel of ``model_version``, once per item and version."""
        ...

    def pull_changes(
        self,
        container: int,
        cursor: Cursor | None = None,
        *,
        reconcile: bool = True,
        progress: PullProgress | None = None,
    ) -> PullResult:
        """Everything annotated or changed since ``cursor``, and what reconciliation needs;
        ``progress`` hears the items read (tasks / jobs) and their total once it is known."""
        ...

    def set_model_version(self, container: int, version: str) -> None:
        """Make ``version`` the one the platform shows and sorts by (a no-op where there is none)."""
        ...

    def write_priority(
        self,
        container: int,
        scores: Mapping[str, float | None],
        *,
        field_name: str | None,
        view: str | None,
        by_prelabel_score: bool = False,
        below: float | None = None,
    ) -> PriorityReport:
        """Write a per-item number (item id -> score) where people sort work (LS: task data field
        + a saved view ordered by it, ascending, showing only items whose field is under ``below``
        when given); ``by_prelabel_score`` says the scores are the prelabels' own, so the view may
        sort by those instead. CVAT: as far as its API allows (see its platform)."""
        ...

    def image_bytes(self, container: int, task_id: str, uri: str | None) -> bytes | None:
        """The image bytes of a task when the platform serves them itself (CVAT frames); None when
        they are read from the task's URI (Label Studio, with :attr:`fetch_access`)."""
        ...

    def close(self) -> None: ...
