"""``labelloop export``: the model as ONNX / INT8 ONNX / OpenVINO (fp32, bf16, INT8), validated
against its fp32 self; prints the artifact and the report (``--json``: one JSON document on stdout)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from labelloop.cli.common import ModelOpt, app, emit_json

out = Console()


@app.command("export")
def export_cmd(
    format_: Annotated[
        str, typer.Option("--format", "-f", help="onnx, onnx-int8, openvino, openvino-bf16 or openvino-int8")
    ],
    model: ModelOpt = None,
    calibration: Annotated[
        str | None,
        typer.Option(
            help="dataset (data.yaml or its dir) or dataset version: calibrate on train, score on val"
        ),
    ] = None,
    holdout: Annotated[
        Path | None, typer.Option(help="held-out images for the report (default: the dataset's val split)")
    ] = None,
    imgsz: Annotated[
        int | None, typer.Option(min=32, help="default: the size the model was trained at")
    ] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="directory for the artifact")] = Path(
        "exports"
    ),
    json_: Annotated[bool, typer.Option("--json", help="print one JSON document on stdout")] = False,
) -> None:
    """Export the model and report how much of the fp32 model's detections it keeps."""
    from labelloop.backend.inference.export import export_model
    from labelloop.backend.inference.weights import resolve_weights
    from labelloop.settings import load_settings

    settings = load_settings(model=model)
    report = export_model(
        settings,
        resolve_weights(settings),
        format_,
        output,
        imgsz=imgsz,
        calibration=calibration,
        holdout=holdout,
    )
    if json_:
        emit_json(report.to_dict())
        return
    a = report.agreement
    out.print(f"artifact   {report.artifact} ({report.format}, imgsz {report.imgsz}, {report.seconds:.0f} s)")
    out.print(
        f"vs fp32    recovered {a.recovered:.3f} of {a.reference_detections} detections on {a.images} "
        f"held-out images, {a.extra} extra, mean score diff {a.mean_score_diff:+.4f}"
    )
    if report.val:
        v = report.val
        out.print(
            f"val split  mAP50 {v['map50']:.4f} (fp32 {v['fp32_map50']:.4f}), "
            f"mAP50-95 {v['map50_95']:.4f} (fp32 {v['fp32_map50_95']:.4f})"
        )
    if report.mlflow_run_id:
        out.print(f"MLflow run {report.mlflow_run_id}: artifact logged")
