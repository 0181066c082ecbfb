"""CVAT connector and auto-annotation function, driven through the real cvat-sdk and cvat-cli.

The server is ``tests.cvat_peer`` (CVAT 2.73's schema and recorded responses over real HTTP);
``test_real_cvat_roundtrip`` runs the same flow against a real CVAT when ``CVAT_URL`` is set.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from cvat_sdk import make_client, models

from labelloop.connectors.cvat import MACHINE_SOURCES, CvatClient, qa
from labelloop.connectors.cvat.pull import pull_changes, shift
from labelloop.connectors.cvat.push import push_prelabels
from labelloop.connectors.cvat.tasks import create_task, delete_tasks, find_tasks, frames, task_labels
from labelloop.connectors.platform import Cursor, PullResult
from labelloop.errors import ConfigError, FetchError, RemoteError
from labelloop.settings import load_settings
from labelloop.types import Box, ImageItem, Region, Source
from tests.cvat_peer import CvatPeer, patch_job_shapes

LABELS = ["circle", "square", "triangle"]
ANN = r"/api/tasks/\d+/annotations"


@pytest.fixture
def peer():  # type: ignore[no-untyped-def]
    with CvatPeer() as p:
        yield p


@pytest.fixture
def conn(peer: CvatPeer) -> CvatClient:
    return CvatClient(peer.url, user="admin1", password="admin1-pw", backoff_s=0.01, poll_s=0.01, retries=3)


def annotated(res: PullResult) -> list[ImageItem]:
    """Frames of annotation jobs, as the pull read them."""
    return [a.item for a in res.annotations if not a.ground_truth]


def ground_truth(res: PullResult) -> list[ImageItem]:
    return [a.item for a in res.annotations if a.ground_truth]


def frame_scores(conn: CvatClient, task_id: int, items: list[ImageItem]) -> dict[int, float | None]:
    index = {f.name: f.number for f in frames(conn, task_id)}
    return {index[Path(it.uri).name]: it.score for it in items}


def make_images(root: Path, n: int) -> list[Path]:
    from labelloop.backend.inference.demo_model import render_shapes

    rng = np.random.default_rng(1)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        img, _ = render_shapes(rng, size=96)
        paths.append(root / f"img{i:04d}.png")
        img.save(paths[-1])
    return paths


def make_items(paths: list[Path], per_image: int = 2) -> list[ImageItem]:
    """Prelabels as the predictor makes them: boxes with scores, an image confidence = min score."""
    items = []
    for i, p in enumerate(paths):
        scores = [round(0.3 + 0.6 * ((i * 7 + k * 3) % 10) / 10, 3) for k in range(per_image)]
        regions = [
            Region(LABELS[(i + k) % 3], Box(5.0 + k, 6.0 + i % 50, 40.0 + k, 50.0 + i % 40), score=s)
            for k, s in enumerate(scores)
        ]
        items.append(ImageItem(str(p), 96, 96, regions, score=min(scores)))
    return items


def server_shapes(peer: CvatPeer, task_id: int) -> list[dict]:
    return list(peer.shapes[task_id].values())


# ---------------------------------------------------------------------- create, push, pull


def test_create_push_pull_roundtrip(tmp_path: Path, peer: CvatPeer, conn: CvatClient) -> None:
    paths = make_images(tmp_path / "img", 6)
    items = make_items(paths)
    scores = {Path(it.uri).name: it.score for it in items}
    task = create_task(conn, "prelabels", paths, LABELS, scores=scores, segment_size=2)
    # least confident first: CVAT keeps the upload order with sorting_method=predefined
    assert [scores[n] for n in task.frames] == sorted(scores.values())
    assert len(task.job_ids) == 3

    report = push_prelabels(conn, task.task_id, items, chunk_frames=4)
    assert (report.written, report.regions, report.requests) == (6, 12, 2)
    stored = server_shapes(peer, task.task_id)
    assert len(stored) == 12 and {s["source"] for s in stored} == {"auto"}
    assert sorted(s["score"] for s in stored) == sorted(r.score for it in items for r in it.regions)

    pulled = pull_changes(conn, task.task_id)
    regions = [r for it in annotated(pulled) for r in it.regions]
    assert len(regions) == 12 and {r.provenance.source for r in regions} == {Source.PRELABEL}
    by_name = {it.uri: it for it in annotated(pulled)}
    for it in items:
        got = by_name[Path(it.uri).name]
        assert (got.width, got.height) == (96, 96)
        assert sorted((r.label, r.score, r.geometry) for r in got.regions) == sorted(
            (r.label, r.score, r.geometry) for r in it.regions
        )
    assert pulled.cursor.state["since"] is not None and len(pulled.qa) == 3

    ranked = qa.job_uncertainty(conn, task.task_id, frame_scores(conn, task.task_id, items))
    means = [j.mean_confidence for j in ranked]
    assert means == sorted(means) and ranked[0].job_id == min(
        task.job_ids, key=lambda j: peer.jobs[j]["start_frame"]
    )


def test_push_is_resumable_after_500_without_duplicates(
    tmp_path: Path, peer: CvatPeer, conn: CvatClient
) -> None:
    paths = make_images(tmp_path / "img", 10)
    items = make_items(paths)
    task = create_task(conn, "resume", paths, LABELS)
    state = tmp_path / "push-state.json"

    # 1) the second chunk's PATCH is applied but its response is lost (500): reconciled, not resent
    peer.fail(500, times=1, method="PATCH", path=ANN, apply=True)
    peer.log.clear()
    r1 = push_prelabels(conn, task.task_id, items[:4], journal=state, chunk_frames=2)
    assert r1.written == 4 and len(server_shapes(peer, task.task_id)) == 8
    assert peer.count("PATCH", ANN) == 2  # no resend of the chunk that landed

    # 2) CVAT keeps answering 500: the push stops with a clear error, the state says what landed
    peer.fail(500, times=100, method="PATCH", path=ANN)
    with pytest.raises(RemoteError, match=r"HTTP 500.*rerun to resume"):
        push_prelabels(conn, task.task_id, items, journal=state, chunk_frames=2)
    saved = json.loads(state.read_text())
    assert len(saved["done"]) == 4 and saved["in_flight"] is not None
    peer._failures.clear()

    # 3) rerun: resumes after what landed, writes each frame exactly once
    r3 = push_prelabels(conn, task.task_id, items, journal=state, chunk_frames=2)
    assert (r3.resumed, r3.written) == (4, 6)
    stored = server_shapes(peer, task.task_id)
    assert len(stored) == 20
    per_frame = {f: sum(1 for s in stored if s["frame"] == f) for f in range(10)}
    assert set(per_frame.values()) == {2}
    assert push_prelabels(conn, task.task_id, items, journal=state).written == 0


def test_human_edits_incremental_pull_and_qa(tmp_path: Path, peer: CvatPeer, conn: CvatClient) -> None:
    paths = make_images(tmp_path / "img", 6)
    items = make_items(paths)
    task = create_task(conn, "qa", paths, LABELS, segment_size=3)
    push_prelabels(conn, task.task_id, items)
    j1, j2 = sorted(task.job_ids)
    peer.set_job(j1, assignee="annotator", state="in progress")
    peer.set_job(j2, assignee="annotator", state="in progress")
    first = pull_changes(conn, task.task_id)
    assert first.cursor.state["annotators"] == {str(j1): "annotator", str(j2): "annotator"}
    cursor = Cursor.from_json(first.cursor.to_json())

    # the annotator corrects job 2 through the real SDK under their own account
    with make_client(peer.url, credentials=("annotator", "ann-pw")) as human:
        ann, _ = human.api_client.jobs_api.retrieve_annotations(j2)
        target = ann.shapes[0]
        label_id = target.label_id
        box = {"type": "rectangle", "label_id": label_id, "source": "manual"}
        patch_job_shapes(
            human,
            "update",
            j2,
            {**box, "id": target.id, "frame": target.frame, "points": [1.0, 2.0, 30.0, 40.0]},
        )
        patch_job_shapes(human, "create", j2, {**box, "frame": 4, "points": [50, 50, 60, 60]})
    # QA: job 2 goes to validation with a reviewer, an issue with a reply, GT job, quality report
    peer.set_job(j2, stage="validation", assignee="reviewer", state="in progress")
    issue = peer.add_issue(j2, 4, "box too loose", "reviewer")
    peer.add_comment(issue, "fixed", "annotator")
    gt = peer.add_gt_job(task.task_id, [0, 1])
    peer.set_job(gt["id"], assignee="reviewer")  # a job is written by those who can see it
    with make_client(peer.url, credentials=("reviewer", "rev-pw")) as rev:
        patch_job_shapes(
            rev,
            "create",
            gt["id"],
            {"type": "rectangle", "frame": 0, "label_id": label_id, "points": [1, 1, 9, 9]},
        )
    peer.add_quality_report(task.task_id, accuracy=0.8, precision=0.9, recall=0.7)

    second = pull_changes(conn, task.task_id, cursor)
    assert {j.id for j in second.qa} == {j2, gt["id"]}  # job 1 did not change
    job2 = next(j for j in second.qa if j.id == j2)
    assert (job2.stage, job2.state, job2.assignee) == ("validation", "in progress", "reviewer")
    assert [c.message for c in job2.issues[0].comments] == ["box too loose", "fixed"]
    assert job2.issues[0].owner == "reviewer" and job2.issues[0].frame == 4
    regions = [r for it in annotated(second) for r in it.regions]
    human = [r for r in regions if r.provenance.source is Source.HUMAN]
    machine = [r for r in regions if r.provenance.source is Source.PRELABEL]
    assert len(human) == 2 and len(machine) == 5  # 3 frames x 2 prelabels, one corrected
    assert all(r.score is None for r in human) and all(r.score is not None for r in machine)
    assert {r.geometry for r in human} == {Box(1.0, 2.0, 30.0, 40.0), Box(50.0, 50.0, 60.0, 60.0)}
    assert {(r.provenance.annotator, r.provenance.reviewer) for r in regions} == {("annotator", "reviewer")}
    assert [r.provenance.source for it in ground_truth(second) for r in it.regions] == [Source.HUMAN]
    assert second.quality_reports[0]["summary"]["accuracy"] == 0.8
    assert second.quality_reports[0]["target"] == "task"
    assert second.cursor.state["since"] > cursor.state["since"]

    third = pull_changes(conn, task.task_id, second.cursor)  # nothing new, nothing comes back
    assert third.qa == [] and annotated(third) == [] and third.quality_reports == []
    assert third.cursor.state["since"] == second.cursor.state["since"]

    # a write that started before the last pull but committed after it carries an older date
    peer.set_job(j1, state="completed", updated_date=_before(second.cursor))
    fourth = pull_changes(conn, task.task_id, Cursor.from_json(third.cursor.to_json()))
    assert [(j.id, j.state) for j in fourth.qa] == [(j1, "completed")]
    fifth = pull_changes(conn, task.task_id, fourth.cursor)
    assert fifth.qa == []

    # QA without a save (CVAT need not touch the job): an issue, then a reply, each come back
    # once, as the job's QA without re-reading its annotations
    reads = peer.count("GET", rf"/api/jobs/{j1}/annotations")
    new_issue = peer.add_issue(j1, 0, "missed a circle", "reviewer")
    sixth = pull_changes(conn, task.task_id, fifth.cursor)
    assert [(j.id, [i.id for i in j.issues]) for j in sixth.qa] == [(j1, [new_issue])]
    assert sixth.annotations == [] and peer.count("GET", rf"/api/jobs/{j1}/annotations") == reads
    peer.add_comment(issue, "still loose", "reviewer")  # a reply on job 2's older issue
    seventh = pull_changes(conn, task.task_id, sixth.cursor)
    assert [j.id for j in seventh.qa] == [j2]
    assert [c.message for c in seventh.qa[0].issues[0].comments][-1] == "still loose"
    assert pull_changes(conn, task.task_id, seventh.cursor).qa == []

    # a reply and a quality report that committed late, dated before the last pull, still come
    # back once, although the reply is not the issue's newest activity
    peer.add_comment(issue, "late reply", "annotator", created_date=_before(seventh.cursor, 0.5))
    late_report = peer.add_quality_report(task.task_id, created_date=_before(seventh.cursor))
    eighth = pull_changes(conn, task.task_id, Cursor.from_json(seventh.cursor.to_json()))
    assert [j.id for j in eighth.qa] == [j2]
    assert "late reply" in [c.message for c in eighth.qa[0].issues[0].comments]
    assert [r["id"] for r in eighth.quality_reports] == [late_report]
    ninth = pull_changes(conn, task.task_id, eighth.cursor)
    assert ninth.qa == [] and ninth.quality_reports == []


def _before(cursor: Cursor, seconds: float = 1.0) -> str:
    """A CVAT timestamp ``seconds`` before the cursor: a write that started before that pull."""
    stamp = shift(cursor.state["since"], -timedelta(seconds=seconds))
    assert stamp
    return stamp


def test_semi_auto_shapes_pull_as_human_with_raw_source_kept(
    tmp_path: Path, peer: CvatPeer, conn: CvatClient
) -> None:
    """A semi-auto shape is placed by a person with an interactive tool (interactor, SAM clicks,
    tracker): the person decided it, so it is a human label; only ``auto`` is machine-made."""
    paths = make_images(tmp_path / "img", 2)
    task = create_task(conn, "semi", paths, LABELS)
    push_prelabels(conn, task.task_id, make_items(paths))
    [job] = task.job_ids
    peer.set_job(job, assignee="annotator")
    label_id = next(s["label_id"] for s in server_shapes(peer, task.task_id))
    with make_client(peer.url, credentials=("annotator", "ann-pw")) as human:
        patch_job_shapes(
            human,
            "create",
            job,
            *(
                {
                    "type": "rectangle",
                    "frame": 1,
                    "label_id": label_id,
                    "points": p,
                    "source": s,
                    "score": 0.6,
                }
                for p, s in (([10, 10, 20, 20], "semi-auto"), ([30, 30, 40, 40], "manual"))
            ),
        )
    regions = [r for it in annotated(pull_changes(conn, task.task_id)) for r in it.regions]
    by_source = {
        src: [r for r in regions if r.attributes["cvat_source"] == src]
        for src in ("auto", "semi-auto", "manual")
    }
    assert [len(v) for v in by_source.values()] == [4, 1, 1]
    assert all(r.provenance.source is Source.PRELABEL and r.score is not None for r in by_source["auto"])
    for src in ("semi-auto", "manual"):
        [r] = by_source[src]
        assert r.provenance.source is Source.HUMAN and r.score is None
    assert by_source["semi-auto"][0].geometry == Box(10.0, 10.0, 20.0, 20.0)
    assert "semi-auto" not in MACHINE_SOURCES


# ---------------------------------------------------------------------- bad input and failures


def test_missing_label_names_it_and_writes_nothing(tmp_path: Path, peer: CvatPeer, conn: CvatClient) -> None:
    paths = make_images(tmp_path / "img", 2)
    task = create_task(conn, "labels", paths, ["circle", "square"])
    items = make_items(paths)  # uses "triangle" too
    peer.log.clear()
    with pytest.raises(ConfigError, match=r"\['triangle'\] are missing in CVAT task"):
        push_prelabels(conn, task.task_id, items)
    assert peer.count("PATCH", ANN) == 0


def test_missing_label_in_project(tmp_path: Path, peer: CvatPeer, conn: CvatClient) -> None:
    with make_client(peer.url, credentials=("admin1", "admin1-pw")) as c:
        project = c.projects.create(models.ProjectWriteRequest(name="p", labels=[{"name": "circle"}]))
    with pytest.raises(ConfigError, match=r"\['square'\] are missing in CVAT project"):
        create_task(conn, "t", make_images(tmp_path / "img", 1), ["circle", "square"], project_id=project.id)
    assert peer.count("POST", r"^/api/tasks$") == 0


def test_image_that_fails_to_load(tmp_path: Path, peer: CvatPeer, conn: CvatClient) -> None:
    paths = make_images(tmp_path / "img", 2)
    bad = tmp_path / "img" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.raises(FetchError, match=r"broken\.jpg"):
        create_task(conn, "bad", [*paths, bad], LABELS)
    assert peer.count("POST", r"^/api/tasks$") == 0  # nothing half-made on the server


def test_cvat_down_or_500_gives_remote_error_after_retries(peer: CvatPeer) -> None:
    conn = CvatClient(peer.url, user="admin1", password="admin1-pw", backoff_s=0.01, retries=2)
    peer.fail(500, times=10, method="GET", path=r"^/api/jobs$")
    with pytest.raises(RemoteError, match=r"down or failing.*after 3 attempt"):
        pull_changes(conn, next(iter(peer.tasks)))
    assert peer.count("GET", r"^/api/jobs$") == 3
    peer.stop()
    with pytest.raises(RemoteError, match=f"CVAT at {peer.url} is down"):
        task_labels(conn, 1)
    with pytest.raises(RemoteError, match="down or failing"):
        CvatClient(peer.url, user="admin1", password="admin1-pw", backoff_s=0.01, retries=1)


def test_wrong_or_missing_credentials(peer: CvatPeer) -> None:
    with pytest.raises(ConfigError, match=r"refused the login of user 'admin1'"):
        CvatClient(peer.url, user="admin1", password="nope")
    with pytest.raises(ConfigError, match="CVAT_USER"):
        CvatClient(peer.url)


# ---------------------------------------------------------------------- the peer is faithful


def test_peer_rejects_malformed_annotations(tmp_path: Path, peer: CvatPeer, conn: CvatClient) -> None:
    task = create_task(conn, "strict", make_images(tmp_path / "img", 1), LABELS)
    label = task_labels(conn, task.task_id).ids["circle"]
    bad = [
        {"shapes": [{"type": "box", "points": [1, 2, 3, 4], "label_id": label, "frame": 0}]},
        {"shapes": [{"type": "rectangle", "points": [1, 2, 3, 4], "frame": 0}]},
        {"shapes": [{"type": "rectangle", "points": [1, 2, 3, 4], "label_id": label, "frame": 0, "conf": 1}]},
        {"shapes": [{"type": "rectangle", "points": [1, 2, 3, 4], "label_id": label, "frame": 5}]},
    ]
    for body in bad:
        with pytest.raises(Exception, match="400"):
            conn.api.call_api(
                f"/api/tasks/{task.task_id}/annotations/",
                "PATCH",
                query_params=[("action", "create")],
                body=body,
                header_params={"Content-Type": "application/json"},
            )
    assert server_shapes(peer, task.task_id) == []


def test_recorded_responses_parse_with_sdk(peer: CvatPeer) -> None:
    """The recorded 2.73 objects the peer serves pass cvat-sdk 2.80's response models."""
    with make_client(peer.url, credentials=("admin1", "admin1-pw")) as c:
        jobs = c.jobs.list()
        assert len(jobs) == 58 and {j.type for j in jobs} >= {"annotation", "ground_truth"}
        assert len(c.tasks.list()) == 31 and len(c.projects.list()) == 17
        assert len(c.issues.list()) == 5 and len(c.comments.list()) == 6
        rec = next(iter(peer.recorded_job_ann))
        assert c.jobs.retrieve(rec).get_annotations().version >= 0
        gt, _ = c.api_client.jobs_api.list(
            type="ground_truth", filter='{"==":[{"var":"stage"},"annotation"]}'
        )
        assert gt.count == sum(
            1 for j in peer.jobs.values() if j["type"] == "ground_truth" and j["stage"] == "annotation"
        )


