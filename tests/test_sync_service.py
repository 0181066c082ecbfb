"""The sync service against the real Label Studio, on SQLite and PostgreSQL, with real Redis."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from redis import Redis
from rq import Queue

from labelloop.connectors.labelstudio import LabelStudioClient
from labelloop.procs import free_port
from labelloop.settings import SyncSource
from labelloop.sync.events import EventWatcher, record_event
from labelloop.sync.ingest import quarantined
from labelloop.sync.service import DISAGREE_VIEW, SyncService
from labelloop.sync.store import Store
from labelloop.sync.trigger import RETRAIN_JOB, retrain_job_id, train_queue_name
from labelloop.sync.versions import latest
from tests.helpers import redis_or_fail
from tests.store_fixtures import *  # noqa: F403
from tests.sync_helpers import (
    annotated_tasks,
    duplicate_revisions,
    ls_state,
    make_project,
    rect,
    source,
    store_state,
    sync_settings,
)

pytestmark = pytest.mark.labelstudio


@pytest.fixture
def conn(label_studio) -> LabelStudioClient:  # type: ignore[no-untyped-def]
    return LabelStudioClient(label_studio.url, label_studio.token, backoff_s=0.05)


def _service(settings, store: Store, sources, **kw) -> SyncService:  # type: ignore[no-untyped-def]
    return SyncService(settings, store, sources, **kw)


def test_a_pass_keeps_what_label_studio_holds_versions_it_and_enqueues_one_retrain(
    label_studio, conn, store: Store, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    redis_or_fail()
    project, ids = make_project(conn, "sync", annotated_tasks(6))
    conn.request("POST", f"/api/tasks/{ids[0]}/annotations", json={"result": [], "was_cancelled": True})
    settings = sync_settings(
        label_studio, tmp_path, trigger={"min_new_labels": 5}, sync={"snapshot_min_changes": 3}
    )
    calls: list[tuple[str, int, int | None]] = []

    @contextlib.contextmanager
    def bar(what: str, total: int):  # type: ignore[no-untyped-def]
        yield lambda n, total=None: calls.append((what.split()[0], n, total))

    svc = _service(settings, store, [source(label_studio, project)], bar=bar)
    first = svc.run_once()
    assert first.ok, first.to_dict()
    pulls = [(n, t) for what, n, t in calls if what == "pull"]
    assert pulls[0] == (0, 6) and sum(n for n, _ in pulls) == 6  # the total from page 1, then each task
    (src,) = first.sources
    assert (src.pulled, src.new_revisions, src.reconciled) == (7, 7, True)
    assert first.version_created and first.version
    assert store_state(store, src.source) == ls_state(conn, project)

    # the trigger: 6 verified images >= 5 -> exactly one job, for this version, on the train queue
    assert first.job_id == retrain_job_id(first.version)
    q = Queue(train_queue_name(settings), connection=Redis.from_url(settings.queue.redis_url))
    job = q.fetch_job(first.job_id)
    assert job is not None and job.func_name == RETRAIN_JOB and job.args == (first.version,)
    assert q.count == 1
    again = svc.run_once()
    assert again.changed == 0 and again.job_id is None and again.version == first.version
    assert q.count == 1
    other = _service(settings, store, [source(label_studio, project)])  # a second sync, same store
    assert other.run_once().job_id is None and q.count == 1
    q.empty()


def test_edits_deletions_and_cancellations_are_found(
    label_studio, conn, store: Store, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    project, ids = make_project(conn, "sync edits", annotated_tasks(5))
    settings = sync_settings(label_studio, tmp_path, sync={"reconcile_interval_s": 0})
    svc = _service(settings, store, [source(label_studio, project)], enqueue=False)
    key = svc.run_once().sources[0].source
    tasks = {t: conn.request("GET", f"/api/tasks/{t}") for t in ids}
    a0 = tasks[ids[0]]["annotations"][0]["id"]
    a1 = tasks[ids[1]]["annotations"][0]["id"]
    time.sleep(1.1)
    conn.request("PATCH", f"/api/annotations/{a0}", json={"result": [rect("square", 50)]})
    conn.request("DELETE", f"/api/annotations/{a1}")
    conn.request("DELETE", f"/api/tasks/{ids[2]}")
    conn.request("POST", f"/api/tasks/{ids[3]}/annotations", json={"result": [], "was_cancelled": True})
    time.sleep(2.1)  # the cursor is the server's whole-second clock
    rep = svc.run_once().sources[0]
    assert rep.ok, rep
    assert rep.new_revisions == 2  # the edit and the cancelled one
    assert rep.tombstoned >= 2  # the deleted annotation and the deleted task's annotation
    assert store_state(store, key) == ls_state(conn, project)
    assert duplicate_revisions(store, key) == 0


def test_disagreement_is_written_back_as_a_field_and_a_view(
    label_studio, conn, store: Store, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    rows = annotated_tasks(3)
    rows[0]["annotations"].append({"result": [rect("triangle", 70, 70)]})  # a second person disagrees
    rows[1]["annotations"].append({"result": list(rows[1]["annotations"][0]["result"])})  # agrees
    project, ids = make_project(conn, "disagree", rows)
    settings = sync_settings(label_studio, tmp_path, sync={"agreement_threshold": 0.7})
    rep = _service(settings, store, [source(label_studio, project)], enqueue=False).run_once()
    assert rep.sources[0].disagreements == 1
    field = settings.sync.agreement_field
    data = {t: conn.request("GET", f"/api/tasks/{t}")["data"] for t in ids}
    assert data[ids[0]][field] == 0.0 and data[ids[1]][field] == 1.0 and field not in data[ids[2]]
    views = conn.request("GET", "/api/dm/views", params={"project": project})
    (view,) = [v for v in views if v["data"]["title"] == DISAGREE_VIEW]
    shown = conn.request("GET", "/api/tasks", params={"project": project, "view": view["id"]})
    shown = shown["tasks"] if isinstance(shown, dict) else shown
    assert [t["id"] for t in shown] == [ids[0]]  # only the task under the threshold


def test_a_malformed_annotation_is_quarantined_and_the_rest_sync(
    label_studio, conn, store: Store, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    project, ids = make_project(conn, "malformed", annotated_tasks(4))
    bad = rect("circle")
    bad["value"]["width"] = "wide"  # Label Studio stores it; no box can be made of it
    conn.request("POST", f"/api/tasks/{ids[1]}/annotations", json={"result": [bad]})
    svc = _service(
        sync_settings(label_studio, tmp_path), store, [source(label_studio, project)], enqueue=False
    )
    rep = svc.run_once().sources[0]
    assert rep.ok and rep.quarantined == 1 and rep.new_revisions == 4
    (q,) = quarantined(store)
    assert q["task_id"] == str(ids[1]) and bad["id"] in q["reason"] and '"width": "wide"' in q["reason"]
    assert svc.run_once().sources[0].quarantined == 1 and len(quarantined(store)) == 1  # kept once


def test_unreachable_sources_back_off_with_one_log_line_and_the_rest_sync(
    label_studio, conn, store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:  # type: ignore[no-untyped-def]
    project, _ = make_project(conn, "reachable", annotated_tasks(2))
    dead = SyncSource(platform="labelstudio", url=f"http://127.0.0.1:{free_port()}", project=1)
    settings = sync_settings(label_studio, tmp_path)
    svc = _service(settings, store, [dead, source(label_studio, project)], enqueue=False)
    caplog.set_level(logging.WARNING, logger="labelloop")
    first = svc.run_once()
    assert not first.ok and first.sources[1].ok and first.sources[1].new_revisions == 2
    assert "unreachable" in (first.sources[0].error or "") or first.sources[0].error
    second = svc.run_once()
    assert second.sources[0].skipped  # backing off, not hammering
    lines = [r for r in caplog.records if "retrying with backoff" in r.getMessage()]
    assert len(lines) == 1 and "127.0.0.1" in lines[0].getMessage()


def test_a_database_outage_loses_nothing(label_studio, conn, pg_database: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """PostgreSQL refuses connections mid-run: the pass reports it, the loop goes on, and the next
    pass after it is back stores everything (the cursor never ran ahead of the data)."""
    import sqlalchemy as sa

    admin = sa.create_engine(pg_database.rsplit("/", 1)[0] + "/test", isolation_level="AUTOCOMMIT")
    dbname = f"outage_{int(time.time() * 1000)}"
    with admin.connect() as c:
        c.execute(sa.text(f"CREATE DATABASE {dbname}"))
    url = pg_database.rsplit("/", 1)[0] + f"/{dbname}"
    project, _ = make_project(conn, "db outage", annotated_tasks(3))
    try:
        with Store.open(url=url, blob_root=str(tmp_path / "blobs")) as store:
            svc = _service(
                sync_settings(label_studio, tmp_path), store, [source(label_studio, project)], enqueue=False
            )
            with admin.connect() as c:
                c.execute(sa.text(f"ALTER DATABASE {dbname} ALLOW_CONNECTIONS false"))
                c.execute(
                    sa.text(
                        f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{dbname}'"
                    )
                )
            down = svc.run_once()
            assert not down.ok and down.sources[0].error
            with admin.connect() as c:
                c.execute(sa.text(f"ALTER DATABASE {dbname} ALLOW_CONNECTIONS true"))
            svc.sources[0].next_try = 0.0  # the backoff has passed
            up = svc.run_once()
            assert up.ok, up.to_dict()
            assert store_state(store, up.sources[0].source) == ls_state(conn, project)
    finally:
        with admin.connect() as c:
            c.execute(sa.text(f"ALTER DATABASE {dbname} ALLOW_CONNECTIONS true"))
            c.execute(sa.text(f"DROP DATABASE IF EXISTS {dbname} WITH (FORCE)"))
        admin.dispose()


def test_webhook_events_wake_the_loop(label_studio, conn, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings = sync_settings(label_studio, tmp_path, sync={"interval_s": 120})
    r = Redis.from_url(redis_or_fail())
    watcher = EventWatcher(settings, r)
    threading.Timer(0.5, record_event, (r, settings, {"action": "ANNOTATION_CREATED", "project": 1})).start()
    t0 = time.monotonic()
    woke = watcher.wait(30)
    assert woke.reason == "event" and woke.events[0]["action"] == "ANNOTATION_CREATED"
    assert time.monotonic() - t0 < 30
    record_event(r, settings, {"action": "ANNOTATION_UPDATED"})  # while nobody waits: not lost
    assert watcher.wait(30).reason == "event"
    assert watcher.wait(0.6).reason == "timeout"
    stop = threading.Event()
    stop.set()
    assert watcher.wait(30, stop).reason == "stopped"
    watcher.close()
    r.delete(f"{settings.queue.prefix}:events")


def test_cli_once_prints_a_json_pass_and_exits_non_zero_on_a_failing_source(
    label_studio, conn, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    project, _ = make_project(conn, "cli sync", annotated_tasks(3))
    env = {
        **os.environ,
        **sync_settings(label_studio, tmp_path).environment(),
        "LABELLOOP_STORE_URL": f"sqlite:///{tmp_path / 'store.db'}",
        "LABELLOOP_SYNC_FETCH_IMAGES": "false",  # example.com URLs: nothing to download here
        "LABELLOOP_SYNC_SNAPSHOT_MIN_CHANGES": "2",
    }
    cmd = [
        sys.executable,
        "-m",
        "labelloop.cli",
        "sync",
        "--once",
        "-t",
        "labelstudio",
        "--project",
        str(project),
    ]
    ok = subprocess.run(
        [*cmd, "--json", "--no-trigger"], env=env, capture_output=True, text=True, timeout=120
    )
    assert ok.returncode == 0, ok.stderr
    report = json.loads(ok.stdout)
    assert report["ok"] and report["sources"][0]["new_revisions"] == 3 and report["version"]
    bad = subprocess.run(
        [*cmd[:-2], "--project", "999999", "--no-trigger"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 1 and "999999" in bad.stderr + bad.stdout and "Traceback" not in bad.stderr
    with Store.open(url=env["LABELLOOP_STORE_URL"]) as st, st.session() as s:
        assert latest(s).id == report["version"]


def test_bench_sync_runs_small_and_writes_json(label_studio, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The benchmark's code path at a tiny size (its figures come from `labelloop bench sync`)."""
    from labelloop.bench.sync import bench_sync

    out = tmp_path / "sync.json"
    res = bench_sync(30, out, url=label_studio.url, token=label_studio.token)
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(res))
    assert saved["annotations"] == 30
    for name in ("sqlite", "postgresql"):
        assert saved[name]["new_revisions"] == 30 and saved[name]["no_change_new_revisions"] == 0


