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
from labelloop.connectors.labelstudio import LabelStudioClient, LabelStudioPlatform, imports, projects
from labelloop.connectors.labelstudio.push import write_predictions
from labelloop.connectors.labelstudio.tasks import iter_tasks
from labelloop.connectors.platform import Cursor
from labelloop.errors import ConfigError, RemoteError
from labelloop.fsutil import sha256_file
from labelloop.settings import Settings
from labelloop.sync.prelabel import prelabel
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
    conn = LabelStudioClient(ls.url, ls.token)
    return [p for t in iter_tasks(conn, project) for p in t.get("predictions") or []]


def prelabel_labelstudio(settings: Settings, weights: Path, project: int | None = None, **kw):  # type: ignore[no-untyped-def]
    return prelabel(settings, weights, "labelstudio", container=project, **kw)


@pytest.fixture
def conn(label_studio) -> LabelStudioClient:  # type: ignore[no-untyped-def]
    return LabelStudioClient(label_studio.url, label_studio.token, backoff_s=0.05)


@pytest.fixture
def proxy(label_studio):  # type: ignore[no-untyped-def]
    p = FaultyProxy(label_studio.url)
    yield p
    p.close()


def settings_for(ls, cache_dir: Path) -> Settings:  # type: ignore[no-untyped-def]
    return Settings(label_studio_url=ls.url, label_studio_token=ls.token, cache_dir=cache_dir)


# ---------------------------------------------------------------------- imports


def test_import_uploads_urls_cloud_uris_and_local_storage(tmp_path: Path, label_studio, conn) -> None:  # type: ignore[no-untyped-def]
    project = projects.create_project(conn, "imports", CONFIG)
    up = imports.upload_images(conn, project, shape_images(tmp_path / "up", 3))
    uris = ["https://example.com/a.jpg", "s3://bucket/pool/b.jpg", "gs://bucket/c.png"]
    by_uri = imports.import_tasks(conn, project, [{"image": u} for u in uris])
    local = label_studio.document_root / "pool"
    shape_images(local, 4, seed=9)
    (local / "notes.txt").write_text("not an image: the storage regex leaves it out")
    imports.add_local_storage(conn, project, local)
    tasks = list(iter_tasks(conn, project, include="id,data,storage_filename"))
    refs = [t["data"]["image"] for t in tasks]
    assert up.created == 3 and len(by_uri) == 3 and len(tasks) == 10
    assert sum(r.startswith("/data/upload/") for r in refs) == 3
    assert set(uris) <= set(refs)
    assert sum("local-files" in r for r in refs) == 4
    # a local-files task is readable through Label Studio, as the backend will read it
    ref = next(r for r in refs if "local-files" in r)
    r = requests.get(label_studio.url + ref, headers=label_studio.headers(), timeout=30)
    assert r.status_code == 200 and r.content[:2] == b"\xff\xd8"

    imports.add_local_storage(conn, project, local)  # connected already: synced, not added twice
    assert len(list(iter_tasks(conn, project, include="id"))) == 10
    assert len(conn.request("GET", "/api/storages/localfiles", params={"project": project})) == 1

    with pytest.raises(RemoteError, match="LOCAL_FILES_DOCUMENT_ROOT"):
        imports.add_local_storage(conn, project, tmp_path / "up")  # not under the document root
    with pytest.raises(ConfigError, match="s3://, gs:// or azure-blob://"):
        imports.add_cloud_storage(conn, project, "ftp://somewhere/x")
    with pytest.raises(ConfigError, match="cannot read image"):
        imports.upload_images(conn, project, [tmp_path / "missing.jpg"])


def test_imports_are_idempotent_by_content(tmp_path: Path, conn) -> None:  # type: ignore[no-untyped-def]
    """Each task records its image's sha256; the same bytes are never imported twice, under any
    name, and a URI is imported once."""
    project = projects.create_project(conn, "idempotent", CONFIG)
    first = shape_images(tmp_path / "a", 3)
    up = imports.upload_images(conn, project, first)
    assert (up.created, up.skipped) == (3, 0)
    copy = tmp_path / "b" / "renamed.jpg"
    copy.parent.mkdir()
    copy.write_bytes(first[0].read_bytes())
    more = shape_images(tmp_path / "c", 4, seed=11)[3:]  # one new image
    again = imports.upload_images(conn, project, [*first, copy, *more])
    assert (again.created, again.skipped) == (1, 4)
    assert again.task_ids[sha256_file(copy)] == up.task_ids[sha256_file(first[0])]
    tasks = list(iter_tasks(conn, project, include="id,data"))
    assert len(tasks) == 4
    assert sorted(t["data"]["sha256"] for t in tasks) == sorted({sha256_file(p) for p in [*first, *more]})
    assert all(t["data"]["image"].startswith("/data/upload/") for t in tasks)
    uris = imports.import_uris(conn, project, ["https://example.com/x.jpg", "https://example.com/x.jpg"])
    assert (uris.created, imports.import_uris(conn, project, ["https://example.com/x.jpg"]).created) == (1, 0)


