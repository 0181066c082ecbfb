"""Generated detection scenes for ``labelloop simulate``: a pool where choosing images can matter.

The demo's shapes are one easy kind of image: any sample of them teaches the same thing, so no
strategy can beat random there. These scenes mix three kinds, as real pools do:

- **easy** (half the images): a plain noisy background, bright objects, few of them;
- **cluttered** (30 %): random distractor polygons, lines and dots that are no class;
- **hard** (20 %): a striped or checkered texture, small objects of low contrast, up to 8 of them.

Six classes with skewed frequencies (circle, square, triangle as the demo model knows them, then
star, cross and ring, the last a twentieth of the objects), overlapping allowed. Boxes are the
drawn shapes' bounds clipped to the image; written as an Ultralytics detect dataset.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("circle", "square", "triangle", "star", "cross", "ring")
CLASS_P = (0.28, 0.25, 0.2, 0.12, 0.1, 0.05)
KINDS = (("easy", 0.5), ("cluttered", 0.3), ("hard", 0.2))
Point = tuple[float, float]


def _polygon(cls: int, cx: float, cy: float, s: float, rot: float) -> list[Point]:
    """The outline of class ``cls`` of size ``s`` (circle and ring: 24 points)."""
    if cls in (0, 5):
        t = np.linspace(0, 2 * np.pi, 24, endpoint=False)
        return [(cx + s / 2 * np.cos(a), cy + s / 2 * np.sin(a)) for a in t]
    if cls == 1:
        t = rot + np.pi / 4 + np.arange(4) * np.pi / 2
        r = s / 2 * np.sqrt(2) * 0.8
    elif cls == 2:
        t = rot - np.pi / 2 + np.arange(3) * 2 * np.pi / 3
        r = s / 2
    elif cls == 3:
        t = rot - np.pi / 2 + np.arange(10) * np.pi / 5
        r = np.where(np.arange(10) % 2 == 0, s / 2, s / 5)
    else:  # cross: a plus sign of arms s/3 wide
        a, b = s / 2, s / 6
        pts = [(-b, -a), (b, -a), (b, -b), (a, -b), (a, b), (b, b), (b, a), (-b, a), (-b, b), (-a, b)]
        pts += [(-a, -b), (-b, -b)]
        c, sn = np.cos(rot), np.sin(rot)
        return [(cx + x * c - y * sn, cy + x * sn + y * c) for x, y in pts]
    return [
        (cx + float(ri) * np.cos(a), cy + float(ri) * np.sin(a))
        for a, ri in zip(t, np.broadcast_to(r, t.shape), strict=True)
    ]


def _background(rng: np.random.Generator, size: int, kind: str) -> tuple[Image.Image, np.ndarray]:
    base = rng.integers(0, 110, 3)
    arr = rng.normal(base, 14, (size, size, 3))
    if kind == "hard":
        period = int(rng.integers(6, 20))
        yy, xx = np.mgrid[0:size, 0:size]
        pattern = ((xx // period + yy // period) % 2) if rng.random() < 0.5 else ((xx + yy) // period % 2)
        arr += pattern[..., None] * rng.integers(20, 60, 3)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)), base


def _clutter(rng: np.random.Generator, draw: ImageDraw.ImageDraw, size: int) -> None:
    """Distractors: irregular polygons, lines and dots of no class."""
    for _ in range(int(rng.integers(4, 12))):
        color = tuple(int(c) for c in rng.integers(60, 256, 3))
        what = rng.random()
        if what < 0.4:
            cx, cy = rng.uniform(0, size, 2)
            n = int(rng.integers(5, 9))
            ang = np.sort(rng.uniform(0, 2 * np.pi, n))
            rad = rng.uniform(0.02, 0.12, n) * size
            draw.polygon(
                [(cx + r * np.cos(a), cy + r * np.sin(a)) for a, r in zip(ang, rad, strict=True)], fill=color
            )
        elif what < 0.8:
            x1, y1, x2, y2 = (float(v) for v in rng.uniform(0, size, 4))
            draw.line([(x1, y1), (x2, y2)], fill=color, width=int(rng.integers(1, 4)))
        else:
            cx, cy = rng.uniform(0, size, 2)
            r = float(rng.uniform(1, 4))
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=color)


def render_scene(
    rng: np.random.Generator, size: int = 256, classes: int = len(CLASSES)
) -> tuple[Image.Image, list[tuple[int, tuple[float, ...]]], str]:
    """One scene: the image, its objects as (class, (x1, y1, x2, y2) in pixels), and its kind."""
    kind = str(rng.choice([k for k, _ in KINDS], p=[p for _, p in KINDS]))
    img, base = _background(rng, size, kind)
    draw = ImageDraw.Draw(img)
    if kind == "cluttered":
        _clutter(rng, draw, size)
    n = int(rng.integers(1, 9 if kind == "hard" else 5))
    lo, hi = (0.06, 0.16) if kind == "hard" else (0.1, 0.3)
    objects: list[tuple[int, tuple[float, ...]]] = []
    for _ in range(n):
        p_cls = np.array(CLASS_P[:classes]) / sum(CLASS_P[:classes])
        cls = int(rng.choice(classes, p=p_cls))
        s = float(rng.uniform(lo, hi) * size)
        cx, cy = (float(v) for v in rng.uniform(s / 2, size - s / 2, 2))
        if kind == "hard":  # low contrast: close to the background
            color = tuple(int(c) for c in np.clip(base + rng.integers(35, 80, 3), 0, 255))
        else:
            color = tuple(int(c) for c in rng.integers(130, 256, 3))
        poly = _polygon(cls, cx, cy, s, float(rng.uniform(0, 2 * np.pi)))
        if cls == 5:  # ring: a thick outline, hollow
            draw.ellipse(
                [cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2], outline=color, width=max(2, int(s / 7))
            )
        else:
            draw.polygon(poly, fill=color)
        p = np.clip(np.array(poly), 0, size)
        (x1, y1), (x2, y2) = p.min(0), p.max(0)
        if x2 - x1 >= 2 and y2 - y1 >= 2:
            objects.append((cls, (float(x1), float(y1), float(x2), float(y2))))
    return img, objects, kind


def write_scenes(
    root: Path,
    n_train: int,
    n_val: int,
    *,
    size: int = 256,
    seed: int = 0,
    classes: int = len(CLASSES),
    progress: Callable[[int], None] | None = None,
) -> Path:
    """An Ultralytics detect dataset of scenes under ``root`` (``kinds.txt`` says each image's kind)
    with the first ``classes`` classes (3: the demo model's, so its class head carries over);
    returns its data.yaml."""
    rng = np.random.default_rng(seed)
    kinds: list[str] = []
    for split, n in (("train", n_train), ("val", n_val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img, objects, kind = render_scene(rng, size, classes)
            img.save(root / "images" / split / f"{i:05d}.jpg", quality=90)
            lines = [
                f"{c} {(x1 + x2) / 2 / size:.6f} {(y1 + y2) / 2 / size:.6f} {(x2 - x1) / size:.6f} "
                f"{(y2 - y1) / size:.6f}"
                for c, (x1, y1, x2, y2) in objects
            ]
            (root / "labels" / split / f"{i:05d}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
            kinds.append(f"{split}/{i:05d} {kind}")
            if progress is not None:
                progress(1)
    (root / "kinds.txt").write_text("\n".join(kinds) + "\n")
    names = "\n".join(f"  {i}: {c}" for i, c in enumerate(CLASSES[:classes]))
    data = root / "data.yaml"
    data.write_text(f"path: {root.resolve()}\ntrain: images/train\nval: images/val\nnames:\n{names}\n")
    return data
