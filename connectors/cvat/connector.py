"""CVAT connector on cvat-sdk: create tasks, push prelabels, pull annotations with their QA trail.

What CVAT offers for uncertainty, and what this module does with it:

- every shape carries a ``score`` (0..1) next to ``source``; prelabels are written with the
  model's confidence as ``score`` and ``source="auto"`` (CVAT's own marker for machine-made
  shapes, the same one ``cvat-cli task auto-annotate`` sets), so the sync can tell them from
  ``manual`` / ``semi-auto`` / ``file`` / ``consensus`` shapes that a person drew or touched;
- tasks and jobs have no custom sortable field: jobs can be filtered and sorted only by their own
  fields (id, stage, state, assignee, updated_date...). So ordering is carried by the data itself:
  :meth:`CvatConnector.create_task` uploads frames least-confident first with
  ``sorting_method="predefined"`` (CVAT keeps that order), and ``segment_size`` cuts them into
  jobs, so job 1 holds the hardest frames and ``sort=id`` is "most uncertain first";
  :meth:`CvatConnector.job_uncertainty` reports each job's mean and minimum confidence for the
  QA lead to assign reviewers from.

Writes are bulk (one PATCH of task annotations per chunk of frames), retried with backoff, and
resumable: a small JSON state file records which frames are in CVAT and which chunk was in
flight, and a chunk whose response was lost is reconciled against the server before it is sent
again, so a rerun never duplicates shapes. Shape conversion lives in
``labelloop.connectors.formats.cvat``; this module knows nothing of torch.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import urllib3
from cvat_sdk import Client, models
from cvat_sdk.api_client import Configuration
from cvat_sdk.api_client.exceptions import ApiException, OpenApiException
from cvat_sdk.api_client.model_utils import validate_and_convert_types
from cvat_sdk.core.client import AccessTokenCredentials, Config, PasswordCredentials
from cvat_sdk.core.exceptions import BackgroundRequestException
from PIL import Image

from labelloop.connectors.formats import cvat as fmt
from labelloop.connectors.formats.cvat import MACHINE_SOURCES
from labelloop.connectors.journal import PushJournal
from labelloop.errors import ConfigError, FetchError, RemoteError
from labelloop.settings import Settings, load_settings
from labelloop.types import ImageItem, Provenance, Region, Source

log = logging.getLogger(__name__)
T = TypeVar("T")

REVIEW_STAGES = frozenset({"validation", "acceptance"})
# how far back each pull lists again, for writes that commit after a newer one was listed
PULL_OVERLAP = timedelta(seconds=5)
_CFG = Configuration()


# ---------------------------------------------------------------------- results


@dataclass(frozen=True)
class TaskLabels:
    ids: dict[str, int]  # top-level label name -> id
    names: dict[int, str]  # every label id, skeleton sublabels too -> name
    attribute_ids: dict[str, dict[str, int]]  # label name -> attribute name -> spec id
    attribute_names: dict[int, str]  # spec id -> attribute name


@dataclass(frozen=True)
class CreatedTask:
    task_id: int
    frames: list[str]  # frame names in CVAT's frame order (least confident first when scored)
    job_ids: list[int]


@dataclass(frozen=True)
class PushReport:
    task_id: int
    pushed_frames: int  # frames written by this call
    skipped_frames: int  # frames the state file says are already in CVAT
    shapes: int
    requests: int  # annotation writes sent (a retried chunk counts each try)


@dataclass(frozen=True)
class JobUncertainty:
    job_id: int
    start_frame: int
    stop_frame: int
    mean_confidence: float | None
    min_confidence: float | None
    stage: str
    assignee: str | None


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
        """A reply may leave the issue's own date alone, so its newest comment counts too."""
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


