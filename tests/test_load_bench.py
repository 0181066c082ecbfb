"""Smoke run of ``labelloop bench load`` (locust as a library, in its own process) against a real
gunicorn backend from ``backend_factory`` (stopped by the fixture): 2 clients x 5 s, then a small
large-/predict phase with /health and /setup probes. The full run is the CLI's default."""

from __future__ import annotations

import json
from pathlib import Path

from labelloop.bench.load import bench_load


def test_load_smoke(backend_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    b = backend_factory(
        LABELLOOP_HTTP_WORKERS="2", LABELLOOP_ALLOW_PRIVATE_URLS="true", LABELLOOP_IMAGE_CACHE_BYTES="0"
    )
    out = tmp_path / "load.json"  # where write_report looks for it
    r = bench_load(
        out, levels=(1, 2), duration_s=5, big_tasks=150, n_images=8, image_size=320, url=b.url,
        backend_pid=b.proc.pid,
    )  # fmt: skip
    assert json.loads(out.read_text())["levels"] == r["levels"]
    one, two = r["levels"]
    assert one["users"] == 1 and two["users"] == 2
    assert one["requests"] > 5 and one["failures"] == 0 and two["failures"] == 0
    assert one["images_per_s_vs_1"] == 1.0 and one["p50_ms"] <= one["p99_ms"]
    big = r["big"]
    assert big["big_predict"]["status"] == 200 and big["big_predict"]["results"] == 150
    assert big["health"]["requests"] > 0 and big["health"]["over_budget"] == 0
    assert big["rss_mb_peak"] and all(mb > 50 for mb in big["rss_mb_peak"].values())  # sampled during it
    assert r["ok"]
    from labelloop.bench.reliability import write_report

    # load.json here; fuzz and fault results absent: named missing
    md = write_report(tmp_path, tmp_path / "RELIABILITY.md").read_text()
    assert "| 1 | " in md and "| /health |" in md and "No fuzz results" in md, md
    assert "not run" in md and "test_a_database_outage_loses_nothing" in md
