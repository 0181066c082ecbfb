"""Label Studio as a :class:`~labelloop.connectors.platform.LabelingPlatform`: a project is the
container, a task the item. The verbs compose the modules of this package; the project's label
config is read and parsed once per project and converts every prelabel."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from labelloop.connectors.formats.labelstudio import (
    LabelConfig,
    generate_label_config,
    item_to_ls_prediction,
    label_resolver,
    select_controls,
)
from labelloop.connectors.journal import PushJournal
from labelloop.connectors.labelstudio import imports, projects, pull
from labelloop.connectors.labelstudio.auth import auth_header
from labelloop.connectors.labelstudio.client import LabelStudioClient
from labelloop.connectors.labelstudio.push import write_predictions
from labelloop.connectors.labelstudio.tasks import iter_tasks, set_task_data, split_versions, tasks_by_id
from labelloop.connectors.platform import (
    Cursor,
    FetchAccess,
    ImportReport,
    PriorityReport,
    Progress,
    PullProgress,
    PullResult,
    PushReport,
)
from labelloop.errors import ConfigError
from labelloop.settings import Settings
from labelloop.types import ImageItem

# the model task a prelabel's geometry calls for, most specific first
_TASK_OF_KIND = (("keypoints", "pose"), ("mask", "segment"), ("polygon", "segment"),
                 ("rotated_box", "obb"), ("class", "classify"))  # fmt: skip


def task_kind_of(items: Sequence[ImageItem]) -> str:
    kinds = {r.kind for it in items for r in it.regions}
    return next((task for kind, task in _TASK_OF_KIND if kind in kinds), "detect")


class LabelStudioPlatform:
    name = "labelstudio"
    container_kind = "project"
    orders_new_containers = False

    def __init__(self, client: LabelStudioClient, *, label_map: Mapping[str, str] | None = None) -> None:
        self.client = client
        self.label_map = dict(label_map or {})
        self._configs: dict[int, LabelConfig] = {}

    @classmethod
    def from_settings(cls, settings: Settings, **client_options: Any) -> LabelStudioPlatform:
        return cls(
            LabelStudioClient.from_settings(settings, **client_options), label_map=settings.predict.label_map
        )

    @property
    def url(self) -> str:
        return self.client.url

    @property
    def fetch_access(self) -> FetchAccess:
        url, token = self.client.url, self.client.token
        return FetchAccess(url, lambda: auth_header(token, url))

    def close(self) -> None:
        self.client.session.close()

    def __enter__(self) -> LabelStudioPlatform:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def label_config(self, project: int) -> LabelConfig:
        if project not in self._configs:
            self._configs[project] = projects.label_config(self.client, project)
        return self._configs[project]

    def image_key(self, project: int) -> str:
        return projects.image_key(self.label_config(project))

    def import_images(
        self,
        container: int | None,
        images: Sequence[Path],
        *,
        title: str | None = None,
        labels: Sequence[str] = (),
        task_kind: str = "detect",
        keypoints: Sequence[str] = (),
        order: Mapping[str, float | None] | None = None,
        progress: Progress | None = None,
    ) -> ImportReport:
        """Upload images not already in the project (by sha256); ``order`` is not needed: Label
        Studio sorts by the prelabel score or a priority field instead (:meth:`write_priority`)."""
        notes = []
        if container is None:
            names = list(dict.fromkeys(labels))
            if not names:
                raise ConfigError("a new Label Studio project needs labels; none were given")
            config = generate_label_config(task_kind, names, keypoint_labels=list(keypoints) or None)
            container = projects.create_project(self.client, title or "labelloop", config)
            notes.append(f"created project {container} with labels {names}")
        report = imports.upload_images(
            self.client, container, images, image_key=self.image_key(container), progress=progress
        )
        return replace(report, notes=notes + report.notes)

    def import_uris(self, container: int, uris: Sequence[str]) -> ImportReport:
        """Tasks for image URLs or cloud URIs not already in the project."""
        return imports.import_uris(self.client, container, uris, image_key=self.image_key(container))

    def import_storage(self, container: int, location: Path | str, **options: Any) -> ImportReport:
        """Connect (once) and sync a folder of the Label Studio host or a bucket prefix."""
        t0 = time.monotonic()
        before = {t["id"] for t in iter_tasks(self.client, container, include="id", page_size=1000)}
        if isinstance(location, str) and "://" in location:
            imports.add_cloud_storage(self.client, container, location, **options)
        else:
            imports.add_local_storage(self.client, container, Path(location), **options)
        after = {t["id"] for t in iter_tasks(self.client, container, include="id", page_size=1000)}
        return ImportReport(
            container=container,
            created=len(after - before),
            skipped=0,
            task_ids={},
            seconds=time.monotonic() - t0,
            notes=[f"storage {location} synced"],
        )

    def images(self, container: int, model_version: str | None = None) -> list[ImageItem]:
        key = self.image_key(container)
        out = []
        for t in iter_tasks(
            self.client, container, include="id,data,predictions_model_versions", page_size=1000
        ):
            data = t.get("data") or {}
            sha = data.get(imports.SHA_FIELD)
            has = (
                model_version in split_versions(t.get("predictions_model_versions"))
                if model_version
                else None
            )
            out.append(
                ImageItem(
                    uri=str(data.get(key) or ""),
                    width=0,
                    height=0,
                    sha256=sha if isinstance(sha, str) and sha else None,
                    metadata={"task_id": int(t["id"]), "has_prelabel": has},
                )
            )
        return out

    def resolve_labels(self, container: int, names: Sequence[str], task_kind: str) -> dict[str, str | None]:
        """By the control the model fills: the label map, ``predicted_values``, then the label's
        own name, case-insensitively."""
        plan = select_controls(self.label_config(container), task_kind)
        resolve = label_resolver(plan.main, self.label_map)
        return {n: resolve(n) for n in names}

    def predictions(
        self, container: int, items: Sequence[ImageItem], model_version: str
    ) -> list[dict[str, Any]]:
        """Items (with ``metadata["task_id"]``) as Label Studio predictions for the project's config."""
        with_regions = [it for it in items if it.regions]
        plan = (
            select_controls(self.label_config(container), task_kind_of(with_regions))
            if with_regions
            else None
        )
        out = []
        for it in items:
            if "task_id" not in it.metadata:
                raise ConfigError(f"image {it.uri!r} names no Label Studio task (metadata['task_id'])")
            if plan is None or not it.regions:
                score = it.score if it.score is not None else 0.0
                pred = {"result": [], "score": float(score), "model_version": model_version}
            else:
                pred, _ = item_to_ls_prediction(it, plan, model_version, self.label_map)
            out.append({**pred, "task": int(it.metadata["task_id"])})
        return out

    def push_prelabels(
        self,
        container: int,
        items: Sequence[ImageItem],
        model_version: str,
        *,
        journal: Path | None = None,
        progress: Progress | None = None,
        chunk: int = 500,
    ) -> PushReport:
        state = None
        if journal is not None:
            created = projects.get_project(self.client, container).get("created_at")
            # created_at: a reinstalled Label Studio reuses project ids
            scope = {
                "server": self.url,
                "project": container,
                "created": created,
                "model_version": model_version,
            }
            state = PushJournal.load(journal, scope)
        preds = self.predictions(container, items, model_version)
        return write_predictions(self.client, container, preds, journal=state, chunk=chunk, progress=progress)

    def pull_changes(
        self,
        container: int,
        cursor: Cursor | None = None,
        *,
        reconcile: bool = True,
        progress: PullProgress | None = None,
    ) -> PullResult:
        return pull.pull_changes(
            self.client,
            container,
            cursor,
            image_field=self.image_key(container),
            reconcile=reconcile,
            progress=progress,
        )

    def set_model_version(self, container: int, version: str) -> None:
        projects.set_model_version(self.client, container, version)

    def image_bytes(self, container: int, task_id: str, uri: str | None) -> bytes | None:
        """None: a task's image is read from its URI with :attr:`fetch_access` (its own files need
        the server's auth; URLs and cloud URIs are fetched under the SSRF rules)."""
        return None

    def write_priority(
        self,
        container: int,
        scores: Mapping[str, float | None],
        *,
        field_name: str | None,
        view: str | None,
        by_prelabel_score: bool = False,
        below: float | None = None,
        progress: Progress | None = None,
    ) -> PriorityReport:
        """``scores`` into each task's ``data[field_name]`` (None: no field) and a saved Data
        Manager view ``view`` ordered ascending, by that field or, with ``by_prelabel_score``, by
        the prediction score of the project's model_version (no field needed); with ``below``, the
        view shows only tasks whose field is under it."""
        written = 0
        if field_name:
            values = {int(k): {field_name: v} for k, v in scores.items() if v is not None}
            listed = tasks_by_id(self.client, container, sorted(values), include="id,data")
            written = set_task_data(self.client, listed, values, progress=progress)
        view_id = None
        if view:
            if not by_prelabel_score and not field_name:
                raise ConfigError(f"the view {view!r} needs a field to order by, or the prelabel score")
            ordering = (
                projects.PRELABEL_SCORE if by_prelabel_score else projects.data_ordering(field_name or "")
            )
            shown = projects.field_below(field_name, below) if field_name and below is not None else None
            view_id = projects.ensure_view(self.client, container, view, [ordering], filters=shown)
        return PriorityReport(container, written, view_id)
