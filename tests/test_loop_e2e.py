"""The loop end to end with every real part: Label Studio, the backend under gunicorn following its
model line, the sync, an rq worker process, Redis, MLflow's local store. Images are imported, a
simulated annotator submits corrected annotations through Label Studio's API, the sync versions
them and the trigger fires, the worker trains a tiny model on the CPU, the gate decides, and the
backend serves the new version, whose predictions reach the untouched tasks in Label Studio.

One run is promoted (through the ``labelloop demo --no-wait`` command a new user types) and one is
rejected by the gate (through the Python API, with a floor no model can pass)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from labelloop.demo import run_demo
from labelloop.settings import load_settings
from tests.helpers import redis_or_fail

pytestmark = pytest.mark.labelstudio


def test_the_loop_closes_by_itself_and_the_new_champion_prelabels(tmp_path: Path, demo_weights: Path) -> None:
    redis_or_fail()
    out = tmp_path / "report.json"
    env = {
        **os.environ,
        "LABELLOOP_MODEL": str(demo_weights),
        "LABELLOOP_TRAIN_EPOCHS": "4",
        "YOLO_OFFLINE": "1",
    }
    cmd = [sys.executable, "-m", "labelloop.cli", "demo", "--no-wait", "--images", "20", "--corrected", "12"]
    done = subprocess.run([*cmd, "--json", str(out)], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    r = json.loads(out.read_text())
    assert r["promoted"] and r["model_after"] == "demo-v1", r["gate_reason"]
    assert r["corrected_before"] == 12 and r["corrected_after"] == 8  # the rest, from demo-v1's prelabels
    assert r["labels_used"] == 12 and r["version"]
    assert r["map50_95_before"] is not None and r["map50_95_after"] is not None
    assert r["kept_before"] is not None and r["kept_after"] is not None
    # the trigger's baseline moved to the champion's version: 8 new labels do not retrain again
    assert r["final_trigger"].startswith("8 new human-verified images <")
    for stage in ("start", "prelabel", "annotate", "sync", "train", "serve", "reprelabel", "annotate_after"):
        assert r["stages"][stage] >= 0
    assert "demo-v1" in done.stdout and "Traceback" not in done.stderr


def test_a_challenger_under_the_floor_is_rejected_and_nothing_changes(demo_weights: Path) -> None:
    redis_or_fail()
    settings = load_settings(model=demo_weights).with_(
        gate={"floor_map50_95": 0.99}, train={"epochs": 2}
    )
    r = run_demo(settings, port=8080, backend_port=9090, n_images=12, keep_running=False, corrected=8)
    assert not r.promoted and r.model_after is None
    assert "floor" in r.gate_reason and r.gate_reason.startswith("rejected")
    assert "serve" not in r.stages and "reprelabel" not in r.stages  # the backend kept its model
