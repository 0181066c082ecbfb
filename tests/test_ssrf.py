"""SSRF and hostile-server suite against the real ImageFetcher and a real local HTTP server.

Every non-public range over IPv4 and IPv6 (and IPv6 forms that embed IPv4), odd IPv4 spellings,
redirects to private addresses, DNS rebinding, non-http schemes, oversized and decompression-bomb
images, and slow-drip servers. Nothing leaves the machine: refused addresses are refused before any
connection. DNS rebinding is the one case that replaces ``socket.getaddrinfo`` in-process (no DNS
server can run here): the test controls what a name resolves to on each lookup.
"""

from __future__ import annotations

import contextlib
import gzip
import http.server
import io
import ipaddress
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar
from urllib.parse import parse_qs, urlparse

import numpy as np
import pytest
from PIL import Image

from labelloop.backend.inference.images import ImageFetcher, LabelStudioFiles, blocked_address, safe_url
from labelloop.errors import ErrorKind
from labelloop.settings import load_settings


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _bomb() -> bytes:
    buf = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buf, "PNG")  # ~50 kB, 400 megapixels decoded
    return buf.getvalue()


JPEG, BOMB = _jpeg(), _bomb()


class _Hostile(http.server.BaseHTTPRequestHandler):
    hits: ClassVar[list[tuple[str, str | None, str | None]]] = []  # (path, Authorization, Host)
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        u = urlparse(self.path)
        self.hits.append((u.path, self.headers.get("Authorization"), self.headers.get("Host")))
        q = {k: v[0] for k, v in parse_qs(u.query).items()}
        name = u.path.rsplit("/", 1)[-1]
        if name == "redirect":
            self._send(302, b"", [("Location", q["to"])])
        elif name == "loop":
            self._send(302, b"", [("Location", self.path)])
        elif name == "a.jpg":
            self._send(200, JPEG)
        elif name == "bomb.png":
            self._send(200, BOMB)
        elif name == "big":  # says it is huge
            self._send(200, b"", [("Content-Length", str(10**12))], body_ok=False)
        elif name == "endless":  # no length, never ends until the client gives up
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            chunk = b"\0" * 65536
            try:
                while True:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except OSError:
                return
        elif name == "gzip-bomb":
            body = gzip.compress(b"\0" * (50 * 1024**2))  # 50 MB of zeros in ~50 kB
            self._send(200, body, [("Content-Encoding", "gzip")])
        elif name == "drip":  # a byte every 0.1 s, forever
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self._drip()
        elif name == "drip-headers":
            self.wfile.write(b"HTTP/1.1 200 OK\r\n")
            self._drip(b"X-Slow: a")
        else:
            self._send(404, b"")

    def _drip(self, prefix: bytes = b"") -> None:
        try:
            self.wfile.write(prefix)
            for _ in range(600):
                self.wfile.write(b"a")
                self.wfile.flush()
                time.sleep(0.1)
        except OSError:
            return

    def _send(
        self, code: int, body: bytes, headers: list[tuple[str, str]] = (), body_ok: bool = True
    ) -> None:  # type: ignore[assignment]
        self.send_response(code)
        names = {k.lower() for k, _ in headers}
        for k, v in headers:
            self.send_header(k, v)
        if "content-length" not in names:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body_ok:
            with contextlib.suppress(OSError):
                self.wfile.write(body)

    def log_message(self, *a: object) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hostile)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


@pytest.fixture
def hits() -> list[tuple[str, str | None, str | None]]:
    _Hostile.hits.clear()
    return _Hostile.hits


def _fetcher(tmp_path: Path, **s: object) -> ImageFetcher:
    return ImageFetcher(load_settings(cache_dir=tmp_path / "c", image_cache_bytes=0, **s))


# ------------------------------------------------------------------ addresses

BLOCKED = [
    # IPv4: this network, private, CGNAT, loopback, link-local (cloud metadata), IETF protocol
    # assignments, documentation, benchmarking, multicast, reserved, broadcast
    "0.0.0.0", "0.1.2.3", "10.0.0.1", "10.255.255.255", "100.64.0.1", "100.127.255.254",
    "127.0.0.1", "127.255.255.254", "169.254.169.254", "172.16.0.1", "172.31.255.255",
    "192.0.0.8", "192.0.0.9", "192.0.2.1", "192.88.99.1", "192.168.1.1", "198.18.0.1", "198.19.255.255", "198.51.100.7",
    "203.0.113.9", "224.0.0.1", "239.255.255.250", "240.0.0.1", "255.255.255.255",
    # IPv6: unspecified, loopback, IPv4-compatible, IPv4-mapped private/loopback, NAT64 of private
    # and local-use NAT64, discard, Teredo, documentation (old and new), ORCHID, 6to4 of private,
    # unique local, site-local, link-local, multicast
    "::", "::1", "::7f00:1", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::ffff:169.254.169.254",
    "64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe", "64:ff9b:1::1", "100::1", "2001::1",
    "2001:db8::1", "3fff::1", "2001:10::1", "2002:7f00:1::1", "2002:a00:1::1", "fc00::1",
    "fd12:3456::1", "fec0::1", "fe80::1", "ff02::1",
]  # fmt: skip
PUBLIC = ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808",
          "2002:808:808::1"]  # fmt: skip


