"""``labelloop prelabel --target cvat`` and ``labelloop pull --target cvat`` as a user runs them.

The CVAT side is the test peer (CVAT 2.73's schema and recorded responses; a real CVAT needs
Docker), driven through the real cvat-sdk inside the command.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cvat_sdk import make_client

from labelloop.connectors.formats.canonical_json import item_from_dict
from labelloop.types import Source
from tests.cvat_peer import CvatPeer, patch_job_shapes
from tests.helpers import shape_images

CMD = [sys.executable, "-m", "labelloop.cli"]


@pytest.fixture
def peer():  # type: ignore[no-untyped-def]
    with CvatPeer() as p:
        yield p


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([*CMD, *args], env=env, capture_output=True, text=True, timeout=300)


def test_prelabel_then_pull_cvat(tmp_path: Path, peer: CvatPeer, demo_weights: Path, cache_dir: Path) -> None:
    pool = tmp_path / "pool"
    shape_images(pool, 6, seed=5, broken=1)
    env = {
        **os.environ,
        "CVAT_URL": peer.url,
        "CVAT_USER": "admin1",
        "CVAT_PASSWORD": "admin1-pw",
        "LABELLOOP_MODEL": str(demo_weights),
        "LABELLOOP_CACHE_DIR": str(cache_dir),
    }
    journal, summary_path = tmp_path / "push.json", tmp_path / "summary.json"
    args = ["prelabel", "-t", "cvat", "-i", str(pool), "--segment-size", "3", "--journal", str(journal)]
    r = run([*args, "--title", "pool", "--json", str(summary_path)], env)
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads(summary_path.read_text())
    assert (s["images"], s["predicted"], s["image_failures"], s["pushed_frames"]) == (7, 6, 1, 6)
    assert any("broken_0.jpg" in n for n in s["notes"])
    task = s["task"]
    shapes = list(peer.shapes[task].values())
    assert len(shapes) == s["shapes"] > 0
    assert all(sh["source"] == "auto" and 0 < sh["score"] <= 1 for sh in shapes)
    # frames were uploaded least confident first: frame order follows the image score
    per_frame: dict[int, float] = {}
    for sh in shapes:
        per_frame[sh["frame"]] = min(per_frame.get(sh["frame"], 1.0), sh["score"])
    mins = [per_frame.get(f, 1.0) for f in range(6)]
    assert mins == sorted(mins)

    again = run([*args, "--task", str(task), "--json", str(summary_path)], env)
    assert again.returncode == 0, again.stderr[-3000:]
    s2 = json.loads(summary_path.read_text())
    assert (s2["pushed_frames"], s2["skipped_frames"]) == (0, 6)
    assert len(peer.shapes[task]) == len(shapes)  # nothing written twice

    # an annotator fixes one prelabel (in a job assigned to them); the pull separates human from
    # machine regions
    peer.set_job(min(j for j, v in peer.jobs.items() if v["task_id"] == task), assignee="annotator")
    with make_client(peer.url, credentials=("annotator", "ann-pw")) as human:
        job = sorted(j.id for j in human.tasks.retrieve(task).get_jobs())[0]
        ann, _ = human.api_client.jobs_api.retrieve_annotations(job)
        first = ann.shapes[0]
        patch_job_shapes(
            human, "update", job,
            {"id": first.id, "type": "rectangle", "frame": first.frame, "label_id": first.label_id,
             "points": [1.0, 2.0, 30.0, 40.0], "source": "manual"},
        )  # fmt: skip
    out, cursor = tmp_path / "changes.jsonl", tmp_path / "cursor.json"
    r = run(["pull", "-t", "cvat", "--task", str(task), "-o", str(out), "--cursor", str(cursor)], env)
    assert r.returncode == 0, r.stderr[-3000:]
    items = [item_from_dict(json.loads(line)) for line in out.read_text().splitlines()]
    assert len(items) == 6
    regions = [rg for it in items for rg in it.regions]
    human_regions = [rg for rg in regions if rg.provenance.source == Source.HUMAN]
    assert len(human_regions) == 1 and human_regions[0].score is None
    assert len(regions) - 1 == sum(rg.provenance.source == Source.PRELABEL for rg in regions)
    machine = [rg for rg in regions if rg.provenance.source == Source.PRELABEL]
    assert {rg.provenance.model_version for rg in machine} == {s["model_version"]}  # which model made them
    qa = json.loads(out.with_name(out.name + ".qa.json").read_text())
    assert {j["id"] for j in qa["jobs"]} >= {job}
    assert json.loads(cursor.read_text())["since"]

    r = run(["prelabel", "-t", "cvat"], env)
    assert r.returncode == 2 and "needs --images" in r.stderr
    r = run(["pull", "-t", "cvat", "-o", str(out), "--task", str(task)], {**env, "CVAT_PASSWORD": "nope"})
    assert r.returncode == 2 and "CVAT_USER/CVAT_PASSWORD" in r.stderr and "Traceback" not in r.stderr