def test_image_bytes_are_fetched_once_so_a_version_exports(
    label_studio, conn, store: Store, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """Uploaded images (Label Studio's own files, behind its auth) land in the blob store keyed by
    their sha; the version exports as an Ultralytics dataset with every image."""
    from labelloop.connectors.labelstudio import imports, projects
    from labelloop.connectors.labelstudio.tasks import iter_tasks
    from labelloop.sync.export import export_version
    from labelloop.sync.versions import snapshot
    from tests.helpers import shape_images
    from tests.sync_helpers import CONFIG

    paths = shape_images(tmp_path / "img", 4)
    project = projects.create_project(conn, "fetch images", CONFIG)
    imports.upload_images(conn, project, paths)
    for t in iter_tasks(conn, project):
        conn.request("POST", f"/api/tasks/{t['id']}/annotations", json={"result": [rect("circle", 10)]})
    settings = sync_settings(label_studio, tmp_path, sync={"fetch_images": True})
    svc = _service(settings, store, [source(label_studio, project)], enqueue=False)
    first = svc.run_once().sources[0]
    assert first.ok and first.images_fetched == 4 and first.images_failed == 0, first
    assert svc.run_once(force_reconcile=True).sources[0].images_fetched == 0  # once
    version = snapshot(store, "with images", val_fraction=0.25).version.id
    rep = export_version(store, version, tmp_path / "yolo", "yolo")
    assert sum(rep.images.values()) == 4
    assert len(list((tmp_path / "yolo").rglob("*.jpg")) + list((tmp_path / "yolo").rglob("*.png"))) == 4