# ---------------------------------------------------------------------- CVAT 2.73 as measured


def _one_job_task(tmp_path: Path, conn: CvatClient, n: int = 3):  # type: ignore[no-untyped-def]
    task = create_task(conn, "measured", make_images(tmp_path / "img", n), LABELS)
    [job] = task.job_ids
    return task, job


def test_ground_truth_job_spans_the_task_and_lists_its_frames(
    tmp_path: Path, peer: CvatPeer, conn: CvatClient
) -> None:
    task = create_task(conn, "gt", make_images(tmp_path / "img", 6), LABELS, segment_size=3)
    body = {"task_id": task.task_id, "type": "ground_truth", "frame_selection_method": "manual"}
    gt = conn.raw("POST", "/api/jobs", "make a ground-truth job", body={**body, "frames": [0, 2, 4]})
    assert (gt["frame_count"], gt["start_frame"], gt["stop_frame"]) == (3, 0, 5)
    meta = conn.raw("GET", f"/api/jobs/{gt['id']}/data/meta", "read the job's frames")
    assert meta["included_frames"] == [0, 2, 4]
    names = [f["name"] for f in meta["frames"]]
    assert names[1] == names[3] == names[5] == "placeholder.jpg" and names[0] == "img0000.png"

    # the pull: one ground-truth annotation per included frame, never the placeholders
    res = pull_changes(conn, task.task_id)
    assert sorted(a.task_id for a in res.annotations if a.ground_truth) == ["frame:0", "frame:2", "frame:4"]
    assert [it.uri for it in ground_truth(res)] == ["img0000.png", "img0002.png", "img0004.png"]
    j1 = min(task.job_ids)
    assert res.present["frame:0"] == [f"job:{j1}:frame:0", f"job:{gt['id']}:frame:0"]
    assert res.present["frame:1"] == [f"job:{j1}:frame:1"]
    assert sorted(res.all_tasks or []) == [f"frame:{i}" for i in range(6)]


