"""Storage faults, each with its promised outcome: a full disk under the blob root and under the
MLflow artifact store (small tmpfs mounts; we run as root, CI too), PostgreSQL restarted mid-sync,
and a corrupted champion.

- blob root full during a sync: the images that fit are stored whole, the rest fail with one log
  line naming the full disk and stay listed as missing (to be fetched again), no temporary file is
  left, every annotation is stored; once space is freed a pass with no change in Label Studio
  fetches the rest, after the sync's backoff (they are tried again on their own, not only when
  something changes or a reconcile is due);
- MLflow artifact store full during a retrain: the training fails with one line (MLflow, the file,
  "No space left on device"), its run is FAILED and no model version is registered (a version
  is registered only after its weights are uploaded); once space is freed the next retrain
  registers and promotes a version whose weights can be fetched;
- PostgreSQL restarted mid-sync (a cluster of the test's own, so the shared server is never
  touched): down between a pass's pull and its ingest, up again once that pass has reported: the
  pass says so, the loop retries, and the store equals Label Studio afterwards with no revision
  stored twice;
- the champion's weights file corrupted (a promoted version whose weights are cut in half): the
  backend keeps serving the model it has and /health's ``reload_error`` says which version would
  not load and why, until a good champion arrives.

Every mount is unmounted and every server stopped in teardown. Figures go to the faults JSON
(``tests.test_faults.record``).
"""

from __future__ import annotations

import glob
import logging
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from labelloop.errors import RegistryError
from labelloop.procs import free_port
from labelloop.retry import Backoff
from labelloop.sync.service import SyncService
from labelloop.sync.store import Store
from tests.helpers import wait_for
from tests.test_faults import record

FULL = "No space left on device"


