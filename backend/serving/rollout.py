"""A new champion reaches the Label Studio projects: once a backend process serves it, every project
that sent ``/setup`` gets the champion as its model_version (Label Studio shows and sorts by that
version's predictions only, and accepts a version only once predictions carry it: the job sets it
after its first write when needed), and its tasks with no human annotation yet are queued for a
``predict`` job (``jobs.predict.predict_and_write``, the same job that finishes an over-budget
/predict), which writes the new prelabels once per (task, version).

Every process of every host swaps, but one rollout per change is enough: a Redis ``GETSET`` of the
line's last rolled-out version elects the first process to swap. When Redis is down each process
rolls out what it knows (setting a model_version twice is harmless; writes are idempotent).
The Label Studio calls run in a thread of their own, off the request path and the watcher's loop.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from redis import Redis

from labelloop.backend.jobs.predict import payload_for
from labelloop.backend.jobs.queues import enqueue_predict
from labelloop.backend.registry.lines import ModelRef
from labelloop.backend.serving.project_access import Credentials, ProjectAccess, project_id
from labelloop.connectors.labelstudio.client import LabelStudioClient
from labelloop.connectors.labelstudio.projects import get_project, set_model_version
from labelloop.connectors.labelstudio.tasks import iter_tasks, split_versions
from labelloop.errors import RemoteError
from labelloop.settings import Settings

log = logging.getLogger(__name__)


def _elected(settings: Settings, ref: ModelRef) -> bool:
    """True for the first process to roll out this change of champion."""
    key = f"{settings.queue.prefix}:champion-rolled-out:{ref.line}"
    try:
        conn = Redis.from_url(settings.queue.redis_url, socket_connect_timeout=1, socket_timeout=2)
        before = conn.getset(key, ref.model_version)
    except Exception as e:
        log.warning("rollout of %s: Redis unreachable (%s); this process does it", ref.model_version, e)
        return True
    return (before.decode() if isinstance(before, bytes) else before) != ref.model_version


def unannotated_tasks(client: LabelStudioClient, project: int, model_version: str) -> list[dict[str, Any]]:
    """The project's tasks that no person has annotated and that lack a prediction of this version."""
    include = "id,data,total_annotations,predictions_model_versions"
    return [
        {"id": t["id"], "data": t.get("data")}
        for t in iter_tasks(client, project, include=include, page_size=1000)
        if not t.get("total_annotations")
        and model_version not in split_versions(t.get("predictions_model_versions"))
    ]


def _set_version(client: LabelStudioClient, project: int, model_version: str) -> bool:
    """Point the project at ``model_version``; False when Label Studio refuses it: 1.23 takes only
    a version that predictions in the project carry (or an ML backend's title), so for a fresh
    champion the predict job sets it after writing the first of them."""
    try:
        set_model_version(client, project, model_version)
        return True
    except RemoteError as e:
        if e.status != 400:
            raise
        return False


def roll_out_project(settings: Settings, ref: ModelRef, project: int, creds: Credentials) -> str | None:
    """Set one project's model_version to ``ref`` and queue its unannotated tasks; the job id."""
    client = LabelStudioClient(creds.url, creds.token, retries=2, timeout=60)
    is_set = _set_version(client, project, ref.model_version)
    tasks = unannotated_tasks(client, project, ref.model_version)
    if not tasks:
        if not is_set:
            log.error(
                "rollout of %s: Label Studio refused it as project %d's model_version",
                ref.model_version,
                project,
            )
        return None
    label_config = str(get_project(client, project).get("label_config") or "")
    payload = payload_for(settings, ref.weights or Path(), tasks, project, label_config, creds)
    payload["registry"] = {"line": ref.line, "version": ref.version}  # a worker on another host fetches
    payload["set_model_version"] = not is_set  # then once predictions of it exist, which LS accepts
    job = enqueue_predict(settings, payload, creds)
    log.info(
        "rollout of %s: project %d model_version %s, %d unannotated task(s) to prelabel in job %s",
        ref.model_version,
        project,
        "set" if is_set else "set by the job",
        len(tasks),
        job,
    )
    return job


def roll_out(settings: Settings, access: ProjectAccess, ref: ModelRef) -> None:
    """Every known project, each on its own: one unreachable server does not stop the rest."""
    projects = access.projects()
    if not projects or not _elected(settings, ref):
        return
    for name, creds in projects.items():
        pid = project_id(name)
        if not pid.isdigit():
            continue
        try:
            roll_out_project(settings, ref, int(pid), creds)
        except Exception as e:
            log.error("rollout of %s to project %s on %s failed: %s", ref.model_version, pid, creds.url, e)


def roll_out_later(settings: Settings, access: ProjectAccess) -> Callable[[ModelRef], None]:
    """The watcher's ``on_swap``: ``roll_out`` in a background thread."""

    def on_swap(ref: ModelRef) -> None:
        threading.Thread(
            target=roll_out, args=(settings, access, ref), daemon=True, name="champion-rollout"
        ).start()

    return on_swap
