"""A small JSON journal of a bulk push, so an interrupted push resumes without writing anything twice.

It records which items (task ids, frame numbers) are known to be on the server and which chunk
was in flight when the process stopped. A connector reconciles the in-flight chunk against the
server before sending it again: a request whose answer was lost may have landed. The file is
replaced atomically, so a kill at any moment leaves either the old or the new journal.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labelloop.errors import ConfigError
from labelloop.fsutil import atomic_write


@dataclass
class PushJournal:
    path: Path
    scope: dict[str, Any]  # what the journal is about (server, project/task, model version)
    done: set[int] = field(default_factory=set)
    in_flight: dict[str, Any] | None = None  # {"ids": [...], ...connector-specific evidence}
    log: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path, scope: dict[str, Any]) -> PushJournal:
        if not path.exists():
            return cls(path, dict(scope))
        try:
            d = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"push journal {path} is unreadable ({e}); move it away to start over") from e
        old = d.get("scope") or {}
        if "created" in scope and old.get("created") != scope["created"] and _same_but_created(old, scope):
            # the container was deleted and its id handed out again (a reinstalled server): what
            # this journal lists is not on the new one, so it is set aside and the push starts over
            path.replace(path.with_suffix(f".stale-{int(time.time())}.json"))
            return cls(path, dict(scope))
        if old != scope:
            raise ConfigError(
                f"push journal {path} belongs to {d.get('scope')}, not {scope}; "
                "use another journal file (--journal) or delete this one"
            )
        return cls(path, dict(scope), set(d.get("done", [])), d.get("in_flight"), d.get("log", []))

    def begin(self, ids: Iterable[int], **evidence: Any) -> None:
        self.in_flight = {"ids": list(ids), **evidence}
        self.save()

    def commit(self, ids: Iterable[int], **entry: Any) -> None:
        ids = list(ids)
        self.done.update(ids)
        self.in_flight = None
        self.log.append({"n": len(ids), "at": time.time(), **entry})
        self.save()

    def save(self) -> None:
        d = {
            "scope": self.scope,
            "done": sorted(self.done),
            "in_flight": self.in_flight,
            "log": self.log[-1000:],
        }
        atomic_write(self.path, json.dumps(d))


def _same_but_created(old: dict[str, Any], new: dict[str, Any]) -> bool:
    keys = (set(old) | set(new)) - {"created"}
    return all(old.get(k) == new.get(k) for k in keys)