@contextmanager
def tmpfs(path: Path, size: int) -> Iterator[Callable[[int], None]]:
    """A tmpfs of ``size`` bytes mounted at ``path``; yields a function that resizes it."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True
    )
    assert done.returncode == 0, f"these tests mount a tmpfs (run as root): {done.stderr.strip()}"

    def resize(new: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={new}", str(path)], check=True)

    try:
        yield resize
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.mark.labelstudio
def test_blob_root_full_mid_sync_stores_what_fits_and_the_rest_after_space_is_freed(  # type: ignore[no-untyped-def]
    label_studio, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from labelloop.connectors.labelstudio import LabelStudioClient, imports, projects
    from labelloop.connectors.labelstudio.tasks import iter_tasks
    from labelloop.sync.fetch import missing
    from tests.helpers import shape_images
    from tests.sync_helpers import CONFIG, ls_state, rect, source, store_state, sync_settings

    conn = LabelStudioClient(label_studio.url, label_studio.token, backoff_s=0.05)
    paths = shape_images(tmp_path / "img", 6)
    sizes = sorted(p.stat().st_size for p in paths)
    size = max(sizes[-1] + 8192, sum(sizes) // 2) // 4096 * 4096  # room for some, never for all
    assert size < sum(sizes)
    project = projects.create_project(conn, "blob root full", CONFIG)
    imports.upload_images(conn, project, paths)
    for t in iter_tasks(conn, project):
        conn.request("POST", f"/api/tasks/{t['id']}/annotations", json={"result": [rect("circle", 10)]})
    settings = sync_settings(label_studio, tmp_path, sync={"fetch_images": True})
    blob_root = tmp_path / "blobs"
    with (
        tmpfs(blob_root, size) as resize,
        Store.open(f"sqlite:///{tmp_path / 'store.db'}", blob_root=str(blob_root)) as store,
    ):
        quick = Backoff(base_s=0.2, cap_s=1.0)  # missing images are tried again on a quiet pass after it
        svc = SyncService(settings, store, [source(label_studio, project)], enqueue=False, backoff=quick)
        with caplog.at_level(logging.WARNING):
            full = svc.run_once().sources[0]
        assert 0 < full.images_fetched < 6 and full.images_fetched + full.images_failed == 6, full
        lines = [r.getMessage() for r in caplog.records if FULL in r.getMessage()]
        assert lines and all("\n" not in ln for ln in lines), caplog.text[-2000:]
        assert "could not be fetched" in lines[0] and str(blob_root) in lines[0]
        assert store_state(store, full.source) == ls_state(conn, project)  # every annotation kept
        target = svc.sources[0].target
        assert target is not None
        left = missing(store, target)
        assert len(left) == full.images_failed
        assert not list(blob_root.rglob("*.tmp"))  # no half-written file keeps the disk full

        def whole_blobs() -> int:
            """Items whose bytes are stored; each must hash to its key (no half-written blob)."""
            from sqlalchemy import select

            from labelloop.sync.store.models import ItemRow

            with store.session() as s:
                shas = s.scalars(select(ItemRow.sha256).where(ItemRow.replaced_by.is_(None))).all()
            stored = [sha for sha in shas if store.blobs.exists(sha)]
            assert all(store.blobs.verify(sha) for sha in stored)
            return len(stored)

        assert whole_blobs() == full.images_fetched  # the rest are listed to be fetched again
        resize(16 * 2**20)
        time.sleep(1.2)  # past the backoff; nothing changed in Label Studio, no reconcile is due
        again = svc.run_once().sources[0]
        assert not again.reconciled and again.new_revisions == 0, again
        assert again.ok and again.images_fetched == full.images_failed and again.images_failed == 0, again
        assert not missing(store, target) and whole_blobs() == 6
        assert store_state(store, again.source) == ls_state(conn, project)
    record(
        "blob_root_full",
        {
            "fault": f"blob root on a {size // 1024} KiB tmpfs during a sync of 6 uploaded images "
            f"({sum(sizes) // 1024} KiB)",
            "promise": "what fits is stored whole, the rest fetched after space is freed; one log line",
            "faults_injected": 1,
            "lost": 0,
            "duplicated": 0,
            "images_stored_while_full": full.images_fetched,
            "images_failed_while_full": full.images_failed,
            "images_fetched_after_space_freed": again.images_fetched,
        },
    )


def test_mlflow_artifact_store_full_registers_nothing_and_the_next_retrain_succeeds(  # type: ignore[no-untyped-def]
    tmp_path: Path, demo_weights: Path
) -> None:
    from labelloop.backend.registry import lines, tracking
    from labelloop.backend.training.retrain import run_training
    from tests.training_fixtures import shapes_version, training_settings

    settings = training_settings(tmp_path, demo_weights, epochs=1)
    version = shapes_version(settings, 16)
    artifacts = settings.data_dir / "mlflow" / "artifacts"  # beside the SQLite store (tracking.py)
    with tmpfs(artifacts, 1 * 2**20) as resize:  # smaller than the weights (~6 MB)
        with pytest.raises(RegistryError) as err:
            run_training(settings, version)
        message = str(err.value)
        assert "\n" not in message and FULL in message and message.startswith("MLflow: uploading"), message
        assert lines.list_versions(settings, "shapes") == []  # nothing half-registered
        assert lines.champion(settings, "shapes", fetch=False) is None
        c = tracking.client(settings)
        (exp,) = [e for e in c.search_experiments() if e.name == "shapes"]
        (failed,) = c.search_runs([exp.experiment_id])
        assert failed.info.status == "FAILED"

        resize(256 * 2**20)
        out = run_training(settings, version)
        assert out.promoted and out.version == 1
        (registered,) = lines.list_versions(settings, "shapes")
        weights = lines.fetch_weights(settings, registered)
        assert weights.is_file() and weights.stat().st_size > 1_000_000
    record(
        "mlflow_artifacts_full",
        {
            "fault": "MLflow artifact store on a 1 MiB tmpfs during a retrain (weights ~6 MB)",
            "promise": "one-line error, run FAILED, no version registered; the next retrain succeeds",
            "faults_injected": 1,
            "error": message[:160],
            "versions_registered_while_full": 0,
            "run_status_while_full": "FAILED",
            "next_retrain_after_space_freed": f"registered v{out.version}, promoted",
        },
    )


class PgCluster:
    """A PostgreSQL cluster of one test (initdb as user postgres, trust auth, a free port) in a
    folder postgres can reach; stopped (fast) and started again with pg_ctl."""

    def __init__(self) -> None:
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
        assert bins, "this test needs the PostgreSQL server binaries (/usr/lib/postgresql/*/bin)"
        self.bin = Path(bins[-1]).parent
        self.root = Path(tempfile.mkdtemp(prefix="labelloop-pg-"))
        self.data, self.port = self.root / "data", free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        self.up = False
        shutil.chown(self.root, "postgres", "postgres")

    def _pg(self, *args: str) -> None:
        cmd = " ".join([str(self.bin / args[0]), *args[1:]])
        done = subprocess.run(["su", "postgres", "-c", cmd], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{cmd}: {done.stdout[-1500:]} {done.stderr[-1500:]}"

    def start(self) -> PgCluster:
        self._pg("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        self.start_server()
        return self

    def start_server(self) -> None:
        opts = f"'-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c fsync=off'"
        self._pg("pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.root / "log"), "-w", "start")
        self.up = True

    def stop_server(self) -> None:
        self._pg("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        self.up = False

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            subprocess.run(
                ["su", "postgres", "-c", f"{self.bin / 'pg_ctl'} -D {self.data} -m immediate -w stop"],
                capture_output=True,
                timeout=60,
            )
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def pg_cluster() -> Iterator[PgCluster]:
    c = PgCluster()
    try:
        yield c.start()
    finally:
        c.stop()


class _DownAfterPull:
    """The real Label Studio platform, except that PostgreSQL is stopped right after a pull read
    its changes (``down["left"]`` more times): the fault lands mid-pass, between pull and ingest."""

    def __init__(self, platform: Any, cluster: PgCluster, down: dict[str, int]) -> None:
        self._p, self._cluster, self._down = platform, cluster, down  # down["left"]: shared count

    def __getattr__(self, name: str) -> Any:
        return getattr(self._p, name)

    def pull_changes(self, *a: Any, **kw: Any) -> Any:
        res = self._p.pull_changes(*a, **kw)
        if self._down["left"] > 0 and res.annotations:
            self._down["left"] -= 1
            self._cluster.stop_server()
        return res


@pytest.mark.labelstudio
def test_postgres_restarted_mid_sync_the_store_equals_label_studio_afterwards(  # type: ignore[no-untyped-def]
    label_studio, tmp_path: Path, pg_cluster: PgCluster
) -> None:
    """PostgreSQL goes down mid-pass (after the pull, before the ingest) and comes back once that
    pass has reported; twice, with new annotations each time. The loop retries (backoff) and the
    store ends equal to Label Studio, no revision stored twice."""
    from labelloop.connectors.labelstudio import LabelStudioClient, imports
    from labelloop.sync.prelabel import open_platform
    from tests.sync_helpers import (
        annotated_tasks,
        duplicate_revisions,
        ls_state,
        make_project,
        source,
        store_state,
        sync_settings,
    )

    conn = LabelStudioClient(label_studio.url, label_studio.token, backoff_s=0.05)
    project, _ = make_project(conn, "postgres restart", annotated_tasks(5))
    settings = sync_settings(label_studio, tmp_path, sync={"interval_s": 0.3})
    restarts, passes = 2, []
    down = {"left": restarts}
    stop = threading.Event()

    def opener(target: str, s: Any) -> Any:  # a failed pass closes its platform: the next one opens anew
        return _DownAfterPull(open_platform(target, s), pg_cluster, down)

    def on_pass(p: Any) -> None:
        passes.append(p)
        if not p.ok and not pg_cluster.up:  # the pass met the outage and said so: PostgreSQL comes
            imports.import_tasks(conn, project, annotated_tasks(5, start=10 * len(passes)))  # back
            pg_cluster.start_server()

    with Store.open(pg_cluster.url, blob_root=str(tmp_path / "blobs")) as store:
        svc = SyncService(settings, store, [source(label_studio, project)], enqueue=False, opener=opener)
        loop = threading.Thread(target=svc.run, kwargs={"stop": stop, "on_pass": on_pass}, daemon=True)
        loop.start()
        try:

            def synced() -> bool:
                if down["left"] or not pg_cluster.up or not passes[-1].ok:
                    return False
                return store_state(store, passes[-1].sources[0].source) == ls_state(conn, project)

            wait_for(synced, 120, 0.5, what="the store to equal Label Studio after the restarts")
            key = passes[-1].sources[0].source
            assert len(ls_state(conn, project)) == 5 * (restarts + 1)
            assert duplicate_revisions(store, key) == 0
        finally:
            stop.set()
            loop.join(timeout=60)
        assert not loop.is_alive()
    # each outage fails the pass it lands in, with its reason; the passes after it back off
    failed = [p for p in passes if not p.ok and not p.sources[0].skipped]
    waited = sum(p.sources[0].skipped for p in passes)
    errors = [p.sources[0].error or "" for p in failed]
    assert len(failed) == restarts and all("store write" in e for e in errors), errors
    record(
        "postgres_restarted_mid_sync",
        {
            "fault": "the store's PostgreSQL (a cluster of the test) stopped mid-pass, after the pull and "
            f"before the ingest, then started again: {restarts} times, 5 new annotated tasks each time",
            "promise": "the pass reports it; the loop retries; the store equals Label Studio afterwards",
            "faults_injected": restarts,
            "lost": 0,
            "duplicated": 0,
            "passes": len(passes),
            "passes_failed": len(failed),
            "passes_backing_off": waited,
            "failure": errors[0][:160],
        },
    )


def test_a_corrupted_champion_keeps_the_served_model_and_health_says_why(  # type: ignore[no-untyped-def]
    backend_factory, tmp_path: Path, demo_weights: Path
) -> None:
    """A new champion whose weights file is corrupted (the real weights cut in half): the backend
    keeps serving the model it has, /health names the version that would not load and why, and
    the error clears when a good champion arrives."""
    import uuid

    import requests

    from labelloop.backend.registry import lines
    from labelloop.settings import Settings
    from tests.helpers import SHAPES_CONFIG, shape_images
    from tests.test_hot_reload import add_version

    line = f"corrupt-{uuid.uuid4().hex[:8]}"
    uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    (tmp_path / "mlflow").mkdir()
    s = Settings(
        cache_dir=tmp_path / "cache", registry={"mlflow_tracking_uri": uri}, train={"model_line": line}
    )
    good = add_version(s, demo_weights)
    lines.promote(s, line, good)
    b = backend_factory(
        LABELLOOP_MLFLOW_TRACKING_URI=uri,
        LABELLOOP_TRAIN_MODEL_LINE=line,
        LABELLOOP_SERVE_FOLLOW_LINE="true",
        LABELLOOP_SERVE_RELOAD_POLL_S="1",
        LABELLOOP_HTTP_WORKERS="1",
        LABELLOOP_IMGSZ="64",
        LABELLOOP_LOCAL_ROOTS=str(tmp_path / "img"),
    )

    def health() -> dict[str, Any]:
        return requests.get(f"{b.url}/health", timeout=5).json()

    assert health()["model_version"] == f"{line}-v{good}" and health()["reload_error"] is None
    weights = demo_weights.read_bytes()
    bad = add_version(s, weights[: len(weights) // 2])
    lines.promote(s, line, bad)
    told = wait_for(lambda: health()["reload_error"], 30, 0.5, what="/health to report the corrupt champion")
    assert told.startswith(f"{line}-v{bad} cannot be served, still serving {line}-v{good}: "), told
    assert "\n" not in told and health()["model_version"] == f"{line}-v{good}"
    image = shape_images(tmp_path / "img", 1, size=64)[0]
    body = {"tasks": [{"id": 1, "data": {"image": str(image)}}], "label_config": SHAPES_CONFIG}
    r = requests.post(f"{b.url}/predict", json=body, timeout=60)
    assert r.status_code == 200 and r.json()["model_version"] == f"{line}-v{good}"  # still served
    fixed = add_version(s, demo_weights)
    lines.promote(s, line, fixed)
    wait_for(lambda: health()["model_version"] == f"{line}-v{fixed}", 30, 0.5, what="the good champion")
    assert health()["reload_error"] is None
    record(
        "champion_weights_corrupted",
        {
            "fault": "a champion promoted with its weights file cut in half",
            "promise": "the backend keeps serving the model it has; /health says which version failed and why",
            "faults_injected": 1,
            "lost": 0,
            "health_reload_error": told[:160],
            "predict_after": f"200, served by {line}-v{good}",
            "cleared_by_next_good_champion": True,
        },
    )
