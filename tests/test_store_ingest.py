"""Ingest into the real store (SQLite and PostgreSQL): idempotent upsert, append-only revisions,
tombstones, quarantine, cursor in the same transaction, placeholders and re-keying."""

from __future__ import annotations

import json
import math

import pytest
from sqlalchemy import func, select, text

from labelloop.connectors.platform import Cursor
from labelloop.errors import StoreError
from labelloop.sync.ingest import ingest, load_cursor, quarantined, save_cursor
from labelloop.sync.store import Store
from labelloop.sync.store.engine import current_revision, head_revision
from labelloop.sync.store.keys import attach_bytes, placeholder_sha, placeholders
from labelloop.sync.store.live import live_revisions, watermark
from labelloop.sync.store.models import (
    HeadRow,
    ItemRow,
    ItemUriRow,
    QuarantineRow,
    RevisionRow,
    TaskRow,
    TombstoneRow,
)
from labelloop.types import Box, Region
from tests.store_fixtures import *  # noqa: F403
from tests.store_fixtures import CVAT, LS, ann, box, item, result, sha_of


def count(store: Store, model) -> int:  # type: ignore[no-untyped-def]
    with store.session() as s:
        return int(s.execute(select(func.count()).select_from(model)).scalar_one())


def test_open_migrates_to_head_and_reopens(store: Store) -> None:
    assert current_revision(store.engine) == head_revision()
    again = Store.open(
        str(store.engine.url.render_as_string(hide_password=False)), blob_root=store.blobs.root
    )
    assert current_revision(again.engine) == head_revision()
    again.close()


def test_migrated_schema_matches_models(store: Store) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from labelloop.sync.store.models import Base

    with store.engine.connect() as c:
        diff = compare_metadata(MigrationContext.configure(c, opts={"compare_type": True}), Base.metadata)
    assert diff == []


def test_upsert_is_idempotent(store: Store) -> None:
    anns = [ann(1, 10, [box("cat", 1, 1, 10, 10)]), ann(2, 20, [box("dog", 5, 5, 50, 50)])]
    r1 = ingest(store, LS, result(anns))
    assert (r1.new_revisions, r1.unchanged, r1.new_items) == (2, 0, 2)
    r2 = ingest(store, LS, result(anns))
    assert (r2.new_revisions, r2.unchanged, r2.new_items, r2.tombstoned) == (0, 2, 0, 0)
    assert count(store, RevisionRow) == 2
    assert count(store, HeadRow) == 2
    # the same annotation twice in one pull is one revision
    r3 = ingest(store, LS, result([ann(3, 30), ann(3, 30)]))
    assert r3.new_revisions == 1 and r3.unchanged == 1


def test_revisions_are_append_only(store: Store) -> None:
    ingest(store, LS, result([ann(1, 10, [box("cat", 1, 1, 10, 10)], updated="2025-01-01T00:00:00Z")]))
    ingest(store, LS, result([ann(1, 10, [box("dog", 1, 1, 10, 10)], updated="2025-01-02T00:00:00Z")]))
    ingest(store, LS, result([ann(1, 10, [box("dog", 1, 1, 12, 12)], updated="2025-01-03T00:00:00Z")]))
    with store.session() as s:
        revs = s.execute(select(RevisionRow).order_by(RevisionRow.id)).scalars().all()
        head = s.get(HeadRow, (LS.key, "10"))
    assert [r.seq for r in revs] == [1, 2, 3]
    assert [json.loads(r.regions_json)[0]["label"] for r in revs] == ["cat", "dog", "dog"]
    assert head is not None and head.revision_id == revs[-1].id and head.seq == 3
    # every field of the pulled state is kept
    assert revs[0].updated_at == "2025-01-01T00:00:00Z" and revs[0].updated_ts.year == 2025


