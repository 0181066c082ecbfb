"""How items are keyed, and the re-keying story for images whose bytes were not known at pull time.

An item's key is the sha256 of its image bytes. A platform does not always tell us that sha (a
Label Studio task holds a URL; the sync fetches bytes only when it needs them), so:

1. At pull time, a task whose item has no ``sha256`` is keyed by a **placeholder**:
   ``sha256("placeholder:" + Target.key + "#" + task_id)``: stable for that task on that server,
   never equal to a real content hash. The item row says ``placeholder = true`` and records the
   URI, so the bytes can be fetched later.
2. Revisions name their task (``source_key``, ``task_id``), never the item: the ``tasks`` table maps
   a task to its item. Re-keying therefore only moves that mapping; revisions stay append-only and
   untouched.
3. When the bytes become known, either the sync fetched them (:func:`attach_bytes`: the bytes go to
   the blob store, the real item row is made from the placeholder's metadata, the placeholder row
   gets ``replaced_by``, and every task that pointed at the placeholder points at the real sha) or
   a later pull carries the sha (ingest moves the task the same way). A pull that does not know the
   sha never moves a task back from a real sha to its placeholder.
4. Versions made before the re-keying keep the placeholder key in their (immutable) manifests; the
   placeholder's ``replaced_by`` leads to the real item, and export follows it for the bytes.
   Versions made after use the real sha, so two tasks showing the same bytes become one item.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from labelloop.errors import DataError
from labelloop.sync.store.models import ItemRow, ItemUriRow, TaskRow

if TYPE_CHECKING:
    from labelloop.sync.blobs import BlobStore

_HEX = frozenset("0123456789abcdef")


def placeholder_sha(source_key: str, task_id: str) -> str:
    return hashlib.sha256(f"placeholder:{source_key}#{task_id}".encode()).hexdigest()


def uri_sha(uri: str) -> str:
    return hashlib.sha256(uri.encode()).hexdigest()


def is_sha256(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and _HEX.issuperset(value)


def item_key(source_key: str, task_id: str, sha256: str | None) -> tuple[str, bool]:
    """(key, is_placeholder) of a task's item."""
    if sha256 is None or sha256 == "":
        return placeholder_sha(source_key, task_id), True
    sha = sha256.lower()
    if not is_sha256(sha):
        raise DataError(f"item sha256 {sha256!r} of task {task_id} is not 64 hex digits")
    return sha, False


def rekey(session: Session, old: str, new: str, *, size_bytes: int | None = None) -> int:
    """Point every task showing item ``old`` (a placeholder) at ``new`` (a real sha), making the new
    item from the old one's metadata; returns how many tasks moved. Runs in the caller's
    transaction."""
    if not is_sha256(new):
        raise DataError(f"{new!r} is not a sha256")
    if old == new:
        return 0
    src = session.get(ItemRow, old)
    dst = session.get(ItemRow, new)
    if src is None:
        raise DataError(f"no item {old[:12]} to re-key")
    if dst is None:
        fields = {c: getattr(src, c) for c in FILLABLE}
        dst = ItemRow(sha256=new, placeholder=False, first_seen=src.first_seen, **fields)
        session.add(dst)
    else:
        for c in FILLABLE:
            if getattr(dst, c) is None and getattr(src, c) is not None:
                setattr(dst, c, getattr(src, c))
    if size_bytes is not None:
        dst.size_bytes = size_bytes
    src.replaced_by = new
    session.flush()
    for (u,) in session.execute(select(ItemUriRow.uri).where(ItemUriRow.sha256 == old)):
        if session.get(ItemUriRow, (new, uri_sha(u))) is None:
            session.add(ItemUriRow(sha256=new, uri_sha=uri_sha(u), uri=u))
    moved = session.execute(
        update(TaskRow).where(TaskRow.item_sha == old).values(item_sha=new, placeholder=False)
    ).rowcount
    session.flush()
    return int(moved or 0)


def attach_bytes(session: Session, blobs: BlobStore, placeholder: str, data: bytes) -> str:
    """The sync fetched the bytes of placeholder item ``placeholder``: store them and re-key.
    Returns the real sha256."""
    sha = blobs.put(data)
    rekey(session, placeholder, sha, size_bytes=len(data))
    return sha


def placeholders(session: Session, limit: int | None = None) -> list[tuple[str, str | None]]:
    """(placeholder key, uri) of items still waiting for their bytes (for the sync to fetch)."""
    q = select(ItemRow.sha256, ItemRow.uri).where(
        ItemRow.placeholder.is_(True), ItemRow.replaced_by.is_(None)
    )
    if limit:
        q = q.limit(limit)
    return [(s, u) for s, u in session.execute(q)]


FILLABLE = (
    "uri",
    "width",
    "height",
    "size_bytes",
    "group_id",
    "source_id",
    "timestamp",
    "camera",
    "scene",
    "video",
    "uploader",
    "meta",
)
"""Item columns a later sighting may fill in when they were unknown."""
