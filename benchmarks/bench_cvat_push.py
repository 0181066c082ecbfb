"""Prelabel push into CVAT: bulk (one PATCH of task annotations per chunk) vs one request per image.

Both runs go through the real cvat-sdk over HTTP to the CVAT test peer (CVAT 2.73's schema; see
tests/cvat_peer), in the same process, on the same 1,000 images' shapes. The peer answers as
fast as it can, so the ratio is the client-side and per-request cost a real CVAT adds to: a real
server's per-request overhead (auth, permissions, a DB transaction, a background job) only widens
it.

    .venv/bin/python benchmarks/bench_cvat_push.py [--images 1000] [--shapes 3] [--chunk 200]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_common import environment, write_result  # noqa: E402

from labelloop.connectors.cvat import CvatClient  # noqa: E402
from labelloop.connectors.cvat.push import push_prelabels  # noqa: E402
from labelloop.connectors.cvat.tasks import create_task  # noqa: E402
from labelloop.types import Box, ImageItem, Region  # noqa: E402
from tests.cvat_peer import CvatPeer  # noqa: E402

LABELS = ["circle", "square", "triangle"]


def make_data(root: Path, n: int, shapes: int) -> tuple[list[Path], list[ImageItem]]:
    rng = np.random.default_rng(0)
    paths, items = [], []
    for i in range(n):
        p = root / f"img{i:05d}.png"
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(p)
        xy = rng.uniform(0, 20, (shapes, 2))
        regions = [
            Region(LABELS[k % 3], Box(float(x), float(y), float(x) + 10, float(y) + 10), score=float(s))
            for k, ((x, y), s) in enumerate(zip(xy, rng.uniform(0.2, 1.0, shapes), strict=True))
        ]
        paths.append(p)
        items.append(ImageItem(str(p), 32, 32, regions, score=min(r.score or 1 for r in regions)))
    return paths, items


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--shapes", type=int, default=3, help="prelabels per image")
    ap.add_argument("--chunk", type=int, default=200, help="frames per bulk PATCH")
    ap.add_argument("--out", type=Path, default=ROOT / "bench-results" / "cvat_push.json")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp, CvatPeer() as peer:
        paths, items = make_data(Path(tmp), args.images, args.shapes)
        conn = CvatClient(peer.url, user="admin1", password="admin1-pw", poll_s=0.05)
        runs = {}
        for mode, chunk in (("bulk", args.chunk), ("per_image", 1)):
            task = create_task(conn, f"bench-{mode}", paths, LABELS)
            before = peer.count("PATCH", r"/annotations")
            t0 = time.perf_counter()
            rep = push_prelabels(conn, task.task_id, items, chunk_frames=chunk)
            dt = time.perf_counter() - t0
            stored = len(peer.shapes[task.task_id])
            assert stored == rep.regions == args.images * args.shapes, (stored, rep)
            runs[mode] = {
                "seconds": round(dt, 3),
                "requests": peer.count("PATCH", r"/annotations") - before,
                "shapes": rep.regions,
                "shapes_per_s": round(rep.regions / dt, 1),
                "frames_per_request": chunk,
            }
            print(
                f"{mode:>9}: {dt:7.2f} s  {runs[mode]['requests']:5d} PATCH  "
                f"{runs[mode]['shapes_per_s']:9.1f} shapes/s"
            )
        conn.close()
    ratio = runs["per_image"]["seconds"] / runs["bulk"]["seconds"]
    print(
        f"bulk is {ratio:.1f}x faster than one request per image "
        f"({args.images} images, {args.shapes} shapes each)"
    )
    result = {
        "benchmark": "cvat_prelabel_push",
        "server": "tests.cvat_peer (CVAT 2.73 schema) over HTTP on 127.0.0.1, real cvat-sdk client",
        "images": args.images,
        "shapes_per_image": args.shapes,
        "runs": runs,
        "speedup_bulk_vs_per_image": round(ratio, 2),
        **environment(),
    }
    write_result(args.out, result)


if __name__ == "__main__":
    main()
