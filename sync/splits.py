"""Train/val splits: deterministic, group-aware, stable when items are added, and a val split that
holds human-verified labels only.

**Groups.** An item's group is, first found: its ``group_id``, its video, its scene, its source id
(so frames of one scene, video or source travel together); an item with none of these is a group
of one. The split of a group is a hash of its key and the split seed:
``sha256(seed + ":" + group key)`` read as a number in [0, 1) below ``val_fraction`` means val.
Nothing else enters the hash, so

- the same store gives the same splits on every machine and every run (deterministic);
- a group never straddles train and val (every item of it gets the group's split);
- adding items never moves an existing item (its group's hash did not change). Only a changed
  group key (metadata that arrives later) or a changed seed / fraction moves an item; versions
  carry their seed and fraction, and a new version takes its parent's unless told otherwise.

**Verified** (what val may hold). A label is human-verified when its label source is ``human``
(not ``pseudo``, ``prelabel`` or ``synthetic``), it is not cancelled and not rejected in review,
and it is one of: a ground-truth annotation; an annotation whose review was accepted; an
annotation a person submitted. On Community Label Studio, which has no reviews, "submitted by a
person and not cancelled" is what verified means; with ``require_review=True`` (teams with a
review stage: Label Studio Enterprise, CVAT's validation stage) only ground truth and accepted
reviews count. Pseudo labels and unchanged machine prelabels never go to val.

An item whose group hashes to val but whose label is not verified goes to neither split
(``excluded``): val must not hold it, and training on it would leak its group into train.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

DEFAULT_VAL_FRACTION = 0.2
DEFAULT_SEED = "labelloop"
TRAIN, VAL, EXCLUDED = "train", "val", "excluded"
SPLITS = (TRAIN, VAL, EXCLUDED)


@dataclass(frozen=True, slots=True)
class GroupFields:
    """The item fields a group is read from."""

    sha256: str
    group_id: str | None = None
    video: str | None = None
    scene: str | None = None
    source_id: str | None = None


def group_key(item: GroupFields) -> str:
    for kind in ("group_id", "video", "scene", "source_id"):
        value = getattr(item, kind)
        if value not in (None, ""):
            return f"{kind}:{value}"
    return f"item:{item.sha256}"


def hash_fraction(key: str, seed: str = DEFAULT_SEED) -> float:
    """A stable number in [0, 1) for ``key``."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def group_split(key: str, val_fraction: float = DEFAULT_VAL_FRACTION, seed: str = DEFAULT_SEED) -> str:
    return VAL if hash_fraction(key, seed) < val_fraction else TRAIN


def assign_splits(
    groups: Mapping[str, str],
    verified: Mapping[str, bool],
    *,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    seed: str = DEFAULT_SEED,
) -> dict[str, str]:
    """Item sha -> train / val / excluded, from each item's group key and whether its label is
    verified."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction {val_fraction} must be in [0, 1)")
    cache: dict[str, str] = {}
    out: dict[str, str] = {}
    for sha, key in groups.items():
        split = cache.get(key)
        if split is None:
            split = cache[key] = group_split(key, val_fraction, seed)
        if split == VAL and not verified.get(sha, False):
            split = EXCLUDED
        out[sha] = split
    return out


def straddling_groups(groups: Mapping[str, str], splits: Mapping[str, str]) -> dict[str, set[str]]:
    """Groups whose items are in both train and val (never, by construction; a check for tests and
    for manifests written by anything else)."""
    seen: dict[str, set[str]] = {}
    for sha, key in groups.items():
        s = splits.get(sha)
        if s in (TRAIN, VAL):
            seen.setdefault(key, set()).add(s)
    return {k: v for k, v in seen.items() if len(v) > 1}


def split_counts(splits: Iterable[str]) -> dict[str, int]:
    out = dict.fromkeys(SPLITS, 0)
    for s in splits:
        out[s] = out.get(s, 0) + 1
    return out
