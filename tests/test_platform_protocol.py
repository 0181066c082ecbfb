"""Both platforms behind one protocol, and the prelabel / pull workflow that goes through it.

The CVAT side is the test peer (CVAT 2.73's schema over real HTTP, the real cvat-sdk client);
the Label Studio side of the same workflow is in ``test_labelstudio_connector``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from labelloop.connectors.cvat import CvatClient, CvatPlatform
from labelloop.connectors.journal import PushJournal
from labelloop.connectors.labelstudio import LabelStudioClient, LabelStudioPlatform
from labelloop.connectors.platform import Cursor, LabelingPlatform, PushReport, Target
from labelloop.errors import ConfigError
from labelloop.settings import Settings
from labelloop.sync.prelabel import default_journal, prelabel, pull
from tests.cvat_peer import CvatPeer
from tests.helpers import shape_images


@pytest.fixture
def peer():  # type: ignore[no-untyped-def]
    with CvatPeer() as p:
        yield p


def cvat_settings(peer: CvatPeer, cache_dir: Path) -> Settings:
    return Settings(cvat={"url": peer.url, "user": "admin1", "password": "admin1-pw"}, cache_dir=cache_dir)


def peer_frames(peer: CvatPeer, task: int):  # type: ignore[no-untyped-def]
    from labelloop.connectors.cvat.tasks import frames

    with CvatClient(peer.url, user="admin1", password="admin1-pw") as c:
        return frames(c, task)


def test_both_platforms_implement_the_protocol(peer: CvatPeer) -> None:
    cvat = CvatPlatform(CvatClient(peer.url, user="admin1", password="admin1-pw"))
    ls = LabelStudioPlatform(LabelStudioClient("http://127.0.0.1:9", None))  # no call is made
    for p, kind in ((cvat, "task"), (ls, "project")):
        assert isinstance(p, LabelingPlatform) and p.container_kind == kind
    assert cvat.fetch_access is None and ls.fetch_access is not None
    cvat.close()


def test_cursor_json_is_flat_and_old_cursor_files_load() -> None:
    c = Cursor("cvat", {"since": "2026-01-01T00:00:00.000000Z", "seen": {"job:1": "x"}})
    assert json.loads(c.to_json())["since"] == c.state["since"]  # scripts read "since" directly
    assert Cursor.from_json(c.to_json()) == c
    assert Cursor.from_json('{"since": "2026-01-02T00:00:00Z"}', "labelstudio").state == {
        "since": "2026-01-02T00:00:00Z"
    }
    assert Cursor.from_json('{"platform": "cvat", "state": {"since": null}}').state == {"since": None}
    with pytest.raises(ValueError, match="not a labelstudio one"):
        Cursor.from_json(c.to_json(), "labelstudio")


def test_push_reports_add_up() -> None:
    a = PushReport(3, 4, 2, 1, 1, 2, 0.5, 1, 6)
    assert a + a == PushReport(3, 8, 4, 2, 2, 4, 1.0, 2, 12)


def test_default_journal_is_keyed_by_server(tmp_path: Path) -> None:
    s = Settings(cache_dir=tmp_path)
    one = default_journal(s, Target("labelstudio", "http://a:8080", 1), "v1")
    assert one == default_journal(s, Target("labelstudio", "http://a:8080/", 1), "v1")
    assert one != default_journal(s, Target("labelstudio", "http://b:8080", 1), "v1")
    assert one != default_journal(s, Target("labelstudio", "http://a:8080", 1), "v2")


def test_second_server_with_the_same_task_id_gets_its_own_journal(
    tmp_path: Path, peer: CvatPeer, demo_weights: Path, cache_dir: Path
) -> None:
    """Two CVATs hand out the same first task id; the second push must not find the first
    server's journal in its way ("belongs to ..., delete this one")."""
    pool = tmp_path / "pool"
    shape_images(pool, 3)
    with CvatPeer() as other:
        a = prelabel(cvat_settings(peer, cache_dir), demo_weights, "cvat", images=[pool])
        b = prelabel(cvat_settings(other, cache_dir), demo_weights, "cvat", images=[pool])
        assert a.where["task"] == b.where["task"]  # the same id on both servers
        assert a.where["journal"] != b.where["journal"]
        assert a.counts["pushed_frames"] == b.counts["pushed_frames"] == 3
        assert json.loads(Path(b.where["journal"]).read_text())["scope"]["server"] == other.url
        scope = json.loads(Path(a.where["journal"]).read_text())["scope"]
        assert scope["server"] == peer.url and scope["task_id"] == a.where["task"] and scope["created"]