def test_revision_keeps_provenance_fields(store: Store) -> None:
    pre = [box("cat", 0, 0, 10, 10).with_(score=0.8)]
    a = ann(
        5, 50, [box("cat", 0, 0, 11, 11)], annotator="ann@x", reviewer="rev@x", review_state="accepted",
        lead_time=12.5, ground_truth=True, job_id=9, stage="annotation", state="completed",
        prelabel_id="p1", prelabel_model_version="yolo-v3", prelabel=pre, created_at="2025-01-01T00:00:00Z",
    )  # fmt: skip
    ingest(store, LS, result([a]))
    with store.session() as s:
        r = s.execute(select(RevisionRow)).scalar_one()
    assert (r.annotator, r.reviewer, r.review_state, r.lead_time) == ("ann@x", "rev@x", "accepted", 12.5)
    assert (r.ground_truth, r.cancelled, r.job_id, r.stage, r.state) == (
        True,
        False,
        9,
        "annotation",
        "completed",
    )
    assert (r.prelabel_id, r.prelabel_model_version, r.label_source) == ("p1", "yolo-v3", "human")
    assert json.loads(r.prelabel_json)[0]["score"] == 0.8
    assert (r.platform, r.container, r.task_id, r.annotation_id) == ("labelstudio", 1, "5", "50")


def test_label_source_from_provenance(store: Store) -> None:
    from labelloop.types import Source

    anns = [
        ann(1, 1, [box("cat", 0, 0, 5, 5, Source.PSEUDO)], annotator="bot"),
        ann(2, 2, [box("cat", 0, 0, 5, 5, Source.PRELABEL)]),  # nobody submitted it
        ann(3, 3, [box("cat", 0, 0, 5, 5, Source.PRELABEL)], annotator="alice"),  # a person submitted it
        ann(4, 4, [box("cat", 0, 0, 5, 5)], extra={"label_source": "synthetic"}),
    ]
    ingest(store, LS, result(anns))
    with store.session() as s:
        got = {a: src for a, src in s.execute(select(RevisionRow.annotation_id, RevisionRow.label_source))}
    assert got == {"1": "pseudo", "2": "prelabel", "3": "human", "4": "synthetic"}


def test_tombstones_for_deleted_annotations_and_tasks(store: Store) -> None:
    ingest(store, LS, result([ann(1, 10), ann(1, 11), ann(2, 20), ann(3, 30)]))
    # task 1 read again: annotation 11 is gone
    r = ingest(store, LS, result([], present={"1": ["10"]}))
    assert r.tombstoned == 1
    # the whole project listed: task 3 is gone
    r = ingest(store, LS, result([], present={}, all_tasks=["1", "2"]))
    assert (r.tombstoned, r.tasks_deleted) == (1, 1)
    with store.session() as s:
        tombs = s.execute(select(TombstoneRow).order_by(TombstoneRow.id)).scalars().all()
        live = {x.annotation_id for x in live_revisions(s)}
        task3 = s.get(TaskRow, (LS.key, "3"))
    assert [(t.task_id, t.annotation_id, t.reason) for t in tombs] == [
        ("1", "11", "annotation_absent"),
        ("3", "30", "task_absent"),
        ("3", None, "task_absent"),
    ]
    assert live == {"10", "20"}
    assert task3 is not None and task3.deleted
    # nothing new: no new tombstones
    assert ingest(store, LS, result([], present={"1": ["10"]}, all_tasks=["1", "2"])).tombstoned == 0
    # a deleted annotation that comes back is live again, with a new revision
    r = ingest(store, LS, result([ann(3, 30)]))
    assert r.new_revisions == 1
    with store.session() as s:
        assert "30" in {x.annotation_id for x in live_revisions(s)}
        assert not s.get(TaskRow, (LS.key, "3")).deleted  # type: ignore[union-attr]


