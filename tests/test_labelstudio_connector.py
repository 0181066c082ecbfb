"""Label Studio connector and the prelabel / pull commands against a real Label Studio 1.23.

Failures (500s, answers lost after the server applied a write, a server that is down) come from
``FaultyProxy``, a pass-through proxy in front of the same real server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import requests

from labelloop.backend.inference.demo_model import CLASSES
from labelloop.connectors.formats.canonical_json import item_from_dict
from labelloop.connectors.formats.labelstudio import generate_label_config
from labelloop.connectors.journal import PushJournal
from labelloop.connectors.labelstudio.connector import LabelStudioConnector, PullCursor
from labelloop.errors import ConfigError, RemoteError
from labelloop.settings import Settings
from labelloop.sync.prelabel import prelabel_labelstudio
from labelloop.types import Source
from tests.faulty_proxy import FaultyProxy
from tests.helpers import shape_images

pytestmark = pytest.mark.labelstudio
CONFIG = generate_label_config("detect", list(CLASSES))


def rect(label: str, x: float = 10.0) -> dict:
    return {
        "id": f"r{label}{int(x)}",
        "type": "rectanglelabels",
        "from_name": "label",
        "to_name": "image",
        "original_width": 320,
        "original_height": 320,
        "value": {"x": x, "y": 10, "width": 20, "height": 20, "rotation": 0, "rectanglelabels": [label]},
        "score": 0.5,
    }


def preds_for(task_ids: list[int], version: str = "v1") -> list[dict]:
    return [
        {"task": t, "result": [rect("circle", 5 + i % 50)], "score": (i % 10) / 10, "model_version": version}
        for i, t in enumerate(task_ids)
    ]


def all_predictions(ls, project: int) -> list[dict]:  # type: ignore[no-untyped-def]
    conn = LabelStudioConnector(ls.url, ls.token)
    return [p for t in conn.tasks(project) for p in t.get("predictions") or []]


@pytest.fixture
def conn(label_studio) -> LabelStudioConnector:  # type: ignore[no-untyped-def]
    return LabelStudioConnector(label_studio.url, label_studio.token, backoff_s=0.05)


@pytest.fixture
def proxy(label_studio):  # type: ignore[no-untyped-def]
    p = FaultyProxy(label_studio.url)
    yield p
    p.close()


def settings_for(ls, cache_dir: Path) -> Settings:  # type: ignore[no-untyped-def]
    return Settings(label_studio_url=ls.url, label_studio_token=ls.token, cache_dir=cache_dir)


# ---------------------------------------------------------------------- imports


def test_import_uploads_urls_cloud_uris_and_local_storage(tmp_path: Path, label_studio, conn) -> None:  # type: ignore[no-untyped-def]
    project = conn.create_project("imports", CONFIG)
    up = conn.upload_images(project, shape_images(tmp_path / "up", 3))
    uris = ["https://example.com/a.jpg", "s3://bucket/pool/b.jpg", "gs://bucket/c.png"]
    by_uri = conn.import_tasks(project, [{"image": u} for u in uris])
    local = label_studio.document_root / "pool"
    shape_images(local, 4, seed=9)
    (local / "notes.txt").write_text("not an image: the storage regex leaves it out")
    conn.add_local_storage(project, local)
    tasks = list(conn.tasks(project, include="id,data,storage_filename"))
    refs = [t["data"]["image"] for t in tasks]
    assert len(up) == 3 and len(by_uri) == 3 and len(tasks) == 10
    assert sum(r.startswith("/data/upload/") for r in refs) == 3
    assert set(uris) <= set(refs)
    assert sum("local-files" in r for r in refs) == 4
    # a local-files task is readable through Label Studio, as the backend will read it
    ref = next(r for r in refs if "local-files" in r)
    r = requests.get(label_studio.url + ref, headers=label_studio.headers(), timeout=30)
    assert r.status_code == 200 and r.content[:2] == b"\xff\xd8"

    with pytest.raises(RemoteError, match="LOCAL_FILES_DOCUMENT_ROOT"):
        conn.add_local_storage(project, tmp_path / "up")  # not under the document root
    with pytest.raises(ConfigError, match="s3://, gs:// or azure-blob://"):
        conn.add_cloud_storage(project, "ftp://somewhere/x")
    with pytest.raises(ConfigError, match="cannot read image"):
        conn.upload_images(project, [tmp_path / "missing.jpg"])


# ---------------------------------------------------------------------- push


def test_prelabel_pool_scores_field_view_and_rerun(
    tmp_path: Path, label_studio, demo_weights, cache_dir
) -> None:  # type: ignore[no-untyped-def]
    s = settings_for(label_studio, cache_dir)
    j = tmp_path / "journal.json"
    files = shape_images(tmp_path / "pool", 8, broken=1)
    first = prelabel_labelstudio(
        s, demo_weights, title="pool", images=[tmp_path / "pool"], chunk=3, journal=j
    )
    project = first.where["project"]
    version = first.where["model_version"]
    assert first.counts["imported"] == len(files) == 9
    assert first.counts["written"] == 9 and first.counts["image_failures"] == 1

    conn = LabelStudioConnector(label_studio.url, label_studio.token)
    tasks = list(conn.tasks(project))
    assert all(len(t["predictions"]) == 1 for t in tasks)
    for t in tasks:
        p = t["predictions"][0]
        assert p["model_version"] == version
        assert t["data"]["uncertainty"] == pytest.approx(p["score"])  # the image score, as a data field
        if "broken" in t["data"]["image"]:
            assert p["result"] == [] and p["score"] == 0.0
        else:
            assert 0.0 <= p["score"] <= 1.0
    assert sum(bool(t["predictions"][0]["result"]) for t in tasks) >= 6  # the demo model finds shapes
    assert conn.project(project)["model_version"] == version
    views = conn.request("GET", "/api/dm/views", params={"project": project})
    assert [v["data"]["ordering"] for v in views] == [["tasks:predictions_score"]]
    ordered = conn.request(
        "GET",
        "/api/tasks",
        params={"project": project, "view": views[0]["id"], "include": "id,predictions_score"},
    )["tasks"]
    scores = [t["predictions_score"] for t in ordered]
    assert scores == sorted(scores) and scores[0] == 0.0  # the unreadable image first

    again = prelabel_labelstudio(s, demo_weights, project=project, journal=j)
    assert again.counts["written"] == 0 and again.counts["already_had_prediction"] == 9
    assert len(all_predictions(label_studio, project)) == 9
    assert len(conn.request("GET", "/api/dm/views", params={"project": project})) == 1


def test_lost_answer_and_500s_are_retried_without_duplicates(tmp_path: Path, label_studio, proxy) -> None:  # type: ignore[no-untyped-def]
    direct = LabelStudioConnector(label_studio.url, label_studio.token)
    project = direct.create_project("lost answers", CONFIG)
    ids = direct.import_tasks(project, [{"image": f"https://example.com/{i}.jpg"} for i in range(12)])
    conn = LabelStudioConnector(proxy.url, label_studio.token, backoff_s=0.05)
    proxy.fail("POST", "/import/predictions", times=1, status=502, after_forward=True)  # applied, answer lost
    proxy.fail("POST", "/import/predictions", times=2, status=500)  # then refused twice
    journal = PushJournal.load(tmp_path / "j.json", {"project": project})
    summary = conn.push_pool(project, preds_for(ids), journal=journal, chunk=5)
    preds = all_predictions(label_studio, project)
    assert Counter(p["task"] for p in preds) == Counter(ids)  # each task once
    assert summary.written + summary.already_there == 12 and summary.chunks == 3
    assert summary.already_there == 5  # the chunk whose answer was lost had landed
    assert json.loads((tmp_path / "j.json").read_text())["done"] == sorted(ids)
    assert proxy.count("POST", "/import/predictions", 500) == 2


def test_interrupted_push_resumes_from_journal(tmp_path: Path, label_studio, proxy) -> None:  # type: ignore[no-untyped-def]
    direct = LabelStudioConnector(label_studio.url, label_studio.token)
    project = direct.create_project("resume", CONFIG)
    ids = direct.import_tasks(project, [{"image": f"https://example.com/{i}.jpg"} for i in range(10)])
    conn = LabelStudioConnector(proxy.url, label_studio.token, retries=2, backoff_s=0.01)
    proxy.fail("POST", "/import/predictions", times=-1, status=500, after_forward=False)
    path = tmp_path / "journal.json"
    journal = PushJournal.load(path, {"project": project})
    journal.commit(ids[:4])  # a previous run wrote the first chunk...
    direct.push_pool(project, preds_for(ids[:4]))
    journal.begin(ids[4:8])  # ...and was killed with the second in flight, after it landed
    direct.push_pool(project, preds_for(ids[4:8]))
    with pytest.raises(RemoteError, match=r"answered 500.*rerun to resume"):
        conn.push_pool(project, preds_for(ids), journal=PushJournal.load(path, {"project": project}), chunk=4)
    state = json.loads(path.read_text())
    assert state["done"] == sorted(ids[:8]) and state["in_flight"]["ids"] == ids[8:]
    proxy.faults.clear()
    summary = conn.push_pool(
        project, preds_for(ids), journal=PushJournal.load(path, {"project": project}), chunk=4
    )
    assert (summary.resumed, summary.written) == (8, 2)
    assert Counter(p["task"] for p in all_predictions(label_studio, project)) == Counter(ids)
    with pytest.raises(ConfigError, match="belongs to"):
        PushJournal.load(path, {"project": project + 1})


def test_server_down_or_bad_token_is_one_clear_error(label_studio) -> None:  # type: ignore[no-untyped-def]
    from labelloop.connectors.labelstudio.server import free_port

    down = LabelStudioConnector(f"http://127.0.0.1:{free_port()}", "x", retries=1, backoff_s=0.01)
    with pytest.raises(RemoteError, match=r"unreachable.*LABELLOOP_LABEL_STUDIO_URL"):
        down.project(1)
    with pytest.raises(RemoteError, match="LABELLOOP_LABEL_STUDIO_TOKEN"):
        LabelStudioConnector(label_studio.url, "wrong-token").project(1)
    with pytest.raises(RemoteError, match="answered 404"):
        LabelStudioConnector(label_studio.url, label_studio.token).project(999999)
    with pytest.raises(ConfigError, match="LABELLOOP_LABEL_STUDIO_URL"):
        LabelStudioConnector("", None)


def test_personal_access_token_is_exchanged(label_studio) -> None:  # type: ignore[no-untyped-def]
    legacy = LabelStudioConnector(label_studio.url, label_studio.token)
    legacy.request(
        "POST", "/api/jwt/settings", json={"api_tokens_enabled": True, "legacy_api_tokens_enabled": True}
    )
    r = requests.post(f"{label_studio.url}/api/token/", headers=label_studio.headers(), timeout=30)
    assert r.status_code == 201, r.text
    pat = r.json()["token"]
    # the PAT itself is a refresh token: Label Studio refuses it as a bearer token
    assert (
        requests.get(
            f"{label_studio.url}/api/projects", headers={"Authorization": f"Bearer {pat}"}
        ).status_code
        == 401
    )
    conn = LabelStudioConnector(label_studio.url, pat)
    assert conn.users()  # works through the exchanged access token
    forged = pat[: pat.rindex(".") + 1] + "AAAA"
    with pytest.raises(RemoteError, match="personal access token"):
        LabelStudioConnector(label_studio.url, forged).users()


def test_missing_label_stops_before_writing(tmp_path: Path, label_studio, demo_weights, cache_dir) -> None:  # type: ignore[no-untyped-def]
    conn = LabelStudioConnector(label_studio.url, label_studio.token)
    project = conn.create_project("missing label", generate_label_config("detect", ["circle", "square"]))
    conn.upload_images(project, shape_images(tmp_path / "p", 3))
    s = settings_for(label_studio, cache_dir)
    with pytest.raises(ConfigError, match=r"\['triangle'\].*--skip-unmapped.*Nothing was written"):
        prelabel_labelstudio(s, demo_weights, project=project, journal=tmp_path / "j.json")
    assert all_predictions(label_studio, project) == []
    done = prelabel_labelstudio(
        s, demo_weights, project=project, skip_unmapped=True, journal=tmp_path / "j.json"
    )
    assert done.counts["written"] == 3 and any("triangle" in n for n in done.notes)
    labels = {
        r["value"]["rectanglelabels"][0] for p in all_predictions(label_studio, project) for r in p["result"]
    }
    assert "triangle" not in labels


# ---------------------------------------------------------------------- pull


def test_pull_reads_everything_label_studio_records_incrementally(label_studio, conn) -> None:  # type: ignore[no-untyped-def]
    project = conn.create_project("pull", CONFIG)
    ids = conn.import_tasks(project, [{"image": f"https://example.com/p{i}.jpg"} for i in range(5)])
    conn.push_pool(project, preds_for(ids, "m1"))
    preds = {t["id"]: t["predictions"][0] for t in conn.tasks(project)}
    ann2 = conn.request(
        "POST", "/api/users/", json={"email": f"ann-{project}@example.com", "username": f"a{project}"}
    )
    a1 = conn.request(
        "POST",
        f"/api/tasks/{ids[0]}/annotations",
        json={"result": [rect("square")], "lead_time": 12.5, "parent_prediction": preds[ids[0]]["id"]},
    )
    conn.request(
        "POST",
        f"/api/tasks/{ids[1]}/annotations",
        json={"result": [rect("triangle", 40)], "ground_truth": True, "completed_by": ann2["id"]},
    )
    conn.request("POST", f"/api/tasks/{ids[2]}/annotations", json={"result": [], "was_cancelled": True})
    a4 = conn.request("POST", f"/api/tasks/{ids[3]}/annotations", json={"result": [rect("circle")]})
    time.sleep(2.1)  # the cursor is the server's whole-second clock minus one second

    first = conn.pull(project)
    assert first.edition == "Community" and first.reviews_available is False
    assert set(first.tasks) == set(ids) and len(first.items) == 4
    by_ann = {it.metadata["ls_annotation_id"]: it for it in first.items}
    one = by_ann[a1["id"]]
    assert one.uri == "https://example.com/p0.jpg" and (one.width, one.height) == (320, 320)
    assert [r.label for r in one.regions] == ["square"]
    r0 = one.regions[0]
    assert r0.provenance.source == Source.HUMAN and r0.score is None
    assert r0.provenance.annotator == "demo@labelloop.dev" and r0.provenance.created_at == a1["created_at"]
    assert one.metadata["lead_time"] == 12.5 and one.metadata["parent_prediction"] == preds[ids[0]]["id"]
    assert one.metadata["parent_model_version"] == "m1" and one.metadata["updated_by"] == "demo@labelloop.dev"
    gt = next(it for it in first.items if it.metadata["ground_truth"])
    assert gt.regions[0].provenance.annotator == f"ann-{project}@example.com"
    cancelled = [it for it in first.items if it.metadata["was_cancelled"]]
    assert len(cancelled) == 1 and cancelled[0].regions == []
    assert "reviews" not in one.metadata

    # nothing changed: the next pull only re-reads what changed in the second before it started
    assert first.cursor.since is not None
    quiet = conn.pull(project, first.cursor)
    assert quiet.items == [] and quiet.tasks == {}
    conn.request(
        "PATCH", f"/api/annotations/{a1['id']}", json={"result": [rect("circle", 60)], "lead_time": 30}
    )
    conn.request("DELETE", f"/api/annotations/{a4['id']}")
    second = conn.pull(project, PullCursor.from_json(quiet.cursor.to_json()))
    assert set(second.tasks) == {ids[0], ids[3]}
    assert second.tasks[ids[3]] == []  # the deleted annotation is visibly gone
    (edited,) = second.items
    assert [r.label for r in edited.regions] == ["circle"] and edited.metadata["lead_time"] == 30
    assert edited.regions[0].provenance.updated_at > a1["updated_at"]


def test_prelabel_and_pull_commands(tmp_path: Path, label_studio, demo_weights, cache_dir: Path) -> None:  # type: ignore[no-untyped-def]
    shape_images(tmp_path / "pool", 4)
    env = {
        **os.environ,
        "LABELLOOP_LABEL_STUDIO_URL": label_studio.url,
        "LABELLOOP_LABEL_STUDIO_TOKEN": label_studio.token,
        "LABELLOOP_MODEL": str(demo_weights),
        "LABELLOOP_CACHE_DIR": str(cache_dir),
    }
    cmd = [sys.executable, "-m", "labelloop.cli"]
    r = subprocess.run(
        [*cmd, "prelabel", "-t", "labelstudio", "-i", str(tmp_path / "pool"), "--title", "cli pool",
         "--journal", str(tmp_path / "j.json"), "--json", str(tmp_path / "s.json")],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["written"] == 4 and "written" in r.stdout
    project = summary["project"]
    conn = LabelStudioConnector(label_studio.url, label_studio.token)
    task = next(conn.tasks(project))
    conn.request(
        "POST", f"/api/tasks/{task['id']}/annotations", json={"result": [rect("circle")], "lead_time": 4}
    )

    out, cursor = tmp_path / "changes.jsonl", tmp_path / "cursor.json"
    pull = [
        *cmd,
        "pull",
        "-t",
        "labelstudio",
        "--project",
        str(project),
        "-o",
        str(out),
        "--cursor",
        str(cursor),
    ]
    r = subprocess.run(pull, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    (item,) = [item_from_dict(json.loads(line)) for line in out.read_text().splitlines()]
    assert item.metadata["ls_task_id"] == task["id"] and item.regions[0].label == "circle"
    assert json.loads(cursor.read_text())["since"]

    r = subprocess.run(
        [*cmd, "pull", "-t", "labelstudio", "-o", str(out)], env=env, capture_output=True, text=True
    )
    assert (
        r.returncode == 2
        and r.stderr.strip().splitlines()[-1] == "error: --target labelstudio needs --project"
    )
    r = subprocess.run(
        [*cmd, "prelabel", "-t", "labelstudio", "--project", str(project), "--url", "http://127.0.0.1:9"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 2 and "unreachable" in r.stderr and "Traceback" not in r.stderr


def test_enterprise_reviews_are_read_when_the_server_has_them(label_studio, proxy) -> None:  # type: ignore[no-untyped-def]
    """Reviews exist only in Label Studio Enterprise, which cannot run here: the proxy answers
    ``/api/version`` with edition Enterprise and ``/api/annotation-reviews/`` with rows shaped as
    the published API reference's ``AnnotationReview``; everything else is the real server."""
    direct = LabelStudioConnector(label_studio.url, label_studio.token)
    project = direct.create_project("reviews", CONFIG)
    ids = direct.import_tasks(project, [{"image": f"https://example.com/r{i}.jpg"} for i in range(3)])
    anns = [
        direct.request("POST", f"/api/tasks/{t}/annotations", json={"result": [rect("circle")]}) for t in ids
    ]
    real_version = direct.request("GET", "/api/version")
    me = next(iter(direct.users()))

    def review(i: int, annotation: int, accepted: bool, at: str) -> dict:
        return {
            "id": i, "annotation": annotation, "created_by": me, "created_at": at, "accepted": accepted,
            "state": "accepted" if accepted else "rejected", "result": None, "started_at": None,
            "remove_from_queue": None, "last_annotation_history": None, "fixed_annotation_history": None,
            "previous_annotation_history": None,
        }  # fmt: skip

    asked: list[str] = []

    def reviews(_: bytes) -> tuple[int, object]:
        asked.append("reviews")
        return 200, [
            review(1, anns[0]["id"], False, "2026-01-01T10:00:00Z"),
            review(2, anns[0]["id"], True, "2026-01-01T11:00:00Z"),  # rejected, fixed, then accepted
            review(3, anns[1]["id"], False, "2026-01-01T10:30:00Z"),
        ]

    proxy.override("GET", "/api/version", lambda _: (200, {**real_version, "edition": "Enterprise"}))
    proxy.override("GET", "/api/annotation-reviews/", reviews)
    res = LabelStudioConnector(proxy.url, label_studio.token).pull(project)
    assert res.edition == "Enterprise" and res.reviews_available and asked == ["reviews"]  # one call
    by_ann = {it.metadata["ls_annotation_id"]: it for it in res.items}
    a0, a1, a2 = (by_ann[a["id"]] for a in anns)
    assert [r["accepted"] for r in a0.metadata["reviews"]] == [False, True]
    assert a0.metadata["review_state"] == "accepted"
    assert a0.regions[0].provenance.reviewer == "demo@labelloop.dev"
    assert a1.metadata["review_state"] == "rejected" and a1.regions[0].provenance.reviewer is None
    assert a2.metadata["reviews"] == [] and a2.metadata["review_state"] is None


