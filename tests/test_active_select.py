"""``labelloop select`` against a real Label Studio and the demo model: ranks on the unlabeled pool,
the two saved views ordering tasks by their fields, and a rerun that writes nothing new."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from labelloop.backend.active.selection import NEXT_VIEW, NOT_SELECTED, RANK_FIELD, REVIEW_FIELD, REVIEW_VIEW
from labelloop.connectors.labelstudio import LabelStudioClient
from labelloop.connectors.labelstudio.tasks import iter_tasks
from labelloop.settings import Settings
from labelloop.sync.prelabel import prelabel
from tests.helpers import shape_images


def _view(conn: LabelStudioClient, project: int, title: str) -> dict:
    views = conn.request("GET", "/api/dm/views", params={"project": project})
    return next(v for v in views if v["data"]["title"] == title)


def _ordered(conn: LabelStudioClient, project: int, view: dict) -> list[dict]:
    params = {"project": project, "view": view["id"], "include": "id,data", "page_size": 100}
    return conn.request("GET", "/api/tasks", params=params)["tasks"]


def test_select_ranks_the_pool_and_the_views_order_by_it(
    tmp_path: Path, label_studio, demo_weights: Path, cache_dir: Path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    s = Settings(
        label_studio_url=label_studio.url,
        label_studio_token=label_studio.token,
        cache_dir=tmp_path / "cache",
        predict={"device": "cpu", "runtime": "torch"},
    )
    shape_images(tmp_path / "pool", 8, size=160, seed=11)
    made = prelabel(s, demo_weights, "labelstudio", title="select", images=[tmp_path / "pool"])
    project = made.where["project"]
    conn = LabelStudioClient(label_studio.url, label_studio.token)
    tasks = sorted(iter_tasks(conn, project), key=lambda t: t["id"])
    with_boxes = [t for t in tasks if t["predictions"][0]["result"]]
    kept, edited = with_boxes[0], with_boxes[1]
    for t, result in ((kept, kept["predictions"][0]["result"]), (edited, [])):  # kept as is / all deleted
        conn.request(
            "POST",
            f"/api/tasks/{t['id']}/annotations",
            json={"result": result, "parent_prediction": t["predictions"][0]["id"]},
        )

    for var, value in {
        "LABELLOOP_LABEL_STUDIO_URL": label_studio.url,
        "LABELLOOP_LABEL_STUDIO_TOKEN": label_studio.token,
        "LABELLOOP_CACHE_DIR": str(tmp_path / "cache"),
        "LABELLOOP_PREDICT_DEVICE": "cpu",
    }.items():
        monkeypatch.setenv(var, value)
    from labelloop.cli.common import app

    out = tmp_path / "select.json"
    args = ["select", "--project", str(project), "--k", "3", "--strategy", "hybrid", "-m", str(demo_weights)]
    res = CliRunner().invoke(app, [*args, "--json", str(out)])
    assert res.exit_code == 0, res.output
    summary = json.loads(out.read_text())
    assert (summary["labeled"], summary["pool"], summary["scored"], summary["chosen"]) == (2, 6, 6, 3)
    assert summary["strategy"] == "hybrid" and summary["review_ranked"] == 2

    nxt = _view(conn, project, NEXT_VIEW)
    assert nxt["data"]["ordering"] == [f"tasks:data.{RANK_FIELD}"]
    shown = _ordered(conn, project, nxt)
    assert [t["data"][RANK_FIELD] for t in shown] == [1, 2, 3]  # only the chosen, in labeling order
    assert not {t["id"] for t in shown} & {kept["id"], edited["id"]}
    assert [t["id"] for t in shown] == [x["item"] for x in summary["top"]]
    ranks = {t["id"]: t["data"][RANK_FIELD] for t in iter_tasks(conn, project)}
    assert sorted(ranks.values()).count(NOT_SELECTED) == 5  # the 3 other pool tasks and the 2 labeled

    review = _ordered(conn, project, _view(conn, project, REVIEW_VIEW))
    assert [t["id"] for t in review if REVIEW_FIELD in t["data"]] == [edited["id"], kept["id"]]

    again = CliRunner().invoke(app, [*args, "--json", str(out)])
    assert again.exit_code == 0, again.output
    assert json.loads(out.read_text())["ranks_written"] == 0  # same choice: nothing rewritten
    views = conn.request("GET", "/api/dm/views", params={"project": project})
    assert sorted(v["data"]["title"] for v in views) == sorted(
        ["Most uncertain first", NEXT_VIEW, REVIEW_VIEW]
    )
