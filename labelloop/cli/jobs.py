"""``labelloop jobs``: what the workers are doing (``list``) and stopping a retrain (``cancel``).

rq-dashboard shows the same queues in a browser: ``rq-dashboard --redis-url $LABELLOOP_REDIS_URL``.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from labelloop.cli.common import app, emit_json
from labelloop.errors import ConfigError

jobs_app = typer.Typer(help="Queued, running and failed jobs; cancel a retrain.", no_args_is_help=True)
app.add_typer(jobs_app, name="jobs")
JsonFlag = Annotated[bool, typer.Option("--json", help="print one JSON document on stdout")]


def _queues():  # type: ignore[no-untyped-def]
    from rq import Queue

    from labelloop.backend.jobs.queues import PREDICT, TRAIN, queue_name, redis
    from labelloop.settings import load_settings

    settings = load_settings()
    conn = redis(settings, connect_timeout=3)
    return settings, conn, [Queue(queue_name(settings, k), connection=conn) for k in (TRAIN, PREDICT)]


def _row(job: Any, state: str) -> dict[str, Any]:
    meta = job.meta or {}
    return {
        "id": job.id,
        "queue": job.origin,
        "state": state,
        "description": job.description,
        "stage": meta.get("stage"),
        "epoch": f"{meta['epoch']}/{meta['epochs']}" if "epoch" in meta and "epochs" in meta else None,
        "metrics": meta.get("metrics"),
        "failure": meta.get("failure") or (_last_line(job.latest_result()) if state == "failed" else None),
        "enqueued_at": str(job.enqueued_at) if job.enqueued_at else None,
    }


def _last_line(result: Any) -> str | None:
    text = getattr(result, "exc_string", None) or ""
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else None


@jobs_app.command("list")
def list_cmd(
    limit: Annotated[int, typer.Option(help="newest N per state")] = 20, json_: JsonFlag = False
) -> None:
    """Jobs per queue: queued, running, failed (with the reason) and finished."""
    from rq.job import Job
    from rq.registry import FailedJobRegistry, FinishedJobRegistry, StartedJobRegistry

    _, conn, queues = _queues()
    rows = []
    for q in queues:
        groups = {
            "queued": q.get_job_ids()[:limit],
            "running": StartedJobRegistry(queue=q).get_job_ids()[:limit],
            "failed": FailedJobRegistry(queue=q).get_job_ids()[-limit:],
            "finished": FinishedJobRegistry(queue=q).get_job_ids()[-limit:],
        }
        for state, ids in groups.items():
            for job in Job.fetch_many(ids, connection=conn):
                if job is not None:
                    rows.append(_row(job, state))
    if json_:
        emit_json(rows)
        return
    table = Table(title="labelloop jobs")
    for col in ("id", "queue", "state", "stage", "epoch", "failure"):
        table.add_column(col)
    for r in rows:
        table.add_row(*(str(r[c] or "") for c in ("id", "queue", "state", "stage", "epoch", "failure")))
    Console().print(table)


@jobs_app.command("cancel")
def cancel_cmd(
    job_id: Annotated[str, typer.Argument(help="the job id (labelloop jobs list)")], json_: JsonFlag = False
) -> None:
    """Stop a retrain at its next epoch boundary (a queued one never starts); nothing is promoted."""
    from rq.exceptions import NoSuchJobError
    from rq.job import Job

    from labelloop.backend.jobs.train import request_cancel

    settings, conn, _ = _queues()
    try:
        job = Job.fetch(job_id, connection=conn)
    except NoSuchJobError:
        raise ConfigError(f"no job {job_id!r}; see labelloop jobs list") from None
    state = job.get_status()
    request_cancel(settings, conn, job_id)
    if state in ("queued", "scheduled", "deferred"):
        job.cancel()
    out = {"id": job_id, "was": str(state), "cancel_requested": True}
    if json_:
        emit_json(out)
    else:
        typer.echo(f"cancel requested for {job_id} (was {state}); a running training stops after its epoch")
