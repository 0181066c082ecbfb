"""Images into a Label Studio project, each once.

Uploaded files are made tasks in two steps so that every task carries its image's sha256 from
the moment it exists: the files are stored as file uploads (``commit_to_project=false``), then
one JSON import creates their tasks with ``data = {<image key>: "/data/upload/...", "sha256":
...}``. Before a chunk is imported the project's tasks are read for the hashes they hold, and a
chunk whose answer was lost is checked again before it is resent, so a rerun after a crash (or a
retry after a lost answer) never makes a second task of an image. A chunk that died between the
two steps leaves unused file uploads behind, never a task.

URL and cloud-URI imports are idempotent by the URI itself; a folder of the Label Studio host or a
bucket prefix is connected once as storage (an existing storage of the same path or prefix is
synced again instead of added twice, which would import every file again).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from labelloop.connectors.labelstudio.client import LabelStudioClient
from labelloop.connectors.labelstudio.tasks import iter_tasks
from labelloop.connectors.platform import ImportReport, Progress
from labelloop.errors import ConfigError, RemoteError
from labelloop.fsutil import sha256_file
from labelloop.retry import retry

SHA_FIELD = "sha256"  # the task data field holding the image's content hash
MEDIA_URL = "/data/"  # where Label Studio serves its file uploads (its MEDIA_URL)
IMAGE_REGEX = r".*\.(jpe?g|png|bmp|webp|tiff?)$"


def images_present(client: LabelStudioClient, project: int) -> dict[str, int]:
    """sha256 -> task id of every task whose data records its image's hash."""
    out: dict[str, int] = {}
    for t in iter_tasks(client, project, include="id,data", page_size=1000):
        sha = (t.get("data") or {}).get(SHA_FIELD)
        if isinstance(sha, str) and sha:
            out.setdefault(sha, int(t["id"]))
    return out


def hash_images(paths: Sequence[Path]) -> list[tuple[Path, str]]:
    out = []
    for p in paths:
        try:
            out.append((Path(p), sha256_file(p)))
        except OSError as e:
            raise ConfigError(f"cannot read image {p} ({e}); fix or drop it") from e
    return out


def upload_images(
    client: LabelStudioClient,
    project: int,
    paths: Sequence[Path],
    *,
    image_key: str = "image",
    batch: int = 50,
    progress: Progress | None = None,
) -> ImportReport:
    """Upload the files not already in the project (by sha256) to Label Studio's own storage."""
    t0 = time.monotonic()
    hashed = hash_images(paths)
    present = images_present(client, project)
    todo: dict[str, Path] = {}
    for p, sha in hashed:
        if sha not in present:
            todo.setdefault(sha, p)  # the same bytes twice in one call make one task
    if progress and len(hashed) > len(todo):
        progress(len(hashed) - len(todo))
    pending = list(todo.items())
    created: dict[str, int] = {}
    for lo in range(0, len(pending), max(1, batch)):
        part = pending[lo : lo + batch]
        created.update(_upload_chunk(client, project, part, image_key))
        if progress:
            progress(len(part))
    ids = {**present, **created}
    return ImportReport(
        container=project,
        created=len(created),
        skipped=len(hashed) - len(created),
        task_ids={sha: ids[sha] for _, sha in hashed},
        seconds=time.monotonic() - t0,
    )


def _upload_chunk(
    client: LabelStudioClient, project: int, part: Sequence[tuple[str, Path]], image_key: str
) -> dict[str, int]:
    files = []
    for i, (_, p) in enumerate(part):
        try:
            files.append((f"file{i}", (p.name, p.read_bytes())))  # one form field per file
        except OSError as e:
            raise ConfigError(f"cannot read image {p} ({e}); fix or drop it") from e
    stored = client.request("POST", f"/api/projects/{project}/import?commit_to_project=false", files=files)
    upload_ids = [int(i) for i in stored.get("file_upload_ids") or []]
    if len(upload_ids) != len(part):
        raise RemoteError(
            f"Label Studio stored {len(upload_ids)} of {len(part)} uploaded files in project {project}"
        )
    listed = client.request(
        "GET", f"/api/projects/{project}/file-uploads", params={"ids": json.dumps(upload_ids)}
    )
    where = {int(u["id"]): str(u["file"]) for u in listed or []}
    rows = [
        {image_key: MEDIA_URL + where[uid].lstrip("/"), SHA_FIELD: sha}
        for uid, (sha, _) in zip(upload_ids, part, strict=True)
    ]
    return _create_once(client, project, rows)