def test_import_whose_answer_was_lost_is_checked_not_resent(tmp_path: Path, label_studio, proxy) -> None:  # type: ignore[no-untyped-def]
    direct = LabelStudioClient(label_studio.url, label_studio.token)
    project = projects.create_project(direct, "lost import", CONFIG)
    conn = LabelStudioClient(proxy.url, label_studio.token, backoff_s=0.01)
    proxy.fail("POST", "/import?return_task_ids=true", times=1, status=502, after_forward=True)
    report = imports.upload_images(conn, project, shape_images(tmp_path / "p", 3))
    assert report.created == 3 and proxy.count("POST", "/import?return_task_ids=true") == 1  # not resent
    assert len(list(iter_tasks(direct, project, include="id"))) == 3


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

    conn = LabelStudioClient(label_studio.url, label_studio.token)
    tasks = list(iter_tasks(conn, project))
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
    assert projects.get_project(conn, project)["model_version"] == version
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

    # the README's advice after a crash: the same command again. Nothing is imported twice
    rerun = prelabel_labelstudio(s, demo_weights, project=project, images=[tmp_path / "pool"], journal=j)
    assert rerun.counts["imported"] == 0 and rerun.counts["written"] == 0
    assert len(list(iter_tasks(conn, project, include="id"))) == 9


def test_priority_field_and_the_view_sorted_by_it(conn) -> None:  # type: ignore[no-untyped-def]
    project = projects.create_project(conn, "priority", CONFIG)
    ids = imports.import_tasks(conn, project, [{"image": f"https://example.com/q{i}.jpg"} for i in range(4)])
    platform = LabelStudioPlatform(conn)
    scores = {str(t): s for t, s in zip(ids, [0.9, 0.1, 0.5, None], strict=True)}
    first = platform.write_priority(project, scores, field_name="disagreement", view="Annotators disagree")
    again = platform.write_priority(project, scores, field_name="disagreement", view="Annotators disagree")
    assert (first.written, again.written, again.view) == (3, 0, first.view)
    [view] = conn.request("GET", "/api/dm/views", params={"project": project})
    assert view["data"]["ordering"] == ["tasks:data.disagreement"]
    params = {"project": project, "view": first.view, "include": "id,data"}
    ordered = conn.request("GET", "/api/tasks", params=params)["tasks"]
    assert [t["id"] for t in ordered if "disagreement" in t["data"]] == [ids[1], ids[2], ids[0]]
    assert next(t for t in ordered if t["id"] == ids[0])["data"]["image"] == "https://example.com/q0.jpg"


def test_lost_answer_and_500s_are_retried_without_duplicates(tmp_path: Path, label_studio, proxy) -> None:  # type: ignore[no-untyped-def]
    direct = LabelStudioClient(label_studio.url, label_studio.token)
    project = projects.create_project(direct, "lost answers", CONFIG)
    ids = imports.import_tasks(
        direct, project, [{"image": f"https://example.com/{i}.jpg"} for i in range(12)]
    )
    conn = LabelStudioClient(proxy.url, label_studio.token, backoff_s=0.05)
    proxy.fail("POST", "/import/predictions", times=1, status=502, after_forward=True)  # applied, answer lost
    proxy.fail("POST", "/import/predictions", times=2, status=500)  # then refused twice
    journal = PushJournal.load(tmp_path / "j.json", {"project": project})
    summary = write_predictions(conn, project, preds_for(ids), journal=journal, chunk=5)
    preds = all_predictions(label_studio, project)
    assert Counter(p["task"] for p in preds) == Counter(ids)  # each task once
    assert summary.written + summary.already_there == 12 and summary.chunks == 3
    assert summary.already_there == 5  # the chunk whose answer was lost had landed
    assert json.loads((tmp_path / "j.json").read_text())["done"] == sorted(ids)
    assert proxy.count("POST", "/import/predictions", 500) == 2