@pytest.mark.parametrize("address", BLOCKED)
def test_every_non_public_range_is_refused(address: str, tmp_path: Path) -> None:
    assert blocked_address(ipaddress.ip_address(address))
    host = f"[{address}]" if ":" in address else address
    t = time.monotonic()
    got = _fetcher(tmp_path).load(f"http://{host}:8080/a.jpg")
    assert got.kind is ErrorKind.FETCH_REFUSED, got.error
    assert "LABELLOOP_ALLOW_PRIVATE_URLS" in got.error and time.monotonic() - t < 1  # no connect tried


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass_the_check(address: str) -> None:
    assert not blocked_address(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "spelling",
    ["2130706433", "0x7f.1", "017700000001", "0x7f000001", "127.1", "0177.0.0.1", "127.0.1", "0"],
)
def test_odd_ipv4_spellings_are_the_address_they_mean(spelling: str, tmp_path: Path, server: str) -> None:
    """The check runs on what the name resolves to, so every spelling of 127.0.0.1 is refused, and
    (when private addresses are allowed) reaches the very server it names."""
    port = urlparse(server).port
    got = _fetcher(tmp_path).load(f"http://{spelling}:{port}/a.jpg")
    assert got.kind is ErrorKind.FETCH_REFUSED and ("127.0.0.1" in got.error or "0.0.0.0" in got.error)
    if spelling != "0":
        assert _fetcher(tmp_path, allow_private_urls=True).load(f"http://{spelling}:{port}/a.jpg").ok


# ------------------------------------------------------------------ redirects


@pytest.mark.parametrize(
    "target",
    [
        "{server}/a.jpg",  # the trusted server itself, but a redirect is never trusted
        "http://[::1]:{port}/a.jpg",
        "http://2130706433:{port}/a.jpg",
        "http://0x7f.1:{port}/a.jpg",
        "http://[::ffff:127.0.0.1]:{port}/a.jpg",
        "http://169.254.169.254/latest/meta-data/",
        "http://localhost:{port}/a.jpg",
        "file:///etc/passwd",
        "gopher://127.0.0.1:{port}/_a.jpg",
        "ftp://127.0.0.1/a.jpg",
        "dict://127.0.0.1:11211/stats",
    ],
)
def test_redirects_to_private_addresses_and_other_schemes_are_refused(
    target: str, tmp_path: Path, server: str, hits: list
) -> None:
    """Label Studio's own server is trusted (it is configured), but where it redirects (a cloud
    storage presigned URL) is checked like any URL, each hop resolved and checked anew."""
    to = target.format(server=server, port=urlparse(server).port)
    ls = LabelStudioFiles(server, {"Authorization": "Token t"})
    got = _fetcher(tmp_path).load(f"/data/redirect?to={to}", ls)
    assert got.kind is ErrorKind.FETCH_REFUSED, got.error
    assert [h[0] for h in hits] == ["/data/redirect"], "the redirect target must not be reached"


def test_redirects_drop_credentials_and_are_bounded(tmp_path: Path, server: str, hits: list) -> None:
    f = _fetcher(tmp_path, allow_private_urls=True)
    ls = LabelStudioFiles(server, {"Authorization": "Token secret"})
    assert f.load(f"/data/redirect?to={server}/other/a.jpg", ls).ok
    assert hits == [
        ("/data/redirect", "Token secret", hits[0][2]),
        ("/other/a.jpg", None, hits[0][2]),
    ], "the token goes to Label Studio only, never where it redirects"
    got = f.load(f"{server}/loop")
    assert got.kind is ErrorKind.FETCH_FAILED and "too many redirects" in got.error


def test_an_untrusted_label_studio_is_under_the_url_rules(tmp_path: Path, server: str, hits: list) -> None:
    """A Label Studio URL that a /setup named (not configured, not allowlisted) is no way around
    the private-address rules."""
    got = _fetcher(tmp_path).load("/data/upload/a.jpg", LabelStudioFiles(server, trusted=False))
    assert got.kind is ErrorKind.FETCH_REFUSED and hits == []
    allowed = _fetcher(tmp_path, allow_private_urls=True)
    assert allowed.load("/data/upload/a.jpg", LabelStudioFiles(server, trusted=False)).ok


# ------------------------------------------------------------------ DNS rebinding


