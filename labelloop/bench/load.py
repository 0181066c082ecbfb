"""``labelloop bench load``: /predict under concurrent clients, and /health while a large /predict runs.

A real gunicorn backend (the cached demo model, CPU) predicts on JPEGs served over HTTP from
127.0.0.1 by ``python -m http.server`` (private URLs allowed for this backend only, its image
cache off so every task downloads its image). Load comes from locust used as a library
(``locust.env.Environment``, a local runner, ``stats``), loopback only, each phase bounded in time:

- /predict with 1 task per request at 1, 8 and 32 concurrent clients for ``duration_s`` each:
  p50/p99 latency, requests/s and images/s; ratios against the 1-client level of the same run;
- one /predict of ``big_tasks`` tasks while other clients poll /health and /setup: their p99 and
  max against Label Studio's budgets (1 s and 3 s), and how many of the big batch were answered.

Locust monkey-patches the standard library with gevent when imported, so the locust part runs in
a child process (``python -m labelloop.bench.load SPEC``) and this process, which starts and
stops the backend and image server, stays unpatched.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

HEALTH_BUDGET_S = 1.0  # Label Studio's timeouts for an ML backend's /health and /setup
SETUP_BUDGET_S = 3.0
LABEL_CONFIG = (
    '<View><Image name="image" value="$image"/><RectangleLabels name="label" toName="image">'
    '<Label value="circle"/><Label value="square"/><Label value="triangle"/></RectangleLabels></View>'
)


# ---------------------------------------------------------------------------- the locust child


def _locust_phase(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one phase in this (gevent-patched) process; its stats as a dict."""
    import gevent
    from locust import FastHttpUser, constant, constant_pacing, task
    from locust.env import Environment

    urls: list[str] = spec["image_urls"]
    per_request: int = spec.get("tasks_per_request", 1)

    def tasks_from(start: int, n: int) -> list[dict[str, Any]]:
        return [{"id": start + i, "data": {"image": urls[(start + i) % len(urls)]}} for i in range(n)]

    class PredictUser(FastHttpUser):
        wait_time = constant(0)
        network_timeout = connection_timeout = 600.0
        counter = 0

        @task
        def predict(self) -> None:
            PredictUser.counter += per_request
            body = {"tasks": tasks_from(PredictUser.counter, per_request), "label_config": LABEL_CONFIG}
            with self.client.post("/predict", json=body, name="/predict", catch_response=True) as r:
                results = (r.json() or {}).get("results") if r.status_code == 200 else None
                if not isinstance(results, list) or len(results) != per_request:
                    r.failure(f"HTTP {r.status_code}: {str(r.text)[:200]}")

    class ProbeUser(FastHttpUser):
        wait_time = constant_pacing(spec.get("probe_every_s", 0.2))
        network_timeout = connection_timeout = 30.0

        @task(3)
        def health(self) -> None:
            self.client.get("/health", name="/health")

        @task(1)
        def setup(self) -> None:
            self.client.post("/setup", json={"project": "1.0", "schema": LABEL_CONFIG}, name="/setup")

    env = Environment(user_classes=[PredictUser, ProbeUser], host=spec["url"])
    runner = env.create_local_runner()
    out: dict[str, Any] = {}
    if spec["kind"] == "concurrency":
        users = spec["users"]
        runner.start(user_count=users, spawn_rate=users, user_classes=[PredictUser])
        gevent.sleep(spec.get("warmup_s", 2.0))
        env.stats.reset_all()  # the warm-up's requests (first connections) are not measured
        t0 = time.monotonic()
        gevent.sleep(spec["duration_s"])
        runner.stop()  # in-flight requests are killed, not counted
        elapsed = time.monotonic() - t0
        s = env.stats.get("/predict", "POST")
        ok = s.num_requests - s.num_failures
        out = {
            "users": users,
            "seconds": elapsed,
            "requests": s.num_requests,
            "failures": s.num_failures,
            "p50_ms": s.get_response_time_percentile(0.5) if s.num_requests else None,
            "p99_ms": s.get_response_time_percentile(0.99) if s.num_requests else None,
            "max_ms": s.max_response_time if s.num_requests else None,
            "requests_per_s": ok / elapsed,
            "images_per_s": ok * per_request / elapsed,
        }
    else:  # one big /predict while probes poll /health and /setup
        import requests

        n = spec["big_tasks"]
        big: dict[str, Any] = {}

        def one_big() -> None:
            t = time.monotonic()
            body = {"tasks": tasks_from(0, n), "label_config": LABEL_CONFIG}
            r = requests.post(f"{spec['url']}/predict", json=body, timeout=spec["big_timeout_s"])
            results = r.json().get("results", []) if r.status_code == 200 else []
            big.update(
                status=r.status_code,
                seconds=time.monotonic() - t,
                answered=sum(1 for x in results if x),  # [] = not reached within the budget
                results=len(results),
            )

        runner.start(user_count=spec["probes"], spawn_rate=spec["probes"], user_classes=[ProbeUser])
        gevent.sleep(0.5)
        env.stats.reset_all()  # only probes while the big /predict is in flight count
        g = gevent.spawn(one_big)
        g.join(timeout=spec["big_timeout_s"] + 10)
        runner.stop()
        out = {"tasks": n, "big_predict": big}
        for name, method, budget in (("/health", "GET", HEALTH_BUDGET_S), ("/setup", "POST", SETUP_BUDGET_S)):
            s = env.stats.get(name, method)
            key = name.strip("/")
            out[key] = {
                "requests": s.num_requests,
                "failures": s.num_failures,
                "p50_ms": s.get_response_time_percentile(0.5) if s.num_requests else None,
                "p99_ms": s.get_response_time_percentile(0.99) if s.num_requests else None,
                "max_ms": s.max_response_time if s.num_requests else None,
                "over_budget": sum(c for ms, c in s.response_times.items() if ms > budget * 1000),
                "budget_ms": budget * 1000,
            }
    runner.quit()
    return out


