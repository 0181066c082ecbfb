"""Export a version as an Ultralytics dataset directory or as COCO JSON, through
``connectors.formats.yolo`` / ``.coco`` (no conversion is written here).

The version's checks run first; errors block the export (DataError naming the items). Items in
neither split (``excluded``) are not exported.

YOLO layout (``-o DIR``)::

    DIR/data.yaml                 path, train: images/train, val: images/val, names, [kpt_shape]
    DIR/images/{train,val}/<sha256>.<ext>
    DIR/labels/{train,val}/<sha256>.txt
    DIR/labelloop.json            version id, and per item: split, revision, file (lineage)

(classify: ``DIR/{train,val}/<class>/<sha256>.<ext>``, Ultralytics' folder layout). The task is
taken from the regions (keypoints -> pose, polygons/masks -> segment, rotated boxes -> obb, boxes
-> detect, whole-image labels only -> classify) unless given. YOLO needs the image bytes: items
without bytes in the blob store raise DataError naming them.

COCO layout: ``DIR/annotations/instances_{train,val}.json`` with ``file_name`` =
``images/<split>/<sha256>.<ext>`` (relative to DIR), and the images there when their bytes are in
the blob store (COCO JSON alone is still written when they are not).

The directory is built beside ``DIR`` and renamed into place, so a crash never leaves half an
export under its name. ``DIR`` must be absent or empty, or an earlier export (``overwrite``).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy.orm import Session

from labelloop.connectors.formats import coco as coco_fmt
from labelloop.connectors.formats import yolo as yolo_fmt
from labelloop.errors import ConfigError, DataError
from labelloop.sync import splits as sp
from labelloop.sync.blobs import BlobStore
from labelloop.sync.checks import CheckReport, check_version, item_rows, revision_sizes
from labelloop.sync.store.engine import Store
from labelloop.sync.store.live import regions as load_regions
from labelloop.sync.versions import entries, get_version
from labelloop.types import ImageItem, Region

FORMATS = ("yolo", "coco")
MARKER = "labelloop.json"


@dataclass
class ExportReport:
    version: str
    format: str
    out: str
    task: str | None
    names: list[str]
    images: dict[str, int]  # split -> images written
    labels: dict[str, int]  # split -> regions written
    missing_images: list[str] = field(default_factory=list)  # COCO: items without bytes
    checks: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def infer_task(regions: Sequence[Region]) -> str:
    kinds = {r.kind for r in regions}
    if not kinds or kinds == {"class"}:
        return "classify" if kinds else "detect"
    if "keypoints" in kinds:
        return "pose"
    if kinds & {"polygon", "mask"}:
        return "segment"
    if "rotated_box" in kinds:
        return "obb"
    return "detect"


def image_ext(data: bytes, uri: str | None = None) -> str:
    """The file extension for image bytes, by their magic number (then the URI's suffix)."""
    magic = {
        b"\xff\xd8\xff": ".jpg",
        b"\x89PNG": ".png",
        b"GIF8": ".gif",
        b"BM": ".bmp",
        b"II*\x00": ".tif",
        b"MM\x00*": ".tif",
    }
    for head, ext in magic.items():
        if data.startswith(head):
            return ext
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    suffix = Path((uri or "").split("?")[0]).suffix.lower()
    return suffix if suffix in (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif") else ".jpg"


def _prepare(out: Path, overwrite: bool) -> None:
    if out.exists():
        if not out.is_dir():
            raise ConfigError(f"export target {out} is a file; give a directory")
        if any(out.iterdir()):
            if not overwrite:
                raise ConfigError(f"export target {out} is not empty; give an empty directory (or --force)")
            if not (out / MARKER).is_file():
                raise ConfigError(
                    f"export target {out} holds something other than a labelloop export; not replacing it"
                )


def _commit(tmp: Path, out: Path) -> None:
    if out.exists():
        old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def export_version(
    store_or_session: Store | Session,
    ref: str,
    out: Path | str,
    fmt: str = "yolo",
    *,
    task: str | None = None,
    labels: Sequence[str] | None = None,
    blobs: BlobStore | None = None,
    overwrite: bool = False,
) -> ExportReport:
    """Write version ``ref`` to ``out`` as ``fmt`` (yolo or coco); see the module doc."""
    if isinstance(store_or_session, Store):
        with store_or_session.session() as s:
            return export_version(
                s,
                ref,
                out,
                fmt,
                task=task,
                labels=labels,
                blobs=blobs or store_or_session.blobs,
                overwrite=overwrite,
            )
    if fmt not in FORMATS:
        raise ConfigError(f"export format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if blobs is None:
        raise ConfigError("export needs the blob store (open the store with Store.open)")
    s = store_or_session
    out = Path(out).resolve()
    _prepare(out, overwrite)
    v = get_version(s, ref)
    report: CheckReport = check_version(s, v.id, labels=labels, blobs=blobs)
    report.raise_for_errors()
    ents = [e for e in entries(s, v.id) if e.split in (sp.TRAIN, sp.VAL)]
    if not ents:
        raise DataError(f"version {v.short} has no items in train or val; nothing to export")
    regs = load_regions(s, [e.revision_id for e in ents])
    sizes = revision_sizes(s, [e.revision_id for e in ents])
    items = item_rows(s, [e.item_sha for e in ents])
    all_regions = [r for e in ents for r in regs.get(e.revision_id, [])]
    names = list(labels) if labels is not None else sorted({r.label for r in all_regions})
    index = {n: i for i, n in enumerate(names)}
    yolo_task = task or infer_task(all_regions)
    if fmt == "yolo" and yolo_task not in yolo_fmt.TASKS:
        raise ConfigError(f"YOLO task {yolo_task!r}: expected one of {', '.join(yolo_fmt.TASKS)}")

    def blob_sha(sha: str) -> str:
        row = items.get(sha)
        return row.replaced_by if row is not None and row.replaced_by else sha

    missing = [e.item_sha for e in ents if not blobs.exists(blob_sha(e.item_sha))]
    if fmt == "yolo" and missing:
        named = ", ".join(m[:12] for m in missing[:5])
        raise DataError(
            f"version {v.short}: {len(missing)} items have no image bytes in the blob store ({named}"
            f"{'...' if len(missing) > 5 else ''}); a YOLO dataset needs them (the sync fetches them)"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    counts_img = dict.fromkeys((sp.TRAIN, sp.VAL), 0)
    counts_lab = dict.fromkeys((sp.TRAIN, sp.VAL), 0)
    lineage: dict[str, Any] = {}
    coco_items: dict[str, list[ImageItem]] = {sp.TRAIN: [], sp.VAL: []}
    kpt_shape = None
    try:
        for e in ents:
            rs = regs.get(e.revision_id, [])
            row = items.get(e.item_sha)
            sha = blob_sha(e.item_sha)
            data = blobs.get(sha) if e.item_sha not in missing else None
            w, h = _size(sizes[e.revision_id], row, data)
            if not (w and h):
                raise DataError(
                    f"item {e.item_sha[:12]}: image size unknown (no regions carried it and no bytes are "
                    "stored); the sync fetches the bytes"
                )
            ext = image_ext(data or b"", row.uri if row else None)
            fname = f"{e.item_sha}{ext}"
            if fmt == "yolo" and yolo_task == "classify":
                rel = Path(str(yolo_fmt.classify_relpath(rs, fname, e.split, image=e.item_sha)))
                _write(tmp / rel, data)
            elif fmt == "yolo":
                rel = Path("images") / e.split / fname
                _write(tmp / rel, data)
                if yolo_task == "pose" and kpt_shape is None:
                    kp = next((r.geometry for r in rs if r.kind == "keypoints"), None)
                    if kp is not None:
                        kpt_shape = [len(kp.points), 3]  # type: ignore[union-attr]
                lines = yolo_fmt.regions_to_yolo_lines(rs, w, h, index, yolo_task, kpt_shape=kpt_shape)
                label_path = tmp / "labels" / e.split / f"{e.item_sha}.txt"
                label_path.parent.mkdir(parents=True, exist_ok=True)
                label_path.write_text("".join(f"{ln}\n" for ln in lines))
            else:
                rel = Path("images") / e.split / fname
                if data is not None:
                    _write(tmp / rel, data)
                coco_items[e.split].append(
                    ImageItem(
                        uri=rel.as_posix(),
                        width=w,
                        height=h,
                        regions=list(rs),
                        sha256=e.item_sha,
                        group_id=row.group_id if row else None,
                    )
                )
            counts_img[e.split] += 1
            counts_lab[e.split] += len(rs)
            lineage[e.item_sha] = {"split": e.split, "revision": e.revision_id, "file": rel.as_posix()}
        if fmt == "yolo" and yolo_task != "classify":
            data_yaml: dict[str, Any] = {
                "path": str(out),
                "train": "images/train",
                "val": "images/val",
                "names": dict(enumerate(names)),
            }
            if kpt_shape is not None:
                data_yaml["kpt_shape"] = kpt_shape
            for split in (sp.TRAIN, sp.VAL):
                (tmp / "images" / split).mkdir(parents=True, exist_ok=True)
                (tmp / "labels" / split).mkdir(parents=True, exist_ok=True)
            (tmp / "data.yaml").write_text(yaml.safe_dump(data_yaml, sort_keys=False))
        elif fmt == "coco":
            (tmp / "annotations").mkdir()
            for split, its in coco_items.items():
                doc = coco_fmt.items_to_coco(its, names)
                doc["info"] = {"description": f"labelloop version {v.id}", "version": v.id}
                (tmp / "annotations" / f"instances_{split}.json").write_text(json.dumps(doc))
        marker = {
            "version": v.id,
            "number": v.number,
            "format": fmt,
            "task": yolo_task,
            "names": names,
            "items": lineage,
        }
        (tmp / MARKER).write_text(json.dumps(marker, indent=1))
        _commit(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ExportReport(
        v.id,
        fmt,
        str(out),
        yolo_task if fmt == "yolo" else None,
        names,
        counts_img,
        counts_lab,
        missing if fmt == "coco" else [],
        report.to_dict(),
    )


def _size(annotated: tuple[int, int], row: Any, data: bytes | None) -> tuple[int, int]:
    """The image size: as annotated, else the item's, else the bytes' (0x0 = unknown)."""
    if annotated[0] and annotated[1]:
        return annotated
    if row is not None and row.width and row.height:
        return int(row.width), int(row.height)
    if data:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:
            return im.size
    return 0, 0


def _write(path: Path, data: bytes | None) -> None:
    if data is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
