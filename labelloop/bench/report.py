"""``labelloop bench report``: bench-results/reliability.md from the JSON results of ``bench fuzz``,
``bench load`` and the fault tests (tests/test_faults.py writes faults.json), with date and commit.
A missing result is named as missing, never invented."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any


def _load(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _n(v: Any, spec: str = ".0f") -> str:
    return "–" if v is None else format(v, spec)


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _fuzz(r: dict[str, Any] | None, src: Path) -> list[str]:
    if r is None:
        return [f"_No fuzz results ({src}): run `labelloop bench fuzz`._", ""]
    s5 = sum(v for k, v in r.get("by_status", {}).items() if k.startswith("5"))
    return [
        "| requests | seconds | 5xx | 4xx without message | transport errors | workers lost | statuses |",
        "|---:|---:|---:|---:|---:|---:|---|",
        f"| {r['requests']} | {_n(r.get('seconds'))} | {s5} | {len(r.get('bare_4xx', []))} | "
        f"{len(r.get('transport_errors', []))} | {r.get('workers_lost')} | "
        f"{', '.join(f'{k}: {v}' for k, v in r.get('by_status', {}).items())} |",
        "",
    ]


def _load_section(r: dict[str, Any] | None, src: Path) -> list[str]:
    if r is None:
        return [f"_No load results ({src}): run `labelloop bench load`._", ""]
    be = r.get("backend", {})
    out = [
        f"{r['date']}, {r['machine']['cpus']} CPUs, gunicorn {be.get('workers')} workers × "
        f"{be.get('threads_per_worker')} threads, {be.get('device')}, image cache {be.get('image_cache')}; "
        f"{r['images']['count']} JPEGs of {r['images']['size_px']} px from {r['images']['served_by']}; "
        f"1 task per request, {r['duration_s_per_level']:.0f} s per level.",
        "",
        "| clients | requests | failures | p50 ms | p99 ms | images/s | images/s vs 1 "
        "| p50 vs 1 | p99 vs 1 |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for lv in r["levels"]:
        out.append(
            f"| {lv['users']} | {lv['requests']} | {lv['failures']} | {_n(lv['p50_ms'])} | "
            f"{_n(lv['p99_ms'])} | {_n(lv['images_per_s'], '.1f')} | {_n(lv['images_per_s_vs_1'], '.2f')} | "
            f"{_n(lv['p50_vs_1'], '.2f')} | {_n(lv['p99_vs_1'], '.2f')} |"
        )
    b, bp = r["big"], r["big"]["big_predict"]
    out += [
        "",
        f"While one /predict of {b['tasks']} tasks ran (HTTP {bp.get('status')}, "
        f"{_n(bp.get('seconds'), '.1f')} s, "
        f"{bp.get('answered')} of {bp.get('results')} answered within the budget):",
        "",
        "| probe | requests | failures | p50 ms | p99 ms | max ms | over Label Studio's budget |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in ("health", "setup"):
        p = b[name]
        out.append(
            f"| /{name} | {p['requests']} | {p['failures']} | {_n(p['p50_ms'])} | {_n(p['p99_ms'])} | "
            f"{_n(p['max_ms'])} | {p['over_budget']} (> {p['budget_ms'] / 1000:.0f} s) |"
        )
    per_level = [(lv["users"], lv.get("rss_mb_after")) for lv in r["levels"] if lv.get("rss_mb_after")]
    if per_level:
        out += [
            "",
            "Largest backend process RSS (MB) after each level: "
            + ", ".join(f"{u} clients {max(m.values()):.0f}" for u, m in per_level)
            + ".",
        ]
    rss = r.get("worker_rss_mb", {})
    if rss.get("before"):
        before, after = rss["before"], rss["after"]
        peak = max(after.values()) if after else None
        out += [
            "",
            f"Backend processes' RSS MB: before {before}, after {after} (largest after: {_n(peak)} MB).",
        ]
    return [*out, ""]


def _faults(r: dict[str, Any] | None, src: Path) -> list[str]:
    out = [
        "| fault | promised outcome | figures | date |",
        "|---|---|---|---|",
    ]
    promised = {
        "redis_killed": "/predict keeps answering (hand-offs run in a thread of the backend), /health up",
        "gunicorn_worker_sigkilled": "the master boots a new worker; only in-flight requests fail; no 5xx",
        "rq_worker_sigkilled_mid_training": "nothing promoted; the line lock expires; rq retries the job "
        "and a second worker promotes",
    }
    faults = (r or {}).get("faults", {})
    for name, promise in promised.items():
        f = faults.get(name)
        if f is None:
            out.append(f"| {name} | {promise} | _not run_ (pytest tests/test_faults.py) | |")
            continue
        figs = ", ".join(f"{k} {v}" for k, v in f.items() if k not in ("fault", "date"))
        out.append(f"| {f.get('fault', name)} | {promise} | {figs} | {f.get('date', '')} |")
    out.append(
        "| PostgreSQL refusing connections during a sync pass | the pass reports it, the next one stores "
        "everything | tests/test_sync_service.py::test_a_database_outage_loses_nothing | |"
    )
    if r is None:
        out += ["", f"_No fault results ({src}): run `pytest tests/test_faults.py`._"]
    return [*out, ""]


def write_report(results: Path = Path("bench-results"), out: Path | None = None) -> Path:
    out = out or results / "reliability.md"
    fuzz, load, faults = results / "fuzz.json", results / "load.json", results / "faults.json"
    lines = [
        "## Reliability",
        "",
        f"Generated {time.strftime('%Y-%m-%d %H:%M')} at commit {_commit()} by `labelloop bench report` "
        f"from {fuzz}, {load} and {faults}.",
        "",
        "### Fuzzing (`labelloop bench fuzz`)",
        "",
        *_fuzz(_load(fuzz), fuzz),
        "### Load (`labelloop bench load`)",
        "",
        *_load_section(_load(load), load),
        "### Faults (`pytest tests/test_faults.py`)",
        "",
        *_faults(_load(faults), faults),
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    return out
