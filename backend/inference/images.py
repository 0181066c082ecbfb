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

import contextlib
import hashlib
import io
import ipaddress
import logging
import os
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlparse

import certifi
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from urllib3.connection import HTTPConnection, HTTPSConnection

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
    callable asked before each download (so a short-lived access token can be renewed). Only a
    ``trusted`` server (configured, or allowlisted) may be on a private address."""

    url: str
    headers: Headers = field(default_factory=dict)
    trusted: bool = True  # False: a URL a request named, under the private-address rules like any URL

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


_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # well-known NAT64: the last 32 bits are an IPv4 address
_BLOCKED_V6 = tuple(
    ipaddress.ip_network(n) for n in ("64:ff9b:1::/48", "2001:db8::/32", "3fff::/20", "fec0::/10", "::/96")
)  # local-use NAT64, documentation (old and new), site-local, IPv4-compatible: Python calls some global
_BLOCKED_V4 = tuple(ipaddress.ip_network(n) for n in ("192.0.0.0/24", "192.88.99.0/24"))
"""IETF protocol assignments (Python's is_global lets 192.0.0.8-10 through) and the deprecated 6to4
relay anycast: neither is a place images live."""
CLOUD_SCHEMES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"})
"""Object stores read through fsspec. Every other scheme (ftp, gopher, dict, data, memory, ...) is
refused: fsspec would happily fetch them, past the address checks."""
MAX_REDIRECTS = 5


def blocked_address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """True for any address that is not public unicast: private, loopback, link-local, CGNAT,
    reserved, documentation, multicast, unspecified, and IPv6 forms that embed such an IPv4
    address (IPv4-mapped, NAT64, 6to4, Teredo)."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return blocked_address(ip.ipv4_mapped)
        if ip in _NAT64:
            return blocked_address(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        if ip.sixtofour is not None and blocked_address(ip.sixtofour):
            return True
        if ip.teredo is not None and blocked_address(ip.teredo[1]):
            return True
        if any(ip in n for n in _BLOCKED_V6):
            return True
    elif any(ip in n for n in _BLOCKED_V4):
        return True
    return not ip.is_global or ip.is_multicast or ip.is_reserved or ip.is_unspecified


def resolve(host: str, port: int) -> list[str]:
    """The addresses ``host`` resolves to, resolved once: the connection goes to one of exactly
    these (no second lookup a rebinding DNS server could answer differently)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        why = e.strerror if isinstance(e, socket.gaierror) else str(e)
        raise FetchError(f"cannot resolve host {host!r}: {why}", ErrorKind.FETCH_FAILED) from e
    out: list[str] = []
    for info in infos:
        ip = str(info[4][0]).split("%")[0]
        if ip not in out:
            out.append(ip)
    return out


def safe_url(url: str) -> str:
    """``url`` for messages and logs: no user:password, no query (a presigned URL's signature is a
    credential)."""
    try:
        p = urlparse(url)
        netloc = p.netloc.rsplit("@", 1)[-1]
    except ValueError:
        return "<unparsable URL>"
    return f"{p.scheme}://{netloc}{p.path}" + ("?..." if p.query else "") if p.scheme else url


class _Pinned:
    """Connects to addresses resolved and checked beforehand, never resolving the host again;
    the Host header, SNI and certificate check still use the host name."""

    pinned: list[str]
    port: int
    timeout: float
    socket_options: Any

    def _new_conn(self) -> socket.socket:
        from urllib3.util.connection import create_connection

        err: OSError | None = None
        for ip in self.pinned:
            try:
                return create_connection((ip, self.port), self.timeout, socket_options=self.socket_options)
            except OSError as e:
                err = e
        raise err or OSError("no address to connect to")


class _PinnedHTTP(_Pinned, HTTPConnection):
    pass


class _PinnedHTTPS(_Pinned, HTTPSConnection):
    pass


class _Watchdog:
    """Shuts a connection's socket down at the fetch's deadline: a slow-drip server that sends a
    byte per socket timeout would otherwise hold a fetch forever."""

    def __init__(self, conn: HTTPConnection, seconds: float) -> None:
        self.conn, self.fired = conn, False
        self._timer = threading.Timer(max(seconds, 0.0), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        self.fired = True
        sock = getattr(self.conn, "sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def cancel(self) -> None:
        self._timer.cancel()


class ImageFetcher:
    """Fetches images for prediction; one instance per process, safe to share between threads.

    ``label_studio`` is where relative Label Studio URLs are read by default; each call may name
    another (a request for another project or server)."""

    def __init__(self, settings: Settings, label_studio: LabelStudioFiles | None = None) -> None:
        self.s = settings.fetch
        self.label_studio = label_studio
        self.cache = DiskCache(settings.cache_dir / "images", self.s.image_cache_bytes)
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
                lambda u: self._http(u, ls.auth_headers(), trusted=ls.trusted or self.s.allow_private_urls),
            )
        if parsed.scheme in ("http", "https"):
            return self._cached(uri, lambda u: self._http(u, {}, trusted=self.s.allow_private_urls))
        if parsed.scheme in ("", "file"):
            return self._local_file(Path(parsed.path if parsed.scheme else uri))
        if parsed.scheme in CLOUD_SCHEMES:
            return self._cached(uri, self._fsspec)
        raise FetchError(
            f"refused {safe_url(uri)}: {parsed.scheme}:// is not fetched (http(s), "
            f"{', '.join(sorted(CLOUD_SCHEMES))} and local paths under LABELLOOP_LOCAL_ROOTS are)",
            ErrorKind.FETCH_REFUSED,
        )

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

    def _http(self, url: str, headers: dict[str, str], trusted: bool) -> bytes:
        """GET ``url`` within ``fetch.deadline_s`` in all (redirects, connect, headers, body),
        following redirects ourselves so each hop is resolved once, checked and pinned."""
        deadline = time.monotonic() + self.s.deadline_s
        for _ in range(MAX_REDIRECTS + 1):
            status, location, data = self._get(url, headers, trusted, deadline)
            if location is not None:
                url = urljoin(url, location)
                headers = {}  # never send a token to where a redirect points
                trusted = trusted and self.s.allow_private_urls
                continue
            if status in (401, 403):
                raise FetchError(
                    f"{safe_url(url)} answered {status}: the image needs credentials; "
                    "set LABELLOOP_LABEL_STUDIO_TOKEN to a token that can read the project",
                    ErrorKind.AUTH,
                )
            if status != 200:
                gone = status in (404, 410)
                raise FetchError(
                    f"{safe_url(url)} answered HTTP {status}",
                    ErrorKind.FETCH_MISSING if gone else ErrorKind.FETCH_FAILED,
                )
            return data
        raise FetchError(f"too many redirects fetching {safe_url(url)}", ErrorKind.FETCH_FAILED)

    def _get(
        self, url: str, headers: dict[str, str], trusted: bool, deadline: float
    ) -> tuple[int, str | None, bytes]:
        """One request: (status, redirect location or None, body of a 200)."""
        p = urlparse(url)
        if p.scheme not in ("http", "https"):
            raise FetchError(
                f"refused {safe_url(url)}: a redirect may lead only to http(s)", ErrorKind.FETCH_REFUSED
            )
        host = p.hostname or ""
        try:
            port = p.port or (443 if p.scheme == "https" else 80)
        except ValueError as e:
            raise FetchError(f"refused {safe_url(url)}: {e}", ErrorKind.FETCH_REFUSED) from e
        if not host:
            raise FetchError(f"refused {safe_url(url)}: no host", ErrorKind.FETCH_REFUSED)
        ips = resolve(host, port)
        if not trusted:
            bad = [ip for ip in ips if blocked_address(ipaddress.ip_address(ip))]
            if bad:
                raise FetchError(
                    f"refused {safe_url(url)}: {host} is {bad[0]}, a private, loopback or reserved "
                    "address (set LABELLOOP_ALLOW_PRIVATE_URLS=1 to allow it)",
                    ErrorKind.FETCH_REFUSED,
                )
        left = deadline - time.monotonic()
        timeout = max(min(self.s.timeout, left), 0.001)
        conn: HTTPConnection
        if p.scheme == "https":
            conn = _PinnedHTTPS(host, port, timeout=timeout, ca_certs=certifi.where())
        else:
            conn = _PinnedHTTP(host, port, timeout=timeout)
        conn.pinned = ips  # type: ignore[attr-defined]
        watchdog = _Watchdog(conn, left)
        target = (p.path or "/") + (f"?{p.query}" if p.query else "")
        try:
            conn.request(
                "GET",
                target,
                headers={"Accept-Encoding": "identity", "Connection": "close", **headers},
                preload_content=False,
                decode_content=False,
            )
            r = conn.getresponse()
            if r.status in (301, 302, 303, 307, 308) and r.headers.get("location"):
                return r.status, r.headers["location"], b""
            if r.status != 200:
                return r.status, None, b""
            declared = r.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > self.s.max_image_bytes:
                raise self._too_large(url)
            data = self._bounded(iter(lambda: r.read1(1 << 16), b""), url)
            if watchdog.fired or time.monotonic() > deadline:
                raise self._late(url)
            if declared.isdigit() and len(data) < int(declared):
                raise FetchError(
                    f"{safe_url(url)}: the connection closed after {len(data)} of {declared} bytes",
                    ErrorKind.FETCH_FAILED,
                )
            return r.status, None, data
        except FetchError:
            raise
        except Exception as e:  # socket, TLS, protocol errors: all of them the peer's doing
            if watchdog.fired:
                raise self._late(url) from e
            raise FetchError(
                f"cannot download {safe_url(url)}: {type(e).__name__}: {e}", ErrorKind.FETCH_FAILED
            ) from e
        finally:
            watchdog.cancel()
            conn.close()

    def _late(self, url: str) -> FetchError:
        return FetchError(
            f"{safe_url(url)} did not finish within LABELLOOP_FETCH_DEADLINE_S={self.s.deadline_s:g}s",
            ErrorKind.FETCH_FAILED,
        )

    def _too_large(self, what: str) -> FetchError:
        return FetchError(
            f"{safe_url(what)} is larger than LABELLOOP_MAX_IMAGE_BYTES={self.s.max_image_bytes}",
            ErrorKind.FETCH_TOO_LARGE,
        )

    def _bounded(self, chunks: Iterable[bytes], what: str) -> bytes:
        buf, size = io.BytesIO(), 0
        for c in chunks:
            size += len(c)
            if size > self.s.max_image_bytes:
                raise self._too_large(what)
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