def test_cloud_storage_import_and_prelabel(
    tmp_path: Path, label_studio, s3_server, demo_weights, cache_dir
) -> None:  # type: ignore[no-untyped-def]
    """S3 bucket -> Label Studio import storage -> tasks with s3:// URIs -> the backend reads them
    through Label Studio's presigned redirect (the S3 server is local, so private URLs are allowed)."""
    import boto3

    creds = {"aws_access_key_id": "test", "aws_secret_access_key": "test", "region_name": "us-east-1"}
    s3 = boto3.client("s3", endpoint_url=s3_server, **creds)
    s3.create_bucket(Bucket="pool")
    for p in shape_images(tmp_path / "s3", 3):
        s3.upload_file(str(p), "pool", f"batch1/{p.name}")
    s3.put_object(Bucket="pool", Key="batch1/readme.txt", Body=b"left out by the regex")

    conn = LabelStudioConnector(label_studio.url, label_studio.token)
    project = conn.create_project("from s3", CONFIG)
    conn.add_cloud_storage(project, "s3://pool/batch1/", s3_endpoint=s3_server, **creds)
    tasks = list(conn.tasks(project, include="id,data"))
    assert len(tasks) == 3 and all("/resolve/" in t["data"]["image"] for t in tasks)

    s = settings_for(label_studio, cache_dir).with_(allow_private_urls=True)
    done = prelabel_labelstudio(s, demo_weights, project=project, journal=tmp_path / "j.json")
    assert done.counts["written"] == 3 and done.counts["image_failures"] == 0
    assert sum(bool(p["result"]) for p in all_predictions(label_studio, project)) >= 2

    with pytest.raises(
        RemoteError, match=r"could not connect s3://no-such-bucket/x/.*credentials and endpoint"
    ):
        conn.add_cloud_storage(project, "s3://no-such-bucket/x/", s3_endpoint=s3_server, **creds)
    assert len(conn.request("GET", "/api/storages/s3", params={"project": project})) == 1
