"""Fetch and decode task images safely and concurrently.

Sources: Label Studio uploads and local-files URLs (relative ``/data/...`` paths resolved against
the Label Studio URL, sent with the headers the caller gives: this module knows nothing of Label
Studio's auth), http(s) URLs, any fsspec URL (s3://, gs://, ...), and local paths under configured
roots. Two guards every image passes: SSRF (no private, loopback or link-local address unless
allowed, re-checked on every redirect) and size (bytes and pixels are bounded before decoding, so a
decompression bomb is refused, not decoded). Bytes are cached on disk by URL in a bounded,
least-recently-used cache. Every failure is a ``FetchError`` whose ``kind`` says what went wrong.
"""

from __future__ import annotations

import hashlib
import io
import ipaddress
import logging
import os
import socket
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urljoin, urlparse

import numpy as np
import requests
from PIL import Image, ImageOps, UnidentifiedImageError

from labelloop.errors import ErrorKind, FetchError, LabelloopError
from labelloop.fsutil import atomic_write
from labelloop.settings import Settings

log = logging.getLogger(__name__)
LABEL_STUDIO_PATHS = ("/data/", "/tasks/", "/storage-data/")
"""Relative URLs Label Studio gives for its files: uploads and local files (``/data/...``) and
cloud-storage objects (``/tasks/{id}/resolve/?fileuri=...``, answered with a redirect to a
presigned URL, which is fetched without the headers and checked like any other URL)."""
Image.MAX_IMAGE_PIXELS = None  # we check pixels ourselves, with the configured limit and a clear message

Headers = Mapping[str, str] | Callable[[], Mapping[str, str]]


@dataclass(frozen=True)
class LabelStudioFiles:
    """Where relative ``/data/...`` URLs live, and the headers that may read them: a mapping, or a
    callable asked before each download (so a short-lived access token can be renewed)."""

    url: str
    headers: Headers = field(default_factory=dict)

    def auth_headers(self) -> dict[str, str]:
        return dict(self.headers() if callable(self.headers) else self.headers)


@dataclass
class Fetched:
    """One image, decoded (RGB, EXIF orientation applied, as Label Studio shows it) or failed."""

    uri: str
    image: np.ndarray | None = None
    sha256: str | None = None
    error: str | None = None
    kind: ErrorKind | None = None  # why it failed, when it did

    @property
    def ok(self) -> bool:
        return self.image is not None


class DiskCache:
    """Bytes by key in a directory, trimmed to ``max_bytes`` (oldest access first).

    Shared safely by processes on one host: every write is atomic.
    """

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root, self.max_bytes = root, max_bytes
        self._written = 0
        self._lock = threading.Lock()
        if max_bytes:
            root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        h = hashlib.sha256(key.encode()).hexdigest()
        return self.root / h[:2] / h

    def get(self, key: str) -> bytes | None:
        if not self.max_bytes:
            return None
        p = self._path(key)
        try:
            data = p.read_bytes()
        except FileNotFoundError:
            return None
        os.utime(p)  # marks it recently used
        return data

    def put(self, key: str, data: bytes) -> None:
        if not self.max_bytes or len(data) > self.max_bytes:
            return
        atomic_write(self._path(key), data)
        with self._lock:
            self._written += len(data)
            trim = self._written > self.max_bytes // 10
            if trim:
                self._written = 0
        if trim:
            self.trim()

    def trim(self) -> None:
        entries = [
            (e.stat().st_mtime, e.stat().st_size, Path(e.path))
            for d in self.root.iterdir()
            if d.is_dir()
            for e in os.scandir(d)
            if e.is_file() and not e.name.endswith(".tmp")
        ]
        total = sum(s for _, s, _ in entries)
        for _, size, path in sorted(entries):
            if total <= self.max_bytes:
                break
            path.unlink(missing_ok=True)
            total -= size


def _is_private(host: str) -> bool:
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror as e:
        raise FetchError(f"cannot resolve host {host!r}: {e.strerror}", ErrorKind.FETCH_FAILED) from e
    for info in infos:
        ip = ipaddress.ip_address(info[4][0].split("%")[0])
        if (
            ip.is_private
            or ip.is_loopback
            or ip.is_link_local
            or ip.is_reserved
            or ip.is_multicast
            or ip.is_unspecified
        ):
            return True
    return False


