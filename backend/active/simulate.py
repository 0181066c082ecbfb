"""Active learning, simulated: a labeled dataset played as an unlabeled pool with a ground-truth oracle.

Per strategy and seed: start from ``initial`` random images (the same start for every strategy of a
seed), then each round fine-tune, measure mAP50-95 on the dataset's fixed val split (never in the
pool), score the rest of the pool with the strategy and add its top ``budget`` images with their
ground-truth labels. The headline is how many labels each strategy needs to reach random's final
mAP50-95 (linear between rounds), as "labels saved" against random, per seed and its spread.

Choices, and why:

- Every round fine-tunes **from the base weights**, not from the previous round's model: a point of
  the curve then depends on the labeled set only, every point costs the same compute, and a warm
  start would give later rounds more total epochs (the curve would measure epochs, not labels).
- The round's model is its ``last.pt``, never ``best.pt``: Ultralytics picks ``best.pt`` by fitness
  on the val split, which would let val choose the model it then judges.
- Training is the project's recipe through :func:`fit_recipe` (Ultralytics' trainer, ``plots=False``)
  with per-epoch validation off (the trainer still validates its final epoch); scoring is
  :func:`labelloop.backend.active.selection.score_pool`, the same code ``labelloop select`` runs.
- The initial round is trained once per seed and shared by the strategies (same set, same seed:
  the same model), and the last round selects nothing.
- Resumable: every finished round is appended to ``rounds.jsonl`` with the images it added; a rerun
  with the same arguments and ``out`` continues after the last finished round.
- Prelabel effort per round (:mod:`.oracle`): the round's model prelabels the images it selects
  (what annotators get next) and val; the share of their true boxes it already matches (IoU >= 0.5,
  same class) and the edits left (add, delete, fix class, fix geometry) go into every record.
- Pseudo-label ablations (:class:`Variant`, :func:`ablations`): a variant's round r >= 1 also
  trains on the previous round's model's kept pseudo-labels (:func:`.pseudo.keep`) of the pool
  images not labeled yet, weighted by sampling (:func:`.sample_weights.weighted_list`). Pseudo
  label files live under the round's work dir and only in its train list; val is the dataset's
  fixed human split. Round 0 (human labels only) is shared by all variants of a strategy.
- ``lr_scale`` multiplies the recipe's learning rates: they suit fine-tuning on hundreds of labels
  for tens of epochs; CPU-sized rounds (tens of iterations) at x1 leave the base almost unchanged.

Inputs: an Ultralytics ``data.yaml`` (train and val as folders, list files or images; labels where
Ultralytics looks for them, ``/images/`` -> ``/labels/``), or a COCO JSON for the pool plus one for
val (materialised once as YOLO folders of links under ``out``).
"""

from __future__ import annotations

import csv
import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from labelloop.backend.active.oracle import (
    ground_truth,
    label_path,
    load_rgb,
    prelabel_effort,
    total_effort,
)
from labelloop.backend.active.pseudo import keep
from labelloop.backend.active.selection import PoolEntry, score_pool
from labelloop.backend.active.strategies import get_strategy
from labelloop.backend.active.tta import Stability, stability
from labelloop.backend.inference.images import decode_image
from labelloop.backend.inference.runtime import pick_device
from labelloop.backend.inference.yolo_env import ensure_yolo_env
from labelloop.backend.training.gate import evaluate
from labelloop.backend.training.recipe import make_recipe
from labelloop.backend.training.sample_weights import weighted_list
from labelloop.backend.training.trainer import fit_recipe
from labelloop.connectors.formats.yolo import regions_to_yolo_lines
from labelloop.errors import ConfigError, DataError
from labelloop.fsutil import sha256_bytes
from labelloop.settings import PseudoSettings, Settings

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
INITIAL = "initial"  # the strategy field of the shared first round's record
HUMAN = "human"  # the variant that trains on the selected (human) labels only
Step = Callable[[str], None]  # called once per finished (strategy, seed, round)


# ------------------------------------------------------------------ the dataset


