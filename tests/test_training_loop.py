"""Train -> gate -> register -> promote with real Ultralytics and a real MLflow store in a tmp dir.

One module-scoped line: the first training (promoted over the floor) is shared by the tests that
read its run; the later ones add a rejected challenger, a hand promotion and a rollback, a cancelled
training, and the CLI. Tiny on purpose: 20 generated 96 px images fine-tuned from the demo model for
two epochs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from labelloop.backend.registry import lines, tracking
from labelloop.backend.training.gate import evaluate
from labelloop.backend.training.retrain import RetrainOutcome, run_training
from labelloop.backend.training.trainer import TrainProgress
from labelloop.errors import TrainingCancelled
from labelloop.settings import Settings
from tests.training_fixtures import shapes_version, training_settings

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("training")


@pytest.fixture(scope="module")
def settings(root: Path, demo_weights: Path) -> Settings:
    return training_settings(root, demo_weights)


@pytest.fixture(scope="module")
def version(settings: Settings) -> str:
    return shapes_version(settings, 20)


@pytest.fixture(scope="module")
def first(settings: Settings, version: str) -> tuple[RetrainOutcome, list[TrainProgress]]:
    seen: list[TrainProgress] = []
    return run_training(settings, version, progress=seen.append), seen


def test_first_model_of_a_line_promoted_over_the_floor(settings: Settings, first) -> None:  # type: ignore[no-untyped-def]
    outcome, seen = first
    assert outcome.promoted and outcome.version == 1 and outcome.model_version == "shapes-v1"
    assert outcome.parent is None and "first model of the line" in outcome.reason
    ch = outcome.decision.challenger
    assert ch.map50_95 >= settings.gate.floor_map50_95 and ch.latency_ms > 0
    assert set(ch.per_class) <= {"circle", "square", "triangle"} and ch.per_class
    # progress: export, one report per epoch over both stages, then eval / register / done
    epochs = [p for p in seen if p.metrics]
    assert [(p.stage, p.epoch) for p in epochs] == [("head", 1), ("full", 2)]
    assert "val/mAP50-95" in epochs[-1].metrics and "train/box_loss" in epochs[-1].metrics
    assert [p.stage for p in seen if not p.metrics] == ["export", "eval", "register", "done"]
    # the champion: weights fetched into the cache, named, and the dataset version it learned from
    champ = lines.champion(settings, "shapes")
    assert champ is not None and champ.version == 1 and champ.dataset_version == outcome.dataset_version
    assert champ.weights is not None and champ.weights.is_file()
    assert Path(f"{champ.weights}.version").read_text() == "shapes-v1"


def test_run_has_params_metrics_artifacts_and_trainer_args(settings: Settings, first) -> None:  # type: ignore[no-untyped-def]
    outcome, _ = first
    c = tracking.client(settings)
    run = c.get_run(outcome.run_id)
    assert run.info.status == "FINISHED"
    assert c.get_experiment(run.info.experiment_id).name == "shapes"
    p = run.data.params
    assert p["dataset_version"] == outcome.dataset_version and p["parent_model"] == ""
    assert p["seed"] == "0" and p["stage1.freeze"] == "10" and p["stage2.lr0"] == "0.0003"
    assert p["code_version"].startswith(("git:", "labelloop=="))
    assert len(c.get_metric_history(outcome.run_id, "val/mAP50-95")) == 2  # one per epoch
    assert "eval/mAP50-95" in run.data.metrics and "eval/latency_ms" in run.data.metrics
    assert run.data.tags["labelloop.promoted"] == "true"
    names = {a.path for a in c.list_artifacts(outcome.run_id)}
    assert {"weights", "results.csv", "model_card.json", "model_card.md", "trainer_args.json"} <= names
    assert {a.path for a in c.list_artifacts(outcome.run_id, "weights")} == {
        "weights/best.pt",
        "weights/last.pt",
        "weights/model.onnx",
    }
    local = Path(c.download_artifacts(outcome.run_id, "", str(settings.cache_dir / "dl")))
    card = json.loads((local / "model_card.json").read_text())
    assert card["promoted"] and card["gate"]["reason"] == outcome.reason and card["metrics"]["per_class"]
    assert card["model_version"] == "shapes-v1" and card["timings_s"]["total"] > 0
    assert "promoted to champion" in (local / "model_card.md").read_text()
    assert (local / "results.csv").read_text().splitlines()[0].startswith("stage,epoch")
    # the recipe reached Ultralytics' trainer as it says
    args = json.loads((local / "trainer_args.json").read_text())
    head, full = args["head"], args["full"]
    assert (head["freeze"], head["lr0"], full["freeze"], full["lr0"]) == (10, 0.001, None, 0.0003)
    for a in (head, full):
        assert a["optimizer"] == "SGD" and a["momentum"] == 0.9 and a["weight_decay"] == 0.0005
        assert a["cos_lr"] is True and a["plots"] is False and a["seed"] == 0 and a["imgsz"] == 96
    assert (head["close_mosaic"], full["close_mosaic"]) == (0, 1)


def test_eval_of_a_real_model_on_the_val_split(settings: Settings, first) -> None:  # type: ignore[no-untyped-def]
    from labelloop.sync.export import export_version
    from labelloop.sync.store import Store

    outcome, _ = first
    with Store.open(settings=settings) as store:
        rep = export_version(store, outcome.dataset_version, settings.cache_dir / "eval-data")
    champ = lines.champion(settings, "shapes")
    assert champ is not None and champ.weights is not None
    m = evaluate(champ.weights, Path(rep.out) / "data.yaml", imgsz=96)
    assert 0 <= m.map50_95 <= m.map50 <= 1 and 0 <= m.precision <= 1 and 0 <= m.recall <= 1
    # the same model on the same split measures as the gate measured it
    assert m.map50_95 == pytest.approx(outcome.decision.challenger.map50_95, abs=1e-6)


def test_worse_challenger_rejected_then_promote_and_rollback(settings: Settings, first, version: str) -> None:  # type: ignore[no-untyped-def]
    strict = settings.with_(gate={"min_delta": 0.5})  # no 2-epoch fine-tune gains half a mAP
    second = run_training(strict, version)
    assert not second.promoted and second.version == 2 and second.parent == "shapes-v1"
    assert "rejected: mAP50-95" in second.reason and "champion" in second.reason
    assert second.decision.champion is not None  # the champion was measured on the same split
    assert lines.champion_version(settings, "shapes") == 1
    v2 = lines.get_version(settings, "shapes", 2)
    assert v2.tags[lines.TAG_GATE] == "rejected" and v2.tags[lines.TAG_PARENT] == "shapes-v1"
    run = tracking.client(settings).get_run(second.run_id)
    assert run.data.tags["labelloop.promoted"] == "false" and run.info.status == "FINISHED"
    # by hand, then back
    lines.promote(settings, "shapes", 2)
    assert lines.champion_version(settings, "shapes") == 2
    back = lines.rollback(settings, "shapes")
    assert back.version == 1 and lines.champion_version(settings, "shapes") == 1
    from labelloop.errors import RegistryError

    with pytest.raises(RegistryError, match="first champion"):
        lines.rollback(settings, "shapes")
    assert lines.champion_version(settings, "shapes") == 1


def test_cancel_mid_training_promotes_nothing(settings: Settings, first, version: str) -> None:  # type: ignore[no-untyped-def]
    before = [r.version for r in lines.list_versions(settings, "shapes")]
    champ = lines.champion_version(settings, "shapes")
    seen: list[TrainProgress] = []
    with pytest.raises(TrainingCancelled, match="after 1 of 2 epochs"):
        run_training(
            settings.with_(gate={"floor_map50_95": 0.0, "min_delta": -1.0}),  # would promote anything
            version,
            progress=seen.append,
            cancel=lambda: any(p.metrics for p in seen),  # as soon as one epoch is done
        )
    assert lines.champion_version(settings, "shapes") == champ
    assert [r.version for r in lines.list_versions(settings, "shapes")] == before
    c = tracking.client(settings)
    runs = c.search_runs([c.get_experiment_by_name("shapes").experiment_id], order_by=["start_time DESC"])
    assert runs[0].info.status == "KILLED" and "TrainingCancelled" in runs[0].data.tags["labelloop.error"]


def test_cli_train_and_models_json(settings: Settings, first, version: str, root: Path) -> None:  # type: ignore[no-untyped-def]
    from labelloop.cli.common import app
    from labelloop.cli.models import models_app  # noqa: F401  (registers)
    from labelloop.cli.train import train_cmd  # noqa: F401  (registers)

    env = {
        "LABELLOOP_CACHE_DIR": str(settings.cache_dir),
        "LABELLOOP_STORE_URL": settings.store.url,
        "LABELLOOP_BLOB_ROOT": settings.store.blob_root,
        "LABELLOOP_TRAIN_BASE_WEIGHTS": str(settings.train.base_weights),
        "LABELLOOP_TRAIN_MODEL_LINE": "shapes",
        "LABELLOOP_TRAIN_DEVICE": "cpu",
        "LABELLOOP_TRAIN_BATCH": "8",
        "LABELLOOP_GATE_MIN_DELTA": "0.5",
    }
    runner = CliRunner()

    def cli(*args: str) -> object:
        res = runner.invoke(app, list(args), env=env)
        assert res.exit_code == 0, (res.stdout, res.stderr, res.exception)
        return json.loads(res.stdout)

    out = cli("train", "--version", version[:10], "--epochs", "1", "--imgsz", "64", "--json")
    assert out["promoted"] is False and out["run_id"] and out["model_version"].startswith("shapes-v")
    assert "mAP50-95" in out["reason"] and out["decision"]["challenger"]["map50_95"] >= 0
    listed = cli("models", "list", "--json")
    assert [r["version"] for r in listed] == sorted((r["version"] for r in listed), reverse=True)
    assert [r["version"] for r in listed if r["is_champion"]] == [1]
    shown = cli("models", "show", str(out["version"]), "--json")
    assert shown["run_id"] == out["run_id"] and shown["dataset_version"] == version
    promoted = cli("models", "promote", str(out["version"]), "--json")
    assert promoted["is_champion"] and lines.champion_version(settings, "shapes") == out["version"]
    rolled = cli("models", "rollback", "--json")
    assert rolled["version"] == 1 and rolled["is_champion"]
    # a user error is one line, exit 2 (through the real entry point)
    res = runner.invoke(app, ["models", "show", "99"], env=env)
    assert res.exit_code != 0 and "has no version 99" in str(res.exception)


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, "LABELLOOP_CACHE_DIR": str(tmp_path)}
    for args in (["models", "rollback"], ["models", "show", "x"], ["train", "--version", "head"]):
        res = subprocess.run(
            [sys.executable, "-m", "labelloop.cli", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error: ")]
        assert res.returncode == 2 and len(errors) == 1 and "Traceback" not in res.stderr, res.stderr


def test_a_champion_with_other_classes_is_not_compared(settings: Settings, first, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A version whose label set changed cannot be scored by the old champion: the floor judges,
    and the reason says why."""
    import dataclasses

    from labelloop.backend.training.retrain import judge
    from labelloop.backend.training.trainer import TrainResult, export_for_training
    from labelloop.sync.store import Store

    outcome, _ = first
    champ = lines.champion(settings, "shapes")
    assert champ is not None and champ.weights is not None
    with Store.open(settings=settings) as store:
        rep = export_for_training(store, outcome.dataset_version, tmp_path / "data")
    from labelloop.backend.training.recipe import make_recipe

    result = TrainResult(
        version_id=rep.version,
        data_yaml=Path(rep.out) / "data.yaml",
        names=["circle", "square", "triangle", "star"],  # as if a class had been added
        images=rep.images,
        base_weights=champ.weights,
        best=champ.weights,
        last=champ.weights,
        results_csv=tmp_path / "results.csv",
        recipe=make_recipe(settings.train),
        stage_args={},
        history=[],
        seconds={},
    )
    timings: dict[str, float] = {}
    d = judge(settings, result, dataclasses.replace(champ), timings, tmp_path)
    assert d.champion is None and "eval_champion" not in timings
    assert "first model" not in d.reason and "knows other classes (circle, square, triangle)" in d.reason
    assert "floor" in d.reason