@dataclass
class PullCursor:
    """Where the last pull stopped; store ``to_json()`` and pass it back to pull incrementally.

    ``annotators`` remembers who had each job while it was in the annotation stage, because CVAT
    keeps only the current assignee: once a job moves to validation the assignee is the reviewer.
    """

    since: str | None = None
    annotators: dict[int, str] = field(default_factory=dict)
    # what was read within PULL_OVERLAP of ``since``: "job:ID" / "issue:ID" / "report:ID" -> state
    seen: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(
            {
                "since": self.since,
                "annotators": {str(k): v for k, v in self.annotators.items()},
                "seen": self.seen,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> PullCursor:
        d = json.loads(text)
        annotators = {int(k): v for k, v in (d.get("annotators") or {}).items()}
        # cursors written before issues and reports were remembered keyed jobs by bare id
        seen = {(f"job:{k}" if k.isdigit() else k): v for k, v in (d.get("seen") or {}).items()}
        return cls(d.get("since"), annotators, seen)

    def is_news(self, key: str, stamp: str, state: str | None = None) -> bool:
        """Dated within ``PULL_OVERLAP`` of the cursor or later, and not read in this state."""
        floor = _shift(self.since, -PULL_OVERLAP)
        return (floor is None or stamp >= floor) and self.seen.get(key) != (state or stamp)


@dataclass
class PullResult:
    items: list[ImageItem]  # frames of annotation jobs changed since the cursor
    ground_truth: list[ImageItem]  # frames of ground-truth jobs changed since the cursor
    jobs: list[JobQA]
    quality_reports: list[dict[str, Any]]  # made since the cursor, as CVAT sends them (QualityReport)
    cursor: PullCursor


# ---------------------------------------------------------------------- push state


def _signature(shapes: Iterable[Mapping[str, Any]]) -> list[str]:
    """Order-free identity of written shapes, to recognise a chunk CVAT applied but did not confirm."""
    return sorted(
        json.dumps(
            [s["frame"], s["label_id"], str(s["type"]), [round(float(p), 2) for p in s.get("points", [])]]
        )
        for s in shapes
    )


# ---------------------------------------------------------------------- connector


class CvatConnector:
    """One authenticated cvat-sdk client plus the retry, resume and conversion rules of labelloop."""

    def __init__(
        self,
        url: str,
        *,
        user: str | None = None,
        password: str | None = None,
        access_token: str | None = None,
        organization: str | None = None,
        retries: int = 4,
        backoff_s: float = 0.5,
        poll_s: float = 0.5,
    ) -> None:
        if not url:
            raise ConfigError("CVAT URL is empty: set CVAT_URL (e.g. http://localhost:8080)")
        self.url = url.rstrip("/")
        self.retries, self.backoff_s = retries, backoff_s
        self.client = self._with_retry(
            f"connect to {self.url}",
            lambda: Client(self.url, config=Config(status_check_period=poll_s), check_server_version=False),
        )
        self.client.logger.setLevel(logging.WARNING)
        if access_token:
            self.client.login(AccessTokenCredentials(access_token))
        elif user and password:
            try:
                self._with_retry("log in", lambda: self.client.login(PasswordCredentials(user, password)))
            except RemoteError as e:
                if "HTTP 400" not in str(e):
                    raise
                raise ConfigError(
                    f"CVAT at {self.url} refused the login of user {user!r}: check CVAT_USER/CVAT_PASSWORD"
                ) from e
        else:
            raise ConfigError(
                "CVAT credentials missing: set CVAT_USER and CVAT_PASSWORD, or CVAT_ACCESS_TOKEN"
            )
        if organization is not None:
            self.client.organization_slug = organization
        about = self._with_retry("read /api/server/about", self.client.get_server_version)
        self.server_version = str(about)

    @classmethod
    def from_settings(cls, settings: Settings | None = None, **kwargs: Any) -> CvatConnector:
        """From ``settings.cvat`` (CVAT_URL, CVAT_USER + CVAT_PASSWORD or CVAT_ACCESS_TOKEN, CVAT_ORG)."""
        c = (settings or load_settings()).cvat
        return cls(
            c.url or "",
            user=c.user,
            password=c.password,
            access_token=c.access_token,
            organization=c.org,
            **kwargs,
        )

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> CvatConnector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ errors and retries

    def _with_retry(self, what: str, fn: Callable[[], T], *, retry: bool = True) -> T:
        """Run one request; retry 5xx, 408/429 and connection failures with exponential backoff."""
        attempts = self.retries + 1 if retry else 1
        last: Exception | None = None
        for attempt in range(attempts):
            try:
                return fn()
            except ApiException as e:
                if e.status in (401, 403):
                    raise ConfigError(
                        f"CVAT at {self.url} refused to {what} (HTTP {e.status}): check the CVAT "
                        f"user/password or token and its permissions. {_detail(e)}"
                    ) from e
                if e.status is not None and e.status < 500 and e.status not in (408, 429):
                    raise RemoteError(
                        f"CVAT at {self.url} rejected: {what} (HTTP {e.status}): {_detail(e)}"
                    ) from e
                last = e
            except (urllib3.exceptions.HTTPError, OSError) as e:
                last = e
            if attempt + 1 < attempts:
                delay = self.backoff_s * 2**attempt
                log.warning("CVAT %s failed (%s); retrying in %.1fs", what, _short(last), delay)
                time.sleep(delay)
        raise RemoteError(
            f"CVAT at {self.url} is down or failing: could not {what} "
            f"after {attempts} attempt(s): {_short(last)}"
        ) from last

    # ------------------------------------------------------------------ tasks

    def create_task(
        self,
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
        names = [p.name for p in images]
        dupes = [n for n, c in Counter(names).items() if c > 1]
        if dupes:
            raise ConfigError(
                f"task {name!r}: image file names must be unique in a task; repeated: {dupes[:5]}"
            )
        for p in images:  # fail before anything exists on the server
            try:
                with Image.open(p) as im:
                    im.verify()
            except Exception as e:
                raise FetchError(
                    f"image {p} cannot be loaded ({type(e).__name__}: {e}); fix or drop it"
                ) from e
        if scores is not None:
            images.sort(key=lambda p: (scores.get(p.name) is None, scores.get(p.name) or 0.0))
        spec: dict[str, Any] = {"name": name}
        if project_id is not None:
            project = self._with_retry(
                f"read project {project_id}", lambda: self.client.projects.retrieve(project_id)
            )
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
        task_spec = _model(spec, models.TaskWriteRequest)
        task = self._with_retry(f"create task {name!r}", lambda: self.client.tasks.create(task_spec))
        params: dict[str, Any] = {"sorting_method": "predefined", "image_quality": 95}
        if chunk_size:
            params["chunk_size"] = chunk_size
        try:
            self._with_retry(
                f"upload {len(images)} images to task {task.id}",
                lambda: task.upload_data(images, params=params),
                retry=False,  # a data upload cannot be repeated on the same task
            )
        except BackgroundRequestException as e:
            raise RemoteError(
                f"CVAT could not build task {task.id} ({name!r}) from the images: {e}; "
                "the empty task was left in place for inspection"
            ) from e
        except RemoteError as e:
            raise RemoteError(f"{e}. Task {task.id} was created without data; delete it and retry") from e
        meta = self._with_retry(f"read task {task.id} frames", task.get_meta)
        jobs = self._with_retry(f"list jobs of task {task.id}", task.get_jobs)
        return CreatedTask(task.id, [f.name for f in meta.frames], sorted(j.id for j in jobs))

    def task_labels(self, task_id: int) -> dict[str, int]:
        return self._labels(task_id).ids

    def _labels(self, task_id: int) -> TaskLabels:
        task = self._with_retry(f"read task {task_id}", lambda: self.client.tasks.retrieve(task_id))
        labels = self._with_retry(f"read labels of task {task_id}", task.get_labels)
        out = TaskLabels({}, {}, {}, {})
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

    def _frame_index(self, task_id: int) -> tuple[dict[str, int], list[Any]]:
        meta, _ = self._with_retry(
            f"read frames of task {task_id}",
            lambda: self.client.api_client.tasks_api.retrieve_data_meta(task_id),
        )
        return {f.name: i for i, f in enumerate(meta.frames)}, list(meta.frames)

    # ------------------------------------------------------------------ push

    def push_prelabels(
        self,
        task_id: int,
        items: Sequence[ImageItem],
        *,
        state_path: Path | None = None,
        chunk_frames: int = 200,
    ) -> PushReport:
        """Write the items' regions as ``source="auto"`` shapes with their ``score``, in bulk.

        Items are matched to frames by file name. Frames the state file lists are skipped; a chunk
        left in flight by a crash or a lost response is checked against CVAT before resending.
        """
        info = self._labels(task_id)
        label_ids = info.ids
        used = sorted({r.label for it in items for r in it.regions})
        missing = [lb for lb in used if lb not in label_ids]
        if missing:
            raise ConfigError(
                f"labels {missing} are missing in CVAT task {task_id}; it has {sorted(label_ids)}. "
                "Add them to the task/project or map them with label_map; nothing was written"
            )
        index, _ = self._frame_index(task_id)
        frames: list[tuple[int, ImageItem]] = []
        for it in items:
            name = Path(it.uri.split("?")[0]).name
            if name not in index:
                raise ConfigError(
                    f"image {it.uri!r} is not a frame of CVAT task {task_id}; nothing was written"
                )
            frames.append((index[name], it))
        scope = {"server": self.url, "task_id": task_id}
        state = PushJournal.load(state_path, scope) if state_path else None
        if state and state.in_flight:
            self._reconcile(task_id, state)
        done = state.done if state else set()
        todo = sorted((f, it) for f, it in frames if f not in done)
        pushed = shapes_n = requests = 0
        for start in range(0, len(todo), max(1, chunk_frames)):
            chunk = todo[start : start + chunk_frames]
            shapes: list[dict[str, Any]] = []
            tags: list[dict[str, Any]] = []
            for f, it in chunk:
                s, t = fmt.regions_to_cvat(it.regions, f, label_ids, attribute_ids=info.attribute_ids)
                shapes.extend(s)
                tags.extend(t)
            for obj in (*shapes, *tags):
                obj["source"] = "auto"
                obj.pop("id", None)
            # shapes come from formats.cvat, whose output is tested against cvat-sdk's request models;
            # validating every shape again here cost more than the HTTP round trip (CVAT validates too)
            body = {"shapes": shapes, "tags": tags}
            chunk_frames_ids = [f for f, _ in chunk]
            if state:
                state.begin(chunk_frames_ids, signature=_signature(shapes))
            requests += self._send_chunk(task_id, body, chunk_frames_ids, shapes, state)
            pushed += len(chunk)
            shapes_n += len(shapes)
        return PushReport(task_id, pushed, len(frames) - len(todo), shapes_n, requests)

    def _send_chunk(
        self,
        task_id: int,
        body: Any,
        frames: list[int],
        shapes: list[dict[str, Any]],
        state: PushJournal | None,
    ) -> int:
        """One PATCH per try; after a failure, ask CVAT whether the chunk landed before resending."""
        sent = 0
        last: RemoteError | None = None
        for attempt in range(self.retries + 1):
            sent += 1
            try:
                self._with_retry(
                    f"write {len(shapes)} shapes on {len(frames)} frames of task {task_id}",
                    lambda: self.client.api_client.call_api(
                        f"/api/tasks/{task_id}/annotations/",
                        "PATCH",
                        query_params=[("action", "create")],
                        header_params={"Content-Type": "application/json"},
                        body=body,
                        _parse_response=False,
                    ),
                    retry=False,
                )
                break
            except RemoteError as e:
                if "rejected" in str(e):
                    raise
                last = e
            time.sleep(self.backoff_s * 2**attempt)
            try:
                if self._landed(task_id, frames, _signature(shapes)):
                    break
            except RemoteError as e:
                last = e
        else:
            where = (
                f"; {len(state.done)} frames are recorded in {state.path}, rerun to resume" if state else ""
            )
            raise RemoteError(f"{last}{where}") from last
        if state:
            state.commit(frames, shapes=len(shapes))
        return sent

    def _landed(self, task_id: int, frames: list[int], signature: list[str]) -> bool:
        """True when every shape of the chunk is on the server (CVAT applies a PATCH all-or-nothing)."""
        data, _ = self._with_retry(
            f"read annotations of task {task_id}",
            lambda: self.client.api_client.tasks_api.retrieve_annotations(task_id),
        )
        wanted = set(frames)
        on_server = Counter(
            _signature(
                s.to_dict() for s in data.shapes if s.frame in wanted and _source(s) in MACHINE_SOURCES
            )
        )
        return not (Counter(signature) - on_server)

    def _reconcile(self, task_id: int, state: PushJournal) -> None:
        flight = state.in_flight or {}
        frames = flight.get("ids", [])
        if self._landed(task_id, frames, flight.get("signature", [])):
            state.commit(frames, reconciled=True)
        else:
            state.in_flight = None
            state.save()

    # ------------------------------------------------------------------ uncertainty ordering

    def job_uncertainty(self, task_id: int, items: Sequence[ImageItem]) -> list[JobUncertainty]:
        """Per annotation job: mean/min image confidence of its frames, least confident job first."""
        index, _ = self._frame_index(task_id)
        conf = {index[Path(it.uri).name]: it.score for it in items if Path(it.uri).name in index}
        out = []
        for job in self._jobs(task_id, type="annotation"):
            vals = [v for f, v in conf.items() if job.start_frame <= f <= job.stop_frame and v is not None]
            out.append(
                JobUncertainty(
                    job.id,
                    job.start_frame,
                    job.stop_frame,
                    sum(vals) / len(vals) if vals else None,
                    min(vals) if vals else None,
                    _value(job.stage),
                    _username(job.assignee),
                )
            )
        return sorted(out, key=lambda j: (j.mean_confidence is None, j.mean_confidence or 0.0))

    # ------------------------------------------------------------------ pull

    def _jobs(self, task_id: int, *, since: str | None = None, **simple: Any) -> list[Any]:
        rule: dict[str, Any] = {"and": [{"==": [{"var": "task_id"}, task_id]}]}
        if since:
            rule["and"].append({">=": [{"var": "updated_date"}, since]})
        from cvat_sdk.core.helpers import get_paginated_collection

        return self._with_retry(
            f"list jobs of task {task_id}",
            lambda: get_paginated_collection(
                self.client.api_client.jobs_api.list_endpoint,
                filter=json.dumps(rule),
                sort="id",
                page_size=100,
                **simple,
            ),
        )

    def pull(self, task_id: int, cursor: PullCursor | None = None) -> PullResult:
        """Annotations and QA metadata of the jobs updated since ``cursor.since`` (all when None).

        CVAT stamps ``updated_date`` (and a comment's ``created_date``) when a write starts, so a
        slow write can commit after a pull read newer ones, dated below that pull's cursor. Each
        pull therefore reaches ``PULL_OVERLAP`` back and skips what it already read in the state
        it still has (``cursor.seen``): nothing is lost and nothing unchanged comes back.
        """
        cursor = cursor or PullCursor()
        annotators = dict(cursor.annotators)
        listed = self._jobs(task_id, since=_shift(cursor.since, -PULL_OVERLAP))
        jobs = [j for j in listed if cursor.is_news(f"job:{j.id}", _iso(j.updated_date))]
        issues = self._issues(task_id)
        active = [i for i in issues if cursor.is_news(f"issue:{i.id}", i.last_activity, i.state)]
        # a job whose only news is an issue or a reply comes back with its QA, without annotations
        qa_only = sorted({i.job_id for i in active} - {j.id for j in jobs})
        labels = self._labels(task_id)
        _, meta = self._frame_index(task_id) if jobs else ({}, [])
        items: list[ImageItem] = []
        gt: list[ImageItem] = []
        out_jobs: list[JobQA] = []
        for job in [*jobs, *(self._job(j) for j in qa_only)]:
            out_jobs.append(self._job_qa(task_id, job, issues))
            if job.id in qa_only:
                continue
            stage, assignee = _value(job.stage), _username(job.assignee)
            if stage == "annotation" and assignee:
                annotators[job.id] = assignee
            data, _ = self._with_retry(
                f"read annotations of job {job.id}",
                lambda job=job: self.client.api_client.jobs_api.retrieve_annotations(job.id),
            )
            is_gt = _value(job.type) == "ground_truth"
            prov_common = {
                "annotator": annotators.get(job.id),
                "reviewer": assignee if stage in REVIEW_STAGES else None,
                "updated_at": _iso(job.updated_date),
            }
            frame_items = self._to_items(task_id, job, data, meta, labels, prov_common)
            (gt if is_gt else items).extend(frame_items)
        all_reports = self._quality_reports(task_id)
        reports = [r for r in all_reports if cursor.is_news(f"report:{r['id']}", r["created_date"])]
        # everything read, with the date it is news by and the state it was read in
        read = [
            *((f"job:{j.id}", _iso(j.updated_date), _iso(j.updated_date)) for j in listed),
            *((f"issue:{i.id}", i.last_activity, i.state) for i in issues),
            *((f"report:{r['id']}", r["created_date"], r["created_date"]) for r in all_reports),
        ]
        news = [stamp for key, stamp, state in read if cursor.is_news(key, stamp, state)]
        newest = max(filter(None, [cursor.since, *news]), default=None)
        floor = _shift(newest, -PULL_OVERLAP)
        seen = {key: state for key, stamp, state in read if floor is None or stamp >= floor}
        return PullResult(items, gt, out_jobs, reports, PullCursor(newest, annotators, seen))

    def _job(self, job_id: int) -> Any:
        return self._with_retry(
            f"read job {job_id}", lambda: self.client.api_client.jobs_api.retrieve(job_id)
        )[0]

    @staticmethod
    def _job_qa(task_id: int, job: Any, issues: list[Issue]) -> JobQA:
        return JobQA(
            job.id,
            task_id,
            _value(job.type),
            _value(job.stage),
            _value(job.state),
            _username(job.assignee),
            _iso(job.updated_date),
            job.start_frame,
            job.stop_frame,
            [i for i in issues if i.job_id == job.id],
        )

    def _to_items(
        self,
        task_id: int,
        job: Any,
        data: Any,
        meta: list[Any],
        labels: TaskLabels,
        prov: dict[str, Any],
    ) -> list[ImageItem]:
        by_frame: dict[int, list[Region]] = {f: [] for f in range(job.start_frame, job.stop_frame + 1)}
        for kind in ("shapes", "tags"):
            for obj in getattr(data, kind):
                d = obj.to_dict()
                src = _source(obj)
                machine = src in MACHINE_SOURCES
                shapes, tags = ([d], []) if kind == "shapes" else ([], [d])
                f = d["frame"]
                size = (int(meta[f].width), int(meta[f].height)) if f < len(meta) else (None, None)
                regions = fmt.cvat_to_regions(
                    shapes,
                    tags,
                    labels.names,
                    width=size[0],
                    height=size[1],
                    attribute_names=labels.attribute_names,
                )
                for r in regions:
                    p = Provenance(
                        source=Source.PRELABEL if machine else Source.HUMAN,
                        model_version=r.provenance.model_version,
                        **prov,
                    )
                    attrs = {**r.attributes, "cvat_source": src}
                    rid = r.id or f"cvat:{kind[:-1]}:{d.get('id')}"
                    by_frame.setdefault(d["frame"], []).append(
                        r.with_(provenance=p, score=r.score if machine else None, attributes=attrs, id=rid)
                    )
        return [
            ImageItem(
                uri=meta[f].name if f < len(meta) else str(f),
                width=int(getattr(meta[f], "width", 0) or 0) if f < len(meta) else 0,
                height=int(getattr(meta[f], "height", 0) or 0) if f < len(meta) else 0,
                regions=regions,
                metadata={"cvat_task_id": task_id, "cvat_job_id": job.id, "cvat_frame": f},
            )
            for f, regions in sorted(by_frame.items())
        ]

    def _issues(self, task_id: int) -> list[Issue]:
        """Every issue of the task with its comments (one comment listing per job with issues)."""
        raw = self._raw_list("/api/issues", task_id=task_id)
        comments: dict[int, list[Comment]] = {}
        for job_id in sorted({i["job"] for i in raw}):
            for c in self._raw_list("/api/comments", job_id=job_id):
                owner = (c.get("owner") or {}).get("username")
                comments.setdefault(c["issue"], []).append(
                    Comment(c["id"], owner, c["message"], c["created_date"])
                )
        return [
            Issue(
                i["id"],
                i["job"],
                i["frame"],
                list(i.get("position") or []),
                bool(i.get("resolved")),
                (i.get("owner") or {}).get("username"),
                (i.get("assignee") or {}).get("username"),
                i["updated_date"],
                sorted(comments.get(i["id"], []), key=lambda c: c.id),
            )
            for i in raw
        ]

    def _quality_reports(self, task_id: int) -> list[dict[str, Any]]:
        """Task and job quality reports, newest first, as CVAT sends them.

        Read as JSON rather than through cvat-sdk's model: cvat-sdk 2.80 requires
        ``summary.jobs.completed``, which a CVAT 2.73 server does not send.
        """
        return self._raw_list("/api/quality/reports", task_id=task_id)

    def _raw_list(self, path: str, **params: Any) -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = []
        page = 1
        while True:
            query = {**params, "page": page, "page_size": 100}
            _, resp = self._with_retry(
                f"list {path}",
                lambda q=query: self.client.api_client.call_api(
                    path, "GET", query_params=list(q.items()), _parse_response=False, _check_status=True
                ),
            )
            body = json.loads(resp.data)
            results.extend(body["results"])
            if not body.get("next"):
                return results
            page += 1


# ---------------------------------------------------------------------- small functions


def _model(payload: dict[str, Any], model: type) -> Any:
    """Build a request model with cvat-sdk's validation, so a bad shape fails here, not in CVAT."""
    try:
        return validate_and_convert_types(payload, (model,), [model.__name__], True, True, _CFG)
    except (OpenApiException, TypeError, ValueError) as e:
        raise ConfigError(f"invalid CVAT {model.__name__}: {e}") from e


def _detail(e: ApiException) -> str:
    body = e.body.decode(errors="replace") if isinstance(e.body, bytes) else str(e.body or e.reason)
    return body[:500]


def _short(e: Exception | None) -> str:
    if isinstance(e, ApiException):
        return f"HTTP {e.status} {_detail(e)}"
    return f"{type(e).__name__}: {str(e)[:300]}"


def _value(v: Any) -> Any:
    return getattr(v, "value", v)


def _source(obj: Any) -> str:
    src = obj.get("source") if isinstance(obj, dict) else getattr(obj, "source", None)
    return str(_value(src) or "manual")


def _username(user: Any) -> str | None:
    return getattr(user, "username", None) if user else None


def _shift(stamp: str | None, delta: timedelta) -> str | None:
    """A CVAT timestamp moved by ``delta``, in the same format (so string order is time order)."""
    if stamp is None:
        return None
    return _iso(
        datetime.fromisoformat(stamp.replace("Z", "+00:00")).astimezone(UTC).replace(tzinfo=None) + delta
    )


def _iso(d: Any) -> str:
    """CVAT's own timestamp format (what its filters compare against)."""
    if isinstance(d, str):
        return d
    return (
        d.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        if d.tzinfo is None or d.utcoffset().total_seconds() == 0
        else d.isoformat()
    )


__all__ = [
    "MACHINE_SOURCES",
    "Comment",
    "CreatedTask",
    "CvatConnector",
    "Issue",
    "JobQA",
    "JobUncertainty",
    "PullCursor",
    "PullResult",
    "PushReport",
]