def _create_once(client: LabelStudioClient, project: int, rows: list[dict[str, Any]]) -> dict[str, int]:
    """Tasks for ``rows`` (each with its sha256); a retry first drops the rows whose task exists."""
    attempt = 0

    def send() -> dict[str, int]:
        nonlocal attempt
        attempt += 1
        todo = rows
        found: dict[str, int] = {}
        if attempt > 1:  # the last try may have landed with its answer lost
            present = images_present(client, project)
            found = {r[SHA_FIELD]: present[r[SHA_FIELD]] for r in rows if r[SHA_FIELD] in present}
            todo = [r for r in rows if r[SHA_FIELD] not in found]
        if not todo:
            return found
        got = client.request(
            "POST", f"/api/projects/{project}/import?return_task_ids=true", retries=0, json=todo
        )
        ids = [int(i) for i in got.get("task_ids") or []]
        return {**found, **{r[SHA_FIELD]: i for r, i in zip(todo, ids, strict=True)}}

    return retry(f"import {len(rows)} tasks into project {project}", send, client.policy())


def import_tasks(
    client: LabelStudioClient, project: int, data: Sequence[Mapping[str, Any]], batch: int = 1000
) -> list[int]:
    """Tasks from data dicts as given (not checked for repeats): image URLs, cloud URIs (``s3://``,
    ``gs://``, ``azure-blob://``, resolved by a connected storage of that bucket) or
    ``/data/local-files/?d=...`` paths."""
    ids: list[int] = []
    for lo in range(0, len(data), batch):
        got = client.request(
            "POST", f"/api/projects/{project}/import?return_task_ids=true", json=list(data[lo : lo + batch])
        )
        ids += got.get("task_ids", [])
    return ids


def import_uris(
    client: LabelStudioClient, project: int, uris: Iterable[str], *, image_key: str = "image"
) -> ImportReport:
    """A task per URI not already in the project (the same URI in the same data field);
    ``task_ids`` maps each URI to its task."""
    t0 = time.monotonic()
    uris = list(dict.fromkeys(uris))
    present: dict[str, int] = {}
    for t in iter_tasks(client, project, include="id,data", page_size=1000):
        ref = (t.get("data") or {}).get(image_key)
        if isinstance(ref, str):
            present.setdefault(ref, int(t["id"]))
    todo = [u for u in uris if u not in present]
    ids = import_tasks(client, project, [{image_key: u} for u in todo])
    created = dict(zip(todo, ids, strict=True))
    return ImportReport(
        container=project,
        created=len(created),
        skipped=len(uris) - len(created),
        task_ids={u: {**present, **created}[u] for u in uris},
        seconds=time.monotonic() - t0,
    )


def add_local_storage(
    client: LabelStudioClient, project: int, path: Path, *, regex: str = IMAGE_REGEX, title: str = ""
) -> int:
    """Serve a folder of the Label Studio host as tasks (one per matching file) and sync it.

    Label Studio needs ``LOCAL_FILES_SERVING_ENABLED=true`` and the folder under
    ``LOCAL_FILES_DOCUMENT_ROOT``; it says so when either is wrong and this names both.
    """
    resolved = str(Path(path).resolve())
    existing = client.request("GET", "/api/storages/localfiles", params={"project": project}) or []
    for s in existing:
        if os.path.normpath(str(s.get("path") or "")) == os.path.normpath(resolved):
            client.request("POST", f"/api/storages/localfiles/{s['id']}/sync")
            return int(s["id"])
    body = {
        "project": project,
        "path": resolved,
        "regex_filter": regex,
        "use_blob_urls": True,
        "title": title or Path(path).name,
    }
    try:
        storage = client.request("POST", "/api/storages/localfiles", retries=0, json=body)
    except RemoteError as e:
        raise RemoteError(
            f"{e}. Local files need LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true and the folder "
            "under LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT on the Label Studio host",
            e.status,
        ) from e
    client.request("POST", f"/api/storages/localfiles/{storage['id']}/sync")
    return int(storage["id"])


def add_cloud_storage(client: LabelStudioClient, project: int, uri: str, **options: Any) -> int:
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
    bucket_field = "container" if kind == "azure" else "bucket"
    existing = client.request("GET", f"/api/storages/{kind}", params={"project": project}) or []
    for s in existing:
        if s.get(bucket_field) == bucket and (s.get("prefix") or "") == prefix:
            client.request("POST", f"/api/storages/{kind}/{s['id']}/sync")
            return int(s["id"])
    body = {
        "project": project,
        bucket_field: bucket,
        "prefix": prefix,
        "use_blob_urls": True,
        "presign": True,
        "regex_filter": options.pop("regex_filter", IMAGE_REGEX),
        "title": options.pop("title", uri),
        **options,
    }
    try:  # not retried: Label Studio checks the connection first, and its failure is final
        storage = client.request("POST", f"/api/storages/{kind}", retries=0, json=body)
    except RemoteError as e:
        raise RemoteError(
            f"Label Studio could not connect {uri} as {kind} storage; check the bucket, prefix, "
            f"credentials and endpoint options ({e})",
            e.status,
        ) from e
    client.request("POST", f"/api/storages/{kind}/{storage['id']}/sync")
    return int(storage["id"])