def test_journal_of_a_deleted_container_with_the_same_id_is_set_aside(tmp_path: Path) -> None:
    """A reinstalled server (or a new one on a reused port) hands out task 1 again: the journal of
    the old task 1 must not make the push skip frames the new task has never seen. This is what
    failed in CI when a test peer got the port an earlier run's peer had used."""
    path = tmp_path / "j.json"
    scope = {"server": "http://127.0.0.1:5000", "task_id": 1, "created": "2026-01-01T00:00:00Z"}
    old = PushJournal.load(path, scope)
    old.commit([0, 1, 2])
    again = PushJournal.load(path, scope)
    assert again.done == {0, 1, 2}  # the same task: resume
    fresh = PushJournal.load(path, {**scope, "created": "2026-02-01T00:00:00Z"})
    assert fresh.done == set() and not path.exists()  # a new task under the old id: start over
    (stale,) = tmp_path.glob("j.stale-*.json")
    assert json.loads(stale.read_text())["done"] == [0, 1, 2]  # set aside, not deleted
    fresh.commit([0])
    with pytest.raises(ConfigError, match="belongs to"):
        PushJournal.load(path, {**scope, "server": "http://other:8080"})  # another server: refuse


def test_cvat_rerun_without_task_reuses_the_task(
    tmp_path: Path, peer: CvatPeer, demo_weights: Path, cache_dir: Path
) -> None:
    pool = tmp_path / "pool"
    shape_images(pool, 4, broken=1)
    s = cvat_settings(peer, cache_dir)
    first = prelabel(s, demo_weights, "cvat", images=[pool], title="pool", segment_size=2)
    tasks_before = len(peer.tasks)
    again = prelabel(s, demo_weights, "cvat", images=[pool], title="pool", segment_size=2)
    assert len(peer.tasks) == tasks_before and again.where["task"] == first.where["task"]
    assert any(f"reused task {first.where['task']}" in n for n in again.notes)
    assert (again.counts["pushed_frames"], again.counts["skipped_frames"]) == (0, 4)
    assert len(peer.shapes[first.where["task"]]) == first.counts["shapes"]  # nothing written twice
    # the job lines say which jobs hold the least confident frames
    assert sum(n.startswith("job ") for n in first.notes) == 2
    # CVAT cannot add an image to a task that has data: one that is not a frame stops the run
    extra = shape_images(tmp_path / "extra", 1, seed=3)[0].rename(tmp_path / "extra" / "new.jpg")
    with pytest.raises(ConfigError, match=r"new\.jpg'\] are not frames of CVAT task.*nothing was written"):
        prelabel(s, demo_weights, "cvat", container=first.where["task"], images=[pool, extra])
    assert len(peer.shapes[first.where["task"]]) == first.counts["shapes"]


def test_cvat_task_left_without_data_is_made_again(
    tmp_path: Path, peer: CvatPeer, demo_weights: Path, cache_dir: Path
) -> None:
    pool = tmp_path / "pool"
    shape_images(pool, 2)
    s = cvat_settings(peer, cache_dir)
    peer.fail(500, times=1, method="POST", path=r"^/api/tasks/\d+/data")  # the process "died" uploading
    with pytest.raises(Exception, match="created without data"):
        prelabel(s, demo_weights, "cvat", images=[pool], title="interrupted")
    [empty] = [t for t, v in peer.tasks.items() if v["name"] == "interrupted"]
    done = prelabel(s, demo_weights, "cvat", images=[pool], title="interrupted")
    assert [t for t, v in peer.tasks.items() if v["name"] == "interrupted"] == [done.where["task"]]
    assert done.where["task"] != empty and any("left without data" in n for n in done.notes)
    assert done.counts["pushed_frames"] == 2


def test_cvat_pull_counts_ground_truth_frames_it_holds(
    tmp_path: Path, peer: CvatPeer, demo_weights: Path, cache_dir: Path
) -> None:
    pool = tmp_path / "pool"
    shape_images(pool, 6)
    s = cvat_settings(peer, cache_dir)
    task = prelabel(s, demo_weights, "cvat", images=[pool]).where["task"]
    peer.add_gt_job(task, [1, 4])
    out = tmp_path / "changes.jsonl"
    summary = pull(s, "cvat", task, out, tmp_path / "cursor.json")
    assert (summary.counts["ground_truth_frames"], summary.counts["frames"]) == (2, 6)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    frames = {f.number: f.name for f in peer_frames(peer, task)}
    assert sorted(r["uri"] for r in rows if r["metadata"].get("ground_truth")) == sorted(
        [frames[1], frames[4]]
    )
    again = pull(s, "cvat", task, out, tmp_path / "cursor.json")
    assert again.counts["annotations"] == 0 and out.read_text() == ""
