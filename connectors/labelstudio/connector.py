"""Label Studio REST connector: the calls labelloop makes, with retries and one clear error each.

Only this module speaks Label Studio's HTTP API (conversions live in ``formats.labelstudio``).

- Writes of predictions go through the bulk ``/api/projects/{id}/import/predictions`` endpoint
  and are idempotent per (task, model_version): before each chunk is sent, and again before it
  is retried, the tasks that already hold a prediction of that version are dropped from it, so
  a lost answer or a rerun never duplicates one. A :class:`~labelloop.connectors.journal.PushJournal`
  makes a pool push resumable without re-reading what is known to be done.
- Pulls read tasks changed since a cursor (Data Manager filter ``tasks:updated_at >=``; Label
  Studio bumps a task's ``updated_at`` whenever one of its annotations is created, edited or
  deleted). The cursor is the *server's* clock (its ``Date`` header) taken before the listing
  starts, so an edit made while a pull runs is read again next time rather than lost.
- Personal access tokens (JWT refresh tokens) are exchanged at ``/api/token/refresh`` for
  short-lived access tokens, renewed before they expire; legacy tokens use ``Token``.

Reviews (accept/reject by a reviewer) exist only in Label Studio Enterprise; the edition is read
from ``/api/version`` and a Community server yields ``reviews_available=False`` instead of errors.
"""

from __future__ import annotations

import base64
import email.utils
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import requests

from labelloop.connectors.journal import PushJournal
from labelloop.errors import ConfigError, RemoteError
from labelloop.types import ImageItem, Provenance, Source

log = logging.getLogger(__name__)
RETRY_STATUS = {429, 500, 502, 503, 504}
Progress = Callable[[int], None]  # called with how many more tasks are done


# ---------------------------------------------------------------------- auth


def _jwt_claims(token: str) -> dict[str, Any] | None:
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        return json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, json.JSONDecodeError):
        return None


_access: dict[tuple[str, str], tuple[str, float]] = {}
_access_lock = threading.Lock()


def auth_header(token: str | None, url: str | None = None, *, renew: bool = False) -> dict[str, str]:
    """Legacy tokens use "Token"; a personal access token (a JWT refresh token) is exchanged for an
    access token, cached until shortly before it expires."""
    if not token:
        return {}
    claims = _jwt_claims(token)
    if claims is None:
        return {"Authorization": f"Token {token}"}
    if claims.get("token_type") != "refresh" or url is None:
        return {"Authorization": f"Bearer {token}"}
    key = (url.rstrip("/"), token)
    with _access_lock:
        cached = _access.get(key)
        if cached and cached[1] > time.time() + 30 and not renew:
            return {"Authorization": f"Bearer {cached[0]}"}
        try:
            r = requests.post(f"{key[0]}/api/token/refresh", json={"refresh": token}, timeout=30)
        except requests.RequestException as e:
            raise RemoteError(
                f"Label Studio at {key[0]} is unreachable ({type(e).__name__}); "
                "check LABELLOOP_LABEL_STUDIO_URL and that the server is up"
            ) from e
        if not r.ok:
            raise RemoteError(
                f"Label Studio refused the personal access token ({r.status_code}): it is expired or "
                "revoked; create a new one (Account & Settings) and set LABELLOOP_LABEL_STUDIO_TOKEN"
            )
        access = r.json()["access"]
        exp = float((_jwt_claims(access) or {}).get("exp") or time.time() + 240)
        _access[key] = (access, exp)
        return {"Authorization": f"Bearer {access}"}


# ---------------------------------------------------------------------- client


