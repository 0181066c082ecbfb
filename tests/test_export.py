"""``labelloop export`` on the cached demo model at a small imgsz: every format exports, loads in the
serving predictor, predicts, and its report says how much of fp32's detections it keeps."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from labelloop.backend.inference.export import FORMATS, NEEDS_CALIBRATION, export_model
from labelloop.errors import ConfigError, DataError
from labelloop.settings import load_settings

IMGSZ = 160


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from labelloop.backend.inference.demo_model import write_shapes_dataset

    root = tmp_path_factory.mktemp("shapes")
    write_shapes_dataset(root, n_train=8, n_val=4, size=IMGSZ, seed=3)
    return root


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_exports_loads_and_is_validated(
    fmt: str, demo_weights: Path, dataset: Path, tmp_path: Path
) -> None:
    calib = str(dataset) if fmt in NEEDS_CALIBRATION else None
    holdout = None if calib else dataset / "images" / "val"
    report = export_model(
        load_settings(), demo_weights, fmt, tmp_path, imgsz=IMGSZ, calibration=calib, holdout=holdout,
        conf=0.1, calibration_images=8, log_to_registry=False,
    )  # fmt: skip
    artifact = Path(report.artifact)
    assert artifact.exists() and Path(f"{artifact}.version").read_text().endswith(fmt)
    a = report.agreement
    assert a.images == 4 and a.reference_detections > 0
    assert 0.0 <= a.recovered <= 1.0 and a.extra >= 0
    if fmt == "onnx":
        assert a.recovered >= 0.95, a
    if calib:
        assert report.calibration == {"source": calib, "version": None, "images": 8, "split": "train"}
        assert report.val is not None and 0.0 <= report.val["map50_95"] <= 1.0


def test_openvino_dir_serves_as_one_model_with_the_predictors_streams(
    demo_weights: Path, dataset: Path, tmp_path: Path
) -> None:
    import numpy as np
    from PIL import Image

    from labelloop.backend.inference.predictor import Predictor

    report = export_model(
        load_settings(), demo_weights, "openvino", tmp_path, imgsz=IMGSZ,
        holdout=dataset / "images" / "val", conf=0.1, log_to_registry=False,
    )  # fmt: skip
    settings = load_settings(
        model=Path(report.artifact), runtime="openvino", streams=2, conf=0.1, device="cpu", imgsz=IMGSZ
    )
    p = Predictor(Path(report.artifact), settings)
    assert p.runtime == "openvino" and p.streams == 2
    images = [np.asarray(Image.open(f).convert("RGB")) for f in sorted((dataset / "images" / "val").iterdir())]
    items = p.predict_arrays(images * 2)
    assert len(items) == 8 and any(it.regions for it in items)
    compiled = p.engine._ov_compiled
    assert compiled is not None and int(compiled.get_property("NUM_STREAMS")) == 2
    assert "float32" in str(compiled.get_property("INFERENCE_PRECISION_HINT"))
    assert items[0].metadata["model_version"].endswith("-openvino")


def test_calibration_refuses_val_images(demo_weights: Path, dataset: Path, tmp_path: Path) -> None:
    leaky = tmp_path / "leaky"
    shutil.copytree(dataset, leaky)
    (leaky / "data.yaml").write_text((dataset / "data.yaml").read_text().replace(str(dataset), str(leaky)))
    val = sorted((leaky / "images" / "val").iterdir())[0]
    shutil.copy(val, leaky / "images" / "train" / "copy-of-val.jpg")
    with pytest.raises(DataError, match="also in val"):
        export_model(load_settings(), demo_weights, "onnx-int8", tmp_path / "out", imgsz=IMGSZ,
                     calibration=str(leaky), log_to_registry=False)  # fmt: skip
    with pytest.raises(ConfigError, match="needs --calibration"):
        export_model(load_settings(), demo_weights, "openvino-int8", tmp_path / "out", log_to_registry=False)


def test_cli_json_parses(demo_weights: Path, dataset: Path, tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "labelloop.cli", "export", "--format", "onnx", "--model", str(demo_weights),
           "--holdout", str(dataset / "images" / "val"), "--imgsz", str(IMGSZ), "-o", str(tmp_path), "--json"]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=os.environ.copy())
    assert r.returncode == 0, r.stderr[-2000:]
    doc = json.loads(r.stdout)
    assert doc["format"] == "onnx" and Path(doc["artifact"]).is_file()
    assert 0.0 <= doc["agreement"]["recovered"] <= 1.0
