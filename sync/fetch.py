"""Image bytes for the items a source's tasks show, fetched once into the content-addressed blob store.

Training and export need the bytes; a pull only tells what a task shows (a Label Studio URL or
upload path, a CVAT frame). After each ingest the sync fetches what is missing for that source:
an item keyed by a placeholder (its sha was unknown) is re-keyed to the sha of the bytes
(:func:`labelloop.sync.store.keys.attach_bytes`); an item whose sha was known is stored only if the
bytes hash to it (a changed file is reported, never stored under the wrong key). Each item commits
on its own, so a kill loses at most the one in flight; failures are counted and named, the rest go
on, and a later pass tries them again (the sync: after its backoff, even when nothing changed).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import select

from labelloop.backend.inference.images import ImageFetcher, LabelStudioFiles
from labelloop.connectors.platform import LabelingPlatform, Target
from labelloop.fsutil import sha256_bytes
from labelloop.settings import Settings
from labelloop.sync.store import Store
from labelloop.sync.store.keys import attach_bytes
from labelloop.sync.store.models import ItemRow, TaskRow

log = logging.getLogger(__name__)


@dataclass
class FetchReport:
    fetched: int = 0
    failed: int = 0
    reasons: list[str] = field(default_factory=list)  # the first few


def missing(
    store: Store, target: Target, limit: int | None = None
) -> list[tuple[str, str, str | None, bool]]:
    """(task id, item key, uri, is placeholder) of this source's live tasks whose bytes are not in
    the blob store."""
    with store.session() as s:
        q = (
            select(TaskRow.task_id, ItemRow.sha256, TaskRow.uri, ItemRow.uri, ItemRow.placeholder)
            .join(ItemRow, ItemRow.sha256 == TaskRow.item_sha)
            .where(
                TaskRow.source_key == target.key, TaskRow.deleted.is_(False), ItemRow.replaced_by.is_(None)
            )
            .order_by(TaskRow.task_id)
        )
        rows = s.execute(q).all()
    out = []
    for task_id, sha, task_uri, item_uri, placeholder in rows:
        if placeholder or not store.blobs.exists(sha):
            out.append((task_id, sha, task_uri or item_uri, bool(placeholder)))
            if limit and len(out) >= limit:
                break
    return out


def reader_for(
    settings: Settings, platform: LabelingPlatform, container: int
) -> Callable[[str, str | None], bytes]:
    """How to read one task's image: the platform's own data API when it serves the bytes (CVAT),
    else the URI through the backend's fetcher (Label Studio files with the server's auth, URLs and
    cloud URIs under the SSRF rules, size limits)."""
    access = platform.fetch_access
    files = LabelStudioFiles(access.url, access.headers) if access else None
    fetcher = ImageFetcher(settings.with_(fetch={"image_cache_bytes": 0}))  # the blob store is the cache

    def read(task_id: str, uri: str | None) -> bytes:
        data = platform.image_bytes(container, task_id, uri)
        if data is not None:
            return data
        return fetcher.read_bytes(uri or "", files)

    return read


def fetch_missing(
    store: Store,
    todo: list[tuple[str, str, str | None, bool]],
    read: Callable[[str, str | None], bytes],
    *,
    progress: Callable[[int], None] | None = None,
) -> FetchReport:
    """Fetch and store what :func:`missing` listed (listed once by the caller, who also sizes its
    progress bar from it)."""
    report = FetchReport()
    for task_id, key, uri, placeholder in todo:
        try:
            data = read(task_id, uri)
            sha = sha256_bytes(data)
            if placeholder:
                with store.transaction() as s:
                    attach_bytes(s, store.blobs, key, data)
            elif sha == key:
                store.blobs.put(data)
            else:
                raise ValueError(
                    f"the bytes at {uri} hash to {sha[:12]}, not the item's {key[:12]} (the file changed)"
                )
            report.fetched += 1
        except Exception as e:
            report.failed += 1
            if len(report.reasons) < 5:
                report.reasons.append(
                    f"task {task_id} ({uri}): {str(e).splitlines()[0][:200] if str(e) else type(e).__name__}"
                )
        if progress is not None:
            progress(1)
    return report
