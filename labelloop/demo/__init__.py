"""``labelloop demo``: the whole loop on embedded defaults, on this machine.

Sample images -> Label Studio with prelabels from the demo detector -> a simulated annotator
corrects some tasks from ground truth through the Label Studio API -> the sync pulls them into a
versioned store and the trigger enqueues a retrain -> an rq worker trains, the gate judges, the
registry promotes -> the backend hot-reloads the champion and re-prelabels the untouched tasks ->
the annotator corrects the rest from the new prelabels. Then a short report (labels used, model
versions, mAP50-95 before and after on the human val split, the share of prelabel boxes kept
before and after, time per stage), and Label Studio and the backend stay up until Ctrl-C.

Everything a run writes (store, blobs, MLflow, Label Studio data) is under one folder of its own
in the cache dir, and it uses its own queue prefix, so runs never see each other's state.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC
from pathlib import Path
from typing import Any

import numpy as np
import requests
from redis import Redis
from rich.console import Console
from rich.table import Table

from labelloop.backend.inference.demo_model import CLASSES, render_shapes
from labelloop.backend.inference.weights import model_version_of, resolve_weights
from labelloop.backend.serving.gunicorn import BackendProcess
from labelloop.connectors.formats.labelstudio import generate_label_config
from labelloop.connectors.labelstudio import LabelStudioClient, imports, projects
from labelloop.connectors.labelstudio.server import LabelStudioServer
from labelloop.connectors.labelstudio.tasks import iter_tasks
from labelloop.demo.annotator import Corrections, correct_tasks
from labelloop.errors import ConfigError, LabelloopError
from labelloop.procs import free_port
from labelloop.settings import Settings, SyncSource
from labelloop.types import Box, ImageItem, Provenance, Region, Source

console = Console(stderr=True)
LINE = "demo"


@dataclass
class LoopReport:
    images: int
    corrected_before: int = 0  # tasks annotated from the first model's prelabels
    corrected_after: int = 0  # tasks annotated from the new champion's prelabels
    labels_used: int = 0  # human-verified images in the version trained on
    version: str | None = None
    model_before: str = ""
    model_after: str | None = None
    promoted: bool = False
    gate_reason: str = ""
    map50_95_before: float | None = None  # on the version's human val split
    map50_95_after: float | None = None
    kept_before: float | None = None  # share of final boxes that are prelabel boxes kept as drawn
    kept_after: float | None = None
    training: dict[str, Any] = field(default_factory=dict)  # the job's timings (s) and images per split
    promote_to_served_s: float | None = None  # from the job's end (promotion is its last step)
    final_trigger: str | None = None  # the trigger after the second batch (baseline: the new champion)
    stages: dict[str, float] = field(default_factory=dict)  # seconds
    urls: dict[str, str] = field(default_factory=dict)
    workdir: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@contextmanager
def _stage(report: LoopReport, name: str, status: str) -> Iterator[None]:
    t0 = time.monotonic()
    with console.status(status):
        yield
    report.stages[name] = round(time.monotonic() - t0, 2)
    console.print(f"[green]✓[/] {status.rstrip('.')} ({report.stages[name]:.1f}s)")


def sample_images(folder: Path, n: int, seed: int = 2024) -> dict[Path, ImageItem]:
    """``n`` generated images and their true boxes (the simulated annotator's ground truth)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(n):
        img, objects = render_shapes(rng, 320)
        path = folder / f"shapes_{i:03d}.jpg"
        img.save(path, quality=90)
        regions = []
        for cls, poly in objects:
            p = np.array(poly)
            (x1, y1), (x2, y2) = p.min(0), p.max(0)
            box = Box(float(x1), float(y1), float(x2), float(y2))
            regions.append(Region(CLASSES[cls], box, provenance=Provenance(source=Source.HUMAN)))
        out[path] = ImageItem(uri=str(path), width=320, height=320, regions=regions)
    return out


def ensure_redis(url: str, work: Path) -> tuple[str, subprocess.Popen | None]:
    """The configured Redis, else one started here (``redis-server`` on PATH)."""
    try:
        Redis.from_url(url, socket_connect_timeout=2).ping()
        return url, None
    except Exception as e:
        exe = shutil.which("redis-server")
        if exe is None:
            raise ConfigError(
                f"Redis at {url} is unreachable ({e}) and redis-server is not installed: start Redis "
                "or set LABELLOOP_REDIS_URL"
            ) from None
    port = free_port(6390)
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--save", "", "--appendonly", "no", "--dir", str(work)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    own = f"redis://127.0.0.1:{port}/0"
    for _ in range(50):
        try:
            Redis.from_url(own).ping()
            return own, proc
        except Exception:
            time.sleep(0.1)
    proc.kill()
    raise ConfigError(f"redis-server did not start on port {port}")


def _wait(pred: Callable[[], bool], timeout: float, what: str, every: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(every)
    raise LabelloopError(f"timed out after {timeout:.0f}s waiting for {what}")


def demo_settings(settings: Settings, work: Path, redis_url: str, n_first: int) -> Settings:
    """The run's own store, blobs, MLflow, queue prefix and model line; the trigger set to fire on
    the first batch of corrections."""
    return settings.with_(
        store={"url": f"sqlite:///{work / 'store.db'}", "blob_root": str(work / "blobs")},
        registry={"mlflow_tracking_uri": f"sqlite:///{work / 'mlflow.db'}"},
        queue={"redis_url": redis_url, "prefix": f"demo-{work.name}"},
        train={"model_line": LINE},
        trigger={"min_new_labels": n_first},
        sync={"snapshot_min_changes": 1},
    )


def run_demo(
    settings: Settings,
    port: int,
    backend_port: int,
    n_images: int,
    keep_running: bool,
    *,
    corrected: int | None = None,
    json_out: Path | None = None,
) -> LoopReport:
    from labelloop.backend.registry import lines
    from labelloop.sync.service import SyncService
    from labelloop.sync.stats import effort_by_model, effort_per_annotation
    from labelloop.sync.store import Store

    weights = resolve_weights(settings)
    work = _new_run_dir(settings.cache_dir / "demo")
    n_first = corrected if corrected is not None else max(8, n_images * 2 // 3)
    if not 4 <= n_first < n_images:
        raise ConfigError(f"--corrected must be between 4 and {n_images - 1} (--images {n_images})")
    report = LoopReport(images=n_images, model_before=model_version_of(weights), workdir=str(work))
    truth = sample_images(work / "images", n_images)
    redis_url, own_redis = ensure_redis(settings.queue.redis_url, work)
    s = demo_settings(settings, work, redis_url, n_first)
    ls = backend = None
    try:
        with _stage(report, "start", "starting Label Studio and the ML backend (first run: ~1 min)..."):
            ls = LabelStudioServer(work / "label-studio", port=free_port(port)).start()
            s = s.with_(labelstudio={"url": ls.url, "token": ls.token})  # the backend trusts this server
            backend = BackendProcess(
                work / "backend",
                weights,
                redis_url,
                port=free_port(backend_port),
                settings=s.with_(serve={"follow_line": True}),
                env={"LABELLOOP_QUEUE_PREFIX": s.queue.prefix},
            ).start()
        client = LabelStudioClient(ls.url, ls.token)
        with _stage(report, "prelabel", f"importing {n_images} images and prelabelling them..."):
            project = projects.create_project(
                client,
                f"labelloop demo {time.strftime('%H:%M:%S')}",
                generate_label_config("detect", list(CLASSES)),
                "Shapes prelabelled by the labelloop demo detector, corrected, retrained, prelabelled again",
            )
            uploaded = imports.upload_images(client, project, list(truth))
            projects.connect_ml_backend(client, project, backend.url)
            projects.retrieve_predictions(client, project)
            projects.set_model_version(client, project, report.model_before)
            view = projects.create_uncertainty_view(client, project)
        by_task = _truth_by_task(client, project, truth, uploaded)
        first = dict(list(sorted(by_task.items()))[:n_first])
        with _stage(report, "annotate", f"a simulated annotator corrects {len(first)} tasks..."):
            before = correct_tasks(client, project, first, model_version=report.model_before)
        report.corrected_before, report.kept_before = before.tasks, before.prelabel_kept_share

        with Store.open(settings=s) as store:
            source = SyncSource(platform="labelstudio", url=ls.url, project=project)
            sync = SyncService(s, store, [source], trained_on=lines.trained_on(s, LINE))
            with _stage(report, "sync", "sync into the dataset store, version, trigger..."):
                passed = sync.run_once(force_reconcile=True)
            if not passed.ok or not passed.job_id:
                raise LabelloopError(f"the sync did not enqueue a retrain: {passed.line()} {passed.trigger}")
            report.version = passed.version
            watch = _VersionWatch(backend.url)
            with _stage(report, "train", "the worker fine-tunes, the gate judges, the registry decides..."):
                outcome, ended = _run_worker(s, passed.job_id)
            images = (outcome.get("card") or {}).get("images")
            report.training = {**(outcome.get("timings") or {}), "images": images}
            images = images or {}
            report.labels_used = int(sum(images.values())) if images else len(first)
            report.promoted, report.gate_reason = bool(outcome["promoted"]), outcome["reason"]
            report.map50_95_after = _metric(outcome, "challenger")
            report.map50_95_before = _base_map(s, store, passed.version, weights)
            if report.promoted:
                report.model_after = outcome["model_version"]
                with _stage(report, "serve", f"the backend hot-reloads {report.model_after}..."):
                    _wait(
                        lambda: _served(backend.url) == report.model_after, 120, "the new champion to serve"
                    )
                served_at = watch.stop(report.model_after)
                if served_at is not None and ended is not None:
                    report.promote_to_served_s = round(max(0.0, served_at - ended), 3)
                rest = {t: it for t, it in by_task.items() if t not in first}
                with _stage(report, "reprelabel", f"re-prelabelling {len(rest)} untouched tasks..."):
                    _wait(
                        lambda: _prelabelled(client, project, report.model_after, rest) == len(rest),
                        300,
                        "the untouched tasks to get the new champion's prelabels",
                        every=1.0,
                    )
                with _stage(report, "annotate_after", f"the annotator corrects {len(rest)} tasks..."):
                    after = correct_tasks(client, project, rest, model_version=report.model_after)
                report.corrected_after, report.kept_after = after.tasks, after.prelabel_kept_share
                report.final_trigger = sync.run_once().trigger
            effort = {
                k: e.share_from_prelabel for k, e in effort_by_model(effort_per_annotation(store)).items()
            }
            sync.close()
        champ = lines.champion(s, LINE, fetch=False)
        report.urls = {
            "label_studio": f"{ls.url}/projects/{project}/data?tab={view}",
            "login": f"{ls.username} / {ls.password}",
            "backend": backend.url,
            "mlflow": f"mlflow ui --backend-store-uri sqlite:///{work / 'mlflow.db'}",
        }
        _print_report(report, champ.model_version if champ else None, effort, before)
        if json_out:
            json_out.parent.mkdir(parents=True, exist_ok=True)
            json_out.write_text(json.dumps(report.to_dict(), indent=2))
        while keep_running:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        if backend:
            backend.stop()
        if ls:
            ls.stop()
        if own_redis:
            own_redis.kill()
    return report


def _new_run_dir(root: Path, keep: int = 5) -> Path:
    """A fresh folder for this run; older runs beyond the newest ``keep`` are removed."""
    root.mkdir(parents=True, exist_ok=True)
    for old in sorted(root.glob("run-*"))[: -(keep - 1) or None]:
        shutil.rmtree(old, ignore_errors=True)
    work = root / f"run-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    work.mkdir()
    return work


def _truth_by_task(
    client: LabelStudioClient, project: int, truth: dict[Path, ImageItem], uploaded: Any
) -> dict[int, ImageItem]:
    """Task id -> ground truth, matched by the content hash each upload recorded."""
    from labelloop.connectors.labelstudio.imports import SHA_FIELD
    from labelloop.fsutil import sha256_file

    sha_truth = {sha256_file(p): it for p, it in truth.items()}
    out = {}
    for t in iter_tasks(client, project, include="id,data"):
        sha = (t.get("data") or {}).get(SHA_FIELD)
        if sha in sha_truth:
            out[int(t["id"])] = sha_truth[sha]
    if len(out) != len(truth):
        raise LabelloopError(f"only {len(out)} of {len(truth)} images were found in project {project}")
    return out


class _VersionWatch:
    """Polls the backend's /health every 0.1 s from a thread: when did it first serve a version."""

    def __init__(self, url: str) -> None:
        import threading

        self.url, self.seen, self._stop = url, {}, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            v = _served(self.url)
            if v is not None and v not in self.seen:
                self.seen[v] = time.time()

    def stop(self, version: str | None) -> float | None:
        self._stop.set()
        self._thread.join(timeout=2)
        return self.seen.get(version) if version else None


def _run_worker(s: Settings, job_id: str) -> tuple[dict[str, Any], float | None]:
    """``labelloop worker --queues train --burst``, as a deployment runs it; the job's outcome."""
    from rq.job import Job

    env = {**os.environ, **s.environment()}
    cmd = [sys.executable, "-m", "labelloop.cli", "worker", "--queues", "train", "--burst"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    job = Job.fetch(job_id, connection=Redis.from_url(s.queue.redis_url))
    if job.get_status() != "finished":
        tail = (done.stderr or "").strip().splitlines()[-3:]
        reason = (job.meta or {}).get("failure") or " | ".join(tail)
        raise LabelloopError(f"the retrain job {job_id} {job.get_status()}: {reason}")
    ended = job.ended_at.replace(tzinfo=UTC).timestamp() if job.ended_at else None
    return job.return_value() or {}, ended


def _metric(outcome: dict[str, Any], who: str) -> float | None:
    m = (outcome.get("decision") or {}).get(who) or {}
    v = m.get("map50_95")
    return None if v is None else round(float(v), 4)


def _base_map(s: Settings, store: Any, version: str | None, weights: Path) -> float | None:
    """The first model's mAP50-95 on the same human val split the challenger was judged on."""
    import tempfile

    from labelloop.backend.training.gate import evaluate
    from labelloop.sync.export import export_version

    if version is None:
        return None
    with tempfile.TemporaryDirectory(dir=s.data_dir) as d:
        export_version(store, version, Path(d) / "data", "yolo")
        data_yaml = next(Path(d).rglob("data.yaml"))
        return round(evaluate(weights, data_yaml, imgsz=s.train.imgsz, workdir=Path(d)).map50_95, 4)


def _served(url: str) -> str | None:
    try:
        return requests.get(f"{url}/health", timeout=2).json().get("model_version")
    except (requests.RequestException, ValueError):
        return None


def _prelabelled(
    client: LabelStudioClient, project: int, version: str | None, tasks: dict[int, ImageItem]
) -> int:
    n = 0
    for t in iter_tasks(client, project):
        if int(t["id"]) in tasks and any(
            p.get("model_version") == version for p in t.get("predictions") or []
        ):
            n += 1
    return n


def _print_report(
    r: LoopReport, champion: str | None, effort: dict[str, float | None], before: Corrections
) -> None:
    def pct(v: float | None) -> str:
        return "–" if v is None else f"{100 * v:.0f} %"

    def num(v: float | None) -> str:
        return "–" if v is None else f"{v:.3f}"

    t = Table(title="labelloop demo: one loop", show_header=True)
    t.add_column("")
    t.add_column("before")
    t.add_column("after")
    t.add_row("model", r.model_before, r.model_after or f"(kept: {r.model_before})")
    t.add_row("mAP50-95 on the human val split", num(r.map50_95_before), num(r.map50_95_after))
    t.add_row("prelabel boxes kept as drawn", pct(r.kept_before), pct(r.kept_after))
    t.add_row("tasks corrected", str(r.corrected_before), str(r.corrected_after))
    Console().print(t)
    Console().print(
        f"dataset version {str(r.version)[:12]} ({r.labels_used} human-verified images trained on)"
    )
    Console().print(f"gate: {r.gate_reason}")
    Console().print(f"champion now: {champion or 'none'}")
    for mv, share in effort.items():
        Console().print(f"  final boxes that came from {mv}'s prelabels: {pct(share)}")
    Console().print("time per stage: " + ", ".join(f"{k} {v:.1f}s" for k, v in r.stages.items()))
    Console().print(
        f"\n[bold green]Label Studio[/] {r.urls['label_studio']}  (login {r.urls['login']})\n"
        f"[bold green]ML backend[/]   {r.urls['backend']}\n"
        f"[bold green]runs[/]         {r.urls['mlflow']}\n"
        f"[dim]everything of this run: {r.workdir}[/]"
    )
