"""Which Label Studio a project's images live on, and the token that reads them.

Label Studio sends its URL (``hostname``) and a token in every ``/setup``, and only the project in
``/predict``: ``"<id>.<created timestamp>"``, the same string in both. The credentials are kept in
Redis so that whichever gunicorn worker or host serves the next ``/predict`` can read the images,
keyed by that project string AND the server URL (two Label Studio servers may both have a project
3), and they expire after ``ttl_s`` without a ``/setup``. When Redis is unreachable this process's
memory still serves what it was told. Configured settings (LABELLOOP_LABEL_STUDIO_URL/_TOKEN) win
over what a request said.

Trust: ``/setup`` needs no Label Studio credentials, so its ``hostname`` is whatever the caller
says. Only the configured URL and ``serve.trusted_label_studio_urls`` may be private addresses; any
other hostname is refused at ``/setup`` when it resolves to one (the answer says why, and Label
Studio shows it), and its image fetches stay under the private-address rules like any URL.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from redis import Redis

from labelloop.backend.inference.images import LabelStudioFiles, blocked_address, resolve, safe_url
from labelloop.connectors.labelstudio.auth import auth_header
from labelloop.errors import ErrorKind, FetchError
from labelloop.settings import Settings

log = logging.getLogger(__name__)
TTL_S = 7 * 24 * 3600


@dataclass(frozen=True)
class Credentials:
    """A Label Studio server and a token for it."""

    url: str
    token: str | None = None
    trusted: bool = field(default=True, compare=False)  # configured or allowlisted; else: the URL rules
    project: str = field(default="", compare=False)  # the /setup project string ("" when configured)

    def files(self) -> LabelStudioFiles:
        """Where the fetcher reads this server's files, with the auth header Label Studio wants
        (a personal access token is exchanged for a short-lived one, renewed as needed)."""
        url, token = self.url, self.token
        return LabelStudioFiles(url, lambda: auth_header(token, url), trusted=self.trusted)

    def __repr__(self) -> str:  # a token must not reach a log line through a repr
        return f"Credentials(url={self.url!r}, token={'***' if self.token else None}, trusted={self.trusted})"


def configured(settings: Settings) -> Credentials | None:
    ls = settings.labelstudio
    return Credentials(ls.url, ls.token) if ls.url else None


def origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a URL: what two spellings of one server share. Loopback names are
    one host: Label Studio reports itself as ``http://localhost:<port>`` when it has no HOST set,
    while its URL is configured as ``http://127.0.0.1:<port>``."""
    p = urlparse(url.strip())
    try:
        port = p.port
    except ValueError:
        port = None
    host = (p.hostname or "").lower()
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    return p.scheme.lower(), "localhost" if loopback else host, port or (443 if p.scheme == "https" else 80)


def trusted_origins(settings: Settings) -> set[tuple[str, str, int]]:
    """The configured Label Studio URL and the allowlist: the servers that may be private."""
    urls = [settings.labelstudio.url or "", *settings.serve.trusted_label_studio_urls]
    return {origin(u) for u in urls if u}


def check_hostname(settings: Settings, hostname: str) -> bool:
    """Whether a /setup ``hostname`` is trusted; raises when it may not be used at all: not http(s),
    or a private address that is not allowlisted."""
    p = urlparse(hostname)
    if p.scheme not in ("http", "https") or not p.hostname:
        raise FetchError(
            f"/setup hostname {safe_url(hostname)!r} is not an http(s) URL of a Label Studio server",
            ErrorKind.FETCH_REFUSED,
        )
    if origin(hostname) in trusted_origins(settings):
        return True
    if settings.fetch.allow_private_urls:
        return False
    try:
        ips = resolve(p.hostname, origin(hostname)[2])
    except FetchError:
        return False  # nothing to reach yet; each fetch resolves and checks again
    bad = [ip for ip in ips if blocked_address(ipaddress.ip_address(ip))]
    if bad:
        raise FetchError(
            f"refused /setup hostname {safe_url(hostname)}: it is {bad[0]}, a private address, and "
            "not a trusted Label Studio URL; add it to LABELLOOP_TRUSTED_LABEL_STUDIO_URLS (or set "
            "LABELLOOP_LABEL_STUDIO_URL) on the ML backend",
            ErrorKind.FETCH_REFUSED,
        )
    return False


