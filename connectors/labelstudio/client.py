"""The HTTP client every Label Studio call goes through: one session, the auth header, one clear
error per failure, and retries (connection errors, 429, 5xx) through :func:`labelloop.retry.retry`.

Only this package speaks Label Studio's REST API; conversions live in ``connectors.formats``.
"""

from __future__ import annotations

import email.utils
import itertools
from datetime import UTC, datetime
from typing import Any

import requests

from labelloop.connectors.labelstudio.auth import auth_header, is_personal_access_token
from labelloop.errors import ConfigError, ErrorKind, RemoteError
from labelloop.retry import Backoff, retry
from labelloop.settings import LabelStudioSettings, Settings

RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class LabelStudioClient:
    def __init__(
        self,
        url: str | None,
        token: str | None,
        retries: int = 4,
        timeout: float = 120.0,
        backoff_s: float = 0.5,
    ) -> None:
        if not url:
            raise ConfigError("no Label Studio URL: set LABELLOOP_LABEL_STUDIO_URL or pass --url")
        self.url = url.rstrip("/")
        self.token = token
        self.retries, self.timeout, self.backoff_s = retries, timeout, backoff_s
        self.session = requests.Session()
        self._version: dict[str, Any] | None = None

    @classmethod
    def from_settings(cls, settings: Settings | LabelStudioSettings, **kw: Any) -> LabelStudioClient:
        section = settings.labelstudio if isinstance(settings, Settings) else settings
        return cls(section.url, section.token, **kw)

    def policy(self, retries: int | None = None) -> Backoff:
        return Backoff(retries=self.retries if retries is None else retries, base_s=self.backoff_s)

    def send(self, method: str, path: str, retries: int | None = None, **kw: Any) -> requests.Response:
        """A successful response; connection errors and 408/429/5xx are retried with backoff."""
        attempts = itertools.count(1)
        return retry(
            f"Label Studio {method} {path}",
            lambda: self._once(method, path, next(attempts), **kw),
            self.policy(retries),
        )

    def _once(self, method: str, path: str, attempt: int, **kw: Any) -> requests.Response:
        after = f" after {attempt} attempts" if attempt > 1 else ""
        for renew in (False, True):
            try:
                headers = auth_header(self.token, self.url, renew=renew)
                r = self.session.request(
                    method, f"{self.url}{path}", timeout=self.timeout, headers=headers, **kw
                )
            except requests.RequestException as e:
                raise RemoteError(
                    f"Label Studio at {self.url} is unreachable ({type(e).__name__}) after {attempt} "
                    "attempt(s); check LABELLOOP_LABEL_STUDIO_URL and that it is up"
                ) from e
            if r.status_code == 401 and not renew and is_personal_access_token(self.token):
                continue  # the access token may have expired: exchange the PAT again, once
            break
        if r.status_code in (401, 403):
            raise RemoteError(
                f"Label Studio refused {method} {path} ({r.status_code}): "
                "set LABELLOOP_LABEL_STUDIO_TOKEN to a valid token with access to the project",
                r.status_code,
                kind=ErrorKind.AUTH,
            )
        if not r.ok:
            raise RemoteError(
                f"Label Studio answered {r.status_code} to {method} {path}{after}: {_detail(r)}",
                r.status_code,
                kind=ErrorKind.REMOTE_DOWN if r.status_code in RETRY_STATUS else None,
            )
        return r

    def request(self, method: str, path: str, retries: int | None = None, **kw: Any) -> Any:
        """JSON of a successful call."""
        r = self.send(method, path, retries, **kw)
        return r.json() if r.content else None

    def version(self) -> dict[str, Any]:
        """``/api/version`` (release, edition), read once."""
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