def test_job_state_after_writes_and_stage_changes(tmp_path: Path, peer: CvatPeer, conn: CvatClient) -> None:
    task, job = _one_job_task(tmp_path, conn)
    push_prelabels(conn, task.task_id, make_items([tmp_path / "img" / f"img{i:04d}.png" for i in range(3)]))

    def state() -> tuple[str, str]:
        j = conn.raw("GET", f"/api/jobs/{job}", "read job")
        return j["stage"], j["state"]

    assert state() == ("annotation", "new")  # annotation writes leave the state alone
    conn.raw("PATCH", f"/api/jobs/{job}", "set state", body={"state": "in progress"})
    conn.raw("PATCH", f"/api/jobs/{job}", "set stage", body={"stage": "validation"})
    assert state() == ("validation", "new")  # a stage alone resets the state
    conn.raw("PATCH", f"/api/jobs/{job}", "set both", body={"stage": "acceptance", "state": "in progress"})
    assert state() == ("acceptance", "in progress")
    # the connector's move keeps the state
    conn.raw("PATCH", f"/api/jobs/{job}", "set state", body={"state": "completed"})
    qa.move_job(conn, job, "validation")
    assert state() == ("validation", "completed")


def test_issue_dates_and_reply_permissions(tmp_path: Path, peer: CvatPeer, conn: CvatClient) -> None:
    task, job = _one_job_task(tmp_path, conn)
    peer.set_job(job, assignee="annotator")
    job_date = peer.jobs[job]["updated_date"]
    annotator = CvatClient(peer.url, user="annotator", password="ann-pw")
    reviewer = CvatClient(peer.url, user="reviewer", password="rev-pw")
    body = {"frame": 0, "position": [1.0, 2.0, 3.0, 4.0], "job": job, "message": "box too loose"}
    issue = annotator.raw("POST", "/api/issues", "open an issue", body=body)["id"]
    opened = peer.issues[issue]["updated_date"]
    qa.reply(annotator, issue, "fixed")
    assert peer.issues[issue]["updated_date"] == opened  # a reply leaves the issue's date alone

    # neither owner nor assignee nor staff: the reply is refused, and the task is not theirs to see
    with pytest.raises(ConfigError, match=r"HTTP 403.*You do not have permission to perform this action"):
        qa.reply(reviewer, issue, "still loose")
    assert task.task_id not in [t["id"] for t in reviewer.raw_list("/api/tasks")]
    with pytest.raises(ConfigError, match=r"refused to read task \d+ \(HTTP 403\).*see the task"):
        pull_changes(reviewer, task.task_id)  # not an empty pull: one clear error

    rid = peer.users["reviewer"]["id"]
    conn.raw("PATCH", f"/api/issues/{issue}", "assign the issue", body={"assignee": rid})
    assigned = peer.issues[issue]["updated_date"]
    assert assigned > opened  # assigning dates the issue
    qa.reply(reviewer, issue, "still loose")  # the assignee may reply
    conn.raw("PATCH", f"/api/issues/{issue}", "resolve the issue", body={"resolved": True})
    assert peer.issues[issue]["updated_date"] > assigned and peer.issues[issue]["resolved"]
    assert peer.jobs[job]["updated_date"] == job_date  # no issue activity touched the job
    [pulled] = pull_changes(conn, task.task_id).qa
    assert [c.message for c in pulled.issues[0].comments] == ["box too loose", "fixed", "still loose"]
    annotator.close()
    reviewer.close()


