"""``labelloop bench reliability``: docs/RELIABILITY.md from the JSON that ``bench fuzz``, ``bench
load`` and the fault tests write (bench-results/fuzz.json, load.json, faults.json), with date and
commit. One summary table (requests sent, 5xx seen, faults injected, items lost or duplicated,
latency percentiles, the outcome that held), then the details of each. A result that is missing is
named as missing, never invented; a fault test records its figures only after its asserts passed.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

# the fault tests, so one that has not run is shown as such: name -> where it lives
FAULT_TESTS = {
    "redis_killed": "tests/test_faults.py",
    "gunicorn_worker_sigkilled": "tests/test_faults.py",
    "rq_worker_sigkilled_mid_training": "tests/test_faults.py",
    "redis_restarted_mid_queue": "tests/test_faults.py",
    "redis_without_persistence_restarted": "tests/test_faults.py",
    "postgres_restarted_mid_sync": "tests/test_faults_storage.py",
    "blob_root_full": "tests/test_faults_storage.py",
    "mlflow_artifacts_full": "tests/test_faults_storage.py",
    "champion_weights_corrupted": "tests/test_faults_storage.py",
}
# keys every record may carry, shown in the summary columns rather than among the other figures
SUMMARY_KEYS = (
    "fault",
    "promise",
    "requests",
    "5xx",
    "faults_injected",
    "lost",
    "duplicated",
    "latency_ms",
    "date",
)


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


def _lat(p50: Any = None, p99: Any = None, mx: Any = None) -> str:
    return "–" if (p50, p99, mx) == (None, None, None) else " / ".join(_n(v) for v in (p50, p99, mx))


def _s5(by_status: dict[str, int]) -> int:
    return sum(v for k, v in by_status.items() if k.startswith("5"))


def _row(
    what: str,
    requests: Any = None,
    s5: Any = None,
    faults: Any = 0,
    lost: str = "–",
    lat: str = "–",
    outcome: str = "_not run_",
    date: str = "",
) -> str:
    return f"| {what} | {_n(requests)} | {_n(s5)} | {_n(faults)} | {lost} | {lat} | {outcome} | {date} |"


def _bench_rows(fuzz: dict[str, Any] | None, load: dict[str, Any] | None) -> list[str]:
    out = []
    if fuzz is None:
        out.append(_row("`bench fuzz`", faults=None))
    else:
        h, sc, date = fuzz.get("hypothesis", fuzz), fuzz.get("schemathesis"), fuzz.get("date", "")
        told = f"{len(h.get('bare_4xx', []))} 4xx without message, {h.get('workers_lost')} workers lost"
        out.append(
            _row(
                "`bench fuzz`: hypothesis payloads",
                h["requests"],
                _s5(h["by_status"]),
                outcome=told,
                date=date,
            )
        )
        if sc is not None:
            told = f"{sc['cases']} cases, {sc['failures']} failed a check"
            out.append(
                _row(
                    "`bench fuzz`: schemathesis",
                    sc["requests"],
                    _s5(sc["by_status"]),
                    outcome=told,
                    date=date,
                )
            )
    if load is None:
        return [*out, _row("`bench load`", faults=None)]
    for lv in load["levels"]:
        lat = _lat(lv.get("p50_ms"), lv.get("p99_ms"), lv.get("max_ms"))
        told = f"{lv['failures']} failed, {_n(lv.get('images_per_s'), '.1f')} images/s"
        out.append(
            _row(
                f"`bench load`: /predict, {lv['users']} clients",
                lv["requests"],
                None,
                0,
                "–",
                lat,
                told,
                load["date"],
            )
        )
    b = load["big"]
    for name in ("health", "setup"):
        p = b[name]
        lat = _lat(p.get("p50_ms"), p.get("p99_ms"), p.get("max_ms"))
        told = f"{p['failures']} failed, {p['over_budget']} over {p['budget_ms'] / 1000:.0f} s"
        what = f"`bench load`: /{name} during a {b['tasks']}-task /predict"
        out.append(_row(what, p["requests"], None, 0, "–", lat, told, load["date"]))
    return out


def _fault_row(name: str, f: dict[str, Any] | None, where: str = "") -> str:
    if f is None:
        return _row(f"{name} ({where})", faults=None)
    lat = f.get("latency_ms") or {}
    return _row(
        f.get("fault", name),
        f.get("requests"),
        f.get("5xx"),
        f.get("faults_injected", 1),
        f"{_n(f.get('lost'))} / {_n(f.get('duplicated'))}",
        _lat(lat.get("p50"), lat.get("p99"), lat.get("max")),
        f.get("promise", "held"),
        f.get("date", ""),
    )


def _summary(fuzz: dict[str, Any] | None, load: dict[str, Any] | None, faults: dict[str, Any]) -> list[str]:
    head = (
        "| test or benchmark | requests sent | 5xx | faults injected | lost / duplicated "
        "| latency p50 / p99 / max ms | outcome | date |"
    )
    rows = [_fault_row(name, faults.get(name), where) for name, where in FAULT_TESTS.items()]
    rows += [_fault_row(name, f) for name, f in faults.items() if name not in FAULT_TESTS]  # not listed yet
    return [head, "|---|---:|---:|---:|---|---|---|---|", *_bench_rows(fuzz, load), *rows, ""]


def _fuzz(r: dict[str, Any] | None, src: Path) -> list[str]:
    if r is None:
        return [f"_No fuzz results ({src}): run `labelloop bench fuzz`._", ""]
    h, sc = r.get("hypothesis", r), r.get("schemathesis")
    out = [
        "| part | requests | seconds | 5xx | 4xx without message / failed checks | transport errors "
        "| workers lost | statuses |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
        f"| hypothesis payloads | {h['requests']} | {_n(h.get('seconds'))} | {_s5(h['by_status'])} | "
        f"{len(h.get('bare_4xx', []))} | "
        f"{len(h.get('transport_errors', []))} | {h.get('workers_lost')} | "
        f"{', '.join(f'{k}: {v}' for k, v in h.get('by_status', {}).items())} |",
    ]
    if sc is not None:
        out.append(
            f"| schemathesis ({sc['cases']} cases) | {sc['requests']} | {_n(sc.get('seconds'))} | "
            f"{_s5(sc['by_status'])} | "
            f"{sc.get('failures')} | {len(sc.get('transport_errors', []))} | {r.get('workers_lost', '–')} | "
            f"{', '.join(f'{k}: {v}' for k, v in sc.get('by_status', {}).items())} |"
        )
        if sc.get("by_operation"):
            out += ["", "Schemathesis cases per operation: "
                    + ", ".join(f"{k} {v}" for k, v in sc["by_operation"].items()) + "."]  # fmt: skip
    return [*out, ""]


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
        "| clients | requests | failures | p50 ms | p99 ms | images/s | images/s vs 1 | p50 vs 1 "
        "| p99 vs 1 |",
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
        f"{bp.get('answered')} of {bp.get('results')} answered within the budget, the rest handed off):",
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
    if b.get("rss_mb_peak"):
        out += ["", f"Largest RSS (MB) of each backend process during the big /predict: {b['rss_mb_peak']}."]
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
    faults = (r or {}).get("faults", {})
    out = ["| fault | figures |", "|---|---|"]
    for name, f in faults.items():
        figs = ", ".join(f"{k} {v}" for k, v in f.items() if k not in SUMMARY_KEYS)
        out.append(f"| {f.get('fault', name)} | {figs} |")
    out.append(
        "| PostgreSQL refusing connections during a sync pass | covered by "
        "tests/test_sync_service.py::test_a_database_outage_loses_nothing (the pass reports it, the next "
        "one stores everything) |"
    )
    if r is None:
        out += [
            "",
            f"_No fault results ({src}): run `pytest tests/test_faults.py tests/test_faults_storage.py`._",
        ]
    return [*out, ""]


def write_report(results: Path = Path("bench-results"), out: Path = Path("docs/RELIABILITY.md")) -> Path:
    fuzz_p, load_p, faults_p = results / "fuzz.json", results / "load.json", results / "faults.json"
    fuzz, load, faults = _load(fuzz_p), _load(load_p), _load(faults_p)
    lines = [
        "# Reliability",
        "",
        f"Generated {time.strftime('%Y-%m-%d %H:%M')} at commit {_commit()} by `labelloop bench reliability` "
        f"from {fuzz_p}, {load_p} and {faults_p} (each row's date is when it was measured).",
        "",
        "## Summary",
        "",
        *_summary(fuzz, load, (faults or {}).get("faults", {})),
        "## Fuzzing (`labelloop bench fuzz`)",
        "",
        *_fuzz(fuzz, fuzz_p),
        "## Load (`labelloop bench load`)",
        "",
        *_load_section(load, load_p),
        "## Faults (`pytest tests/test_faults.py tests/test_faults_storage.py`)",
        "",
        *_faults(faults, faults_p),
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    return out
