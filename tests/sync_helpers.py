"""Label Studio projects with annotations made through its API, and the store compared with them."""

from __future__ import annotations

import uuid
from typing import Any

from labelloop.connectors.formats.labelstudio import generate_label_config
from labelloop.connectors.labelstudio import LabelStudioClient, imports, projects
from labelloop.connectors.labelstudio.tasks import iter_tasks
from labelloop.settings import Settings, SyncSource
from labelloop.sync.store import Store
from labelloop.sync.store.models import HeadRow, RevisionRow

CLASSES = ("circle", "square", "triangle")
CONFIG = generate_label_config("detect", list(CLASSES))


def rect(label: str, x: float = 10.0, y: float = 10.0, w: float = 20.0) -> dict[str, Any]:
    return {
        "id": f"r{uuid.uuid4().hex[:8]}",
        "type": "rectanglelabels",
        "from_name": "label",
        "to_name": "image",
        "original_width": 320,
        "original_height": 320,
        "value": {"x": x, "y": y, "width": w, "height": w, "rotation": 0, "rectanglelabels": [label]},
    }


def annotated_tasks(n: int, start: int = 0) -> list[dict[str, Any]]:
    """Import rows with one annotation each (``n`` tasks, image URLs that are never fetched)."""
    return [
        {
            "data": {"image": f"https://example.com/img{start + i}.jpg"},
            "annotations": [{"result": [rect(CLASSES[i % 3], 5 + i % 60)], "lead_time": 3.0}],
        }
        for i in range(n)
    ]


def make_project(conn: LabelStudioClient, title: str, rows: list[dict[str, Any]]) -> tuple[int, list[int]]:
    project = projects.create_project(conn, title, CONFIG)
    ids = imports.import_tasks(conn, project, rows)
    return project, ids


def sync_settings(ls: Any, cache_dir: Any, **sections: Any) -> Settings:
    base = {
        "label_studio_url": ls.url,
        "label_studio_token": ls.token,
        "cache_dir": cache_dir,
        "queue": {"prefix": f"t{uuid.uuid4().hex[:8]}"},
    }
    sections.setdefault("sync", {}).setdefault("fetch_images", False)  # example.com URLs are never fetched
    return Settings(**base, **sections)


def source(ls: Any, project: int) -> SyncSource:
    return SyncSource(platform="labelstudio", url=ls.url, project=project)


def ls_state(conn: LabelStudioClient, project: int) -> dict[tuple[str, str], str]:
    """(task id, annotation id) -> updated_at, as Label Studio holds it now."""
    return {
        (str(t["id"]), str(a["id"])): a["updated_at"]
        for t in iter_tasks(conn, project)
        for a in t.get("annotations") or []
    }


def store_state(store: Store, key: str) -> dict[tuple[str, str], str]:
    """(task id, annotation id) -> updated_at of the live heads the store holds for source ``key``."""
    from sqlalchemy import select

    with store.session() as s:
        heads = s.execute(
            select(HeadRow.task_id, HeadRow.annotation_id, RevisionRow.updated_at)
            .join(RevisionRow, RevisionRow.id == HeadRow.revision_id)
            .where(HeadRow.source_key == key, HeadRow.deleted.is_(False))
        ).all()
    return {(t, a): u for t, a, u in heads}


def duplicate_revisions(store: Store, key: str) -> int:
    """Revisions that repeat an (annotation, state) already stored: must always be 0."""
    from sqlalchemy import func, select

    with store.session() as s:
        q = (
            select(RevisionRow.annotation_id, RevisionRow.state_key, func.count())
            .where(RevisionRow.source_key == key)
            .group_by(RevisionRow.annotation_id, RevisionRow.state_key)
            .having(func.count() > 1)
        )
        return len(s.execute(q).all())
