"""The cvat-sdk client labelloop talks to CVAT through: one login, one clear error per failure,
and retries (5xx, 408/429, connection failures) through :func:`labelloop.retry.retry`.

Built from ``settings.cvat`` (``CVAT_URL``, ``CVAT_USER`` + ``CVAT_PASSWORD`` or
``CVAT_ACCESS_TOKEN``, ``CVAT_ORG``); nothing here reads the environment.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import urllib3
from cvat_sdk import Client
from cvat_sdk.api_client import ApiClient, Configuration
from cvat_sdk.api_client.exceptions import ApiException, OpenApiException
from cvat_sdk.api_client.model_utils import validate_and_convert_types
from cvat_sdk.core.client import AccessTokenCredentials, Config, PasswordCredentials

from labelloop.errors import ConfigError, ErrorKind, RemoteError
from labelloop.retry import Backoff, retry
from labelloop.settings import CvatSettings, Settings

T = TypeVar("T")
_CFG = Configuration()


class CvatClient:
    """An authenticated cvat-sdk ``Client`` (``sdk``) and the way every call is made (:meth:`call`)."""

    def __init__(
        self,
        url: str | None,
        *,
        user: str | None = None,
        password: str | None = None,
        access_token: str | None = None,
        organization: str | None = None,
        retries: int = 4,
        backoff_s: float = 0.5,
        poll_s: float = 0.5,
    ) -> None:
        if not url:
            raise ConfigError("CVAT URL is empty: set CVAT_URL (e.g. http://localhost:8080)")
        self.url = url.rstrip("/")
        self.retries, self.backoff_s = retries, backoff_s
        self.sdk = self.call(
            f"connect to {self.url}",
            lambda: Client(self.url, config=Config(status_check_period=poll_s), check_server_version=False),
        )
        self.sdk.logger.setLevel(logging.WARNING)
        if access_token:
            self.sdk.login(AccessTokenCredentials(access_token))
        elif user and password:
            try:
                self.call("log in", lambda: self.sdk.login(PasswordCredentials(user, password)))
            except RemoteError as e:
                if e.status != 400:
                    raise
                raise ConfigError(
                    f"CVAT at {self.url} refused the login of user {user!r}: check CVAT_USER/CVAT_PASSWORD",
                    kind=ErrorKind.AUTH,
                ) from e
        else:
            raise ConfigError(
                "CVAT credentials missing: set CVAT_USER and CVAT_PASSWORD, or CVAT_ACCESS_TOKEN",
                kind=ErrorKind.AUTH,
            )
        if organization is not None:
            self.sdk.organization_slug = organization
        self.server_version = str(self.call("read /api/server/about", self.sdk.get_server_version))

    @classmethod
    def from_settings(cls, settings: Settings | CvatSettings, **kw: Any) -> CvatClient:
        s = settings.cvat if isinstance(settings, Settings) else settings
        return cls(
            s.url, user=s.user, password=s.password, access_token=s.access_token, organization=s.org, **kw
        )

    @property
    def api(self) -> ApiClient:
        return self.sdk.api_client

    def close(self) -> None:
        self.sdk.close()

    def __enter__(self) -> CvatClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, what: str, fn: Callable[[], T], *, retry_it: bool = True) -> T:
        """Run one request; 5xx, 408/429 and connection failures are retried with backoff."""
        attempts = 0

        def once() -> T:
            nonlocal attempts
            attempts += 1
            try:
                return fn()
            except ApiException as e:
                raise self._error(what, e) from e
            except (urllib3.exceptions.HTTPError, OSError) as e:
                raise RemoteError(_short(e), kind=ErrorKind.REMOTE_DOWN) from e

        policy = Backoff(retries=self.retries if retry_it else 0, base_s=self.backoff_s)
        try:
            return retry(f"CVAT {what}", once, policy)
        except RemoteError as e:
            if e.kind is not ErrorKind.REMOTE_DOWN:
                raise
            raise RemoteError(
                f"CVAT at {self.url} is down or failing: could not {what} after {attempts} attempt(s): {e}",
                e.status,
                kind=ErrorKind.REMOTE_DOWN,
            ) from e.__cause__

    def _error(self, what: str, e: ApiException) -> Exception:
        if e.status in (401, 403):
            return ConfigError(
                f"CVAT at {self.url} refused to {what} (HTTP {e.status}): check the CVAT user/password or "
                f"token and its permissions (the user must be allowed to see the task). {_detail(e)}",
                kind=ErrorKind.AUTH,
            )
        if e.status is not None and e.status < 500 and e.status not in (408, 429):
            return RemoteError(
                f"CVAT at {self.url} rejected: {what} (HTTP {e.status}): {_detail(e)}", e.status
            )
        return RemoteError(_short(e), e.status, kind=ErrorKind.REMOTE_DOWN)

    def raw(self, method: str, path: str, what: str, *, body: Any = None, **params: Any) -> Any:
        """One call answered as plain JSON (not parsed by cvat-sdk's models), or None when empty."""

        def send() -> Any:
            _, resp = self.api.call_api(
                path,
                method,
                query_params=list(params.items()),
                header_params={"Content-Type": "application/json"} if body is not None else None,
                body=body,
                _parse_response=False,
                _check_status=True,
            )
            return json.loads(resp.data) if resp.data else None

        return self.call(what, send, retry_it=method == "GET")

    def raw_list(self, path: str, **params: Any) -> list[dict[str, Any]]:
        """Every page of a list endpoint, as plain JSON."""
        results: list[dict[str, Any]] = []
        page = 1
        while True:
            body = self.raw("GET", path, f"list {path}", **params, page=page, page_size=100)
            results.extend(body["results"])
            if not body.get("next"):
                return results
            page += 1


def model(payload: dict[str, Any], cls: type) -> Any:
    """A request model built with cvat-sdk's validation, so a bad value fails here, not in CVAT."""
    try:
        return validate_and_convert_types(payload, (cls,), [cls.__name__], True, True, _CFG)
    except (OpenApiException, TypeError, ValueError) as e:
        raise ConfigError(f"invalid CVAT {cls.__name__}: {e}") from e


def _detail(e: ApiException) -> str:
    body = e.body.decode(errors="replace") if isinstance(e.body, bytes) else str(e.body or e.reason)
    return body[:500]


def _short(e: Exception | None) -> str:
    if isinstance(e, ApiException):
        return f"HTTP {e.status} {_detail(e)}"
    return f"{type(e).__name__}: {str(e)[:300]}"


def value(v: Any) -> Any:
    """Enum-like sdk values (JobStage, ShapeType) -> their plain value."""
    return getattr(v, "value", v)


def username(user: Any) -> str | None:
    if not user:
        return None
    return user.get("username") if isinstance(user, dict) else getattr(user, "username", None)
