"""How labelloop authenticates to Label Studio: legacy tokens as ``Token``, personal access tokens
(JWT refresh tokens) exchanged at ``/api/token/refresh`` for short-lived access tokens, cached per
server until shortly before they expire. The backend's image fetches use :func:`auth_header` too."""

from __future__ import annotations

import base64
import json
import threading
import time
from typing import Any

import requests

from labelloop.errors import ErrorKind, RemoteError

_access: dict[tuple[str, str], tuple[str, float]] = {}
_access_lock = threading.Lock()


def jwt_claims(token: str) -> dict[str, Any] | None:
    """The claims of a JWT, or None when ``token`` is not one (a legacy token)."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        return json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, json.JSONDecodeError):
        return None


def is_personal_access_token(token: str | None) -> bool:
    return bool(token) and jwt_claims(token or "") is not None


def auth_header(token: str | None, url: str | None = None, *, renew: bool = False) -> dict[str, str]:
    """Legacy tokens use "Token"; a personal access token (a JWT refresh token) is exchanged for an
    access token, cached until shortly before it expires (``renew`` exchanges it again)."""
    if not token:
        return {}
    claims = jwt_claims(token)
    if claims is None:
        return {"Authorization": f"Token {token}"}
    if claims.get("token_type") != "refresh" or url is None:
        return {"Authorization": f"Bearer {token}"}
    key = (url.rstrip("/"), token)
    with _access_lock:
        cached = _access.get(key)
        if cached and cached[1] > time.time() + 30 and not renew:
            return {"Authorization": f"Bearer {cached[0]}"}
        try:
            r = requests.post(f"{key[0]}/api/token/refresh", json={"refresh": token}, timeout=30)
        except requests.RequestException as e:
            raise RemoteError(
                f"Label Studio at {key[0]} is unreachable ({type(e).__name__}); "
                "check LABELLOOP_LABEL_STUDIO_URL and that the server is up"
            ) from e
        if not r.ok:
            raise RemoteError(
                f"Label Studio refused the personal access token ({r.status_code}): it is expired or "
                "revoked; create a new one (Account & Settings) and set LABELLOOP_LABEL_STUDIO_TOKEN",
                r.status_code,
                kind=ErrorKind.AUTH,
            )
        access = r.json()["access"]
        exp = float((jwt_claims(access) or {}).get("exp") or time.time() + 240)
        _access[key] = (access, exp)
        return {"Authorization": f"Bearer {access}"}