def test_unset_attributes_come_back_empty_and_pull_as_absent(
    tmp_path: Path, peer: CvatPeer, conn: CvatClient
) -> None:
    task, job = _one_job_task(tmp_path, conn)
    info = task_labels(conn, task.task_id)
    spec = info.attribute_ids["circle"]["model_version"]
    peer.set_job(job, assignee="annotator")
    with make_client(peer.url, credentials=("annotator", "ann-pw")) as human:
        box = {"type": "rectangle", "frame": 0, "label_id": info.ids["circle"], "points": [1, 1, 9, 9]}
        patch_job_shapes(human, "create", job, {**box, "attributes": []})
        ann, _ = human.api_client.jobs_api.retrieve_annotations(job)
    assert [a.to_dict() for a in ann.shapes[0].attributes] == [{"spec_id": spec, "value": ""}]
    [region] = [r for it in annotated(pull_changes(conn, task.task_id)) for r in it.regions]
    assert region.provenance.source is Source.HUMAN and region.provenance.model_version is None
    assert region.attributes == {"cvat_source": "manual"}


def test_ids_on_create_are_refused_and_the_version_stays_0(
    tmp_path: Path, peer: CvatPeer, conn: CvatClient
) -> None:
    task, _ = _one_job_task(tmp_path, conn)
    label = task_labels(conn, task.task_id).ids["circle"]
    shape = {"type": "rectangle", "frame": 0, "label_id": label, "points": [1.0, 1.0, 5.0, 5.0], "id": 77}
    path = f"/api/tasks/{task.task_id}/annotations"
    for method, params in (("PATCH", {"action": "create"}), ("PUT", {})):
        with pytest.raises(RemoteError) as refused:
            conn.raw(method, path, "create a shape with an id", body={"shapes": [shape]}, **params)
        assert refused.value.status == 400
        assert json.loads(str(refused.value).split(": ", 2)[-1]) == {"shapes": [{"id": ["must be absent"]}]}
    paths = [tmp_path / "img" / f"img{i:04d}.png" for i in range(3)]
    push_prelabels(conn, task.task_id, make_items(paths))
    data, _ = conn.api.tasks_api.retrieve_annotations(task.task_id)
    assert data.version == 0 and len(data.shapes) == 6
    # regions read back from CVAT carry their ids; pushed again they are new shapes, sent without
    again = [
        ImageItem(
            a.item.uri, 96, 96, a.item.regions, metadata={"frame": int(a.task_id.removeprefix("frame:"))}
        )
        for a in pull_changes(conn, task.task_id).annotations
    ]
    assert all(r.id and r.id.startswith("cvat:shape:") for it in again for r in it.regions)
    assert push_prelabels(conn, task.task_id, again).regions == 6
    assert len(server_shapes(peer, task.task_id)) == 12


