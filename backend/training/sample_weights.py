"""Pseudo-labels weigh less in training: the sampling equivalent of a per-image loss weight.

A pseudo-labelled image of weight ``w`` should move the model ``w`` times as much as a human one.
Scaling the loss per image would need a forked Ultralytics loss; sampling does the same in
expectation with no fork: the exported train split becomes a list file in which every human
image appears ``r = round(1 / w)`` times and every pseudo image once, so per epoch a pseudo image
contributes ``1 / r`` (~ ``w``) of a human one's gradient. Val is untouched (it is human-only by
construction, see :mod:`labelloop.sync.splits`). Costs: epochs grow by the repeated human images.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import yaml

from labelloop.sync.store.engine import Store
from labelloop.sync.versions import entries, get_version
from labelloop.types import Source


def repeats(w: float) -> int:
    """How often a human image is listed for one listing of a pseudo image of weight ``w``."""
    if not 0.0 < w <= 1.0:
        raise ValueError(f"w_pseudo {w} must be in (0, 1]")
    return max(1, round(1.0 / w))


def weighted_list(human: Sequence[str], pseudo: Sequence[str], w: float) -> list[str]:
    """A train list in which each human image appears ``repeats(w)`` times and each pseudo image once
    (the training side of ``w_pseudo``; ``labelloop simulate`` writes its rounds' lists with it)."""
    r = repeats(w)
    return [p for p in human for _ in range(r)] + list(pseudo)


def weight_pseudo(store: Store, version_ref: str, data_yaml: Path, w: float) -> dict[str, int]:
    """Rewrite the export's ``train`` as a list with human images repeated (a no-op without pseudo
    labels); ``w`` is ``settings.pseudo.w_pseudo``; returns {"human": n, "pseudo": n, "repeats": r}."""
    with store.session() as s:
        v = get_version(s, version_ref)
        source = {e.item_sha: e.label_source for e in entries(s, v.id) if e.split == "train"}
    pseudo = {sha for sha, src in source.items() if src == str(Source.PSEUDO)}
    if not pseudo:
        return {"human": len(source), "pseudo": 0, "repeats": 1}
    cfg = yaml.safe_load(data_yaml.read_text())
    root = Path(cfg.get("path") or data_yaml.parent)
    train_dir = root / str(cfg["train"])
    images = sorted(str(p.resolve()) for p in train_dir.iterdir() if p.is_file())
    lines = weighted_list(
        [p for p in images if Path(p).stem not in pseudo], [p for p in images if Path(p).stem in pseudo], w
    )
    listing = root / "train_weighted.txt"
    listing.write_text("\n".join(lines) + "\n")
    cfg["train"] = str(listing.resolve())
    data_yaml.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return {"human": len(source) - len(pseudo), "pseudo": len(pseudo), "repeats": repeats(w)}
