"""The OpenAPI 3 description of the ML backend's routes, served at ``/openapi.json``: for users
wiring Label Studio or a script to it, and for schemathesis to fuzz it (``labelloop bench fuzz``)."""

from __future__ import annotations

from typing import Any

_ERROR = {
    "description": "refused, with one message naming what to fix",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["error"],
                "properties": {"error": {"type": "string", "minLength": 1}},
            }
        }
    },
}
_ERRORS = {"400": _ERROR, "401": _ERROR, "413": _ERROR, "422": _ERROR}


def _json(schema: dict[str, Any], description: str = "ok") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


# Label Studio sends "<id>.<created timestamp>"; a bare id is taken too; null is the same as absent
_PROJECT = {"anyOf": [{"type": "string", "nullable": True}, {"type": "integer"}], "example": "3.1700000000"}
_NULLABLE_TEXT = {"type": "string", "nullable": True}
_TASK = {
    "type": "object",
    "properties": {
        "id": {"description": "Label Studio's task id (an integer); results come back in task order"},
        "data": {
            "type": "object",
            "additionalProperties": True,
            "example": {"image": "/data/upload/1/a.jpg"},
        },
    },
}
_PREDICTION = {
    "type": "object",
    "properties": {
        "result": {"type": "array", "items": {"type": "object"}},
        "score": {"type": "number"},
        "model_version": {"type": "string"},
    },
}
_HEALTH = _json(
    {
        "type": "object",
        "required": ["status", "model_version"],
        "properties": {
            "status": {"type": "string", "enum": ["UP"]},
            "model_class": {"type": "string"},
            "model_version": {"type": "string"},
            "model_loaded": {"type": "boolean"},
            "reload_error": {
                "type": "string",
                "nullable": True,
                "description": "why the model line's champion is not the model served (it would not load)",
            },
            "pid": {"type": "integer"},
        },
    },
    "the backend is up (Label Studio allows 1 s)",
)


def openapi_document(version: str, auth: tuple[str, ...] = ()) -> dict[str, Any]:
    """The document; ``version`` is the model version served, shown as the API's version, and
    ``auth`` the schemes this server requires ("basic", "bearer": either will do; none: open)."""
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "labelloop ML backend",
            "version": version or "unknown",
            "description": "Label Studio ML-backend protocol (1.23): prelabels and uncertainty scores "
            "from a YOLO model. Every route but /health (and / ) needs the configured basic auth or "
            "bearer token when one is set (this document lists the ones this server requires).",
        },
        "components": {
            "securitySchemes": {
                "basic": {"type": "http", "scheme": "basic"},
                "bearer": {"type": "http", "scheme": "bearer"},
            }
        },
        "security": [{scheme: []} for scheme in auth],
        "paths": {
            "/health": {"get": {"summary": "liveness", "security": [], "responses": {"200": _HEALTH}}},
            "/": {"get": {"summary": "liveness (as /health)", "security": [], "responses": {"200": _HEALTH}}},
            "/setup": {
                "post": {
                    "summary": "Label Studio connects a project (3 s; never loads a model)",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "project": _PROJECT,
                                        "schema": _NULLABLE_TEXT,
                                        "hostname": {**_NULLABLE_TEXT, "example": "http://localhost:8080"},
                                        "access_token": _NULLABLE_TEXT,
                                        "model_version": _NULLABLE_TEXT,
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": _json({"type": "object", "properties": {"model_version": {"type": "string"}}}),
                        **_ERRORS,
                    },
                }
            },
            "/predict": {
                "post": {
                    "summary": "one prediction per task, in order (100 s; the rest is written later)",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["tasks"],
                                    "properties": {
                                        "tasks": {"type": "array", "items": _TASK},
                                        "project": _PROJECT,
                                        "label_config": _NULLABLE_TEXT,
                                        "params": {"type": "object", "nullable": True},
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "properties": {
                                    "results": {"type": "array", "items": _PREDICTION},
                                    "model_version": {"type": "string"},
                                },
                            }
                        ),
                        **_ERRORS,
                    },
                }
            },
            "/versions": {
                "get": {
                    "summary": "the model versions served",
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "properties": {
                                    "versions": {"type": "array", "items": {"type": "string"}},
                                    "model_version": {"type": "string"},
                                },
                            }
                        ),
                        "401": _ERROR,
                    },
                }
            },
            "/webhook": {
                "post": {
                    "summary": "a Label Studio webhook event (recorded; START_TRAINING queues a retrain)",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "action": {
                                            "type": "string",
                                            "pattern": "^[A-Z][A-Z_]{0,63}$",
                                            "example": "ANNOTATION_CREATED",
                                        },
                                        "project": {
                                            "type": "object",
                                            "properties": {"id": {"type": "integer"}},
                                        },
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "properties": {"status": {"type": "string"}, "action": {"type": "string"}},
                            }
                        ),
                        **_ERRORS,
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {
                        "200": {
                            "description": "exposition",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        },
                        "401": _ERROR,
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "this document",
                    "responses": {"200": _json({"type": "object"}), "401": _ERROR},
                }
            },
        },
    }
