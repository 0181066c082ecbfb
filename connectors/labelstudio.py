"""Label Studio REST client: the calls labelloop makes, with retries and one clear error each.

Only this module speaks Label Studio's HTTP API. Writes of predictions go through the bulk
``/api/projects/{id}/import/predictions`` endpoint and are idempotent per (task, model_version):
tasks that already hold a prediction of that version are skipped, so a retried job never
duplicates one.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any

import requests

from labelloop.errors import RemoteError

log = logging.getLogger(__name__)
RETRY_STATUS = {429, 500, 502, 503, 504}


def auth_header(token: str | None) -> dict[str, str]:
    """Personal access tokens are JWTs (Bearer); legacy tokens use the "Token" scheme."""
    if not token:
        return {}
    return {"Authorization": f"{'Bearer' if token.count('.') == 2 else 'Token'} {token}"}


class LabelStudioClient:
    def __init__(self, url: str, token: str | None, retries: int = 4, timeout: float = 120.0) -> None:
        self.url = url.rstrip("/")
        self.retries, self.timeout = retries, timeout
        self.session = requests.Session()
        self.session.headers.update(auth_header(token))

    def request(self, method: str, path: str, retries: int | None = None, **kw: Any) -> Any:
        """JSON of a successful call; connection errors and 5xx are retried with backoff."""
        url = f"{self.url}{path}"
        retries = self.retries if retries is None else retries
        for attempt in range(retries + 1):
            try:
                r = self.session.request(method, url, timeout=self.timeout, **kw)
            except requests.RequestException as e:
                if attempt == retries:
                    raise RemoteError(
                        f"Label Studio at {self.url} is unreachable ({type(e).__name__}); "
                        "check LABELLOOP_LABEL_STUDIO_URL and that the server is up"
                    ) from e
            else:
                if r.status_code in (401, 403):
                    raise RemoteError(
                        f"Label Studio refused {method} {path} ({r.status_code}): "
                        "set LABELLOOP_LABEL_STUDIO_TOKEN to a valid token with access to the project"
                    )
                if r.status_code not in RETRY_STATUS or attempt == retries:
                    if not r.ok:
                        raise RemoteError(
                            f"Label Studio answered {r.status_code} to {method} {path}: {r.text[:300]}"
                        )
                    return r.json() if r.content else None
            time.sleep(min(2**attempt * 0.5, 10))
        raise AssertionError("unreachable")

    def versions_present(self, project: int, task_ids: Sequence[int]) -> dict[int, set[str]]:
        """Model versions of the predictions each task already has."""
        query = json.dumps({"selectedItems": {"all": False, "included": list(task_ids)}})
        data = self.request(
            "GET",
            "/api/tasks",
            params={
                "project": project,
                "query": query,
                "page_size": len(task_ids) or 1,
                "fields": "all",
                "include": "id,predictions_model_versions",
            },
        )
        out: dict[int, set[str]] = {}
        for t in data.get("tasks", []):
            raw = t.get("predictions_model_versions") or ""
            out[int(t["id"])] = {v.strip() for v in raw.split(",") if v.strip()}
        return out


def push_predictions(
    url: str, token: str | None, project: int, predictions: Iterable[dict[str, Any]], *, chunk: int = 500
) -> int:
    """Import predictions (``task``, ``result``, ``score``, ``model_version``) in bulk; returns how
    many were written (tasks that already had a prediction of the same version are skipped)."""
    client = LabelStudioClient(url, token)
    preds = list(predictions)
    written = 0
    for lo in range(0, len(preds), chunk):
        part = preds[lo : lo + chunk]
        for attempt in range(client.retries + 1):
            # re-read what exists on every attempt: a POST whose answer was lost may have landed
            present = client.versions_present(project, [p["task"] for p in part])
            todo = [p for p in part if p.get("model_version") not in present.get(p["task"], set())]
            if not todo:
                break
            try:
                client.request("POST", f"/api/projects/{project}/import/predictions", retries=0, json=todo)
            except RemoteError:
                if attempt == client.retries:
                    raise
                time.sleep(min(2**attempt, 10))
                continue
            written += len(todo)
            break
    return written


class ProjectSetup(LabelStudioClient):
    """The project-level calls the demo and the CLI make (create, import, connect, order)."""

    def create_project(self, title: str, label_config: str, description: str = "") -> int:
        data = self.request(
            "POST",
            "/api/projects",
            json={"title": title, "label_config": label_config, "description": description},
        )
        return int(data["id"])

    def upload_images(self, project: int, paths: Sequence[Any], batch: int = 50) -> list[int]:
        ids: list[int] = []
        for lo in range(0, len(paths), batch):
            # Label Studio reads one file per form field name
            files = [(f"file{i}", (p.name, p.read_bytes())) for i, p in enumerate(paths[lo : lo + batch])]
            data = self.request("POST", f"/api/projects/{project}/import?return_task_ids=true", files=files)
            ids += data.get("task_ids", [])
        return ids

    def connect_ml_backend(self, project: int, url: str, title: str = "labelloop") -> int:
        return int(
            self.request("POST", "/api/ml", json={"url": url, "project": project, "title": title})["id"]
        )

    def retrieve_predictions(self, project: int) -> dict:
        """What the Data Manager's "Retrieve predictions" action does, for every task."""
        return self.request(
            "POST",
            f"/api/dm/actions?id=retrieve_tasks_predictions&project={project}",
            json={"selectedItems": {"all": True, "excluded": []}},
        )

    def set_model_version(self, project: int, version: str) -> None:
        """Label Studio shows, and sorts by, predictions of the project's model_version only."""
        self.request("PATCH", f"/api/projects/{project}", json={"model_version": version})

    def create_uncertainty_view(self, project: int, title: str = "Most uncertain first") -> int:
        data = self.request(
            "POST",
            "/api/dm/views",
            json={"project": project, "data": {"title": title, "ordering": ["tasks:predictions_score"]}},
        )
        return int(data["id"])
