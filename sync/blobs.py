"""Image bytes, content-addressed through fsspec: ``put(bytes) -> sha256``, ``open(sha)``.

The root is a local directory (the default, ``<data dir>/blobs``) or any fsspec URL:
``memory://bucket`` in tests, ``s3://bucket/prefix`` (needs ``s3fs``, the ``s3`` extra), ``gs://``...
A blob lives at ``<root>/<sha[:2]>/<sha[2:4]>/<sha>``; writing the same bytes twice is a no-op, and
a local write goes through a temporary file and a rename, so a crash never leaves half a blob
under its final name (object stores write whole objects anyway).
"""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path
from typing import IO, Any

import fsspec
from fsspec.core import url_to_fs

from labelloop.errors import ConfigError, ErrorKind, StoreError

_CHUNK = 1 << 20


class BlobStore:
    def __init__(self, root: str | os.PathLike[str], **storage_options: Any) -> None:
        """``storage_options`` go to the fsspec filesystem (e.g. ``endpoint_url`` for an
        S3-compatible server); s3fs also reads the usual ``AWS_*`` environment variables."""
        root = str(root)
        try:
            self.fs, path = url_to_fs(root, **storage_options)
        except (ImportError, ValueError) as e:
            raise ConfigError(f"blob root {root!r} (LABELLOOP_BLOB_ROOT) cannot be opened: {e}") from None
        self.root = root
        self.base = path.rstrip("/")
        self.local = "file" in _protocols(self.fs)
        if self.local:
            Path(self.base).mkdir(parents=True, exist_ok=True)

    def path(self, sha: str) -> str:
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise StoreError(f"{sha!r} is not a sha256 (64 lowercase hex digits)", ErrorKind.DATA)
        return f"{self.base}/{sha[:2]}/{sha[2:4]}/{sha}"

    def exists(self, sha: str) -> bool:
        return bool(self.fs.exists(self.path(sha)))

    def put(self, data: bytes) -> str:
        """Store ``data``; its sha256 (the key)."""
        sha = hashlib.sha256(data).hexdigest()
        dest = self.path(sha)
        if self.fs.exists(dest):
            return sha
        try:
            if self.local:
                Path(dest).parent.mkdir(parents=True, exist_ok=True)
                tmp = f"{dest}.{uuid.uuid4().hex}.tmp"
                try:
                    with open(tmp, "wb") as f:
                        f.write(data)
                        f.flush()
                        os.fsync(f.fileno())
                    os.replace(tmp, dest)
                except OSError:  # e.g. the disk is full: a half-written temporary file would keep it so
                    Path(tmp).unlink(missing_ok=True)
                    raise
            else:
                self.fs.pipe_file(dest, data)
        except OSError as e:
            raise StoreError(f"could not write blob {sha[:12]} under {self.root}: {e}") from e
        return sha

    def put_file(self, path: str | os.PathLike[str]) -> str:
        """Store a local file's bytes; its sha256."""
        return self.put(Path(path).read_bytes())

    def open(self, sha: str) -> IO[bytes]:
        """The blob for reading; StoreError (kind missing) when there is none."""
        try:
            return self.fs.open(self.path(sha), "rb")
        except FileNotFoundError:
            raise StoreError(f"no blob {sha[:12]} under {self.root}", ErrorKind.MISSING) from None

    def get(self, sha: str) -> bytes:
        with self.open(sha) as f:
            return f.read()

    def verify(self, sha: str) -> bool:
        """Whether the blob's bytes still hash to its name (False when missing)."""
        h = hashlib.sha256()
        try:
            with self.open(sha) as f:
                while block := f.read(_CHUNK):
                    h.update(block)
        except StoreError:
            return False
        return h.hexdigest() == sha

    def __repr__(self) -> str:
        return f"BlobStore({self.root!r})"


def _protocols(fs: fsspec.AbstractFileSystem) -> tuple[str, ...]:
    p = fs.protocol
    return (p,) if isinstance(p, str) else tuple(p)