def test_a_version_without_val_stops_before_training(tmp_path: Path, demo_weights: Path) -> None:
    from labelloop.errors import DataError

    s = training_settings(tmp_path, demo_weights)
    v = shapes_version(s, 4, val_fraction=0.0)
    with pytest.raises(DataError, match="has no val images"):
        run_training(s, v)
    assert lines.list_versions(s, "shapes") == []
    c = tracking.client(s)
    (run,) = c.search_runs([c.get_experiment_by_name("shapes").experiment_id])
    assert run.info.status == "FAILED" and "DataError" in run.data.tags["labelloop.error"]


def test_cancel_after_registering_still_promotes_nothing(settings: Settings, first, version: str) -> None:  # type: ignore[no-untyped-def]
    """The last moment a cancel can arrive: the new version is registered, the champion not moved."""
    champ = lines.champion_version(settings, "shapes")
    n = len(lines.list_versions(settings, "shapes"))
    with pytest.raises(TrainingCancelled, match="before promoting"):
        run_training(
            settings.with_(gate={"floor_map50_95": 0.0, "min_delta": -1.0}),
            version,
            epochs=1,
            cancel=lambda: len(lines.list_versions(settings, "shapes")) > n,
        )
    newest = lines.list_versions(settings, "shapes")[0]
    assert newest.version == n + 1 and newest.tags[lines.TAG_GATE] == "cancelled"
    assert lines.champion_version(settings, "shapes") == champ