def test_interrupted_push_resumes_from_journal(tmp_path: Path, label_studio, proxy) -> None:  # type: ignore[no-untyped-def]
    direct = LabelStudioClient(label_studio.url, label_studio.token)
    project = projects.create_project(direct, "resume", CONFIG)
    ids = imports.import_tasks(
        direct, project, [{"image": f"https://example.com/{i}.jpg"} for i in range(10)]
    )
    conn = LabelStudioClient(proxy.url, label_studio.token, retries=2, backoff_s=0.01)
    proxy.fail("POST", "/import/predictions", times=-1, status=500, after_forward=False)
    path = tmp_path / "journal.json"
    journal = PushJournal.load(path, {"project": project})
    journal.commit(ids[:4])  # a previous run wrote the first chunk...
    write_predictions(direct, project, preds_for(ids[:4]))
    journal.begin(ids[4:8])  # ...and was killed with the second in flight, after it landed
    write_predictions(direct, project, preds_for(ids[4:8]))
    with pytest.raises(RemoteError, match=r"answered 500.*rerun to resume"):
        write_predictions(
            conn, project, preds_for(ids), journal=PushJournal.load(path, {"project": project}), chunk=4
        )
    state = json.loads(path.read_text())
    assert state["done"] == sorted(ids[:8]) and state["in_flight"]["ids"] == ids[8:]
    proxy.faults.clear()
    summary = write_predictions(
        conn, project, preds_for(ids), journal=PushJournal.load(path, {"project": project}), chunk=4
    )
    assert (summary.resumed, summary.written) == (8, 2)
    assert Counter(p["task"] for p in all_predictions(label_studio, project)) == Counter(ids)
    with pytest.raises(ConfigError, match="belongs to"):
        PushJournal.load(path, {"project": project + 1})


def test_server_down_or_bad_token_is_one_clear_error(label_studio) -> None:  # type: ignore[no-untyped-def]
    from labelloop.connectors.labelstudio.server import free_port

    down = LabelStudioClient(f"http://127.0.0.1:{free_port()}", "x", retries=1, backoff_s=0.01)
    with pytest.raises(RemoteError, match=r"unreachable.*LABELLOOP_LABEL_STUDIO_URL"):
        projects.get_project(down, 1)
    with pytest.raises(RemoteError, match="LABELLOOP_LABEL_STUDIO_TOKEN"):
        projects.get_project(LabelStudioClient(label_studio.url, "wrong-token"), 1)
    with pytest.raises(RemoteError, match="answered 404"):
        projects.get_project(LabelStudioClient(label_studio.url, label_studio.token), 999999)
    with pytest.raises(ConfigError, match="LABELLOOP_LABEL_STUDIO_URL"):
        LabelStudioClient("", None)


def test_personal_access_token_is_exchanged(label_studio) -> None:  # type: ignore[no-untyped-def]
    legacy = LabelStudioClient(label_studio.url, label_studio.token)
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
    conn = LabelStudioClient(label_studio.url, pat)
    assert conn.request("GET", "/api/users")  # works through the exchanged access token
    forged = pat[: pat.rindex(".") + 1] + "AAAA"
    with pytest.raises(RemoteError, match="personal access token"):
        LabelStudioClient(label_studio.url, forged).request("GET", "/api/users")


