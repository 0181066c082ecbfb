"""Deprecated: the names callers used before the Label Studio connector was split into modules.

Remove once ``labelloop.demo``, ``labelloop.bench.runs.bench_predict``, ``backend.jobs.predict``
and ``backend.serving.project_access`` import from ``labelloop.connectors.labelstudio`` (its
``auth``, ``projects`` and ``imports`` modules, ``push_predictions``) instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from labelloop.connectors.labelstudio import imports, projects
from labelloop.connectors.labelstudio.auth import auth_header
from labelloop.connectors.labelstudio.client import LabelStudioClient
from labelloop.connectors.labelstudio.push import push_predictions

__all__ = ["LabelStudioConnector", "auth_header", "push_predictions"]


class LabelStudioConnector(LabelStudioClient):
    """The client with the few project calls the demo and the predict benchmark make."""

    def create_project(self, title: str, label_config: str, description: str = "") -> int:
        return projects.create_project(self, title, label_config, description)

    def upload_images(self, project: int, paths: Sequence[Path]) -> list[int]:
        report = imports.upload_images(
            self, project, paths, image_key=projects.image_key(projects.label_config(self, project))
        )
        return [report.task_ids[sha] for _, sha in imports.hash_images(paths)]

    def connect_ml_backend(self, project: int, url: str, title: str = "labelloop") -> int:
        return projects.connect_ml_backend(self, project, url, title)

    def retrieve_predictions(self, project: int) -> dict:
        return projects.retrieve_predictions(self, project)

    def set_model_version(self, project: int, version: str) -> None:
        projects.set_model_version(self, project, version)

    def create_uncertainty_view(self, project: int, title: str = projects.UNCERTAINTY_VIEW) -> int:
        return projects.create_uncertainty_view(self, project, title)