def project_id(project: Any) -> str:
    """Label Studio sends ``"<id>.<created timestamp>"``; the id is what its API needs."""
    return str(project).split(".")[0] if project is not None else ""


class ProjectAccess:
    """Credentials per (project, server) as ``/setup`` reported them."""

    def __init__(self, settings: Settings, ttl_s: float = TTL_S) -> None:
        self.settings = settings
        self.ttl_s = ttl_s
        self._redis = Redis.from_url(settings.queue.redis_url, socket_connect_timeout=1, socket_timeout=2)
        self._mem: dict[tuple[str, str], tuple[str | None, float]] = {}  # (project, url) -> (token, at)
        self._lock = threading.Lock()

    def _key(self, project: str) -> str:
        return f"{self.settings.queue.prefix}:ls-access:{project}"

    def remember(self, project: str, hostname: str | None, token: str | None) -> None:
        """Keep what ``/setup`` said; a hostname that may not be used raises (see ``check_hostname``),
        unless a configured server makes the hostname irrelevant."""
        if not hostname or not project:
            return
        if configured(self.settings) is None:
            check_hostname(self.settings, hostname)
        url, now = hostname.rstrip("/"), time.time()
        with self._lock:
            self._mem[(project, url)] = (token, now)
        try:
            key = self._key(project)
            pipe = self._redis.pipeline()
            pipe.hset(key, url, json.dumps({"token": token, "at": now}))
            pipe.expire(key, int(self.ttl_s))
            pipe.execute()
        except Exception as e:
            log.debug("cannot store Label Studio access in Redis: %s", e)

    def projects(self) -> dict[str, Credentials]:
        """Every project that sent ``/setup`` to any process within ``ttl_s`` (the ``"<id>.<created>"``
        string -> its credentials): the projects a new champion is announced to."""
        with self._lock:
            names = {p for p, _ in self._mem}
        prefix = self._key("")
        try:
            for key in self._redis.scan_iter(match=f"{prefix}*", count=500):
                names.add((key.decode() if isinstance(key, bytes) else key)[len(prefix) :])
        except Exception as e:
            log.debug("cannot list Label Studio projects in Redis: %s", e)
        found = {p: self.lookup(p) for p in sorted(names) if p}
        return {p: c for p, c in found.items() if c is not None}

    def lookup(self, project: str) -> Credentials | None:
        """The configured server, else the newest unexpired one that sent ``/setup`` for ``project``."""
        fixed = configured(self.settings)
        if fixed is not None:
            return fixed
        now = time.time()
        with self._lock:
            found = {url: v for (p, url), v in self._mem.items() if p == project}
        try:
            for url, raw in (self._redis.hgetall(self._key(project)) or {}).items():
                value = json.loads(raw)
                url = url.decode() if isinstance(url, bytes) else url
                if value["at"] >= found.get(url, (None, 0.0))[1]:
                    found[url] = (value.get("token"), float(value["at"]))
        except Exception as e:
            log.debug("cannot read Label Studio access from Redis: %s", e)
        live = {url: v for url, v in found.items() if now - v[1] <= self.ttl_s}
        if not live:
            return None
        url = max(live, key=lambda u: live[u][1])
        return self._credentials(project, url, live[url][0])

    def _credentials(self, project: str, url: str, token: str | None) -> Credentials:
        return Credentials(url, token, origin(url) in trusted_origins(self.settings), project)

    def get(self, project: str, url: str) -> Credentials | None:
        """The credentials for exactly this (project, server), when known and unexpired: what a
        background job looks up (its arguments carry no token)."""
        fixed = configured(self.settings)
        if fixed is not None and origin(fixed.url) == origin(url):
            return fixed
        url, now = url.rstrip("/"), time.time()
        with self._lock:
            found = self._mem.get((project, url))
        try:
            raw = self._redis.hget(self._key(project), url)
            if raw is not None:
                value = json.loads(raw)
                if found is None or float(value["at"]) >= found[1]:
                    found = (value.get("token"), float(value["at"]))
        except Exception as e:
            log.debug("cannot read Label Studio access from Redis: %s", e)
        if found is None or now - found[1] > self.ttl_s:
            return None
        return self._credentials(project, url, found[0])
