"""End to end: a real Label Studio 1.23 asks our gunicorn-served backend for predictions.

The backend is connected through Label Studio's own API and predictions are requested the way
the Data Manager's "Retrieve predictions" action does it, for every task at once.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests

from tests.helpers import shape_images, wait_for

pytestmark = pytest.mark.labelstudio

CONFIG = """<View>
  <Image name="image" value="$image"/>
  <RectangleLabels name="label" toName="image">
    <Label value="Circle"/>
    <Label value="Box" predicted_values="square"/>
    <Label value="triangle"/>
  </RectangleLabels>
</View>"""


def _project(ls, title: str) -> int:
    r = requests.post(
        f"{ls.url}/api/projects", headers=ls.headers(), json={"title": title, "label_config": CONFIG}
    )
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


def _upload(ls, project: int, paths: list[Path]) -> list[int]:
    files = [(f"file{i}", (p.name, p.read_bytes(), "image/jpeg")) for i, p in enumerate(paths)]
    r = requests.post(
        f"{ls.url}/api/projects/{project}/import?return_task_ids=true",
        headers=ls.headers(),
        files=files,
        timeout=120,
    )
    assert r.status_code == 201, r.text
    return list(r.json()["task_ids"])


def _connect(ls, project: int, backend_url: str) -> None:
    r = requests.post(
        f"{ls.url}/api/ml",
        headers=ls.headers(),
        json={"url": backend_url, "project": project, "title": "labelloop"},
        timeout=30,
    )
    assert r.status_code == 201, r.text


def _set_model_version(ls, project: int, version: str) -> None:
    """Label Studio shows and sorts by predictions of the project's model_version only."""
    r = requests.patch(
        f"{ls.url}/api/projects/{project}", headers=ls.headers(), json={"model_version": version}
    )
    assert r.ok and r.json()["model_version"] == version, r.text


def _retrieve_all_predictions(ls, project: int) -> dict:
    r = requests.post(
        f"{ls.url}/api/dm/actions?id=retrieve_tasks_predictions&project={project}",
        headers=ls.headers(),
        json={"selectedItems": {"all": True, "excluded": []}},
        timeout=300,
    )
    assert r.ok, r.text
    return r.json()


