"""A Label Studio project: create and read it, its label config (parsed; the platform keeps one
per project), the model_version it shows and sorts by, its ML backend, and the saved Data Manager
views people sort work in."""

from __future__ import annotations

from typing import Any

from labelloop.connectors.formats.labelstudio import LabelConfig, parse_label_config
from labelloop.connectors.labelstudio.client import LabelStudioClient

UNCERTAINTY_VIEW = "Most uncertain first"
PRELABEL_SCORE = "tasks:predictions_score"  # what Label Studio sorts predictions by (ascending)


def get_project(client: LabelStudioClient, project: int) -> dict[str, Any]:
    return client.request("GET", f"/api/projects/{project}")


def create_project(client: LabelStudioClient, title: str, label_config: str, description: str = "") -> int:
    data = client.request(
        "POST",
        "/api/projects",
        json={"title": title, "label_config": label_config, "description": description},
    )
    return int(data["id"])


def label_config(client: LabelStudioClient, project: int) -> LabelConfig:
    """The project's label config, parsed; an empty config parses to no controls."""
    return parse_label_config(get_project(client, project).get("label_config") or "<View/>")


def image_key(config: LabelConfig) -> str:
    """The task data field holding the image (``$image`` -> "image")."""
    return next(iter(config.images.values()), "image")


def set_model_version(client: LabelStudioClient, project: int, version: str) -> None:
    """Label Studio shows, and sorts by, predictions of the project's model_version only."""
    client.request("PATCH", f"/api/projects/{project}", json={"model_version": version})


def connect_ml_backend(client: LabelStudioClient, project: int, url: str, title: str = "labelloop") -> int:
    return int(client.request("POST", "/api/ml", json={"url": url, "project": project, "title": title})["id"])


def retrieve_predictions(client: LabelStudioClient, project: int) -> dict:
    """What the Data Manager's "Retrieve predictions" action does, for every task."""
    return client.request(
        "POST",
        f"/api/dm/actions?id=retrieve_tasks_predictions&project={project}",
        json={"selectedItems": {"all": True, "excluded": []}},
    )


def ensure_view(
    client: LabelStudioClient,
    project: int,
    title: str,
    ordering: list[str],
    *,
    filters: dict[str, Any] | None = None,
) -> int:
    """The saved Data Manager tab ``title`` ordered by ``ordering`` (and narrowed by ``filters``),
    made once per project (an existing tab of that title is kept as the user left it)."""
    views = client.request("GET", "/api/dm/views", params={"project": project}) or []
    for v in views:
        if (v.get("data") or {}).get("title") == title:
            return int(v["id"])
    data = client.request(
        "POST",
        "/api/dm/views",
        json={
            "project": project,
            "data": {"title": title, "ordering": ordering, **({"filters": filters} if filters else {})},
        },
    )
    return int(data["id"])


def create_uncertainty_view(client: LabelStudioClient, project: int, title: str = UNCERTAINTY_VIEW) -> int:
    """The tab ordered by prediction score ascending: least confident first."""
    return ensure_view(client, project, title, [PRELABEL_SCORE])


def field_below(field_name: str, value: float) -> dict[str, Any]:
    """A Data Manager filter: the task data field is a number under ``value``."""
    return {
        "conjunction": "and",
        "items": [
            {
                "filter": f"filter:tasks:data.{field_name}",
                "operator": "less",
                "type": "Number",
                "value": value,
            }
        ],
    }


def data_ordering(field_name: str) -> str:
    """How a Data Manager view orders by a task data field."""
    return f"tasks:data.{field_name}"
