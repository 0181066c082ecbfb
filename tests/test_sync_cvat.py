"""The sync service against the CVAT peer (CVAT 2.73's schema over real HTTP, the real cvat-sdk):
prelabelled frames and a person's corrections land in the store; CVAT going away is one log line."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from cvat_sdk import make_client

from labelloop.settings import Settings, SyncSource
from labelloop.sync.prelabel import prelabel
from labelloop.sync.service import SyncService
from labelloop.sync.store import Store
from tests.cvat_peer import CvatPeer, patch_job_shapes
from tests.helpers import shape_images
from tests.store_fixtures import *  # noqa: F403
from tests.sync_helpers import duplicate_revisions, store_state


def test_cvat_frames_and_corrections_sync_and_an_outage_is_one_line(
    tmp_path: Path, store: Store, demo_weights: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pool = tmp_path / "pool"
    shape_images(pool, 4)
    with CvatPeer() as peer:
        s = Settings(
            cvat={"url": peer.url, "user": "admin1", "password": "admin1-pw"}, cache_dir=tmp_path / "cache"
        )
        task = prelabel(s, demo_weights, "cvat", images=[pool], segment_size=2).where["task"]
        svc = SyncService(s, store, [SyncSource(platform="cvat", url=peer.url, task=task)], enqueue=False)
        first = svc.run_once()
        assert first.ok, first.to_dict()
        src = first.sources[0]
        assert src.new_revisions == 4  # one annotation per frame: the frame's shapes in its job
        held = store_state(store, src.source)
        assert sorted(t for t, _ in held) == [f"frame:{i}" for i in range(4)]
        assert src.images_fetched == 4 and src.images_failed == 0  # the frames, from CVAT's data API

        job = sorted(j for j, v in peer.jobs.items() if v["task_id"] == task)[0]
        peer.set_job(job, assignee="annotator", state="in progress")
        time.sleep(1.1)
        with make_client(peer.url, credentials=("annotator", "ann-pw")) as human:
            ann, _ = human.api_client.jobs_api.retrieve_annotations(job)
            label_id = ann.shapes[0].label_id
            shape = {"type": "rectangle", "label_id": label_id, "source": "manual", "frame": 0}
            patch_job_shapes(human, "create", job, {**shape, "points": [5.0, 5.0, 40.0, 40.0]})
        second = svc.run_once()
        assert second.ok and second.sources[0].new_revisions >= 1
        assert duplicate_revisions(store, src.source) == 0
        quiet = svc.run_once()
        assert quiet.ok and quiet.changed == 0

    caplog.set_level(logging.WARNING, logger="labelloop")
    down = svc.run_once()  # the peer is gone
    assert not down.ok and down.sources[0].error
    assert svc.run_once().sources[0].skipped  # backing off
    lines = [r for r in caplog.records if "retrying with backoff" in r.getMessage()]
    assert len(lines) == 1
    svc.close()