def test_missing_label_stops_before_writing(tmp_path: Path, label_studio, demo_weights, cache_dir) -> None:  # type: ignore[no-untyped-def]
    conn = LabelStudioClient(label_studio.url, label_studio.token)
    project = projects.create_project(
        conn, "missing label", generate_label_config("detect", ["circle", "square"])
    )
    imports.upload_images(conn, project, shape_images(tmp_path / "p", 3))
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
    project = projects.create_project(conn, "pull", CONFIG)
    ids = imports.import_tasks(conn, project, [{"image": f"https://example.com/p{i}.jpg"} for i in range(5)])
    write_predictions(conn, project, preds_for(ids, "m1"))
    preds = {t["id"]: t["predictions"][0] for t in iter_tasks(conn, project)}
    platform = LabelStudioPlatform(conn)
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

    first = platform.pull_changes(project)
    assert first.notes == ["reviews: not available on Label Studio Community (an Enterprise feature)"]
    assert set(first.present) == {str(i) for i in ids} and len(first.annotations) == 4
    assert sorted(first.all_tasks or []) == sorted(str(i) for i in ids)
    by_ann = {a.item.metadata["ls_annotation_id"]: a.item for a in first.annotations}
    one = by_ann[a1["id"]]
    pulled = next(a for a in first.annotations if a.annotation_id == str(a1["id"]))
    assert (pulled.task_id, pulled.lead_time, pulled.cancelled) == (str(ids[0]), 12.5, False)
    assert pulled.prelabel_id == str(preds[ids[0]]["id"]) and pulled.prelabel_model_version == "m1"
    assert [r.label for r in pulled.prelabel or []] == ["circle"]
    assert {r.provenance.source for r in pulled.prelabel or []} == {Source.PRELABEL}
    assert one.uri == "https://example.com/p0.jpg" and (one.width, one.height) == (320, 320)
    assert [r.label for r in one.regions] == ["square"]
    r0 = one.regions[0]
    assert r0.provenance.source == Source.HUMAN and r0.score is None
    assert r0.provenance.annotator == "demo@labelloop.dev" and r0.provenance.created_at == a1["created_at"]
    assert one.metadata["lead_time"] == 12.5 and one.metadata["parent_prediction"] == preds[ids[0]]["id"]
    assert one.metadata["parent_model_version"] == "m1" and one.metadata["updated_by"] == "demo@labelloop.dev"
    gt = next(it for it in by_ann.values() if it.metadata["ground_truth"])
    assert gt.regions[0].provenance.annotator == f"ann-{project}@example.com"
    cancelled = [it for it in by_ann.values() if it.metadata["was_cancelled"]]
    assert [a.cancelled for a in first.annotations].count(True) == 1
    assert len(cancelled) == 1 and cancelled[0].regions == []
    assert "reviews" not in one.metadata

    # nothing changed: the next pull only re-reads what changed in the second before it started
    assert first.cursor.state["since"] is not None
    quiet = platform.pull_changes(project, first.cursor)
    assert quiet.annotations == [] and quiet.present == {}
    conn.request(
        "PATCH", f"/api/annotations/{a1['id']}", json={"result": [rect("circle", 60)], "lead_time": 30}
    )
    conn.request("DELETE", f"/api/annotations/{a4['id']}")
    second = platform.pull_changes(project, Cursor.from_json(quiet.cursor.to_json()))
    assert set(second.present) == {str(ids[0]), str(ids[3])}
    assert second.present[str(ids[3])] == []  # the deleted annotation is visibly gone
    (edited,) = [a.item for a in second.annotations]
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
    conn = LabelStudioClient(label_studio.url, label_studio.token)
    task = next(iter_tasks(conn, project))
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
    direct = LabelStudioClient(label_studio.url, label_studio.token)
    project = projects.create_project(direct, "reviews", CONFIG)
    ids = imports.import_tasks(
        direct, project, [{"image": f"https://example.com/r{i}.jpg"} for i in range(3)]
    )
    anns = [
        direct.request("POST", f"/api/tasks/{t}/annotations", json={"result": [rect("circle")]}) for t in ids
    ]
    real_version = direct.request("GET", "/api/version")
    me = int(direct.request("GET", "/api/users")[0]["id"])

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
    res = LabelStudioPlatform(LabelStudioClient(proxy.url, label_studio.token)).pull_changes(project)
    assert res.notes == [] and asked == ["reviews"]  # Enterprise: reviews read, in one call
    by_ann = {a.item.metadata["ls_annotation_id"]: a.item for a in res.annotations}
    states = {int(a.annotation_id): (a.review_state, a.reviewer) for a in res.annotations}
    assert states == {
        anns[0]["id"]: ("accepted", "demo@labelloop.dev"),
        anns[1]["id"]: ("rejected", None),
        anns[2]["id"]: (None, None),
    }
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

    conn = LabelStudioClient(label_studio.url, label_studio.token)
    project = projects.create_project(conn, "from s3", CONFIG)
    imports.add_cloud_storage(conn, project, "s3://pool/batch1/", s3_endpoint=s3_server, **creds)
    tasks = list(iter_tasks(conn, project, include="id,data"))
    assert len(tasks) == 3 and all("/resolve/" in t["data"]["image"] for t in tasks)

    s = settings_for(label_studio, cache_dir).with_(allow_private_urls=True)
    done = prelabel_labelstudio(s, demo_weights, project=project, journal=tmp_path / "j.json")
    assert done.counts["written"] == 3 and done.counts["image_failures"] == 0
    assert sum(bool(p["result"]) for p in all_predictions(label_studio, project)) >= 2
    imports.add_cloud_storage(conn, project, "s3://pool/batch1/", s3_endpoint=s3_server, **creds)
    assert len(list(iter_tasks(conn, project, include="id"))) == 3  # the same prefix, synced again

    with pytest.raises(
        RemoteError, match=r"could not connect s3://no-such-bucket/x/.*credentials and endpoint"
    ):
        imports.add_cloud_storage(conn, project, "s3://no-such-bucket/x/", s3_endpoint=s3_server, **creds)
    assert len(conn.request("GET", "/api/storages/s3", params={"project": project})) == 1
