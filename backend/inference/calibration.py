"""The images a quantized export is calibrated on and validated on, from one dataset: calibration
from its train split only, validation on its val split (human-verified in a dataset version).

A calibration image that is also a val image would make the val figures flatter the quantized
model, so a dataset whose train split holds any val image (same bytes) is refused, not filtered.
The dataset is a YOLO ``data.yaml`` (or its directory), or a version of the dataset store, which
is exported once for the purpose.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from labelloop.errors import ConfigError, DataError
from labelloop.fsutil import sha256_file
from labelloop.settings import Settings

IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})


@dataclass(frozen=True)
class CalibrationSet:
    data_yaml: Path  # the dataset: its val split is what mAP is measured on
    train: list[Path]  # the calibration images (a sample of the train split)
    val: list[Path]  # held out: never calibrated on
    source: str  # what the user named (a path or a version ref)
    version: str | None = None  # the dataset version id, when from the store


def resolve_dataset(ref: str, settings: Settings, workdir: Path) -> tuple[Path, str | None]:
    """``ref`` as a ``data.yaml``: a YOLO dataset file or directory, else a dataset version
    exported (YOLO layout) under ``workdir``; also the version id when it is one."""
    p = Path(ref)
    if p.is_dir() and (p / "data.yaml").is_file():
        return p / "data.yaml", None
    if p.is_file() and p.suffix in (".yaml", ".yml"):
        return p, None
    from labelloop.sync.export import export_version
    from labelloop.sync.store import Store
    from labelloop.sync.versions import get_version

    store = Store.open(settings=settings)
    try:
        with store.session() as s:
            vid = get_version(s, ref).id
        out = workdir / f"dataset-{vid[:12]}"
        export_version(store, vid, out, "yolo", overwrite=True)
    finally:
        store.close()
    return out / "data.yaml", vid


def val_seen_in_training(settings: Settings, val_version: str, trained_on: str) -> int | None:
    """How many items of ``val_version``'s val split are in the train split of ``trained_on`` (the
    version a model learnt from): val figures on those flatter the model. 0 for the same version
    or a later one with the same split seed; more when the seed or fraction changed in between;
    None when this store does not hold ``trained_on`` (nothing to compare with)."""
    from labelloop.sync.store import Store
    from labelloop.sync.versions import entries

    store = Store.open(settings=settings)
    try:
        with store.session() as s:
            val = {e.item_sha for e in entries(s, val_version) if e.split == "val"}
            learnt = entries(s, trained_on)
    finally:
        store.close()
    if not learnt:
        return None
    return len(val & {e.item_sha for e in learnt if e.split == "train"})


def split_images(data_yaml: Path, split: str) -> list[Path]:
    """The image files of ``split`` in a YOLO data.yaml (a directory, a list file, or a list)."""
    import yaml

    try:
        data = yaml.safe_load(data_yaml.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read dataset {data_yaml}: {e}") from e
    root = Path(data.get("path") or data_yaml.parent)
    if not root.is_absolute():
        root = data_yaml.parent / root
    entries = data.get(split) or []
    images: list[Path] = []
    for entry in entries if isinstance(entries, list) else [entries]:
        p = Path(entry) if Path(entry).is_absolute() else root / entry
        if p.is_dir():
            images += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTS)
        elif p.suffix == ".txt" and p.is_file():
            for line in p.read_text().split():
                q = Path(line) if Path(line).is_absolute() else root / line
                images.append(q)
        elif p.suffix.lower() in IMAGE_EXTS:
            images.append(p)
    return images


def calibration_set(ref: str, settings: Settings, workdir: Path, max_images: int = 300) -> CalibrationSet:
    """Up to ``max_images`` train images (evenly spread) and the val split of dataset ``ref``.

    Raises DataError when the train split is empty or shares an image with val."""
    data_yaml, version = resolve_dataset(ref, settings, workdir)
    train, val = split_images(data_yaml, "train"), split_images(data_yaml, "val")
    if not train:
        raise DataError(f"dataset {ref}: the train split has no images to calibrate on")
    val_hashes = {sha256_file(p) for p in val}
    leaked = [p for p in train if p.resolve() in {v.resolve() for v in val} or sha256_file(p) in val_hashes]
    if leaked:
        raise DataError(
            f"dataset {ref}: {len(leaked)} train image(s) are also in val (e.g. {leaked[0].name}); "
            "calibration must never see val images"
        )
    if len(train) > max_images:
        train = [train[int(i)] for i in np.linspace(0, len(train) - 1, max_images)]
    return CalibrationSet(data_yaml, train, val, ref, version)


def write_calibration_yaml(calib: CalibrationSet, names: dict[int, str], out: Path) -> Path:
    """A data.yaml whose every split is the calibration list: Ultralytics' INT8 export reads its
    calibration images from the *val* split unless told otherwise."""
    out.mkdir(parents=True, exist_ok=True)
    listing = out / "calibration.txt"
    listing.write_text("".join(f"{p.resolve()}\n" for p in calib.train))
    names_yaml = "".join(f"  {i}: {n!r}\n" for i, n in sorted(names.items()))
    data = out / "calibration.yaml"
    data.write_text(f"path: {out.resolve()}\ntrain: {listing}\nval: {listing}\nnames:\n{names_yaml}")
    return data


def letterbox(bgr: np.ndarray, imgsz: int) -> np.ndarray:
    """An image as the model's input tensor (1, 3, imgsz, imgsz) float32 RGB in [0, 1], resized
    keeping aspect and padded with grey like Ultralytics' LetterBox (centred, value 114)."""
    import cv2

    h, w = bgr.shape[:2]
    r = min(imgsz / h, imgsz / w)
    nh, nw = round(h * r), round(w * r)
    resized = cv2.resize(bgr, (nw, nh), interpolation=cv2.INTER_LINEAR) if (nh, nw) != (h, w) else bgr
    top, left = (imgsz - nh) // 2, (imgsz - nw) // 2
    canvas = np.full((imgsz, imgsz, 3), 114, dtype=np.uint8)
    canvas[top : top + nh, left : left + nw] = resized
    return np.ascontiguousarray(canvas[..., ::-1].transpose(2, 0, 1)[None], dtype=np.float32) / 255.0
