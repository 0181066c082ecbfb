"""Fixtures and builders for the dataset store's tests; import them with
``from tests.store_fixtures import *``.

``store`` is parametrised over both databases: a SQLite file per test, and on PostgreSQL (at
``LABELLOOP_TEST_PG``, default ``postgresql+psycopg://postgres@127.0.0.1:5432``) one throwaway
database per test session (``ll_<random>``, dropped at the end) whose tables are emptied between
tests. PostgreSQL missing is a failing test that says so, never a skip.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from labelloop.connectors.platform import Cursor, PulledAnnotation, PullResult, Target
from labelloop.sync.store import Store
from labelloop.sync.store.models import Base
from labelloop.types import Box, ImageItem, Provenance, Region, Source

PG_SERVER = os.environ.get("LABELLOOP_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432")
BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session; its URL."""
    name = f"ll_{uuid.uuid4().hex[:12]}"
    admin = create_engine(f"{PG_SERVER}/postgres", isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as c:
            c.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as e:
        admin.dispose()
        raise AssertionError(
            f"these tests need PostgreSQL at {PG_SERVER} (trust auth, user postgres; set "
            f"LABELLOOP_TEST_PG to another server): {type(e).__name__}: {str(e).splitlines()[0]}"
        ) from e
    try:
        yield f"{PG_SERVER}/{name}"
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite store, copied for each test (cheaper than migrating each time)."""
    path = tmp_path_factory.mktemp("store-template") / "store.db"
    Store.open(f"sqlite:///{path}", blob_root=str(path.parent / "blobs")).close()
    return path


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        import shutil

        shutil.copyfile(request.getfixturevalue("sqlite_template"), tmp_path / "store.db")
        return f"sqlite:///{tmp_path / 'store.db'}"
    url = request.getfixturevalue("pg_database")
    _empty_pg(url)
    return url


def _empty_pg(url: str) -> None:
    engine = create_engine(url)
    try:
        with engine.begin() as c:
            # a connection a failed test left open must not hold the next test's TRUNCATE forever
            c.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
            c.execute(text("SET LOCAL lock_timeout = '20s'"))
            have = {
                r[0] for r in c.execute(text("SELECT tablename FROM pg_tables WHERE schemaname='public'"))
            }
            names = [t.name for t in Base.metadata.sorted_tables if t.name in have]
            if names:
                c.execute(text(f"TRUNCATE {', '.join(names)} RESTART IDENTITY CASCADE"))
    finally:
        engine.dispose()


@pytest.fixture
def store(db_url: str, tmp_path: Path) -> Iterator[Store]:
    s = Store.open(db_url, blob_root=str(tmp_path / "blobs"))
    yield s
    s.close()


# ------------------------------------------------------------------------------ builders

LS = Target("labelstudio", "http://ls.test:8080", 1)
CVAT = Target("cvat", "http://cvat.test", 7)


def box(label: str, x1: float, y1: float, x2: float, y2: float, source: Source = Source.HUMAN) -> Region:
    return Region(label, Box(x1, y1, x2, y2), provenance=Provenance(source=source))


def item(
    regions: list[Region], *, sha: str | None = None, uri: str = "", w: int = 100, h: int = 100, **kw
) -> ImageItem:  # type: ignore[no-untyped-def]
    return ImageItem(uri=uri, width=w, height=h, regions=list(regions), sha256=sha, **kw)


def sha_of(name: str) -> str:
    import hashlib

    return hashlib.sha256(name.encode()).hexdigest()


def ann(
    task: str | int,
    ann_id: str | int,
    regions: list[Region] | None = None,
    *,
    updated: str = "2025-01-01T00:00:00Z",
    image: str | None = None,
    target: Target = LS,
    **kw,  # type: ignore[no-untyped-def]
) -> PulledAnnotation:
    """An annotation of task ``task``; its image's sha is derived from ``image`` (default: the
    task), so one task is one item unless told otherwise."""
    name = image if image is not None else f"img-{task}"
    sha = kw.pop("sha", sha_of(name))
    item_kw = kw.pop("item_kw", {})
    it = kw.pop("item", None) or item(regions or [], sha=sha, uri=f"s3://bucket/{name}.jpg", **item_kw)
    return PulledAnnotation(
        platform=target.platform,
        container=target.container,
        task_id=str(task),
        annotation_id=str(ann_id),
        item=it,
        updated_at=updated,
        **kw,
    )


def result(
    anns: list[PulledAnnotation],
    *,
    present: dict[str, list[str]] | None = None,
    all_tasks: list[str] | None = None,
    cursor: str = "c1",
) -> PullResult:
    """A pull; ``present`` defaults to exactly the annotations given, by task."""
    if present is None:
        present = {}
        for a in anns:
            present.setdefault(a.task_id, []).append(a.annotation_id)
    return PullResult(
        annotations=anns,
        present=present,
        cursor=Cursor("labelstudio", {"since": cursor}),
        all_tasks=all_tasks,
    )
