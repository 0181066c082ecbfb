"""The recipe as data and the gate's pure decision, on made-up metrics (no model, no I/O)."""

from __future__ import annotations

import math

import pytest

from labelloop.backend.training.gate import EvalMetrics, decide
from labelloop.backend.training.recipe import make_recipe, split_epochs
from labelloop.settings import GateSettings, TrainSettings


def m(map50_95: float, per_class: dict[str, float] | None = None, latency: float = 10.0) -> EvalMetrics:
    return EvalMetrics(
        map50=min(1.0, map50_95 * 1.5),
        map50_95=map50_95,
        precision=0.5,
        recall=0.5,
        per_class=per_class if per_class is not None else {"cat": map50_95, "dog": map50_95},
        latency_ms=latency,
    )


@pytest.mark.parametrize(
    ("epochs", "split"), [(1, (0, 1)), (2, (1, 1)), (3, (1, 2)), (4, (1, 3)), (10, (2, 8)), (100, (25, 75))]
)
def test_epochs_split_25_75_each_stage_at_least_one(epochs: int, split: tuple[int, int]) -> None:
    assert split_epochs(epochs) == split


def test_recipe_two_stages_from_settings() -> None:
    r = make_recipe(TrainSettings(epochs=20, imgsz=256, batch=4, seed=7))
    head, full = r.stages
    assert (head.epochs, full.epochs, r.epochs) == (5, 15, 20)
    a1, a2 = r.train_args(head), r.train_args(full)
    assert (a1["freeze"], a1["lr0"], a2["freeze"], a2["lr0"]) == (10, 0.001, None, 0.0003)
    for a in (a1, a2):
        assert a["optimizer"] == "SGD" and a["momentum"] == 0.9 and a["weight_decay"] == 5e-4
        assert a["cos_lr"] is True and a["warmup_epochs"] > 0 and a["plots"] is False
        assert (a["imgsz"], a["batch"], a["seed"]) == (256, 4, 7)
    # mosaic off for the last ~15% of all epochs, all in stage 2
    assert (a1["close_mosaic"], a2["close_mosaic"]) == (0, math.ceil(20 * 0.15))
    assert make_recipe(TrainSettings(), epochs=3, imgsz=64).imgsz == 64
    params = r.params()
    assert params["stage1.freeze"] == 10 and params["stage2.lr0"] == 0.0003 and params["seed"] == 7


def test_recipe_single_epoch_is_one_unfrozen_stage() -> None:
    (only,) = make_recipe(TrainSettings(epochs=1)).stages
    assert only.name == "full" and only.freeze is None and only.close_mosaic == 1


RULES = GateSettings(min_delta=0.01, max_class_drop=0.05, max_latency_ms=None, floor_map50_95=0.2)


def test_first_model_promoted_over_the_floor_only() -> None:
    yes = decide(m(0.25), None, RULES)
    assert yes.promote and "first model" in yes.reason and "floor 0.2000" in yes.reason
    no = decide(m(0.19), None, RULES)
    assert not no.promote and "0.1900 < floor 0.2000" in no.reason
    assert decide(m(0.2), None, RULES).promote  # exactly the floor passes
    named = decide(m(0.3), None, RULES, no_champion="champion v3 knows other classes")
    assert named.reason == "promoted: champion v3 knows other classes: mAP50-95 0.3000 >= floor 0.2000"


def test_better_challenger_promoted() -> None:
    d = decide(m(0.41), m(0.40), RULES)
    assert d.promote and d.reason.startswith("promoted:") and not d.failed
    assert d.champion is not None and d.rules["min_delta"] == 0.01


def test_worse_or_not_better_enough_rejected_naming_mAP() -> None:
    d = decide(m(0.405), m(0.40), RULES)  # better, but by less than min_delta
    assert not d.promote and "mAP50-95 0.4050 < champion 0.4000 + min_delta 0.0100" in d.reason
    assert not decide(m(0.30), m(0.40), RULES).promote
    tie = GateSettings(min_delta=0.0, floor_map50_95=0.0)
    assert decide(m(0.40), m(0.40), tie).promote  # a tie with min_delta 0 passes (>=)
    assert decide(m(0.1 + 0.2), m(0.3), tie).promote  # float noise does not decide


def test_class_drop_rejects_naming_the_class() -> None:
    champ = m(0.40, {"cat": 0.60, "dog": 0.20, "bird": 0.40})
    chall = m(0.45, {"cat": 0.50, "dog": 0.40, "bird": 0.37})  # better overall, cat fell 0.10
    d = decide(chall, champ, RULES)
    assert not d.promote and "cat 0.6000 -> 0.5000" in d.reason and "bird" not in d.reason
    # a class the challenger no longer scores counts as AP 0
    gone = decide(m(0.5, {"dog": 0.9}), m(0.4, {"cat": 0.3, "dog": 0.5}), RULES)
    assert not gone.promote and "cat 0.3000 -> 0.0000" in gone.reason
    # exactly max_class_drop is allowed
    assert decide(m(0.45, {"cat": 0.55}), m(0.40, {"cat": 0.60}), RULES).promote


def test_latency_budget_when_set() -> None:
    rules = RULES.model_copy(update={"max_latency_ms": 50.0})
    slow = decide(m(0.5, latency=80.0), m(0.4), rules)
    assert not slow.promote and "latency 80.0 ms/image > budget 50.0 ms" in slow.reason
    assert decide(m(0.5, latency=50.0), m(0.4), rules).promote
    assert not decide(m(0.5, latency=80.0), None, rules).promote  # the first model too
    assert decide(m(0.5, latency=10_000.0), m(0.4), RULES).promote  # no budget: not checked


def test_several_failures_all_named_and_nan_never_promotes() -> None:
    rules = RULES.model_copy(update={"max_latency_ms": 5.0})
    d = decide(m(0.1, {"cat": 0.0}), m(0.4, {"cat": 0.5}), rules)
    assert len(d.failed) == 3 and all(s in d.reason for s in ("mAP50-95", "cat", "latency"))
    assert not decide(m(float("nan")), None, RULES).promote
    assert not decide(m(float("nan")), m(0.1), RULES).promote
    assert not decide(m(0.5, latency=float("nan")), m(0.1), rules).promote