@dataclass(frozen=True)
class SimData:
    """A detect dataset as the simulation sees it: the pool (train) and the fixed val images."""

    names: list[str]
    train: list[Path]
    val: list[Path]


def _images_of(spec: Any, root: Path, what: str) -> list[Path]:
    specs = spec if isinstance(spec, list) else [spec]
    out: list[Path] = []
    for s in specs:
        p = Path(str(s))
        p = p if p.is_absolute() else root / p
        if p.is_dir():
            out += [f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES]
        elif p.suffix == ".txt" and p.is_file():
            for line in p.read_text().splitlines():
                if line.strip():
                    f = Path(line.strip())
                    out.append(f if f.is_absolute() else root / f)
        elif p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
            out.append(p)
        else:
            raise DataError(f"the {what} split {p} is not a folder, list file or image")
    return sorted(dict.fromkeys(f.resolve() for f in out))


def load_ultralytics(data_yaml: Path) -> SimData:
    """The pool and val of an Ultralytics ``data.yaml``; one-line DataErrors for what is missing."""
    try:
        cfg = yaml.safe_load(data_yaml.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise DataError(f"--data {data_yaml}: cannot read it as YAML ({type(e).__name__})") from None
    if not isinstance(cfg, dict) or "names" not in cfg:
        raise DataError(f"--data {data_yaml}: not an Ultralytics data.yaml (no names)")
    for split in ("train", "val"):
        if not cfg.get(split):
            raise DataError(f"--data {data_yaml}: no {split} split (the simulation needs both)")
    root = Path(cfg.get("path") or data_yaml.parent)
    root = root if root.is_absolute() else (data_yaml.parent / root)
    names = cfg["names"]
    names = [str(names[k]) for k in sorted(names)] if isinstance(names, dict) else [str(n) for n in names]
    train, val = _images_of(cfg["train"], root, "train"), _images_of(cfg["val"], root, "val")
    for split, images in (("train", train), ("val", val)):
        if not images:
            raise DataError(f"--data {data_yaml}: the {split} split has no images")
        if not any(label_path(p).is_file() for p in images):
            raise DataError(
                f"--data {data_yaml}: no {split} image has a label file (looked for e.g. "
                f"{label_path(images[0])})"
            )
    if set(train) & set(val):
        raise DataError(f"--data {data_yaml}: train and val share {len(set(train) & set(val))} images")
    return SimData(names, train, val)


def load_coco(train_json: Path, val_json: Path | None, images: Path | None, out: Path) -> SimData:
    """A COCO pool and val as YOLO folders under ``out`` (links to the images, boxes as labels)."""
    from labelloop.connectors.formats.coco import coco_to_items
    from labelloop.connectors.formats.yolo import regions_to_yolo_lines

    if val_json is None:
        raise DataError(f"--data {train_json} is COCO: name its val set with --val (a COCO JSON)")
    splits: dict[str, list[Path]] = {}
    names: list[str] | None = None
    for split, path in (("train", train_json), ("val", val_json)):
        try:
            coco = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise DataError(f"{path}: cannot read it as COCO JSON ({type(e).__name__})") from None
        if not isinstance(coco, dict):
            raise DataError(f"{path}: not a COCO JSON object")
        cats = [str(c["name"]) for c in sorted(coco.get("categories") or [], key=lambda c: c["id"])]
        if names is not None and cats != names:
            raise DataError(f"{path}: its categories differ from {train_json}'s")
        names = cats
        index = {n: i for i, n in enumerate(cats)}
        src = images or path.parent
        dest = out / "images" / split
        if dest.exists():
            shutil.rmtree(dest)
            shutil.rmtree(out / "labels" / split, ignore_errors=True)
        dest.mkdir(parents=True)
        (out / "labels" / split).mkdir(parents=True)
        splits[split] = []
        for i, item in enumerate(coco_to_items(coco)):
            image = (src / item.uri).resolve()
            if not image.is_file():
                raise DataError(f"{path}: image {item.uri!r} not found under {src} (--images)")
            link = dest / f"{i:06d}{image.suffix.lower()}"
            link.symlink_to(image)
            lines = regions_to_yolo_lines(item.regions, item.width, item.height, index, "detect")
            label_path(link).write_text("\n".join(lines) + ("\n" if lines else ""))
            splits[split].append(link.absolute())
        if not splits[split]:
            raise DataError(f"{path}: no images")
    return SimData(names or [], splits["train"], splits["val"])


def load_data(data: Path, out: Path, *, val: Path | None = None, images: Path | None = None) -> SimData:
    """``data`` as an Ultralytics data.yaml or a COCO JSON (then ``val`` is val's COCO JSON)."""
    if not data.is_file():
        raise DataError(f"--data {data} does not exist (an Ultralytics data.yaml or a COCO JSON)")
    if data.suffix.lower() == ".json":
        return load_coco(data, val, images, out / "dataset")
    return load_ultralytics(data)


class _Files:
    """The :class:`ImageLoader` of local files: decoded RGB and the sha256 of the file's bytes."""

    def __init__(self, max_pixels: int) -> None:
        self.max_pixels = max_pixels

    def load(self, entries: Sequence[PoolEntry]) -> list[tuple[str, np.ndarray] | None]:
        out: list[tuple[str, np.ndarray] | None] = []
        for e in entries:
            data = Path(e.uri).read_bytes()
            out.append((sha256_bytes(data), decode_image(data, self.max_pixels)))
        return out


# ------------------------------------------------------------------ the run


@dataclass(frozen=True)
class Variant:
    """What a round trains on besides its human labels: nothing, or pseudo-labels of the rest of the
    pool by the previous round's model (kept at class confidence >= ``t_cls``, TTA stability >=
    ``t_loc``), each listed once against ``repeats(w_pseudo)`` per human image."""

    pseudo: bool = False
    t_cls: float = 0.9
    t_loc: float = 0.8
    w_pseudo: float = 0.3

    @property
    def name(self) -> str:
        return f"pseudo-t{self.t_cls:g}-w{self.w_pseudo:g}" if self.pseudo else HUMAN


def ablations(
    pseudo: bool, t_cls: Sequence[float], w_pseudo: Sequence[float], center: PseudoSettings
) -> list[Variant]:
    """The variants to run: always human labels only; with ``pseudo`` (or a sweep given) also
    pseudo-labels at the settings' thresholds and weight, then one factor at a time: each
    ``t_cls`` at the settings' weight, each ``w_pseudo`` at the settings' ``t_cls``."""
    out = [Variant()]
    if pseudo or t_cls or w_pseudo:
        base = Variant(True, center.t_cls, center.t_loc, center.w_pseudo)
        out.append(base)
        out += [replace(base, t_cls=t) for t in t_cls]
        out += [replace(base, w_pseudo=w) for w in w_pseudo]
    return list(dict.fromkeys(out))


def arm(strategy: str, variant: str) -> str:
    """A curve's name: the strategy, with the variant when it is not human labels only."""
    return strategy if variant == HUMAN else f"{strategy}+{variant}"


@dataclass(frozen=True)
class SimConfig:
    strategies: list[str]
    seeds: int = 3
    rounds: int = 4
    budget: int = 20
    initial: int = 20
    epochs: int = 3
    imgsz: int = 160
    variants: list[Variant] = field(default_factory=lambda: [Variant()])
    # the recipe's learning rates times this: they are sized for fine-tuning on hundreds of new
    # labels; at CPU simulation sizes (tens of iterations a round) x1 leaves the base almost as is
    lr_scale: float = 1.0

    def check(self, pool: int) -> None:
        if not 0.0 < self.lr_scale <= 100.0:
            raise ConfigError(f"--lr-scale {self.lr_scale} must be in (0, 100]")
        if self.rounds < 1 or self.seeds < 1 or self.budget < 1 or self.initial < 1 or self.epochs < 1:
            raise ConfigError("--rounds, --seeds, --budget, --initial and --epochs must be at least 1")
        need = self.initial + (self.rounds - 1) * self.budget
        if need > pool:
            raise ConfigError(
                f"{self.rounds} rounds of {self.budget} after {self.initial} initial need {need} "
                f"pool images; the dataset's train split has {pool}"
            )


@dataclass
class RoundRecord:
    strategy: str
    seed: int
    round: int
    labeled: int
    map50_95: float
    map50: float
    labeled_images: list[int]  # indices into SimData.train
    selected: list[int] = field(default_factory=list)  # pool indices the strategy added after it
    seconds: dict[str, float] = field(default_factory=dict)
    variant: str = HUMAN
    # prelabel effort of this round's model (oracle.effort_figures): on the images it selected for
    # the next round (what annotators get next, prelabelled by it) and on val
    effort_selected: dict[str, Any] | None = None
    effort_val: dict[str, Any] | None = None
    # pseudo-labels this round trained on: images, boxes, their match against the truth, list size
    pseudo: dict[str, Any] = field(default_factory=dict)


class _State:
    """``rounds.jsonl`` under ``out``: the finished rounds, appended one line each."""

    def __init__(self, out: Path, config: dict[str, Any]) -> None:
        self.path = out / "rounds.jsonl"
        meta = out / "config.json"
        if meta.is_file() and json.loads(meta.read_text()) != config:
            raise ConfigError(f"{out} holds a simulation with other arguments; use another --out")
        meta.write_text(json.dumps(config, indent=2))
        self.records: dict[tuple[str, str, int, int], RoundRecord] = {}
        if self.path.is_file():
            for line in self.path.read_text().splitlines():
                if line.strip():
                    try:
                        r = RoundRecord(**json.loads(line))
                    except (ValueError, TypeError):
                        continue  # a line torn by a kill: that round runs again
                    self.records[(r.strategy, r.variant, r.seed, r.round)] = r

    def get(self, strategy: str, variant: str, seed: int, rnd: int) -> RoundRecord | None:
        return self.records.get((strategy, variant, seed, rnd))

    def put(self, r: RoundRecord) -> None:
        self.records[(r.strategy, r.variant, r.seed, r.round)] = r
        with self.path.open("a") as f:
            f.write(json.dumps(asdict(r)) + "\n")


def _round_yaml(
    work: Path, data: SimData, labeled: Sequence[int], pseudo: Sequence[Path] = (), w: float = 1.0
) -> Path:
    """The round's data.yaml: its labeled pool images (each ``repeats(w)`` times when it trains on
    pseudo-labelled images too), and the fixed val split, which never holds a pseudo-label."""
    work.mkdir(parents=True, exist_ok=True)
    train = weighted_list([str(data.train[i]) for i in labeled], [str(p) for p in pseudo], w)
    (work / "train.txt").write_text("".join(f"{p}\n" for p in train))
    (work / "val.txt").write_text("".join(f"{p}\n" for p in data.val))
    cfg = {
        "path": str(work),
        "train": str(work / "train.txt"),
        "val": str(work / "val.txt"),
        "names": dict(enumerate(data.names)),
    }
    out = work / "data.yaml"
    out.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return out


class Simulation:
    """One simulation: ``run`` fills the state round by round; ``summary`` reads it."""

    def __init__(
        self, settings: Settings, data: SimData, base_weights: Path, cfg: SimConfig, out: Path
    ) -> None:
        cfg.check(len(data.train))
        self.data, self.base, self.cfg, self.out = data, Path(base_weights), cfg, out.resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        # predictions at the simulation's size on torch (no ONNX export per round), caches under out
        self.settings = settings.with_(
            cache_dir=self.out / "cache", predict={"imgsz": cfg.imgsz, "runtime": "torch"}
        )
        self.device = pick_device(settings.train.device)
        recipe = make_recipe(settings.train, epochs=cfg.epochs, imgsz=cfg.imgsz)
        stages = tuple(replace(st, lr0=st.lr0 * cfg.lr_scale) for st in recipe.stages)
        self.recipe = replace(recipe, stages=stages, common={**recipe.common, "val": False})
        self.shas = [sha256_bytes(p.read_bytes()) for p in data.train]
        config = {**asdict(cfg), "base": str(self.base), "pool": [str(p) for p in data.train]}
        self.state = _State(self.out, config)
        self._stability: dict[tuple[str, int], Stability] = {}  # (weights, pool index): TTA result

    def steps(self) -> int:
        return len(self.cfg.strategies) * len(self.cfg.variants) * self.cfg.seeds * self.cfg.rounds

    def initial_set(self, seed: int) -> list[int]:
        rng = np.random.default_rng(seed)
        return sorted(int(i) for i in rng.choice(len(self.data.train), self.cfg.initial, replace=False))

    def _work(self, strategy: str, variant: str, seed: int, rnd: int) -> Path:
        if rnd == 0:
            return self.out / "work" / f"seed{seed}" / INITIAL
        return self.out / "work" / f"seed{seed}" / arm(strategy, variant) / f"round{rnd}"

    def _train_eval(self, work: Path, data_yaml: Path) -> tuple[Path, float, float, dict[str, float]]:
        weights = work / "last.pt"
        t0 = time.monotonic()
        if not weights.is_file():
            save_dir, _ = fit_recipe(self.recipe, data_yaml, self.base, work, self.device)
            shutil.copyfile(save_dir / "weights" / "last.pt", weights)
            shutil.rmtree(work / "runs", ignore_errors=True)
        t1 = time.monotonic()
        m = evaluate(weights, data_yaml, imgsz=self.cfg.imgsz, device=self.device, workdir=work)
        return weights, m.map50_95, m.map50, {"train": t1 - t0, "eval": time.monotonic() - t1}

    def _predictor(self, weights: Path) -> Any:
        from labelloop.backend.inference.predictor import Predictor

        return Predictor(weights, self.settings)

    def _select(self, strategy: str, seed: int, rnd: int, weights: Path, labeled: Sequence[int]) -> list[int]:
        taken = set(labeled)
        rows = [i for i in range(len(self.data.train)) if i not in taken]
        entry = lambda i: PoolEntry(i, str(i), str(self.data.train[i]), self.shas[i])  # noqa: E731
        chosen = get_strategy(strategy, self.settings.select, seed * 1000 + rnd)
        loader = _Files(self.settings.fetch.max_image_pixels)
        pool, kept = score_pool(
            self.settings, weights, chosen, [entry(i) for i in rows], [entry(i) for i in labeled], loader
        )
        picked = chosen.select(pool, min(self.cfg.budget, len(kept)))
        return [kept[r].item_id for r in picked.rows]

    def _pseudo(
        self, work: Path, prev: Path, labeled: Sequence[int], v: Variant
    ) -> tuple[list[Path], dict[str, Any]]:
        """Pseudo-label the pool images not labeled yet with the previous round's model: the kept
        ones as image links and label files under ``work/pseudo`` (train only, never val)."""
        t0 = time.monotonic()
        taken = set(labeled)
        rows = [i for i in range(len(self.data.train)) if i not in taken]
        todo = [i for i in rows if (str(prev), i) not in self._stability]
        if todo:
            predictor = self._predictor(prev)
            for lo in range(0, len(todo), 64):
                part = todo[lo : lo + 64]
                for i, s in zip(
                    part, stability(predictor, [load_rgb(self.data.train[i]) for i in part]), strict=True
                ):
                    self._stability[(str(prev), i)] = s
        index = {n: k for k, n in enumerate(self.data.names)}
        images, labels = work / "pseudo" / "images", work / "pseudo" / "labels"
        shutil.rmtree(work / "pseudo", ignore_errors=True)
        images.mkdir(parents=True)
        labels.mkdir(parents=True)
        out: list[Path] = []
        pairs = []
        for i in rows:
            item = keep(self._stability[(str(prev), i)], v.t_cls, v.t_loc)
            if item is None:
                continue
            src = self.data.train[i]
            link = images / f"{i:06d}{src.suffix.lower()}"
            link.symlink_to(src)
            lines = regions_to_yolo_lines(item.regions, item.width, item.height, index, "detect")
            (labels / f"{i:06d}.txt").write_text("\n".join(lines) + "\n")
            out.append(link)
            pairs.append((item.regions, ground_truth(src, self.data.names, (item.width, item.height))))
        e = total_effort(pairs)
        return out, {
            "images": len(out),
            "of_pool": len(rows),
            "boxes": e.prelabel,
            # the oracle's view of them: pseudo boxes matching a true box (same class, IoU >= 0.5)
            "box_precision": round((e.kept + e.moved) / e.prelabel, 4) if e.prelabel else None,
            "true_boxes_missed": e.added,
            "seconds": round(time.monotonic() - t0, 2),
        }

    def run(self, step: Step | None = None) -> None:
        ensure_yolo_env(self.settings.cache_dir)
        for seed in range(self.cfg.seeds):
            for strategy in self.cfg.strategies:
                for v in self.cfg.variants:
                    labeled = self.initial_set(seed)
                    for rnd in range(self.cfg.rounds):
                        rec = self.state.get(strategy, v.name, seed, rnd)
                        if rec is None:
                            rec = self._round(strategy, v, seed, rnd, labeled)
                        labeled = sorted({*labeled, *rec.selected})
                        if step is not None:
                            step(
                                f"{arm(strategy, v.name)} seed {seed} round {rnd}: {rec.labeled} labels, "
                                f"mAP50-95 {rec.map50_95:.3f}"
                            )

    def _initial(self, seed: int, labeled: list[int]) -> RoundRecord:
        """Round 0 of a seed: the same set and seed for every strategy and variant (human labels
        only: no model has pseudo-labelled yet), trained and measured once."""
        first = self.state.get(INITIAL, HUMAN, seed, 0)
        if first is None:
            work = self._work(INITIAL, HUMAN, seed, 0)
            weights, m, m50, secs = self._train_eval(work, _round_yaml(work, self.data, labeled))
            first = RoundRecord(INITIAL, seed, 0, len(labeled), m, m50, list(labeled), [], secs)
            first.effort_val = prelabel_effort(self._predictor(weights), self.data.val, self.data.names)
            self.state.put(first)
        return first

    def _round(self, strategy: str, v: Variant, seed: int, rnd: int, labeled: list[int]) -> RoundRecord:
        work = self._work(strategy, v.name, seed, rnd)
        weights = work / "last.pt"
        if rnd == 0:
            human = self.state.get(strategy, HUMAN, seed, 0)
            if human is not None:  # a variant's round 0 is its strategy's: same model, same picks
                rec = replace(human, variant=v.name, seconds={})
                self.state.put(rec)
                return rec
            rec = replace(self._initial(seed, labeled), strategy=strategy, variant=v.name, seconds={})
        else:
            pseudo: list[Path] = []
            info: dict[str, Any] = {}
            if v.pseudo:
                pseudo, info = self._pseudo(
                    work, self._work(strategy, v.name, seed, rnd - 1) / "last.pt", labeled, v
                )
            data_yaml = _round_yaml(work, self.data, labeled, pseudo, v.w_pseudo if pseudo else 1.0)
            weights, m, m50, secs = self._train_eval(work, data_yaml)
            rec = RoundRecord(strategy, seed, rnd, len(labeled), m, m50, list(labeled), [], secs, v.name)
            if v.pseudo:
                info["train_listed"] = len((work / "train.txt").read_text().split())
                rec.pseudo = info
            t0 = time.monotonic()
            rec.effort_val = prelabel_effort(self._predictor(weights), self.data.val, self.data.names)
            rec.seconds["effort"] = time.monotonic() - t0
        if rnd < self.cfg.rounds - 1:
            t0 = time.monotonic()
            rec.selected = self._select(strategy, seed, rnd, weights, labeled)
            rec.seconds["select"] = time.monotonic() - t0
            chosen = [self.data.train[i] for i in rec.selected]
            rec.effort_selected = prelabel_effort(self._predictor(weights), chosen, self.data.names)
        self.state.put(rec)
        return rec

    # -------------------------------------------------------------- results

    def records(self) -> list[RoundRecord]:
        return [
            self.state.records[(s, v.name, seed, r)]
            for s in self.cfg.strategies
            for v in self.cfg.variants
            for seed in range(self.cfg.seeds)
            for r in range(self.cfg.rounds)
            if (s, v.name, seed, r) in self.state.records
        ]

    def summary(self) -> dict[str, Any]:
        """Curves per arm (strategy + variant; mean and std over seeds), the savings against random
        on human labels, the prelabel effort per round, and every round."""
        recs = self.records()
        curves: dict[str, dict[str, Any]] = {}
        per_seed: dict[str, dict[int, tuple[list[float], list[float]]]] = {}
        for s in self.cfg.strategies:
            for v in self.cfg.variants:
                name = arm(s, v.name)
                mine = [r for r in recs if r.strategy == s and r.variant == v.name]
                rows = {seed: [r for r in mine if r.seed == seed] for seed in range(self.cfg.seeds)}
                rows = {seed: rs for seed, rs in rows.items() if rs}
                per_seed[name] = {
                    seed: ([float(r.labeled) for r in rs], [r.map50_95 for r in rs])
                    for seed, rs in rows.items()
                }
                curves[name] = _curve(list(rows.values()))
        return {
            "config": asdict(self.cfg),
            "base_weights": str(self.base),
            "pool": len(self.data.train),
            "val": len(self.data.val),
            "curves": curves,
            "savings": savings(per_seed) if "random" in per_seed else None,
            "rounds": [
                {k: v for k, v in asdict(r).items() if k not in ("labeled_images", "selected")}
                | {"selected": len(r.selected), "arm": arm(r.strategy, r.variant)}
                for r in recs
            ],
        }


def _share(e: dict[str, Any] | None, key: str) -> float:
    return float("nan") if not e or e.get(key) is None else float(e[key])


def _curve(seeds: list[list[RoundRecord]]) -> dict[str, Any]:
    """One arm's curve over the rounds all its seeds finished: mAP50-95 mean and std, and the
    prelabel effort means (matched share of val's and of the selected images' true boxes, edits
    per selected image)."""
    n = min((len(rs) for rs in seeds), default=0)
    if not n:
        return {"labels": [], "map50_95_mean": [], "map50_95_std": []}
    grid = [rs[:n] for rs in seeds]

    def mean(get: Callable[[RoundRecord], float]) -> list[float | None]:
        vals = np.array([[get(r) for r in rs] for rs in grid], dtype=float)
        out = []
        for col in vals.T:
            ok = col[~np.isnan(col)]
            out.append(round(float(ok.mean()), 4) if len(ok) else None)
        return out

    maps = np.array([[r.map50_95 for r in rs] for rs in grid])
    return {
        "labels": [float(r.labeled) for r in grid[0]],
        "map50_95_mean": maps.mean(axis=0).tolist(),
        "map50_95_std": maps.std(axis=0).tolist(),
        "val_matched_share_mean": mean(lambda r: _share(r.effort_val, "matched_share")),
        "selected_matched_share_mean": mean(lambda r: _share(r.effort_selected, "matched_share")),
        "selected_edits_per_image_mean": mean(lambda r: _share(r.effort_selected, "edits_per_image")),
    }


# ------------------------------------------------------------------ the headline


def labels_to_reach(labels: Sequence[float], maps: Sequence[float], target: float) -> float | None:
    """The labels at which a curve first reaches ``target`` (linear between rounds); None if never."""
    for i, m in enumerate(maps):
        if m >= target:
            if i == 0:
                return float(labels[0])
            m0, l0 = maps[i - 1], labels[i - 1]
            return float(l0 + (labels[i] - l0) * (target - m0) / (m - m0))
    return None


def savings(per_seed: dict[str, dict[int, tuple[list[float], list[float]]]]) -> dict[str, Any]:
    """Per strategy: labels needed to reach random's final mAP50-95 of the same seed, and the share
    of random's final label count saved (mean and std over the seeds that reached it). A seed where
    random ended no better than it started is left out: any curve "reaches" that target at the
    first round, and the saving would be the round count, not a property of the strategy."""
    out: dict[str, Any] = {}
    random = per_seed["random"]
    gain = {seed: maps[-1] - maps[0] for seed, (_, maps) in random.items() if maps}
    for s, seeds in per_seed.items():
        needed, saved = [], []
        for seed, (labels, maps) in seeds.items():
            if gain.get(seed, 0.0) <= 0.0:
                continue
            r_labels, r_maps = random[seed]
            n = labels_to_reach(labels, maps, r_maps[-1])
            needed.append(n)
            if n is not None:
                saved.append(100.0 * (1.0 - n / r_labels[-1]))
        reached = [n for n in needed if n is not None]
        out[s] = {
            "target": "random's final mAP50-95, per seed",
            "labels_needed": needed,
            "labels_needed_mean": float(np.mean(reached)) if reached else None,
            "saved_pct_mean": float(np.mean(saved)) if saved else None,
            "saved_pct_std": float(np.std(saved)) if saved else None,
            "seeds_reached": f"{len(reached)}/{len(needed)}",
            "seeds_left_out": sorted(seed for seed in seeds if gain.get(seed, 0.0) <= 0.0),
            "random_gain": gain,  # random's final - first mAP50-95 per seed
        }
    return out


def plot(summary: dict[str, Any], path: Path) -> Path:
    """mAP50-95 against labels, mean and +-1 std over seeds per strategy; random dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for s, c in summary["curves"].items():
        if not c["labels"]:
            continue
        x, m, sd = np.array(c["labels"]), np.array(c["map50_95_mean"]), np.array(c["map50_95_std"])
        style = {"color": "black", "linestyle": "--"} if s == "random" else {}
        (line,) = ax.plot(x, m, marker="o", label=s, **style)
        ax.fill_between(x, m - sd, m + sd, alpha=0.15, color=line.get_color())
    cfg = summary["config"]
    ax.set(
        xlabel="labeled images",
        ylabel="mAP50-95 (val)",
        title=f"active learning: {cfg['seeds']} seeds, budget {cfg['budget']}, {cfg['epochs']} epochs/round",
    )
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


EFFORT_COLUMNS = ("matched_share", "add", "delete", "fix_class", "fix_geometry", "edits_per_image")


def csv_row(r: dict[str, Any]) -> dict[str, Any]:
    """One round as a rounds.csv row: its mAP, the prelabel effort on the selected images (sel_)
    and on val (val_), and its pseudo-labels."""
    row = {k: r[k] for k in ("arm", "strategy", "variant", "seed", "round", "labeled", "map50_95", "map50")}
    for prefix, e in (("sel", r.get("effort_selected")), ("val", r.get("effort_val"))):
        row.update({f"{prefix}_{k}": (e or {}).get(k) for k in EFFORT_COLUMNS})
    p = r.get("pseudo") or {}
    row.update(
        pseudo_images=p.get("images"),
        pseudo_box_precision=p.get("box_precision"),
        train_listed=p.get("train_listed"),
    )
    return row


def write_outputs(summary: dict[str, Any], out: Path) -> dict[str, Path]:
    """``results.json`` (every figure), ``rounds.csv`` and ``learning_curves.png`` under ``out``."""
    paths = {"json": out / "results.json", "csv": out / "rounds.csv", "plot": out / "learning_curves.png"}
    paths["json"].write_text(json.dumps(summary, indent=2))
    rows = [csv_row(r) for r in summary["rounds"]]
    with paths["csv"].open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["arm"])
        w.writeheader()
        w.writerows(rows)
    plot(summary, paths["plot"])
    return paths
