"""``labelloop bench sync``: the sync of a large annotated Label Studio project into the store.

Same server, same project, same run:
- baseline: the connector's pull alone (every task and annotation read and converted, nothing
  stored): what any sync has to pay before it writes a row;
- the sync pass (pull + ingest in one transaction with the cursor) into a fresh SQLite file and a
  fresh PostgreSQL database: annotations/s end to end and of the store's ingest alone (target
  >= 2,000/s), and the pass's ratio to the pull alone;
- a pass that finds no change (a cursor poll; target < 1 s), and the same with reconciliation
  (every task id listed to find deletions), which the sync runs every ``reconcile_interval_s``.
Image bytes are never downloaded. Results are printed and written as JSON.
"""

from __future__ import annotations

import json
import platform
import tempfile
import time
import uuid
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from labelloop.settings import Settings, SyncSource

console = Console()
CLASSES = ("circle", "square", "triangle")
DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432"


def _rows(n: int, start: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    """Import rows of tasks with one human annotation of three boxes each, written by the one
    canonical -> Label Studio conversion."""
    from labelloop.connectors.formats.labelstudio import (
        generate_label_config,
        parse_label_config,
        region_to_ls,
        select_controls,
    )
    from labelloop.types import Box, Region

    control = select_controls(
        parse_label_config(generate_label_config("detect", list(CLASSES))), "detect"
    ).main
    rows = []
    for i in range(start, start + n):
        result = []
        for k in range(3):
            x, y = (float(v) for v in rng.uniform(0, 500, 2))
            label = CLASSES[(i + k) % 3]
            result += region_to_ls(
                Region(label, Box(x, y, x + 64, y + 48)), 640, 480, control, label, f"b{i}-{k}"
            )
        rows.append(
            {"data": {"image": f"https://example.com/pool/{i:06d}.jpg"}, "annotations": [{"result": result}]}
        )
    return rows


def bench_sync(
    n_tasks: int,
    out: Path,
    *,
    url: str | None = None,
    token: str | None = None,
    pg_url: str | None = DEFAULT_PG,
    project: int | None = None,
) -> dict[str, Any]:
    from sqlalchemy import create_engine, text

    from labelloop.connectors.formats.labelstudio import generate_label_config
    from labelloop.connectors.labelstudio import LabelStudioClient, LabelStudioPlatform, imports, projects
    from labelloop.connectors.labelstudio.server import LabelStudioServer
    from labelloop.sync.service import SyncService
    from labelloop.sync.store import Store

    work = Path(tempfile.mkdtemp(prefix="labelloop-bench-sync-"))
    server = nullcontext(None) if url else LabelStudioServer(work / "ls")
    results: dict[str, Any] = {"tasks": n_tasks, "machine": platform.processor() or platform.machine()}
    with server as ls:
        base_url, base_token = (url, token) if url else (ls.url, ls.token)
        conn = LabelStudioClient(base_url, base_token)
        if project is None:
            t = time.perf_counter()
            project = projects.create_project(
                conn, "bench sync", generate_label_config("detect", list(CLASSES))
            )
            rng = np.random.default_rng(0)
            with console.status(f"importing {n_tasks} annotated tasks"):
                for lo in range(0, n_tasks, 1000):
                    imports.import_tasks(conn, project, _rows(min(1000, n_tasks - lo), lo, rng))
            results["import_s"] = round(time.perf_counter() - t, 2)
        settings = Settings(label_studio_url=base_url, label_studio_token=base_token, cache_dir=work)
        plat = LabelStudioPlatform.from_settings(settings)
        t = time.perf_counter()
        pulled = plat.pull_changes(project, None, reconcile=True)
        pull_s = time.perf_counter() - t
        plat.close()
        n = len(pulled.annotations)
        results["annotations"] = n
        results["baseline_pull_only"] = {
            "seconds": round(pull_s, 3),
            "annotations_per_s": round(n / pull_s, 1),
        }

        backends = {"sqlite": f"sqlite:///{work / 'store.db'}"}
        pg_db = f"bench_{uuid.uuid4().hex[:10]}"
        admin = None
        if pg_url:
            admin = create_engine(f"{pg_url}/postgres", isolation_level="AUTOCOMMIT")
            with admin.connect() as c:
                c.execute(text(f'CREATE DATABASE "{pg_db}"'))
            backends["postgresql"] = f"{pg_url}/{pg_db}"
        try:
            for name, db in backends.items():
                with (
                    console.status(f"sync into {name}"),
                    Store.open(url=db, blob_root=str(work / "blobs")) as st,
                ):
                    svc = SyncService(
                        settings,
                        st,
                        [SyncSource(platform="labelstudio", url=base_url, project=project)],
                        enqueue=False,
                        fetch_images=False,  # the benchmark measures annotations, not downloads
                    )
                    full = svc.run_once(force_reconcile=True)
                    time.sleep(1.1)  # past the cursor's whole second, so the next pass is truly quiet
                    quiet = svc.run_once()
                    quiet_reconcile = svc.run_once(force_reconcile=True)
                    svc.close()
                src = full.sources[0]
                if not full.ok:
                    raise RuntimeError(f"the sync into {name} failed: {src.error or full.errors}")
                results[name] = {
                    "full_pass_s": src.seconds,
                    "annotations_per_s": round(src.pulled / src.seconds, 1),
                    "x_pull_only": round(pull_s / src.seconds, 3),
                    "pull_s": src.pull_s,
                    "ingest_s": src.ingest_s,
                    "ingest_annotations_per_s": round(src.pulled / max(src.ingest_s, 1e-6), 1),
                    "new_revisions": src.new_revisions,
                    "no_change_pass_s": quiet.seconds,
                    "no_change_pass_with_reconcile_s": quiet_reconcile.seconds,
                    "no_change_new_revisions": quiet.sources[0].new_revisions
                    + quiet_reconcile.sources[0].new_revisions,
                    "target_annotations_per_s": 2000,
                    "meets_target_end_to_end": src.pulled / src.seconds >= 2000 and quiet.seconds < 1.0,
                    "store_meets_target": src.pulled / max(src.ingest_s, 1e-6) >= 2000,
                }
        finally:
            if admin is not None:
                with admin.connect() as c:
                    c.execute(text(f'DROP DATABASE IF EXISTS "{pg_db}" WITH (FORCE)'))
                admin.dispose()
    table = Table(title=f"sync of {n} annotations ({n_tasks} tasks) from a real Label Studio")
    for col in ("store", "pass s", "ann/s", "x pull", "ingest ann/s", "no-change s", "+reconcile s"):
        table.add_column(col)
    b = results["baseline_pull_only"]
    table.add_row("(pull only)", str(b["seconds"]), str(b["annotations_per_s"]), "1.0", "", "", "")
    for name in backends:
        r = results[name]
        table.add_row(
            name,
            str(r["full_pass_s"]),
            str(r["annotations_per_s"]),
            str(r["x_pull_only"]),
            str(r["ingest_annotations_per_s"]),
            str(r["no_change_pass_s"]),
            str(r["no_change_pass_with_reconcile_s"]),
        )
    console.print(table)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    console.print(f"results: {out}")
    return results