def _run_phase(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    import subprocess

    p = subprocess.run(
        [sys.executable, "-m", "labelloop.bench.load", json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        raise RuntimeError(f"locust phase {spec['kind']} failed (rc {p.returncode}): {p.stderr[-2000:]}")
    return json.loads(lines[-1])


# ---------------------------------------------------------------------------- the bench


def _images(d: Path, n: int, size: int) -> list[str]:
    import numpy as np

    from labelloop.backend.inference.demo_model import render_shapes

    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = []
    for i in range(n):
        render_shapes(rng, size)[0].save(d / f"{i:03d}.jpg", quality=90)
        names.append(f"{i:03d}.jpg")
    return names


def _worker_rss_mb(backend_pid: int | None) -> dict[str, float]:
    """RSS of each gunicorn worker under the backend's process group leader."""
    if backend_pid is None:
        return {}
    import psutil

    try:
        procs = psutil.Process(backend_pid).children(recursive=True)
    except psutil.Error:
        return {}
    out = {}
    for p in procs:
        try:
            if "gunicorn" in " ".join(p.cmdline()) or p.name().startswith(("python", "gunicorn")):
                out[str(p.pid)] = round(p.memory_info().rss / 2**20, 1)
        except psutil.Error:
            continue
    return out


def _warm(url: str, image_urls: list[str], workers: int) -> None:
    """A few single-task /predict calls first, so no level measures a worker's first predict
    (seconds on a busy host: first image, first forward)."""
    import requests

    for i in range(2 * workers):
        body = {
            "tasks": [{"id": i, "data": {"image": image_urls[i % len(image_urls)]}}],
            "label_config": LABEL_CONFIG,
        }
        requests.post(f"{url}/predict", json=body, timeout=300).raise_for_status()


class _PeakRss:
    """The largest RSS of each backend process, sampled every ``every_s`` in a thread."""

    def __init__(self, backend_pid: int | None, every_s: float = 0.5) -> None:
        import threading

        self.pid, self.every_s, self.mb = backend_pid, every_s, dict[str, float]()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            for pid, mb in _worker_rss_mb(self.pid).items():
                self.mb[pid] = max(mb, self.mb.get(pid, 0.0))

    def __enter__(self) -> _PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def bench_load(
    out: Path,
    *,
    levels: tuple[int, ...] = (1, 8, 32),
    duration_s: float = 20.0,
    big_tasks: int = 10_000,
    probes: int = 4,
    workers: int = 2,
    n_images: int = 32,
    image_size: int = 640,
    url: str | None = None,
    image_dir: Path | None = None,
    backend_pid: int | None = None,
) -> dict[str, Any]:
    """Start a backend (unless ``url``: one started with LABELLOOP_ALLOW_PRIVATE_URLS=true and its
    image cache off) and an image server, run the phases, print a table, write JSON."""
    import platform
    import subprocess
    import tempfile

    import requests

    from labelloop.procs import free_port

    work = Path(tempfile.mkdtemp(prefix="labelloop-load-"))
    img_dir = image_dir or work / "img"
    names = _images(img_dir, n_images, image_size)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=img_dir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    backend = None
    try:
        for _ in range(100):
            try:
                if requests.get(f"http://127.0.0.1:{port}/{names[0]}", timeout=1).ok:
                    break
            except requests.RequestException:
                time.sleep(0.1)
        if url is None:
            from labelloop.backend.inference.demo_model import build_demo_model
            from labelloop.backend.serving.gunicorn import BackendProcess
            from labelloop.settings import load_settings

            settings = load_settings()
            backend = BackendProcess(
                work / "backend",
                build_demo_model(settings.cache_dir),
                settings.queue.redis_url,
                {
                    "LABELLOOP_HTTP_WORKERS": str(workers),
                    "LABELLOOP_ALLOW_PRIVATE_URLS": "true",
                    "LABELLOOP_IMAGE_CACHE_BYTES": "0",
                    "LABELLOOP_MEMO_ENTRIES": "0",  # repeated images must run the model each time
                },
            ).start()
            url, backend_pid = backend.url, backend.proc.pid if backend.proc else None
        image_urls = [f"http://127.0.0.1:{port}/{n}" for n in names]
        base = {"url": url, "image_urls": image_urls}
        _warm(url, image_urls, workers)
        rss_before = _worker_rss_mb(backend_pid)
        levels_out = []
        for users in levels:
            spec = {**base, "kind": "concurrency", "users": users, "duration_s": duration_s}
            levels_out.append(_run_phase(spec, timeout=duration_s + 300))
            levels_out[-1]["rss_mb_after"] = _worker_rss_mb(backend_pid)  # bounded, or growing?
        big_timeout = 900.0
        spec = {**base, "kind": "big", "big_tasks": big_tasks, "probes": probes, "big_timeout_s": big_timeout}
        with _PeakRss(backend_pid) as peak:  # sampled while the big /predict runs
            big = _run_phase(spec, timeout=big_timeout + 120)
        big["rss_mb_peak"] = peak.mb
        rss_after = _worker_rss_mb(backend_pid)
    finally:
        if backend is not None:
            backend.stop()
        server.terminate()
        server.wait(timeout=10)
        import shutil

        shutil.rmtree(work, ignore_errors=True)  # images and the backend's log
    one = levels_out[0]
    for lv in levels_out:
        lv["images_per_s_vs_1"] = lv["images_per_s"] / one["images_per_s"] if one["images_per_s"] else None
        lv["p50_vs_1"] = lv["p50_ms"] / one["p50_ms"] if one["p50_ms"] and lv["p50_ms"] else None
        lv["p99_vs_1"] = lv["p99_ms"] / one["p99_ms"] if one["p99_ms"] and lv["p99_ms"] else None
    result = {
        "kind": "load",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "backend": {"workers": workers, "threads_per_worker": 4, "device": "cpu", "image_cache": "off"},
        "images": {"count": n_images, "size_px": image_size, "served_by": "python -m http.server, 127.0.0.1"},
        "duration_s_per_level": duration_s,
        "levels": levels_out,
        "big": big,
        "worker_rss_mb": {"before": rss_before, "after": rss_after},
        "ok": all(lv["failures"] == 0 for lv in levels_out)
        and big["health"]["over_budget"] == 0
        and big["setup"]["over_budget"] == 0,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    _print(result, out)
    return result


def _fmt(v: Any, spec: str = ".0f") -> str:
    return "-" if v is None else format(v, spec)


def _print(r: dict[str, Any], out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"/predict, 1 task per request, {r['duration_s_per_level']:.0f} s per level (CPU)")
    for c in ("clients", "requests", "fail", "p50 ms", "p99 ms", "images/s", "images/s vs 1", "p50 vs 1"):
        t.add_column(c, justify="right")
    for lv in r["levels"]:
        t.add_row(
            str(lv["users"]), str(lv["requests"]), str(lv["failures"]), _fmt(lv["p50_ms"]),
            _fmt(lv["p99_ms"]), _fmt(lv["images_per_s"], ".1f"), _fmt(lv["images_per_s_vs_1"], ".2f"),
            _fmt(lv["p50_vs_1"], ".2f"),
        )  # fmt: skip
    c = Console()
    c.print(t)
    b = r["big"]
    bp = b["big_predict"]
    c.print(
        f"during one /predict of {b['tasks']} tasks (HTTP {bp.get('status')}, "
        f"{_fmt(bp.get('seconds'), '.0f')} s, "
        f"{bp.get('answered')} answered): /health p50 {_fmt(b['health']['p50_ms'])} ms p99 "
        f"{_fmt(b['health']['p99_ms'])} ms max {_fmt(b['health']['max_ms'])} ms over 1 s "
        f"{b['health']['over_budget']}/{b['health']['requests']}; /setup p99 {_fmt(b['setup']['p99_ms'])} ms "
        f"over 3 s {b['setup']['over_budget']}/{b['setup']['requests']}"
    )
    rss = r["worker_rss_mb"]
    c.print(
        f"backend processes' RSS MB before {rss['before']}, largest during the big /predict "
        f"{b.get('rss_mb_peak')}, after {rss['after']} -> {out}"
    )


if __name__ == "__main__":  # the locust child: python -m labelloop.bench.load '<spec json>'
    print(json.dumps(_locust_phase(json.loads(sys.argv[1]))), flush=True)