class LabelStudioClient:
    def __init__(
        self, url: str, token: str | None, retries: int = 4, timeout: float = 120.0, backoff_s: float = 0.5
    ) -> None:
        if not url:
            raise ConfigError("no Label Studio URL: set LABELLOOP_LABEL_STUDIO_URL or pass --url")
        self.url = url.rstrip("/")
        self.token = token
        self.retries, self.timeout, self.backoff_s = retries, timeout, backoff_s
        self.session = requests.Session()

    def send(self, method: str, path: str, retries: int | None = None, **kw: Any) -> requests.Response:
        """A successful response; connection errors and 429/5xx are retried with backoff."""
        url = f"{self.url}{path}"
        retries = self.retries if retries is None else retries
        renewed = False
        attempt = 0
        while True:
            try:
                headers = auth_header(self.token, self.url)
                r = self.session.request(method, url, timeout=self.timeout, headers=headers, **kw)
            except requests.RequestException as e:
                if attempt >= retries:
                    raise RemoteError(
                        f"Label Studio at {self.url} is unreachable ({type(e).__name__}) after "
                        f"{attempt + 1} attempt(s); check LABELLOOP_LABEL_STUDIO_URL and that it is up"
                    ) from e
            else:
                if r.status_code == 401 and not renewed and _jwt_claims(self.token or "") is not None:
                    auth_header(self.token, self.url, renew=True)  # the access token may have expired
                    renewed = True
                    continue
                if r.status_code in (401, 403):
                    raise RemoteError(
                        f"Label Studio refused {method} {path} ({r.status_code}): "
                        "set LABELLOOP_LABEL_STUDIO_TOKEN to a valid token with access to the project",
                        r.status_code,
                    )
                if r.status_code not in RETRY_STATUS or attempt >= retries:
                    if not r.ok:
                        raise RemoteError(
                            f"Label Studio answered {r.status_code} to {method} {path}"
                            f"{f' after {attempt + 1} attempts' if attempt else ''}: {_detail(r)}",
                            r.status_code,
                        )
                    return r
            time.sleep(min(2**attempt * self.backoff_s, 10))
            attempt += 1

    def request(self, method: str, path: str, retries: int | None = None, **kw: Any) -> Any:
        """JSON of a successful call."""
        r = self.send(method, path, retries, **kw)
        return r.json() if r.content else None

    def versions_present(self, project: int, task_ids: Sequence[int]) -> dict[int, set[str]]:
        """Model versions of the predictions each task already has."""
        query = json.dumps({"selectedItems": {"all": False, "included": list(task_ids)}})
        data = self.request(
            "GET",
            "/api/tasks",
            params={
                "project": project,
                "query": query,
                "page_size": len(task_ids) or 1,
                "fields": "all",
                "include": "id,predictions_model_versions",
            },
        )
        out: dict[int, set[str]] = {}
        for t in data.get("tasks", []):
            raw = t.get("predictions_model_versions") or ""
            out[int(t["id"])] = {v.strip() for v in raw.split(",") if v.strip()}
        return out


def _detail(r: requests.Response) -> str:
    try:
        body = r.json()
    except ValueError:
        return r.text[:300] if "html" not in r.headers.get("content-type", "") else r.reason
    if isinstance(body, dict):
        for key in ("validation_errors", "detail", "error"):
            if body.get(key):
                return str(body[key])[:500]
    return str(body)[:500]


# ---------------------------------------------------------------------- results


@dataclass(frozen=True)
class PushSummary:
    tasks: int  # predictions offered
    written: int  # predictions created by this call
    already_there: int  # tasks that held a prediction of this model_version (server says so)
    resumed: int  # tasks the journal lists as done (not re-checked)
    chunks: int
    seconds: float


@dataclass
class PullCursor:
    """Where the last pull stopped: the server time it started at (ISO-8601, UTC)."""

    since: str | None = None

    def to_json(self) -> str:
        return json.dumps({"since": self.since})

    @classmethod
    def from_json(cls, text: str) -> PullCursor:
        return cls(json.loads(text).get("since"))


@dataclass
class PullResult:
    items: list[ImageItem]  # one per annotation (cancelled ones too), with its metadata
    tasks: dict[int, list[int]]  # every changed task -> ids of the annotations it holds now
    cursor: PullCursor
    edition: str
    reviews_available: bool
    users: dict[int, str] = field(default_factory=dict)


# ---------------------------------------------------------------------- connector


