"""Agent functions for the CVAT test peer: what ``cvat-cli function create-native`` and
``cvat-cli function run-agent`` talk to.

These endpoints are not in CVAT 2.73's Community schema (agent functions are a CVAT Online /
Enterprise feature), so they follow the one published client of them, cvat-cli 2.80
(``cvat_cli/_internal/agent.py`` and ``agent_driver_detection.py``): the fields it sends and the
fields it reads, nothing more.

- ``POST /api/functions`` {provider, name, visibility, kind, labels_v2} -> the function with ``id``;
  ``GET``/``DELETE /api/functions/{id}``.
- ``POST /api/functions/queues/function:{id}/requests/acquire`` {agent_id, request_category} ->
  ``{"ar_assignment": {"ar_id", "ar_params"} | null}``; ``.../requests/{ar}/update`` {agent_id,
  progress}; ``.../complete`` {agent_id, annotations: PatchedLabeledDataRequest} writes the
  annotations into the task; ``.../fail`` {agent_id, exc_info}.
- ``.../watch`` (the event stream) is not served: the agent then polls, as it does with an older
  server, and ``--burst`` never watches.

Annotation requests are queued by :meth:`FunctionsMixin.request_annotation`, standing in for the
UI's "run model" action (its endpoint is not in the material we have).
"""

from __future__ import annotations

import itertools
import secrets
from typing import Any

from cvat_sdk.api_client import models
from flask import Response, request

from tests.cvat_peer.http import HttpError, reply, validate

NATIVE = "native"
CATEGORIES = ("interactive", "batch")


