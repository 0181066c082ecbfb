"""kill -9 the sync at random points of a large sync, again and again, while people keep editing in
Label Studio; then one pass to the end: the store must equal Label Studio exactly."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from labelloop.connectors.labelstudio import LabelStudioClient
from labelloop.connectors.platform import Target
from labelloop.sync.ingest import quarantined
from labelloop.sync.store import Store
from tests.store_fixtures import *  # noqa: F403
from tests.sync_helpers import (
    annotated_tasks,
    duplicate_revisions,
    ls_state,
    make_project,
    rect,
    store_state,
    sync_settings,
)

pytestmark = pytest.mark.labelstudio
KILLS = 20
TASKS = 1500


def _cmd(project: int) -> list[str]:
    sync = ["sync", "--once", "-t", "labelstudio", "--project", str(project), "--json", "--no-trigger"]
    return [sys.executable, "-m", "labelloop.cli", *sync]


def _sync(env: dict[str, str], project: int) -> subprocess.Popen:
    return subprocess.Popen(_cmd(project), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _edit(conn: LabelStudioClient, project: int, rng: random.Random, round_: int) -> None:
    """What annotators do between two kills: edit, delete, add, cancel."""
    tasks = conn.request(
        "GET", "/api/tasks", params={"project": project, "page_size": 50, "page": 1 + round_ % 20}
    )
    tasks = tasks["tasks"] if isinstance(tasks, dict) else tasks
    for t in rng.sample(tasks, min(3, len(tasks))):
        for a in t.get("annotations") or []:
            conn.request(
                "PATCH", f"/api/annotations/{a['id']}", json={"result": [rect("square", rng.uniform(5, 70))]}
            )
    victim = rng.choice(tasks)
    if victim.get("annotations"):
        conn.request("DELETE", f"/api/annotations/{victim['annotations'][0]['id']}")
    conn.request(
        "POST", f"/api/tasks/{rng.choice(tasks)['id']}/annotations", json={"result": [rect("circle", 30)]}
    )
    if round_ % 5 == 0:
        conn.request("DELETE", f"/api/tasks/{rng.choice(tasks)['id']}")
        conn.request(
            "POST", f"/api/projects/{project}/import", json=annotated_tasks(5, start=100_000 + round_ * 10)
        )


def test_kill_9_at_random_points_loses_and_duplicates_nothing(
    label_studio, db_url: str, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    conn = LabelStudioClient(label_studio.url, label_studio.token, backoff_s=0.05)
    project, _ = make_project(conn, f"soak {db_url.split(':')[0]}", annotated_tasks(TASKS))
    env = {
        **os.environ,
        **sync_settings(label_studio, tmp_path).environment(),
        "LABELLOOP_STORE_URL": db_url,
        "LABELLOOP_BLOB_ROOT": str(tmp_path / "blobs"),
        "LABELLOOP_SYNC_FETCH_IMAGES": "false",  # example.com URLs: nothing to download here
        "LABELLOOP_SYNC_SNAPSHOT_MIN_CHANGES": "1",
    }
    rng = random.Random(11)
    t0 = time.monotonic()  # one full pass into a scratch store: its length is the kill window
    scratch = {**env, "LABELLOOP_STORE_URL": f"sqlite:///{tmp_path / 'scratch.db'}"}
    assert subprocess.run(_cmd(project), env=scratch, capture_output=True, timeout=600).returncode == 0
    full = time.monotonic() - t0
    finished = killed = 0
    for round_ in range(KILLS):
        p = _sync(env, project)
        try:
            p.wait(timeout=rng.uniform(0.3, full * 1.1))
            finished += 1
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGKILL)
            p.wait()
            killed += 1
        _edit(conn, project, rng, round_)
    assert killed >= KILLS // 2, f"only {killed} of {KILLS} runs were killed; the window is too wide"
    time.sleep(1.1)  # edits in the cursor's last second are read again, never skipped
    last = subprocess.run(_cmd(project), env=env, capture_output=True, text=True, timeout=600)
    assert last.returncode == 0, last.stderr[-2000:]
    with Store.open(url=db_url, blob_root=str(tmp_path / "blobs")) as store:
        key = Target("labelstudio", label_studio.url, project).key
        want = ls_state(conn, project)
        got = store_state(store, key)
        assert set(got) - set(want) == set(), "the store keeps annotations Label Studio deleted"
        assert set(want) - set(got) == set(), "annotations in Label Studio are missing from the store"
        assert got == want, "the store's latest states differ from Label Studio's"
        assert duplicate_revisions(store, key) == 0
        assert quarantined(store) == []
    print(f"soak: full pass {full:.1f}s, {killed} killed, {finished} finished, {len(want)} annotations equal")
