"""Batched GPU throughput of the predictor's forward path (device tool; never part of the tests).

Usage: python benchmarks/gpu_predict.py WEIGHTS OUT_JSON. Measures images/s of Ultralytics
predict on decoded 640x640 images at several batch sizes (what the Predictor does on a GPU:
one forward per ``batch`` images), PyTorch, fp32 and fp16, against batch 1 in the same run.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch
from ultralytics import YOLO


def main(weights: str, out: str) -> None:
    model = YOLO(weights)
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 255, (640, 640, 3), dtype=np.uint8) for _ in range(256)]
    res: dict = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "images": len(imgs)}
    res["runs"] = {}
    for imgsz in (320, 640):
        for half in (False, True):
            for batch in (1, 8, 32, 64):
                kw = dict(imgsz=imgsz, conf=0.25, device=0, verbose=False, half=half)
                for lo in range(0, 64, batch):  # warm-up
                    model.predict(imgs[lo : lo + batch], **kw)
                torch.cuda.synchronize()
                t = time.perf_counter()
                for lo in range(0, len(imgs), batch):
                    model.predict(imgs[lo : lo + batch], **kw)
                torch.cuda.synchronize()
                ips = len(imgs) / (time.perf_counter() - t)
                key = f"imgsz{imgsz}_{'fp16' if half else 'fp32'}_batch{batch}"
                res["runs"][key] = round(ips, 1)
                print(f"{key}: {ips:.1f} images/s", flush=True)
    for imgsz in (320, 640):
        for half in ("fp32", "fp16"):
            b1 = res["runs"][f"imgsz{imgsz}_{half}_batch1"]
            best = max(v for k, v in res["runs"].items() if k.startswith(f"imgsz{imgsz}_{half}"))
            print(f"imgsz {imgsz} {half}: best batch {best:.0f} images/s = {best / b1:.1f}x batch 1")
    with open(out, "w") as fh:
        json.dump(res, fh, indent=2)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