class FunctionsMixin:
    """State and handlers; ``CvatPeer`` supplies _lock, _get, now, _write, _touch, tasks, shapes..."""

    functions: dict[int, dict[str, Any]]
    ars: dict[str, dict[str, Any]]

    def _init_functions(self) -> None:
        self.functions = {}
        self.ars = {}
        self._function_ids = itertools.count(1)

    def function_routes(self) -> dict[tuple[str, str], Any]:
        q = "/api/functions/queues/function:<int:fid>/requests"
        return {
            ("POST", "/api/functions"): self.create_function,
            ("GET", "/api/functions/<int:fid>"): self.get_function,
            ("DELETE", "/api/functions/<int:fid>"): self.delete_function,
            ("POST", f"{q}/acquire"): self.acquire_request,
            ("POST", f"{q}/<ar_id>/update"): self.update_request,
            ("POST", f"{q}/<ar_id>/complete"): self.complete_request,
            ("POST", f"{q}/<ar_id>/fail"): self.fail_request,
        }

    # ------------------------------------------------------------------ for tests

    def request_annotation(
        self,
        function_id: int,
        task_id: int,
        *,
        mapping: dict[str, str] | None = None,
        threshold: float | None = None,
        cleanup: bool = False,
        category: str = "batch",
    ) -> str:
        """Queue "annotate this task with that function" (a user's click in CVAT's UI)."""
        fn = self._get(self.functions, function_id, "function")  # type: ignore[attr-defined]
        self._get(self.tasks, task_id, "task")  # type: ignore[attr-defined]
        names = mapping or {lb["name"]: lb["name"] for lb in fn["labels_v2"]}
        ar_id = secrets.token_hex(8)
        self.ars[ar_id] = {
            "function": function_id,
            "category": category,
            "status": "queued",
            "agent_id": None,
            "progress": 0.0,
            "cleanup": cleanup,
            "exc_info": None,
            "params": {
                "type": "annotate_task",
                "task": task_id,
                "mapping": {k: {"name": v} for k, v in names.items()},
                "threshold": threshold,
                "conv_mask_to_poly": False,
            },
        }
        return ar_id

    # ------------------------------------------------------------------ handlers

    def create_function(self) -> Response:
        body = request.get_json(silent=True) or {}
        missing = [k for k in ("provider", "name", "kind", "labels_v2") if k not in body]
        if missing:
            return reply(400, {k: ["This field is required."] for k in missing})
        if body["provider"] != NATIVE:
            return reply(400, {"provider": [f'"{body["provider"]}" is not a valid choice.']})
        for lb in body["labels_v2"]:
            if not isinstance(lb, dict) or "name" not in lb or not isinstance(lb.get("attributes"), list):
                return reply(400, {"labels_v2": ["Each label needs a name and a list of attributes."]})
        with self._lock:  # type: ignore[attr-defined]
            fid = next(self._function_ids)
            fn = {
                "id": fid,
                "provider": NATIVE,
                "name": body["name"],
                "visibility": body.get("visibility", "private"),
                "kind": body["kind"],
                "labels_v2": [
                    {**lb, "type": lb.get("type", "any"), "sublabels": lb.get("sublabels", [])}
                    for lb in body["labels_v2"]
                ],
                "owner": self._user_ref(request.environ["peer.user"]),  # type: ignore[attr-defined]
                "created_date": self.now(),  # type: ignore[attr-defined]
            }
            for lb in fn["labels_v2"]:
                for sl in lb["sublabels"]:
                    sl.setdefault("type", "any")
            self.functions[fid] = fn
        return reply(fn, 201)

    def get_function(self, fid: int) -> Response:
        return reply(self._get(self.functions, fid, "function"))  # type: ignore[attr-defined]

    def delete_function(self, fid: int) -> Response:
        self._get(self.functions, fid, "function")  # type: ignore[attr-defined]
        del self.functions[fid]
        return Response(status=204)

    def acquire_request(self, fid: int) -> Response:
        self._get(self.functions, fid, "function")  # type: ignore[attr-defined]
        body = request.get_json(silent=True) or {}
        if not body.get("agent_id") or body.get("request_category") not in CATEGORIES:
            return reply(400, {"detail": "agent_id and request_category (interactive|batch) are required"})
        with self._lock:  # type: ignore[attr-defined]
            for ar_id, ar in self.ars.items():
                if (
                    ar["function"] == fid
                    and ar["status"] == "queued"
                    and ar["category"] == body["request_category"]
                ):
                    ar.update(status="running", agent_id=body["agent_id"])
                    return reply({"ar_assignment": {"ar_id": ar_id, "ar_params": ar["params"]}})
        return reply({"ar_assignment": None})

    def _assigned(self, fid: int, ar_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
        ar = self.ars.get(ar_id)
        body = request.get_json(silent=True) or {}
        if ar is None or ar["function"] != fid:
            raise HttpError(404, {"detail": "Annotation request not found"})
        if ar["status"] != "running" or ar["agent_id"] != body.get("agent_id"):
            raise HttpError(409, {"detail": "The annotation request is not assigned to this agent"})
        return ar, body

    def update_request(self, fid: int, ar_id: str) -> Response:
        ar, body = self._assigned(fid, ar_id)
        ar["progress"] = float(body.get("progress", 0.0))
        return Response(status=200)

    def complete_request(self, fid: int, ar_id: str) -> Response:
        with self._lock:  # type: ignore[attr-defined]
            ar, body = self._assigned(fid, ar_id)
            data = validate(body.get("annotations"), models.PatchedLabeledDataRequest)
            tid = ar["params"]["task"]
            task = self._get(self.tasks, tid, "task")  # type: ignore[attr-defined]
            lo, hi = 0, max(task["size"] - 1, 0)
            shapes, tags = self.shapes[tid], self.tags[tid]  # type: ignore[attr-defined]
            if ar["cleanup"]:
                self._drop(shapes, tags, lo, hi)  # type: ignore[attr-defined]
            written = self._write(tid, data, shapes, tags, lo, hi, "create")  # type: ignore[attr-defined]
            self._touch(tid, lo, hi, None, written)  # type: ignore[attr-defined]
            ar.update(status="finished", progress=1.0)
        return Response(status=200)

    def fail_request(self, fid: int, ar_id: str) -> Response:
        ar, body = self._assigned(fid, ar_id)
        ar.update(status="failed", exc_info=body.get("exc_info"))
        return Response(status=200)
