"""Runtime ``auto`` on the CPU serves the fastest exported artifact of a registry version that passed
validation, with every real part: the demo model registered in a real MLflow store (SQLite in a tmp
dir), a dataset version of the real store (generated shapes with human labels), ``labelloop export``
calibrating on its train split and scoring mAP50-95 on its val split, artifacts stored with the
version's run and fetched by the serving side.

The INT8 the gate must refuse is a real one, too: ONNX Runtime static INT8 with nothing kept float
(the head decode quantized with the rest), the recipe issue 14 measured at 0 detections. It is
exported at another imgsz (128) than the good artifacts (96), so ``predict.imgsz`` picks the set.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from labelloop.backend.inference.export import build_artifact, export_model, quantize_onnx
from labelloop.backend.inference.precision import Candidate, choose, cpu_has_bf16
from labelloop.backend.registry import exports, lines
from labelloop.backend.serving.predict_service import PredictionService
from labelloop.settings import Settings
from tests.helpers import SHAPES_CONFIG, shape_images
from tests.test_hot_reload import add_version
from tests.training_fixtures import shapes_version, training_settings

GOOD, BAD = 96, 128  # imgsz of the validated set and of the broken INT8


def _naive_int8(weights: Path, fmt: str, work: Path, imgsz: int, calib, names) -> Path:  # type: ignore[no-untyped-def]
    """ONNX Runtime INT8 with the head decode quantized too (issue 14: no detection survives)."""
    fp32 = build_artifact(weights, "onnx", work, imgsz, calib, names)
    return quantize_onnx(fp32, calib, imgsz, work / "naive-int8.onnx", keep_float=[])


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, demo_weights: Path) -> tuple[Settings, Path, str]:
    """A registered copy of the demo model with onnx, onnx-int8, openvino-bf16 at 96 and onnx plus a
    broken onnx-int8 at 128 stored with it; its settings, local weights, dataset version."""
    root = tmp_path_factory.mktemp("choice")
    settings = training_settings(root, demo_weights).with_(device="cpu")
    version = shapes_version(settings, 24)
    trained = {lines.TAG_DATASET: version}  # as a retrain tags it: the int8 gate's leak check reads it
    ref = lines.get_version(settings, None, add_version(settings, demo_weights, trained))
    weights = lines.fetch_weights(settings, ref)
    out = root / "exports"
    for fmt, size, build in [("onnx", GOOD, None), ("onnx-int8", GOOD, None), ("openvino-bf16", GOOD, None),
                             ("onnx", BAD, None), ("onnx-int8", BAD, _naive_int8)]:  # fmt: skip
        report = export_model(settings, weights, fmt, out, imgsz=size, calibration=version,
                              calibration_images=8, conf=0.1, build=build)  # fmt: skip
        assert report.mlflow_run_id == ref.run_id, report
    return settings, weights, version


def _served(settings: Settings, weights: Path) -> PredictionService:
    service = PredictionService(settings.with_(runtime="auto", device="cpu", conf=0.1), weights)
    service.predictor  # noqa: B018 - loads the model
    return service


def test_exports_are_stored_with_the_version(registry: tuple[Settings, Path, str]) -> None:
    settings, weights, version = registry
    run_id = exports.registry_run_of(settings, weights)
    assert run_id is not None
    found = {(c.format, c.imgsz): c for c in exports.stored_exports(settings, run_id)}
    assert set(found) == {("onnx", GOOD), ("onnx-int8", GOOD), ("openvino-bf16", GOOD), ("onnx", BAD),
                          ("onnx-int8", BAD)}  # fmt: skip
    good, bad = found[("onnx-int8", GOOD)].report, found[("onnx-int8", BAD)].report
    assert good["calibration"] == {"source": version, "version": version, "images": 8, "split": "train",
                                   "model_trained_on": version, "val_seen_in_training": 0}  # fmt: skip
    assert bad["val"]["fp32_map50_95"] > 0.05, bad["val"]  # the fp32 model finds the shapes
    assert bad["val"]["map50_95_drop"] > 0.05, bad["val"]  # the naive INT8 does not


def test_a_passing_int8_is_served_and_said(registry: tuple[Settings, Path, str], tmp_path: Path) -> None:
    settings, weights, _ = registry
    service = _served(settings.with_(imgsz=GOOD, gate_max_quant_drop=1.0, local_roots=[tmp_path]), weights)
    p = service.predictor
    assert p.runtime == "lean" and p.weights.name.endswith("-int8.onnx"), p.weights
    assert p.model_version == Path(f"{weights}.version").read_text()  # the version's name: <line>-v1
    served = service.served
    assert served is not None and served["precision"]["format"] == "onnx-int8"
    assert served["precision"]["precision"] == "int8" and served["runtime"] == "lean"
    report = service.predict_tasks(
        [{"id": i, "data": {"image": str(f)}} for i, f in enumerate(shape_images(tmp_path, 2, size=GOOD))],
        SHAPES_CONFIG,
    )
    assert report.predicted == 2


def test_a_failing_int8_is_refused_and_the_next_precision_served(
    registry: tuple[Settings, Path, str], caplog: pytest.LogCaptureFixture
) -> None:
    settings, weights, _ = registry
    caplog.set_level("INFO")
    service = _served(settings.with_(imgsz=BAD), weights)  # default max_quant_drop 0.01
    p = service.predictor
    assert p.weights.suffix == ".onnx" and not p.weights.name.endswith("-int8.onnx"), p.weights
    served = service.served
    assert served is not None and served["precision"]["precision"] == "fp32"
    refused = served["precision"]["refused"]
    assert len(refused) == 1 and "onnx-int8: mAP50-95" in refused[0] and "max_quant_drop 0.01" in refused[0]
    lines_said = [r.getMessage() for r in caplog.records if "passed over" in r.getMessage()]
    assert len(lines_said) == 1 and "serving onnx (fp32" in lines_said[0], lines_said


def test_precision_setting_and_bf16_on_this_cpu(registry: tuple[Settings, Path, str]) -> None:
    settings, weights, _ = registry
    fp32 = _served(settings.with_(imgsz=GOOD, precision="fp32"), weights).served
    assert fp32 is not None and fp32["precision"]["format"] == "onnx" and not fp32["precision"]["refused"]
    bf16 = _served(settings.with_(imgsz=GOOD, precision="bf16", gate_max_quant_drop=1.0), weights).served
    assert bf16 is not None
    if cpu_has_bf16():
        assert bf16["precision"]["format"] == "openvino-bf16", bf16
    else:  # this CPU would run the bf16 IR in fp32: the fp32 artifact, and the reason
        assert bf16["precision"]["format"] == "onnx", bf16
        assert "no bf16 instructions" in bf16["precision"]["refused"][0]


def test_explicit_runtime_or_plain_weights_choose_nothing(registry: tuple[Settings, Path, str]) -> None:
    settings, weights, _ = registry
    assert exports.serving_artifact(settings.with_(runtime="onnx"), weights) == (weights, None)
    assert exports.serving_artifact(settings.with_(device="0"), weights) == (weights, None)
    other = weights.parent.parent / "elsewhere.pt"  # not a registry version: nothing stored with it
    other.write_bytes(weights.read_bytes())
    assert exports.serving_artifact(settings, other) == (other, None)


def _cand(fmt: str, drop: float | None, version: str | None = "v1") -> Candidate:
    val = None if drop is None else {"map50_95": 0.5 - drop, "fp32_map50_95": 0.5, "map50_95_drop": drop}
    return Candidate(fmt, 320, {"val": val, "calibration": {"version": version}}, f"exports/{fmt}-320")


def test_choice_order_and_gate_rules() -> None:
    every = [_cand(f, 0.0) for f in ("onnx", "openvino", "openvino-bf16", "onnx-int8", "openvino-int8")]
    assert choose(every, bf16_ok=True).candidate.format == "openvino-int8"  # type: ignore[union-attr]
    assert choose(every, "bf16", bf16_ok=True).candidate.format == "openvino-bf16"  # type: ignore[union-attr]
    assert choose(every, "bf16", bf16_ok=False).candidate.format == "openvino"  # type: ignore[union-attr]
    assert choose(every, "fp32").candidate.format == "openvino"  # type: ignore[union-attr]
    over = choose([_cand("openvino-int8", 0.011), _cand("onnx-int8", 0.01), _cand("onnx", None)])
    assert over.candidate.format == "onnx-int8" and len(over.refused) == 1  # type: ignore[union-attr]
    unverified = choose(
        [_cand("onnx-int8", 0.0, version=None), _cand("onnx-int8", None), _cand("onnx", None)]
    )
    assert unverified.candidate.format == "onnx" and len(unverified.refused) == 2  # type: ignore[union-attr]
    assert "--calibration VERSION" in unverified.refused[0]
    assert choose([_cand("onnx-int8", 0.5)]).candidate is None
    assert choose([_cand("onnx", None)], imgsz=640).candidate is None