def test_dns_rebinding_connects_to_the_address_that_was_checked(
    tmp_path: Path, server: str, hits: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A name that resolves to a public address when checked and to 127.0.0.1 a moment later: the
    fetcher resolves once and connects to the checked address, so the second answer is never used.
    (In-process resolver: no DNS server can run here.)"""
    real = socket.getaddrinfo
    asked: list[str] = []
    answers = iter(["93.184.216.34"] + ["127.0.0.1"] * 10)

    def fake(host: str, port: object, *a: object, **kw: object) -> list:
        asked.append(str(host))
        if host == "rebind.test":
            return real(next(answers), port, *a, **kw)
        return real(host, port, *a, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    port = urlparse(server).port
    got = _fetcher(tmp_path, fetch_timeout=1, fetch_deadline_s=2).load(f"http://rebind.test:{port}/a.jpg")
    assert not got.ok and got.kind is ErrorKind.FETCH_FAILED, got.error  # 93.184.216.34 is unreachable here
    assert asked.count("rebind.test") == 1 and hits == [], "resolved once, never connected to 127.0.0.1"

    # the pinned connection still speaks to the name: Host header (and SNI for https) stay the name
    monkeypatch.setattr(
        socket,
        "getaddrinfo",
        lambda h, p, *a, **kw: real("127.0.0.1" if h == "pinned.test" else h, p, *a, **kw),
    )
    assert _fetcher(tmp_path, allow_private_urls=True).load(f"http://pinned.test:{port}/a.jpg").ok
    assert hits[-1] == ("/a.jpg", None, f"pinned.test:{port}")
    assert _fetcher(tmp_path).load(f"http://pinned.test:{port}/a.jpg").kind is ErrorKind.FETCH_REFUSED


# ------------------------------------------------------------------ schemes


@pytest.mark.parametrize(
    "uri",
    [
        "file:///etc/passwd",
        "file://localhost/etc/passwd",
        "/etc/passwd",
        "../../etc/passwd",
        "gopher://127.0.0.1:6379/_FLUSHALL",
        "ftp://127.0.0.1/a.jpg",
        "sftp://127.0.0.1/a.jpg",
        "dict://127.0.0.1:11211/stats",
        "ldap://127.0.0.1/",
        "tftp://127.0.0.1/a",
        "smb://127.0.0.1/share/a.jpg",
        "data:image/png;base64,iVBORw0KGgo=",
        "memory://a.jpg",
        "jar:http://127.0.0.1/a.jar!/a.jpg",
        "netdoc:///etc/passwd",
        "zip:///tmp/a.zip",
        "github://org:repo@/a.jpg",
        "http://",
        "http:///a.jpg",
    ],
)
def test_other_schemes_and_local_paths_are_refused(uri: str, tmp_path: Path) -> None:
    got = _fetcher(tmp_path).load(uri)
    assert got.kind is ErrorKind.FETCH_REFUSED, (uri, got.kind, got.error)


# ------------------------------------------------------------------ size and time


def test_oversized_and_bomb_images_are_refused_with_a_clear_kind(tmp_path: Path, server: str) -> None:
    f = _fetcher(tmp_path, allow_private_urls=True, max_image_bytes=1024**2)
    t = time.monotonic()
    big = f.load(f"{server}/big")  # refused on its Content-Length, before reading
    assert big.kind is ErrorKind.FETCH_TOO_LARGE and "LABELLOOP_MAX_IMAGE_BYTES" in big.error
    endless = f.load(f"{server}/endless")  # no length: refused once past the limit
    assert endless.kind is ErrorKind.FETCH_TOO_LARGE
    bomb = f.load(f"{server}/bomb.png")  # small file, 400 megapixels: not decoded
    assert bomb.kind is ErrorKind.FETCH_TOO_LARGE and "decompression bomb" in bomb.error
    gz = f.load(f"{server}/gzip-bomb")  # never inflated: identity asked, nothing decoded
    assert gz.kind is ErrorKind.FETCH_UNREADABLE
    assert time.monotonic() - t < 10


@pytest.mark.parametrize("path", ["drip", "drip-headers"])
def test_slow_drip_servers_hit_the_total_deadline(path: str, tmp_path: Path, server: str) -> None:
    """Each byte arrives well within the socket timeout; the fetch's total deadline still ends it."""
    f = _fetcher(tmp_path, allow_private_urls=True, fetch_timeout=5, fetch_deadline_s=1)
    t = time.monotonic()
    got = f.load(f"{server}/{path}")
    took = time.monotonic() - t
    assert got.kind is ErrorKind.FETCH_FAILED and "LABELLOOP_FETCH_DEADLINE_S" in got.error, got.error
    assert took < 2.5, took


def test_messages_never_carry_a_url_query_or_password() -> None:
    u = "https://user:pw@bucket.s3.example.com/a.jpg?X-Amz-Signature=abc&X-Amz-Credential=k"
    assert safe_url(u) == "https://bucket.s3.example.com/a.jpg?..."
