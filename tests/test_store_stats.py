"""Agreement and effort against the prelabel: crafted annotations, then through the real store."""

from __future__ import annotations

import pytest

from labelloop.sync.ingest import ingest
from labelloop.sync.stats import (
    agreement,
    disagreements,
    effort,
    effort_by_model,
    effort_per_annotation,
    pair_f1,
)
from labelloop.sync.store import Store
from labelloop.sync.versions import snapshot
from labelloop.types import Region
from tests.store_fixtures import *  # noqa: F403
from tests.store_fixtures import LS, ann, box, result


def test_pair_f1_on_crafted_regions() -> None:
    a = [box("cat", 0, 0, 10, 10), box("dog", 20, 20, 40, 40)]
    assert pair_f1(a, a) == 1.0
    assert pair_f1([], []) == 1.0
    assert pair_f1(a, []) == 0.0
    # one box shifted a little (IoU ~0.68, kept as a match), one relabelled (not a match)
    b = [box("cat", 1, 1, 11, 11), box("cat", 20, 20, 40, 40)]
    assert pair_f1(a, b) == pytest.approx(2 * 1 / 4)
    # IoU under 0.5 is no match
    assert pair_f1([box("cat", 0, 0, 10, 10)], [box("cat", 6, 0, 16, 10)]) == 0.0


def test_effort_on_crafted_prelabel_and_final() -> None:
    pre = [
        box("cat", 0, 0, 100, 100),  # kept (IoU 1)
        box("cat", 200, 0, 300, 100),  # moved (IoU ~0.67)
        box("dog", 0, 200, 100, 300),  # relabelled to cat
        box("dog", 400, 400, 450, 450),  # deleted
    ]
    final = [
        box("cat", 0, 0, 100, 100),
        box("cat", 220, 0, 320, 100),
        box("cat", 0, 200, 100, 300),
        box("bird", 600, 600, 650, 650),  # added
    ]
    e = effort(pre, final)
    assert (e.kept, e.moved, e.relabelled, e.deleted, e.added) == (1, 1, 1, 1, 1)
    assert (e.final, e.prelabel, e.from_prelabel) == (4, 4, 3)
    assert e.share_from_prelabel == pytest.approx(0.75) and e.kept_share == pytest.approx(0.25)
    # a near-perfect move still counts as kept (IoU >= 0.9)
    assert effort([box("cat", 0, 0, 100, 100)], [box("cat", 0, 0, 100, 104)]).kept == 1
    # nothing prelabelled: everything added
    e0 = effort([], final)
    assert (e0.added, e0.from_prelabel, e0.share_from_prelabel) == (4, 0, 0.0)
    assert effort(pre, []).share_from_prelabel is None


def test_agreement_and_effort_through_the_store(store: Store) -> None:
    same = [box("cat", 0, 0, 10, 10), box("dog", 20, 20, 40, 40)]
    other = [box("cat", 50, 50, 60, 60)]
    pre: list[Region] = [
        box("cat", 0, 0, 10, 10).with_(score=0.9),
        box("dog", 60, 60, 90, 90).with_(score=0.4),
    ]
    ingest(store, LS, result([
        # task 1: alice and bob agree
        ann(1, 11, same, annotator="alice", prelabel=pre, prelabel_model_version="m1"),
        ann(1, 12, same, annotator="bob"),
        # task 2: alice and carol do not
        ann(2, 21, same, annotator="alice", prelabel=pre, prelabel_model_version="m2"),
        ann(2, 22, other, annotator="carol", prelabel=pre, prelabel_model_version="m2"),
        ann(2, 23, other, annotator="dave", cancelled=True),  # cancelled: not counted
        # task 3: one annotation: no agreement to measure
        ann(3, 31, same, annotator="bob"),
    ]))  # fmt: skip
    rep = agreement(store, threshold=0.7)
    assert [(t.task_id, round(t.f1, 3)) for t in rep.tasks] == [("1", 1.0), ("2", 0.0)]
    assert rep.mean == pytest.approx(0.5)
    assert rep.per_annotator == {
        "alice": {"mean": 0.5, "pairs": 2},
        "bob": {"mean": 1.0, "pairs": 1},
        "carol": {"mean": 0.0, "pairs": 1},
    }
    flagged = disagreements(store, threshold=0.7)
    assert [(t.source_key, t.task_id) for t in flagged] == [(LS.key, "2")]
    rows = effort_per_annotation(store)
    assert {r.annotation_id for r in rows} == {"11", "21", "22"}
    by_model = effort_by_model(rows)
    assert set(by_model) == {"m1", "m2"}
    m1 = by_model["m1"]
    assert (m1.kept, m1.deleted, m1.added, m1.annotations) == (1, 1, 1, 1)
    m2 = by_model["m2"]
    assert m2.annotations == 2 and m2.final == 3 and m2.kept == 1
    # as of a version: later changes do not move the version's figures
    v = snapshot(store, "one").version
    ingest(store, LS, result([ann(2, 22, same, annotator="carol", updated="2025-05-01T00:00:00Z")],
                             present={"2": ["21", "22", "23"]}))  # fmt: skip
    assert agreement(store, threshold=0.7).flagged == []
    assert [t.task_id for t in agreement(store, version=v.id, threshold=0.7).flagged] == ["2"]