class ImageFetcher:
    """Fetches images for prediction; one instance per process, safe to share between threads.

    ``label_studio`` is where relative Label Studio URLs are read by default; each call may name
    another (a request for another project or server)."""

    def __init__(self, settings: Settings, label_studio: LabelStudioFiles | None = None) -> None:
        self.s = settings.fetch
        self.label_studio = label_studio
        self.cache = DiskCache(settings.cache_dir / "images", self.s.image_cache_bytes)
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(max_workers=self.s.workers, thread_name_prefix="fetch")

    # ------------------------------------------------------------------ public

    def load(self, uri: str, label_studio: LabelStudioFiles | None = None) -> Fetched:
        """Fetch and decode one image; every failure becomes ``Fetched.error`` and ``.kind``, never
        an exception."""
        try:
            data = self.read_bytes(uri, label_studio)
            sha = hashlib.sha256(data).hexdigest()
            return Fetched(uri, decode_image(data, self.s.max_image_pixels), sha)
        except LabelloopError as e:  # ours, or the headers callable's (e.g. a refused token)
            return Fetched(uri, error=str(e), kind=e.kind)
        except Exception as e:  # a bug or an odd peer must not take the whole batch down
            log.exception("unexpected error fetching %s", uri)
            return Fetched(uri, error=f"unexpected error: {type(e).__name__}: {e}", kind=ErrorKind.INTERNAL)

    def load_many(
        self, uris: Iterable[str], label_studio: LabelStudioFiles | None = None
    ) -> Iterator[Fetched]:
        """Results in input order, fetched ``fetch.workers`` at a time ahead of the consumer.

        Only a bounded window is in flight, so a consumer that stops early (a time budget)
        leaves no pile of downloads behind.
        """
        window = self.s.workers * 2
        pending: list[Future[Fetched]] = []
        it = iter(uris)
        try:
            for uri in it:
                pending.append(self._pool.submit(self.load, uri, label_studio))
                if len(pending) >= window:
                    yield pending.pop(0).result()
            while pending:
                yield pending.pop(0).result()
        finally:
            for f in pending:
                f.cancel()

    def read_bytes(self, uri: str, label_studio: LabelStudioFiles | None = None) -> bytes:
        ls = label_studio or self.label_studio
        if not uri or not isinstance(uri, str):
            raise FetchError(f"task has no image reference (got {uri!r})", ErrorKind.FETCH_MISSING)
        parsed = urlparse(uri)
        if uri.startswith(LABEL_STUDIO_PATHS) or (
            parsed.scheme in ("http", "https") and self._is_label_studio(uri, ls)
        ):
            if ls is None:
                raise FetchError(
                    f"{uri} is a Label Studio file; set LABELLOOP_LABEL_STUDIO_URL (and _TOKEN)",
                    ErrorKind.CONFIG,
                )
            return self._cached(
                urljoin(ls.url + "/", uri.lstrip("/")) if uri.startswith("/") else uri,
                lambda u: self._http(u, ls.auth_headers(), trusted=True),
            )
        if parsed.scheme in ("http", "https"):
            return self._cached(uri, lambda u: self._http(u, {}, trusted=self.s.allow_private_urls))
        if parsed.scheme in ("", "file"):
            return self._local_file(Path(parsed.path if parsed.scheme else uri))
        return self._cached(uri, self._fsspec)

    # ------------------------------------------------------------------ sources

    @staticmethod
    def _is_label_studio(uri: str, ls: LabelStudioFiles | None) -> bool:
        if ls is None:
            return False
        a, b = urlparse(uri), urlparse(ls.url)
        return (a.hostname, a.port or (443 if a.scheme == "https" else 80)) == (
            b.hostname,
            b.port or (443 if b.scheme == "https" else 80),
        )

    def _cached(self, key: str, fetch: Callable[[str], bytes]) -> bytes:
        data = self.cache.get(key)
        if data is None:
            data = fetch(key)
            self.cache.put(key, data)
        return data

    def _session(self) -> requests.Session:
        s = getattr(self._local, "session", None)
        if s is None:
            s = self._local.session = requests.Session()
        return s

    def _http(self, url: str, headers: dict[str, str], trusted: bool) -> bytes:
        for _ in range(5):  # follow redirects ourselves so each hop passes the SSRF check
            host = urlparse(url).hostname or ""
            if not trusted and _is_private(host):
                raise FetchError(
                    f"refused {url}: {host} is a private or loopback address "
                    "(set LABELLOOP_ALLOW_PRIVATE_URLS=1 to allow it)",
                    ErrorKind.FETCH_REFUSED,
                )
            try:
                r = self._session().get(
                    url, headers=headers, timeout=self.s.timeout, stream=True, allow_redirects=False
                )
            except requests.RequestException as e:
                raise FetchError(
                    f"cannot download {url}: {type(e).__name__}: {e}", ErrorKind.FETCH_FAILED
                ) from e
            if r.is_redirect:
                url = urljoin(url, r.headers["location"])
                headers = {}  # never send a token to where a redirect points
                trusted = trusted and self.s.allow_private_urls
                continue
            if r.status_code in (401, 403):
                raise FetchError(
                    f"{url} answered {r.status_code}: the image needs credentials; "
                    "set LABELLOOP_LABEL_STUDIO_TOKEN to a token that can read the project",
                    ErrorKind.AUTH,
                )
            if r.status_code != 200:
                gone = r.status_code in (404, 410)
                raise FetchError(
                    f"{url} answered HTTP {r.status_code}",
                    ErrorKind.FETCH_MISSING if gone else ErrorKind.FETCH_FAILED,
                )
            return self._bounded(r.iter_content(1 << 16), url)
        raise FetchError(f"too many redirects fetching {url}", ErrorKind.FETCH_FAILED)

    def _bounded(self, chunks: Iterable[bytes], what: str) -> bytes:
        buf, size = io.BytesIO(), 0
        for c in chunks:
            size += len(c)
            if size > self.s.max_image_bytes:
                raise FetchError(
                    f"{what} is larger than LABELLOOP_MAX_IMAGE_BYTES={self.s.max_image_bytes}",
                    ErrorKind.FETCH_TOO_LARGE,
                )
            buf.write(c)
        return buf.getvalue()

    def _local_file(self, path: Path) -> bytes:
        real = path.resolve()
        roots = [r.resolve() for r in self.s.local_roots]
        if not any(real.is_relative_to(r) for r in roots):
            raise FetchError(
                f"refused local path {path}: not under LABELLOOP_LOCAL_ROOTS "
                f"({', '.join(map(str, roots)) or 'none configured'})",
                ErrorKind.FETCH_REFUSED,
            )
        try:
            with open(real, "rb") as fh:
                return self._bounded(iter(lambda: fh.read(1 << 16), b""), str(path))
        except OSError as e:
            raise FetchError(f"cannot read {path}: {e.strerror}", _os_error_kind(e)) from e

    def _fsspec(self, url: str) -> bytes:
        import fsspec  # lazy: only cloud URLs need it

        try:
            with fsspec.open(url, "rb") as fh:
                return self._bounded(iter(lambda: fh.read(1 << 16), b""), url)
        except ImportError as e:
            scheme = urlparse(url).scheme
            raise FetchError(
                f"cannot read {url}: the {scheme}:// filesystem is not installed ({e}); "
                f"install e.g. {'s3fs' if scheme == 's3' else 'gcsfs' if scheme == 'gs' else scheme}",
                ErrorKind.CONFIG,
            ) from e
        except OSError as e:
            raise FetchError(f"cannot read {url}: {e}", _os_error_kind(e)) from e
        except ValueError as e:
            raise FetchError(f"cannot read {url}: {e}", ErrorKind.FETCH_FAILED) from e


def _os_error_kind(e: OSError) -> ErrorKind:
    if isinstance(e, FileNotFoundError | IsADirectoryError | NotADirectoryError):
        return ErrorKind.FETCH_MISSING
    if isinstance(e, PermissionError):
        return ErrorKind.FETCH_REFUSED
    return ErrorKind.FETCH_FAILED


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """RGB array of an encoded image, refusing oversize or corrupt data before decoding pixels."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > max_pixels:
                raise FetchError(
                    f"image is {w}x{h} = {w * h} pixels, over LABELLOOP_MAX_IMAGE_PIXELS={max_pixels} "
                    "(refused as a possible decompression bomb)",
                    ErrorKind.FETCH_TOO_LARGE,
                )
            img = ImageOps.exif_transpose(img)
            return np.asarray(img.convert("RGB"))
    except FetchError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise FetchError(f"not a readable image: {e}", ErrorKind.FETCH_UNREADABLE) from e
    except ImportError as e:  # Ultralytics' Image.open patch tries an optional HEIF plugin on unknown data
        raise FetchError(
            "not a readable image: the data is in no format Pillow can decode", ErrorKind.FETCH_UNREADABLE
        ) from e