def test_watermark_reconstructs_the_past(store: Store) -> None:
    ingest(store, LS, result([ann(1, 10), ann(2, 20)]))
    with store.session() as s:
        mark = watermark(s)
    ingest(store, LS, result([], present={"1": []}))
    ingest(store, LS, result([ann(2, 20, [box("cat", 1, 1, 5, 5)], updated="2025-02-01T00:00:00Z")]))
    with store.session() as s:
        then = {
            (x.annotation_id, x.id)
            for x in live_revisions(s, max_revision_id=mark[0], max_tombstone_id=mark[1])
        }
        now = {(x.annotation_id, x.id) for x in live_revisions(s)}
        via_mark = {
            (x.annotation_id, x.id) for x in live_revisions(s, max_revision_id=10**9, max_tombstone_id=10**9)
        }
    assert {a for a, _ in then} == {"10", "20"}
    assert {a for a, _ in now} == {"20"}
    assert now == via_mark  # heads and the watermark query agree


def test_malformed_annotations_are_quarantined_and_the_rest_ingest(store: Store) -> None:
    good = ann(1, 10, [box("cat", 1, 1, 5, 5)])
    bad_size = ann(2, 20, item=item([], w=0, h=10))
    bad_region = ann(3, 30, item=item(["not a region"]))  # type: ignore[list-item]
    nan = ann(4, 40, [Region("cat", Box(math.nan, 0, 5, 5))])
    bad_time = ann(5, 50, updated="yesterday")
    no_id = ann(6, "")
    r = ingest(store, LS, result([good, bad_size, bad_region, nan, bad_time, no_id]))
    assert (r.new_revisions, r.quarantined) == (1, 5)
    with store.session() as s:
        rows = {q.annotation_id: q for q in s.execute(select(QuarantineRow)).scalars()}
    assert set(rows) == {"20", "30", "40", "50", ""}
    assert "not positive" in rows["20"].reason and rows["20"].kind == "data"
    assert "not a Region" in rows["30"].reason
    assert "finite" in rows["40"].reason
    assert "ISO-8601" in rows["50"].reason
    # pulled again: not quarantined twice
    ingest(store, LS, result([bad_size]))
    assert count(store, QuarantineRow) == 5
    listed = quarantined(store, LS)
    assert len(listed) == 5 and {q["kind"] for q in listed} == {"data"}
    # the quarantined annotation's task is still present: its stored good state is not tombstoned
    ingest(store, LS, result([ann(2, 20, updated="2025-01-01T00:00:00Z")]))
    assert ingest(store, LS, result([bad_size])).tombstoned == 0


def test_unknown_size_is_fine_without_regions(store: Store) -> None:
    """Label Studio reports the size only inside regions: an empty or cancelled annotation has 0x0."""
    r = ingest(store, LS, result([
        ann(1, 10, item=item([], sha=sha_of("e"), w=0, h=0)),
        ann(2, 20, item=item([], sha=sha_of("c"), w=0, h=0), cancelled=True),
        ann(3, 30, item=item([box("cat", 1, 1, 5, 5)], sha=sha_of("x"), w=0, h=0)),
    ]))  # fmt: skip
    assert (r.new_revisions, r.quarantined) == (2, 1)
    assert "unknown" in r.reasons[0]
    with store.session() as s:
        assert s.get(ItemRow, sha_of("e")).width is None  # type: ignore[union-attr]
    # a later sighting with regions fills the size in
    ingest(store, LS, result([ann(1, 10, item=item([box("cat", 1, 1, 5, 5)], sha=sha_of("e"), w=64, h=48),
                                  updated="2025-02-01T00:00:00Z")]))  # fmt: skip
    with store.session() as s:
        row = s.get(ItemRow, sha_of("e"))
        assert (row.width, row.height) == (64, 48)  # type: ignore[union-attr]


def test_same_content_under_a_newer_stamp_is_no_new_revision(store: Store) -> None:
    """CVAT re-dates every frame of a changed job; frames whose shapes did not change stay put."""
    frame = [box("cat", 1, 1, 5, 5)]
    ingest(store, CVAT, result([ann("frame:0", "job:1:frame:0", frame, target=CVAT, stage="annotation")]))
    r = ingest(store, CVAT, result([ann("frame:0", "job:1:frame:0", frame, target=CVAT, stage="annotation",
                                        updated="2025-01-05T00:00:00Z")]))  # fmt: skip
    assert (r.new_revisions, r.unchanged) == (0, 1)
    # a stage change is a new state
    r = ingest(store, CVAT, result([ann("frame:0", "job:1:frame:0", frame, target=CVAT, stage="validation",
                                        updated="2025-01-06T00:00:00Z")]))  # fmt: skip
    assert r.new_revisions == 1


