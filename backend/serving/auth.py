"""Who may call the ML backend: HTTP basic auth and/or a bearer token (both settable in Label
Studio's ML backend form). With neither configured, every caller may. ``/health`` stays open."""

from __future__ import annotations

import hmac

from flask import Request, Response, jsonify

from labelloop.settings import ServeSettings

CHALLENGE = (
    "authentication required: configure the ML backend's basic auth "
    "or bearer token in Label Studio to match this server"
)


class Authenticator:
    def __init__(self, settings: ServeSettings) -> None:
        self.s = settings

    @property
    def required(self) -> bool:
        return bool(self.s.bearer_token or self.s.basic_auth_user)

    @property
    def schemes(self) -> tuple[str, ...]:
        """The configured schemes, as the OpenAPI description names them ("basic", "bearer")."""
        configured = (("basic", self.s.basic_auth_user), ("bearer", self.s.bearer_token))
        return tuple(name for name, value in configured if value)

    def allows(self, request: Request) -> bool:
        if not self.required:
            return True
        if self.s.bearer_token:
            got = request.headers.get("Authorization", "")
            if hmac.compare_digest(got, f"Bearer {self.s.bearer_token}"):
                return True
        if self.s.basic_auth_user:
            a = request.authorization
            return bool(
                a
                and hmac.compare_digest(a.username or "", self.s.basic_auth_user)
                and hmac.compare_digest(a.password or "", self.s.basic_auth_pass or "")
            )
        return False

    @staticmethod
    def challenge() -> Response:
        resp = jsonify(error=CHALLENGE)
        resp.status_code = 401
        resp.headers["WWW-Authenticate"] = 'Basic realm="labelloop"'
        return resp
