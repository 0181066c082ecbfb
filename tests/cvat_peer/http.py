"""What every part of the CVAT test peer answers with: CVAT's content type, its error shape and
request validation by cvat-sdk's own generated models."""

from __future__ import annotations

import json
from typing import Any

from cvat_sdk.api_client import Configuration
from cvat_sdk.api_client.model_utils import validate_and_convert_types
from flask import Response

CT = "application/vnd.cvat+json"
_CFG = Configuration()


class HttpError(Exception):
    def __init__(self, status: int, detail: Any) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


def reply(data: Any, status: int = 200) -> Response:
    return Response(json.dumps(data), status=status, content_type=CT)


def _check_keys(value: Any, model: type, path: str) -> None:
    """cvat-sdk models keep unknown keys; CVAT's serializers drop or reject them. Reject here."""
    if isinstance(value, list):
        for i, v in enumerate(value):
            _check_keys(v, model, f"{path}[{i}]")
        return
    if not isinstance(value, dict) or not hasattr(model, "openapi_types"):
        return
    types = model.openapi_types
    for k, v in value.items():
        if k not in types:
            raise HttpError(400, {path: f"unknown field {k!r}"})
        for t in types[k]:
            inner = t[0] if isinstance(t, list) else t
            if isinstance(inner, type) and hasattr(inner, "openapi_types"):
                _check_keys(v, inner, f"{path}.{k}")


def validate(payload: Any, model: type) -> Any:
    """Validate a request body with cvat-sdk's generated model, as CVAT's serializer would."""
    if not isinstance(payload, dict):
        raise HttpError(400, {"detail": "JSON object expected"})
    _check_keys(payload, model, model.__name__)
    try:
        return validate_and_convert_types(payload, (model,), [model.__name__], True, True, _CFG)
    except Exception as e:
        raise HttpError(400, {"detail": f"{model.__name__}: {type(e).__name__}: {e}"}) from e