def test_quality_reports_are_read_as_json(peer: CvatPeer, conn: CvatClient, tmp_path: Path) -> None:
    task, _ = _one_job_task(tmp_path, conn)
    peer.add_quality_report(task.task_id, accuracy=0.5)
    with pytest.raises(Exception, match="completed"):  # cvat-sdk 2.80 cannot parse a 2.73 report
        conn.api.quality_api.list_reports(task_id=task.task_id)
    [report] = qa.quality_reports(conn, task.task_id)
    assert report["summary"]["accuracy"] == 0.5


# ---------------------------------------------------------------------- the auto-annotation function


@pytest.fixture(scope="module")
def yolo_function(cache_dir: Path, demo_weights: Path):  # type: ignore[no-untyped-def]
    from labelloop.backend.cvat_function import create

    return create(model=str(demo_weights), device="cpu", conf=0.25)


def test_function_spec_and_detect(yolo_function) -> None:  # type: ignore[no-untyped-def]
    from cvat_sdk.auto_annotation import DetectionFunctionSpec
    from PIL import Image

    from labelloop.backend.inference.demo_model import render_shapes

    assert isinstance(yolo_function.spec, DetectionFunctionSpec)
    assert [lb.name for lb in yolo_function.spec.labels] == LABELS
    img, objects = render_shapes(np.random.default_rng(3), size=320)

    class Ctx:
        frame_name, conf_threshold, conv_mask_to_poly = "x.png", None, False

    shapes = yolo_function.detect(Ctx(), img)
    assert shapes and all(s.type.value == "rectangle" and 0 < s.score <= 1 for s in shapes)
    assert all(not hasattr(s, "source") and s.frame == 0 for s in shapes)
    Ctx.conf_threshold = 0.99
    assert all(s.score >= 0.99 for s in yolo_function.detect(Ctx(), img))
    assert isinstance(img, Image.Image) and objects


