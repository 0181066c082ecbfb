"""A simulated annotator for the demo loop: corrects prelabels from ground truth through the Label
Studio API, as a person would in the labeling UI.

For each task it opens the prediction of the project's model_version, keeps the prelabel boxes
that already fit a true object (same class, IoU >= ``keep_iou``: a person would not redraw them),
redraws the ones that are close but loose, deletes the rest, draws the objects the model missed,
and submits an annotation whose ``parent_prediction`` is that prediction, so Label Studio and the
store record what was kept. The lead time grows with the edits, like a person's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from labelloop.connectors.formats.labelstudio import (
    ls_to_regions,
    parse_label_config,
    region_to_ls,
    select_controls,
)
from labelloop.connectors.labelstudio import LabelStudioClient
from labelloop.connectors.labelstudio.tasks import iter_tasks
from labelloop.geometry import match_regions
from labelloop.types import ImageItem, Provenance, Source

KEEP_IOU = 0.85
SECONDS_PER_EDIT = 4.0


@dataclass
class Corrections:
    tasks: int = 0
    kept: int = 0  # prelabel boxes submitted unchanged
    redrawn: int = 0
    deleted: int = 0
    added: int = 0

    @property
    def prelabel_kept_share(self) -> float | None:
        total = self.kept + self.redrawn + self.added
        return self.kept / total if total else None


def correct_tasks(
    client: LabelStudioClient,
    project: int,
    truth: Mapping[int, ImageItem],
    *,
    model_version: str | None,
    keep_iou: float = KEEP_IOU,
) -> Corrections:
    """Annotate the tasks in ``truth`` (task id -> the image with its true regions, in pixels) that
    have no annotation yet, starting from their prediction of ``model_version`` (any when None)."""
    config = parse_label_config(client.request("GET", f"/api/projects/{project}")["label_config"])
    control = select_controls(config, "detect").main
    done = Corrections()
    for task in iter_tasks(client, project):
        tid = int(task["id"])
        if tid not in truth or task.get("annotations"):
            continue
        preds = [p for p in task.get("predictions") or [] if model_version in (None, p.get("model_version"))]
        pred = preds[-1] if preds else None
        shown = (pred.get("result") or []) if pred else []
        image = truth[tid]
        machine = ls_to_regions(shown, Provenance(source=Source.PRELABEL))
        gt = list(image.regions)
        result: list[dict] = []
        matched_gt: set[int] = set()
        edits = 0
        for i, j, iou in match_regions(machine, gt, iou_min=0.3):
            matched_gt.add(j)
            if iou >= keep_iou:  # submitted as the model drew it
                result += [
                    {k: v for k, v in r.items() if k != "score"}
                    for r in shown
                    if r.get("id") == machine[i].id
                ]
                done.kept += 1
            else:
                result += region_to_ls(gt[j], image.width, image.height, control, gt[j].label)
                done.redrawn += 1
                edits += 1
        deleted = len(machine) - len(matched_gt)
        done.deleted += deleted
        for j, r in enumerate(gt):
            if j not in matched_gt:
                result += region_to_ls(r, image.width, image.height, control, r.label)
                done.added += 1
                edits += 1
        body = {"result": result, "lead_time": 3.0 + SECONDS_PER_EDIT * (edits + deleted)}
        if pred is not None:
            body["parent_prediction"] = pred["id"]
        client.request("POST", f"/api/tasks/{tid}/annotations", json=body)
        done.tasks += 1
    return done