class LabelStudioConnector(LabelStudioClient):
    """Project setup, imports, pool pushes and pulls."""

    _version: dict[str, Any] | None = None

    # -------------------------------------------------------------- server and project

    def version(self) -> dict[str, Any]:
        if self._version is None:
            self._version = self.request("GET", "/api/version") or {}
        return self._version

    @property
    def edition(self) -> str:
        return str(self.version().get("edition") or "Community")

    def server_time(self) -> datetime:
        """The server's clock (its Date header), so cursors never depend on this machine's clock."""
        r = self.send("GET", "/api/version")
        date = r.headers.get("Date")
        return email.utils.parsedate_to_datetime(date) if date else datetime.now(UTC)

    def project(self, project: int) -> dict[str, Any]:
        return self.request("GET", f"/api/projects/{project}")

    def users(self) -> dict[int, str]:
        """User id -> email (what Label Studio shows as the annotator)."""
        data = self.request("GET", "/api/users")
        return {int(u["id"]): _user_name(u) for u in data or []}

    def _user(self, users: dict[int, str], uid: Any) -> str | None:
        """Email of a user id; one not listed in the organisation (removed, invited) is read alone."""
        if uid is None:
            return None
        uid = int(uid)
        if uid not in users:
            try:
                users[uid] = _user_name(self.request("GET", f"/api/users/{uid}", retries=1))
            except RemoteError:
                users[uid] = str(uid)
        return users[uid]

    def create_project(self, title: str, label_config: str, description: str = "") -> int:
        data = self.request(
            "POST",
            "/api/projects",
            json={"title": title, "label_config": label_config, "description": description},
        )
        return int(data["id"])

    def connect_ml_backend(self, project: int, url: str, title: str = "labelloop") -> int:
        return int(
            self.request("POST", "/api/ml", json={"url": url, "project": project, "title": title})["id"]
        )

    def retrieve_predictions(self, project: int) -> dict:
        """What the Data Manager's "Retrieve predictions" action does, for every task."""
        return self.request(
            "POST",
            f"/api/dm/actions?id=retrieve_tasks_predictions&project={project}",
            json={"selectedItems": {"all": True, "excluded": []}},
        )

    def set_model_version(self, project: int, version: str) -> None:
        """Label Studio shows, and sorts by, predictions of the project's model_version only."""
        self.request("PATCH", f"/api/projects/{project}", json={"model_version": version})

    def create_uncertainty_view(self, project: int, title: str = "Most uncertain first") -> int:
        """The saved Data Manager tab ordered by prediction score ascending (made once per project)."""
        views = self.request("GET", "/api/dm/views", params={"project": project}) or []
        for v in views:
            if (v.get("data") or {}).get("title") == title:
                return int(v["id"])
        data = self.request(
            "POST",
            "/api/dm/views",
            json={"project": project, "data": {"title": title, "ordering": ["tasks:predictions_score"]}},
        )
        return int(data["id"])

    # -------------------------------------------------------------- imports

    def upload_images(self, project: int, paths: Sequence[Path], batch: int = 50) -> list[int]:
        """Upload files to Label Studio's own storage; task ids in the order of ``paths``."""
        ids: list[int] = []
        for lo in range(0, len(paths), batch):
            files = []
            for i, p in enumerate(paths[lo : lo + batch]):
                try:
                    data = Path(p).read_bytes()
                except OSError as e:
                    raise ConfigError(f"cannot read image {p} ({e}); fix or drop it") from e
                files.append((f"file{i}", (Path(p).name, data)))  # one form field per file
            got = self.request("POST", f"/api/projects/{project}/import?return_task_ids=true", files=files)
            ids += got.get("task_ids", [])
        return ids

    def import_tasks(self, project: int, data: Sequence[Mapping[str, Any]], batch: int = 1000) -> list[int]:
        """Tasks from data dicts: image URLs, cloud URIs (``s3://``, ``gs://``, ``azure-blob://``,
        resolved by a connected storage of that bucket) or ``/data/local-files/?d=...`` paths."""
        ids: list[int] = []
        for lo in range(0, len(data), batch):
            got = self.request(
                "POST",
                f"/api/projects/{project}/import?return_task_ids=true",
                json=list(data[lo : lo + batch]),
            )
            ids += got.get("task_ids", [])
        return ids

    def add_local_storage(
        self, project: int, path: Path, *, regex: str = r".*\.(jpe?g|png|bmp|webp|tiff?)$", title: str = ""
    ) -> int:
        """Serve a folder of the Label Studio host as tasks (one per matching file) and sync it.

        Label Studio needs ``LOCAL_FILES_SERVING_ENABLED=true`` and the folder under
        ``LOCAL_FILES_DOCUMENT_ROOT``; it says so when either is wrong and this names both.
        """
        body = {
            "project": project,
            "path": str(Path(path).resolve()),
            "regex_filter": regex,
            "use_blob_urls": True,
            "title": title or Path(path).name,
        }
        try:
            storage = self.request("POST", "/api/storages/localfiles", retries=0, json=body)
        except RemoteError as e:
            raise RemoteError(
                f"{e}. Local files need LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true and the folder "
                "under LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT on the Label Studio host"
            ) from e
        self.request("POST", f"/api/storages/localfiles/{storage['id']}/sync")
        return int(storage["id"])

    def add_cloud_storage(self, project: int, uri: str, **options: Any) -> int:
        """Connect an S3 / GCS / Azure bucket prefix as import storage (presigned URLs) and sync it.

        ``options`` are Label Studio's storage fields (``aws_access_key_id``, ``google_application_
        credentials``, ``account_name``...); Label Studio checks the connection and its answer is
        passed on when it fails.
        """
        kinds = {"s3": "s3", "gs": "gcs", "azure-blob": "azure"}
        scheme, _, rest = uri.partition("://")
        if scheme not in kinds or not rest:
            raise ConfigError(f"{uri!r} is not a bucket URI; use s3://, gs:// or azure-blob://bucket/prefix")
        bucket, _, prefix = rest.partition("/")
        kind = kinds[scheme]
        body = {
            "project": project,
            ("container" if kind == "azure" else "bucket"): bucket,
            "prefix": prefix,
            "use_blob_urls": True,
            "presign": True,
            "regex_filter": options.pop("regex_filter", r".*\.(jpe?g|png|bmp|webp|tiff?)$"),
            "title": options.pop("title", uri),
            **options,
        }
        try:  # not retried: Label Studio checks the connection first, and its failure is final
            storage = self.request("POST", f"/api/storages/{kind}", retries=0, json=body)
        except RemoteError as e:
            raise RemoteError(
                f"Label Studio could not connect {uri} as {kind} storage; check the bucket, prefix, "
                f"credentials and endpoint options ({e})",
                e.status,
            ) from e
        self.request("POST", f"/api/storages/{kind}/{storage['id']}/sync")
        return int(storage["id"])

    # -------------------------------------------------------------- tasks

    def tasks(
        self, project: int, *, since: str | None = None, page_size: int = 100, include: str | None = None
    ) -> Iterator[dict[str, Any]]:
        """Tasks in id order (all their fields, or the ``include`` list); with ``since``, only those
        updated at or after it."""
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
                data = self.request("GET", "/api/tasks", params=params)
            except RemoteError as e:
                if e.status == 404 and page > 1:  # the project shrank while we read it
                    return
                raise
            batch = data.get("tasks", []) if isinstance(data, dict) else data
            yield from batch
            seen += len(batch)
            total = data.get("total", 0) if isinstance(data, dict) else 0
            if not batch or seen >= total:
                return
            page += 1

    def set_task_data(
        self,
        tasks: Iterable[Mapping[str, Any]],
        values: Mapping[int, Mapping[str, Any]],
        workers: int = 4,
        progress: Progress | None = None,
    ) -> int:
        """Merge ``values[task_id]`` into each task's data (Label Studio has no bulk update, so it
        is one PATCH per task, a few in parallel); returns how many tasks changed."""
        todo = []
        for t in tasks:
            extra = values.get(int(t["id"]))
            data = dict(t.get("data") or {})
            if extra and any(data.get(k) != v for k, v in extra.items()):
                todo.append((int(t["id"]), {**data, **extra}))

        def patch(job: tuple[int, dict[str, Any]]) -> None:
            self.request("PATCH", f"/api/tasks/{job[0]}", json={"data": job[1]})
            if progress:
                progress(1)

        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(patch, todo))
        return len(todo)

    # -------------------------------------------------------------- push

    def push_pool(
        self,
        project: int,
        predictions: Sequence[Mapping[str, Any]],
        *,
        journal: PushJournal | None = None,
        chunk: int = 500,
        progress: Progress | None = None,
    ) -> PushSummary:
        """Import predictions (``task``, ``result``, ``score``, ``model_version``) in bulk chunks.

        Each chunk is checked against the server first (``predictions_model_versions``), so tasks
        that already hold a prediction of the same version are skipped: a rerun, a retry after a
        lost answer or a chunk left in flight by a crash writes nothing twice.
        """
        t0 = time.monotonic()
        done = journal.done if journal else set()
        todo = [p for p in predictions if int(p["task"]) not in done]
        resumed = len(predictions) - len(todo)
        if progress and resumed:
            progress(resumed)
        written = already = chunks = 0
        for lo in range(0, len(todo), max(1, chunk)):
            part = todo[lo : lo + chunk]
            ids = [int(p["task"]) for p in part]
            if journal:
                journal.begin(ids)
            n = self._push_chunk(project, part)
            written += n
            already += len(part) - n
            chunks += 1
            if journal:
                journal.commit(ids, written=n)
            if progress:
                progress(len(part))
        return PushSummary(len(predictions), written, already, resumed, chunks, time.monotonic() - t0)

    def _push_chunk(self, project: int, part: Sequence[Mapping[str, Any]]) -> int:
        last: RemoteError | None = None
        for attempt in range(self.retries + 1):
            try:
                # re-read what exists on every attempt: a POST whose answer was lost may have landed
                present = self.versions_present(project, [int(p["task"]) for p in part])
                todo = [p for p in part if p.get("model_version") not in present.get(int(p["task"]), set())]
                if not todo:
                    return 0
                self.request(
                    "POST", f"/api/projects/{project}/import/predictions", retries=0, json=list(todo)
                )
                return len(todo)
            except RemoteError as e:
                if e.status is not None and 400 <= e.status < 500 and e.status != 429:
                    raise  # a bad payload or a bad token: retrying cannot help
                last = e
                time.sleep(min(2**attempt * self.backoff_s, 10))
        raise RemoteError(f"{last}; the journal records what was written, rerun to resume") from last

    # -------------------------------------------------------------- pull

    def pull(
        self, project: int, cursor: PullCursor | None = None, *, image_key: str | None = None
    ) -> PullResult:
        """Every annotation of the tasks changed since ``cursor`` with what Label Studio recorded."""
        from labelloop.connectors.formats.labelstudio import ls_to_regions, parse_label_config

        cursor = cursor or PullCursor()
        started = self.server_time() - timedelta(seconds=1)  # Date has whole seconds
        if image_key is None:
            images = parse_label_config(self.project(project).get("label_config") or "").images
            image_key = next(iter(images.values()), "image")
        users = self.users()
        reviews_available = self.edition.lower() == "enterprise"
        trail = self._reviews(project, users) if reviews_available else {}
        items: list[ImageItem] = []
        changed: dict[int, list[int]] = {}
        for task in self.tasks(project, since=cursor.since):
            tid = int(task["id"])
            preds = {int(p["id"]): p for p in task.get("predictions") or []}
            anns = sorted(task.get("annotations") or [], key=lambda a: int(a["id"]))
            changed[tid] = [int(a["id"]) for a in anns]
            for ann in anns:
                reviews = trail.get(int(ann["id"]), []) if reviews_available else None
                last = reviews[-1] if reviews else None
                prov = Provenance(
                    source=Source.HUMAN,
                    annotator=self._user(users, ann.get("completed_by")),
                    reviewer=last["reviewer"] if last and last["accepted"] else None,
                    created_at=ann.get("created_at"),
                    updated_at=ann.get("updated_at"),
                )
                result = ann.get("result") or []
                parent = preds.get(ann.get("parent_prediction") or -1)
                meta: dict[str, Any] = {
                    "ls_project": project,
                    "ls_task_id": tid,
                    "ls_annotation_id": int(ann["id"]),
                    "lead_time": ann.get("lead_time"),
                    "was_cancelled": bool(ann.get("was_cancelled")),
                    "ground_truth": bool(ann.get("ground_truth")),
                    "parent_prediction": ann.get("parent_prediction"),
                    "parent_model_version": parent.get("model_version") if parent else None,
                    "parent_annotation": ann.get("parent_annotation"),
                    "updated_by": self._user(users, ann.get("updated_by")),
                    "last_action": ann.get("last_action"),
                }
                if reviews is not None:
                    meta["reviews"] = reviews
                    meta["review_state"] = (
                        None if last is None else "accepted" if last["accepted"] else "rejected"
                    )
                items.append(
                    ImageItem(
                        uri=str((task.get("data") or {}).get(image_key) or ""),
                        width=int(next((r["original_width"] for r in result if "original_width" in r), 0)),
                        height=int(next((r["original_height"] for r in result if "original_height" in r), 0)),
                        regions=[r.with_(score=None) for r in ls_to_regions(result, prov)],  # human
                        metadata=meta,
                    )
                )
        since = started.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000000Z")
        return PullResult(items, changed, PullCursor(since), self.edition, reviews_available, users)

    def _reviews(self, project: int, users: dict[int, str]) -> dict[int, list[dict[str, Any]]]:
        """Enterprise review trail per annotation (who accepted or rejected it, when), one call for
        the whole project (``annotation__task__project``) instead of one per annotation."""
        data = self.request("GET", "/api/annotation-reviews/", params={"annotation__task__project": project})
        rows = data.get("results", []) if isinstance(data, dict) else data or []
        out: dict[int, list[dict[str, Any]]] = {}
        for r in sorted(rows, key=lambda r: (r.get("created_at") or "", r.get("id") or 0)):
            out.setdefault(int(r["annotation"]), []).append(
                {
                    "reviewer": self._user(users, r.get("created_by")),
                    "accepted": r.get("accepted"),
                    "created_at": r.get("created_at"),
                    "comment": r.get("comment"),
                }
            )
        return out


def _user_name(u: Mapping[str, Any]) -> str:
    return str(u.get("email") or u.get("username") or u["id"])


def push_predictions(
    url: str, token: str | None, project: int, predictions: Iterable[dict[str, Any]], *, chunk: int = 500
) -> int:
    """Bulk import, idempotent per (task, model_version); returns how many were written."""
    return LabelStudioConnector(url, token).push_pool(project, list(predictions), chunk=chunk).written