def test_upgrade_from_the_first_migration_keeps_data(db_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A store made at revision 0001 (data in it) is brought to head at open, heads backfilled."""
    from alembic import command

    from labelloop.sync.store.engine import _alembic_config, make_engine

    if db_url.startswith("sqlite"):
        db_url = f"sqlite:///{tmp_path / 'old.db'}"  # not the migrated template
    engine = make_engine(db_url)
    with engine.begin() as c:
        if engine.dialect.name == "postgresql":
            c.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
        cfg = _alembic_config()
        cfg.attributes["connection"] = c
        command.upgrade(cfg, "0001")
        c.execute(
            text(
                "INSERT INTO sources (key, platform, url, container, passes) VALUES ('k', 'cvat', 'u', 1, 0)"
            )
        )
        c.execute(text(
            "INSERT INTO annotation_revisions (id, source_key, platform, container, task_id, annotation_id, seq, "
            "state_key, cancelled, ground_truth, label_source, regions_json, n_regions, width, height, "
            "content_sha, ingested_at) VALUES (1, 'k', 'cvat', 1, 't', 'a', 1, 's', false, false, 'human', "
            "'[]', 0, 1, 1, 'c0ffee', '2025-01-01 00:00:00')"
        ))  # fmt: skip
        c.execute(text(
            "INSERT INTO annotation_heads (source_key, annotation_id, task_id, revision_id, seq, state_key, "
            "deleted) VALUES ('k', 'a', 't', 1, 1, 's', false)"
        ))  # fmt: skip
    engine.dispose()
    store = Store.open(db_url, blob_root=str(tmp_path / "b"))
    try:
        assert current_revision(store.engine) == head_revision()
        with store.session() as s:
            assert s.get(HeadRow, ("k", "a")).content_sha == "c0ffee"  # type: ignore[union-attr]
    finally:
        store.close()


def test_cursor_commits_with_the_data(store: Store) -> None:
    assert load_cursor(store, LS) is None
    ingest(store, LS, result([ann(1, 10)], cursor="c1"))
    assert load_cursor(store, LS) == Cursor("labelstudio", {"since": "c1"})
    ingest(store, LS, result([ann(2, 20)], cursor="c2"), commit_cursor=False)
    assert load_cursor(store, LS) == Cursor("labelstudio", {"since": "c1"})
    # a failing transaction keeps neither the data nor the cursor
    with pytest.raises(RuntimeError), store.transaction() as s:
        ingest(s, LS, result([ann(3, 30)], cursor="c3"))
        raise RuntimeError("crash between ingest and commit")
    assert load_cursor(store, LS) == Cursor("labelstudio", {"since": "c1"})
    with store.session() as s:
        assert s.get(HeadRow, (LS.key, "30")) is None
    # the caller's own transaction: data, cursor and its own rows together
    with store.transaction() as s:
        ingest(s, LS, result([ann(3, 30)], cursor="c3"))
        save_cursor(s, CVAT, Cursor("cvat", {"since": "x"}))
    assert load_cursor(store, LS) == Cursor("labelstudio", {"since": "c3"})
    assert load_cursor(store, CVAT) == Cursor("cvat", {"since": "x"})


def test_sources_never_share_rows(store: Store) -> None:
    ingest(store, LS, result([ann(1, 10)]))
    ingest(store, CVAT, result([ann(1, 10, target=CVAT)]))
    assert count(store, HeadRow) == 2
    # reconciling one source never tombstones the other's
    ingest(store, CVAT, result([], present={"1": []}, all_tasks=[]))
    with store.session() as s:
        assert {x.source_key for x in live_revisions(s)} == {LS.key}


def test_items_keep_metadata_and_uris(store: Store) -> None:
    meta = {"source_id": "cam-feed", "timestamp": "2025-01-01T10:00:00Z", "camera": "c1", "scene": "s1",
            "video": "v1", "uploader": "bob", "frame": 3}  # fmt: skip
    a = ann(1, 10, item=item([], sha=sha_of("x"), uri="s3://b/x.jpg", group_id="g1", metadata=meta))
    b = ann(2, 20, item=item([], sha=sha_of("x"), uri="http://mirror/x.jpg"))
    ingest(store, LS, result([a, b]))
    with store.session() as s:
        row = s.get(ItemRow, sha_of("x"))
        uris = set(s.execute(select(ItemUriRow.uri).where(ItemUriRow.sha256 == sha_of("x"))).scalars())
    assert row is not None and not row.placeholder
    assert (row.group_id, row.source_id, row.camera, row.scene, row.video, row.uploader) == (
        "g1", "cam-feed", "c1", "s1", "v1", "bob",
    )  # fmt: skip
    assert row.timestamp == "2025-01-01T10:00:00Z" and row.meta is None
    with store.session() as s:
        extra = s.execute(select(RevisionRow.extra).where(RevisionRow.annotation_id == "10")).scalar_one()
    assert extra["item_metadata"] == meta  # all of it, with the state it came with
    assert uris == {"s3://b/x.jpg", "http://mirror/x.jpg"}


def test_placeholder_items_are_rekeyed(store: Store) -> None:
    a = ann(1, 10, item=item([box("cat", 1, 1, 5, 5)], uri="http://ls/data/1.jpg"))
    ingest(store, LS, result([a]))
    ph = placeholder_sha(LS.key, "1")
    with store.session() as s:
        assert s.get(TaskRow, (LS.key, "1")).item_sha == ph  # type: ignore[union-attr]
        assert placeholders(s) == [(ph, "http://ls/data/1.jpg")]
    # the sync fetched the bytes
    with store.transaction() as s:
        real = attach_bytes(s, store.blobs, ph, b"fake image bytes")
    with store.session() as s:
        assert s.get(TaskRow, (LS.key, "1")).item_sha == real  # type: ignore[union-attr]
        assert s.get(ItemRow, ph).replaced_by == real  # type: ignore[union-attr]
        assert s.get(ItemRow, real).uri == "http://ls/data/1.jpg"  # type: ignore[union-attr]
        assert placeholders(s) == []
        assert count(store, RevisionRow) == 1  # revisions untouched
    assert store.blobs.get(real) == b"fake image bytes"
    # a later pull without the sha never moves the task back
    ingest(
        store,
        LS,
        result([ann(1, 10, item=item([], uri="http://ls/data/1.jpg"), updated="2025-03-01T00:00:00Z")]),
    )
    with store.session() as s:
        assert s.get(TaskRow, (LS.key, "1")).item_sha == real  # type: ignore[union-attr]
    # a pull that carries the sha re-keys by itself
    ingest(store, LS, result([ann(2, 20, item=item([], uri="http://ls/data/2.jpg"))]))
    r = ingest(store, LS, result([ann(2, 20, sha=sha_of("two"), updated="2025-04-01T00:00:00Z")]))
    assert r.rekeyed == 1
    with store.session() as s:
        assert s.get(TaskRow, (LS.key, "2")).item_sha == sha_of("two")  # type: ignore[union-attr]
        assert s.get(ItemRow, placeholder_sha(LS.key, "2")).replaced_by == sha_of("two")  # type: ignore[union-attr]


def test_blobs_content_addressed(store: Store, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from labelloop.sync.blobs import BlobStore

    for root in (str(tmp_path / "b"), "memory://ll-test-blobs"):
        b = BlobStore(root)
        sha = b.put(b"hello")
        assert sha == sha_of_bytes(b"hello") and b.exists(sha)
        assert b.put(b"hello") == sha
        with b.open(sha) as f:
            assert f.read() == b"hello"
        assert b.verify(sha)
        with pytest.raises(StoreError):
            b.open(sha_of_bytes(b"nope"))
    assert not list((tmp_path / "b").rglob("*.tmp"))


def sha_of_bytes(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def test_unreachable_database_is_one_store_error() -> None:
    with pytest.raises(StoreError, match="unreachable") as e:
        Store.open("postgresql+psycopg://postgres@127.0.0.1:1/nothing", blob_root="memory://x")
    assert e.value.retryable


def test_bulk_ingest_is_fast_enough(store: Store) -> None:
    """A smoke figure, not the benchmark (item 10 measures the real sync): 2,000 annotations with 3
    boxes each, then a pass with no change over the same 2,000 tasks."""
    import time

    n = 2000
    anns = [
        ann(i, i, [box("a", 1, 1, 9, 9), box("b", 2, 2, 20, 20), box("a", 5, 5, 30, 30)]) for i in range(n)
    ]
    t = time.monotonic()
    done: list[int] = []
    r = ingest(store, LS, result(anns, all_tasks=[str(i) for i in range(n)]), progress=done.append)
    first = time.monotonic() - t
    assert r.new_revisions == n and sum(done) == n
    t = time.monotonic()
    r = ingest(store, LS, result([], present={}, all_tasks=[str(i) for i in range(n)]))
    nochange = time.monotonic() - t
    assert r.changed == 0
    assert first < 20 and nochange < 1.0, (first, nochange)
    with store.session() as s:
        assert s.execute(text("SELECT COUNT(*) FROM annotation_revisions")).scalar_one() == n


def test_concurrent_ingests_of_one_source_serialise(store: Store) -> None:
    """Two syncs of one source at once (two threads, two connections): both succeed, nothing is
    stored twice."""
    import threading

    errors: list[BaseException] = []

    def run(offset: int) -> None:
        try:
            for k in range(4):
                regions = [box("cat", 1, 1, 5 + k, 5)]
                anns = [
                    ann(i, i, regions, updated=f"2025-01-0{k + 1}T00:00:00Z")
                    for i in range(offset, offset + 60)
                ]
                ingest(store, LS, result(anns))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(o,)) for o in (0, 30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    with store.session() as s:
        heads = s.execute(select(HeadRow)).scalars().all()
        revs = s.execute(select(RevisionRow.annotation_id, RevisionRow.state_key)).all()
    assert len(heads) == 90 and {h.state_key for h in heads} == {"2025-01-04T00:00:00Z"}
    assert len(revs) == len(set(revs)) <= 90 * 4


def test_an_older_state_never_replaces_a_newer_one(store: Store) -> None:
    ingest(store, LS, result([ann(1, 10, [box("dog", 1, 1, 5, 5)], updated="2025-01-02T00:00:00Z")]))
    r = ingest(store, LS, result([ann(1, 10, [box("cat", 1, 1, 5, 5)], updated="2025-01-01T00:00:00Z")]))
    assert (r.new_revisions, r.stale) == (0, 1)
    with store.session() as s:
        assert s.get(HeadRow, (LS.key, "10")).state_key == "2025-01-02T00:00:00Z"  # type: ignore[union-attr]


def test_blobs_on_s3(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """s3:// by URL, against a real S3-compatible server (moto's), credentials from the environment."""
    import uuid

    from labelloop.sync.blobs import BlobStore

    for k, v in {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": s3_server,
    }.items():
        monkeypatch.setenv(k, v)
    bucket = f"ll-{uuid.uuid4().hex[:8]}"
    b = BlobStore(f"s3://{bucket}/blobs", endpoint_url=s3_server)
    b.fs.mkdir(bucket)
    sha = b.put(b"bytes in a bucket")
    assert b.exists(sha) and b.get(sha) == b"bytes in a bucket" and b.verify(sha)
    assert b.path(sha) == f"{bucket}/blobs/{sha[:2]}/{sha[2:4]}/{sha}"