def _full_size_task(tmp_path: Path, conn: CvatClient, name: str):  # type: ignore[no-untyped-def]
    """A task of 320-px shape images the demo detector sees well."""
    from labelloop.backend.inference.demo_model import render_shapes

    paths = make_images(tmp_path / "img", 5)
    rng = np.random.default_rng(5)
    for p in paths:
        render_shapes(rng, size=320)[0].save(p)
    return create_task(conn, name, paths, LABELS, chunk_size=2)


def _cvat_cli(tmp_path: Path, peer: CvatPeer, *args: str) -> subprocess.CompletedProcess[str]:
    """cvat-cli as a user runs it: its own process, its own cache, logged in as admin1."""
    env = {
        **os.environ,
        "XDG_CACHE_HOME": str(tmp_path / "xdg-cache"),
        "XDG_CONFIG_HOME": str(tmp_path / "xdg-config"),
        "LABELLOOP_DEVICE": "cpu",
        "PASS": "admin1-pw",
    }
    cmd = [sys.executable, "-m", "cvat_cli", "--server-host", peer.url, "--auth", "admin1", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _function_args(weights: Path) -> list[str]:
    return [
        "--function-module",
        "labelloop.backend.cvat_function",
        "-p",
        f"model=str:{weights}",
        "-p",
        "conf=float:0.25",
    ]


def _assert_prelabelled(conn: CvatClient, task_id: int) -> None:
    pulled = pull_changes(conn, task_id)
    regions = [r for it in annotated(pulled) for r in it.regions]
    assert regions and all(r.provenance.source is Source.PRELABEL and 0 < r.score <= 1 for r in regions)
    assert {r.label for r in regions} <= set(LABELS)


def test_cli_auto_annotate_against_peer(
    tmp_path: Path, peer: CvatPeer, conn: CvatClient, demo_weights: Path
) -> None:
    task = _full_size_task(tmp_path, conn, "auto")
    _cvat_cli(
        tmp_path,
        peer,
        "task",
        "auto-annotate",
        str(task.task_id),
        *_function_args(demo_weights),
        "--clear-existing",
    )
    assert peer.count("GET", rf"/api/tasks/{task.task_id}/data") >= 2  # chunks were downloaded
    assert peer.count("PUT", rf"/api/tasks/{task.task_id}/annotations") == 1
    _assert_prelabelled(conn, task.task_id)


def test_cli_agent_function_against_peer(
    tmp_path: Path, peer: CvatPeer, conn: CvatClient, demo_weights: Path
) -> None:
    """Register the function with ``create-native``, queue a request as CVAT's UI would, and let
    ``run-agent --burst`` serve it: the result lands in the task as scored ``auto`` shapes."""
    task = _full_size_task(tmp_path, conn, "agent")
    created = _cvat_cli(
        tmp_path, peer, "function", "create-native", "labelloop YOLO", *_function_args(demo_weights)
    )
    fid = int(created.stdout.strip().splitlines()[-1])
    fn = peer.functions[fid]
    assert fn["kind"] == "detector" and [lb["name"] for lb in fn["labels_v2"]] == LABELS
    assert {lb["type"] for lb in fn["labels_v2"]} == {"rectangle"}

    # a threshold the demo detector's boxes pass on most images (its confidences vary per build)
    done = peer.request_annotation(fid, task.task_id, threshold=0.15)
    _cvat_cli(tmp_path, peer, "function", "run-agent", str(fid), *_function_args(demo_weights), "--burst")
    assert peer.ars[done]["status"] == "finished", peer.ars[done]
    shapes = server_shapes(peer, task.task_id)
    assert shapes and all(s["source"] == "auto" and 0.15 <= s["score"] <= 1 for s in shapes)
    _assert_prelabelled(conn, task.task_id)

    # a request the function cannot serve (a task without its labels) fails with CVAT's message,
    # and the agent goes on: the next request is served
    bad = create_task(conn, "no-shapes", [tmp_path / "img" / "img0000.png"], ["car"])
    failing = peer.request_annotation(fid, bad.task_id)
    again = peer.request_annotation(fid, task.task_id, threshold=0.15, cleanup=True)
    _cvat_cli(tmp_path, peer, "function", "run-agent", str(fid), *_function_args(demo_weights), "--burst")
    assert peer.ars[failing]["status"] == "failed"
    assert "label 'circle' is not in dataset" in peer.ars[failing]["exc_info"]
    assert peer.ars[again]["status"] == "finished"
    after = server_shapes(peer, task.task_id)  # cleanup replaced the first result, not doubled it
    assert len(after) == len(shapes) and not {s["id"] for s in after} & {s["id"] for s in shapes}


# ---------------------------------------------------------------------- a real CVAT (opt-in)


@pytest.mark.cvat_real
@pytest.mark.skipif(
    not os.environ.get("CVAT_URL"),
    reason="set CVAT_URL and CVAT_USER/CVAT_PASSWORD (or CVAT_ACCESS_TOKEN) to run against a real CVAT",
)
def test_real_cvat_roundtrip(tmp_path: Path) -> None:
    conn = CvatClient.from_settings(load_settings(), backoff_s=0.5, poll_s=1.0)
    paths = make_images(tmp_path / "img", 4)
    items = make_items(paths)
    remove_tasks_named(conn, REAL_TASK)  # left behind by an earlier run that died
    try:
        task = create_task(conn, REAL_TASK, paths, LABELS, scores={Path(i.uri).name: i.score for i in items})
        report = push_prelabels(conn, task.task_id, items, journal=tmp_path / "state.json")
        assert report.regions == 8
        pulled = pull_changes(conn, task.task_id)
        regions = [r for it in annotated(pulled) for r in it.regions]
        assert len(regions) == 8 and all(r.provenance.source is Source.PRELABEL for r in regions)
        assert all(
            math.isclose(r.score or 0, s, abs_tol=1e-4)
            for r, s in zip(
                sorted(regions, key=lambda r: r.score or 0),
                sorted(x.score for i in items for x in i.regions),
                strict=True,
            )
        )
    finally:
        # by name: create_task can fail after the task exists (an upload that failed), and then
        # there is no task id to remove it by
        remove_tasks_named(conn, REAL_TASK)
        conn.close()


REAL_TASK = "labelloop-optin-test"


def remove_tasks_named(conn: CvatClient, name: str) -> list[int]:
    ids = [int(t["id"]) for t in find_tasks(conn, name)]
    delete_tasks(conn, ids)
    return ids


def test_real_cvat_cleanup_finds_a_task_whose_upload_failed(
    tmp_path: Path, peer: CvatPeer, conn: CvatClient
) -> None:
    """What the opt-in test's cleanup must handle: the task exists, create_task raised."""
    peer.fail(500, times=1, method="POST", path=r"^/api/tasks/\d+/data")
    with pytest.raises(RemoteError, match="created without data"):
        create_task(conn, REAL_TASK, make_images(tmp_path / "img", 2), LABELS)
    assert [t["name"] for t in peer.tasks.values()].count(REAL_TASK) == 1
    assert len(remove_tasks_named(conn, REAL_TASK)) == 1
    assert REAL_TASK not in [t["name"] for t in peer.tasks.values()]
