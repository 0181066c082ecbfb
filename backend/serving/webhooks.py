"""Label Studio's webhook events, recorded for the sync to wake on.

Label Studio's webhooks are synchronous with a ~1 s timeout and no retry, so an event is only a
wake-up (see :mod:`labelloop.sync.events`) and nothing else happens in the request; the sync's
poll still finds every change without it. ``START_TRAINING`` arrives here too.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

from redis import Redis

from labelloop.backend.jobs.train import enqueue_start_training
from labelloop.backend.serving import metrics
from labelloop.errors import ErrorKind, LabelloopError
from labelloop.settings import Settings
from labelloop.sync.events import record_event

log = logging.getLogger(__name__)
ACTION = re.compile(r"[A-Z][A-Z_]{0,63}")  # Label Studio's event names: ANNOTATION_CREATED, ...


class WebhookLog:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._redis = Redis.from_url(settings.queue.redis_url, socket_connect_timeout=1, socket_timeout=2)

    def record(self, body: dict[str, Any]) -> str:
        """Record one event; returns its action. A Redis outage is logged, never raised."""
        action, project = _parse(body)
        metrics.webhook(action)
        event = {"action": action, "project": project, "received": time.time()}
        try:
            record_event(self._redis, self.settings, event)
        except Exception as e:
            log.warning("webhook %s not recorded (Redis: %s); the sync poll will still see it", action, e)
        if action == "START_TRAINING" and event["project"] is not None:
            try:  # only queued here: the sync pass and the training run on a worker
                job = enqueue_start_training(self.settings, self._redis, int(event["project"]))
                log.info("Start Training for project %s: %s", event["project"], job or "already queued")
            except Exception as e:
                log.warning("Start Training for project %s not queued (Redis: %s)", event["project"], e)
        return action


def _parse(body: dict[str, Any]) -> tuple[str, int | None]:
    """(action, project id) of an event body, refused unless it is shaped as Label Studio sends it:
    the action becomes a metrics label and the project id a training job's argument."""
    action = body.get("action", "unknown")
    if not isinstance(action, str) or not (action == "unknown" or ACTION.fullmatch(action)):
        raise LabelloopError(
            "'action' must be a Label Studio event name (capitals and '_', e.g. ANNOTATION_CREATED)",
            ErrorKind.REJECTED,
        )
    project = body.get("project")
    if project is not None and not isinstance(project, dict):
        raise LabelloopError(
            "'project' must be an object (Label Studio sends the project)", ErrorKind.REJECTED
        )
    pid = (project or {}).get("id")
    if pid is not None and (not isinstance(pid, int) or isinstance(pid, bool)):
        raise LabelloopError("'project.id' must be an integer", ErrorKind.REJECTED)
    return action, pid