def _metrics(url: str) -> dict[tuple[str, tuple], float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(f"{url}/metrics", timeout=10).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def _predictions(ls, project: int) -> list[dict]:
    r = requests.get(f"{ls.url}/api/predictions/?project={project}", headers=ls.headers(), timeout=120)
    assert r.ok, r.text
    return r.json()


def test_prelabels_scores_ordering_and_corrupt_image(label_studio, backend_factory, tmp_path: Path) -> None:
    ls = label_studio
    backend = backend_factory(LABELLOOP_TRUSTED_LABEL_STUDIO_URLS=ls.url)  # its /setup names a loopback URL
    version = requests.get(f"{backend.url}/versions").json()["versions"][0]
    project = _project(ls, "shapes e2e")
    good = _upload(ls, project, shape_images(tmp_path / "img", 8))
    assert len(good) == 8
    bad_file = tmp_path / "img" / "corrupt.jpg"
    bad_file.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    bad = _upload(ls, project, [bad_file])[0]
    _connect(ls, project, backend.url)
    _retrieve_all_predictions(ls, project)
    _set_model_version(ls, project, version)

    preds = _predictions(ls, project)
    by_task = {p["task"]: p for p in preds}
    assert sorted(by_task) == sorted([*good, bad]), "exactly one prediction per task"
    assert len(preds) == len(good) + 1
    assert {p["model_version"] for p in preds} == {version}
    assert by_task[bad]["result"] == [] and by_task[bad]["score"] == 0.0
    assert "corrupt.jpg" in backend.log() or f"task {bad}" in backend.log()

    regions = [r for t in good for r in by_task[t]["result"]]
    assert regions, "the demo model found nothing on 8 images of shapes"
    labels = {r["value"]["rectanglelabels"][0] for r in regions}
    assert labels <= {"Circle", "Box", "triangle"}, labels  # case-insensitive and predicted_values mapping
    for r in regions:
        assert 0.0 < r["score"] <= 1.0
        assert r["from_name"] == "label" and r["to_name"] == "image" and r["type"] == "rectanglelabels"
        assert r["original_width"] == 320 and r["original_height"] == 320
        v = r["value"]
        assert 0 <= v["x"] <= 100 and 0 <= v["y"] <= 100 and 0 < v["width"] <= 100 and 0 < v["height"] <= 100
    for t in good:  # image score = its least confident region
        p = by_task[t]
        if p["result"]:
            assert p["score"] == pytest.approx(min(r["score"] for r in p["result"]), abs=1e-6)

    # a QA lead's view: least confident first
    view = requests.post(
        f"{ls.url}/api/dm/views",
        headers=ls.headers(),
        json={
            "project": project,
            "data": {"title": "Most uncertain first", "ordering": ["tasks:predictions_score"]},
        },
    )
    assert view.status_code == 201, view.text
    r = requests.get(
        f"{ls.url}/api/tasks?view={view.json()['id']}&project={project}&page_size=100&fields=all",
        headers=ls.headers(),
    )
    assert r.ok, r.text
    page = r.json()
    ordered = [t["id"] for t in page["tasks"]]
    assert page["total"] == len(good) + 1, page
    scores = [by_task[i]["score"] for i in ordered]
    assert scores == sorted(scores), "ascending prediction score"
    assert ordered[0] == bad and len(ordered) == len(good) + 1

    metrics = _metrics(backend.url)
    assert metrics[("labelloop_requests_total", (("endpoint", "predict"), ("status", "200")))] >= 1
    assert metrics[("labelloop_errors_total", (("kind", "image_unreadable"),))] == 1
    assert metrics[("labelloop_images_total", ())] == len(good)

    # asking again predicts nothing twice (Label Studio skips tasks with this model_version)
    _retrieve_all_predictions(ls, project)
    assert len(_predictions(ls, project)) == len(preds)


def test_ten_thousand_tasks_in_one_request(label_studio, backend_factory, tmp_path: Path) -> None:
    """All 10,000 tasks selected at once get predictions: those done within a short budget in the
    response, the rest by the rq worker through Label Studio's bulk import, none twice."""
    ls = label_studio
    n = 10_000
    backend = backend_factory(
        LABELLOOP_PREDICT_BUDGET_S="3", LABELLOOP_IMGSZ="128", LABELLOOP_TRUSTED_LABEL_STUDIO_URLS=ls.url
    )
    project = _project(ls, "ten thousand")
    uploaded = _upload(ls, project, shape_images(tmp_path / "img", 16, size=128, seed=3))
    r = requests.get(f"{ls.url}/api/tasks?project={project}&page_size=100&fields=all", headers=ls.headers())
    urls = [t["data"]["image"] for t in r.json()["tasks"]]
    assert len(urls) == len(uploaded)
    tasks = [{"image": urls[i % len(urls)], "n": i} for i in range(n - len(uploaded))]
    r = requests.post(
        f"{ls.url}/api/projects/{project}/import", headers=ls.headers(), json=tasks, timeout=300
    )
    assert r.status_code == 201, r.text
    version = requests.get(f"{backend.url}/versions").json()["versions"][0]
    _connect(ls, project, backend.url)

    _retrieve_all_predictions(ls, project)
    _set_model_version(ls, project, version)
    immediate = len(_predictions(ls, project))
    assert 0 < immediate < n, f"expected a partial answer within the 3 s budget, got {immediate}"

    def count() -> int:
        r = requests.get(f"{ls.url}/api/projects/{project}", headers=ls.headers()).json()
        return int(r.get("total_predictions_number") or 0)

    wait_for(lambda: count() >= n, timeout=900, every=3, what=f"{n} predictions ({backend.log()[-800:]})")
    preds = _predictions(ls, project)
    tasks_with = [p["task"] for p in preds]
    assert len(tasks_with) == n and len(set(tasks_with)) == n, "one prediction per task, none duplicated"
    assert {p["model_version"] for p in preds} == {version}
    assert json.dumps(preds[-1]["result"])  # well-formed results from the background path
