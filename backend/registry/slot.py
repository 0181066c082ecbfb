"""The hot-reload model slot: what a backend process serves, and the watcher that swaps a new
champion in.

Each backend process runs a ``ChampionWatcher``: a
subscriber thread that wakes it on an announcement, and a loop that reads the line's ``champion``
alias every ``serve.reload_poll_s`` anyway, so a lost message, a Redis outage or an alias moved
outside labelloop is still picked up (``announce`` is the sending side). A new champion is fetched
and loaded in that background thread and then put into the ``ModelSlot`` with one reference
assignment: a request holds the model it started with, so requests in flight finish on the old
one. A champion that fails to load is logged once and skipped; the old model keeps serving, and
``error`` says why until a champion loads (``/health`` shows it as ``reload_error``).

Which processes follow a line (``followed_line``): ``serve.follow_line`` when set, else those
serving the embedded demo model, i.e. started without ``--model``; explicit weights are kept.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from redis import Redis

from labelloop.backend.inference.demo_model import demo_model_path
from labelloop.backend.registry import lines
from labelloop.backend.registry.announce import channel
from labelloop.errors import LabelloopError
from labelloop.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")


def followed_line(settings: Settings, weights: Path) -> str | None:
    """The model line this process serves the champion of, or None to keep ``weights``."""
    follow = settings.serve.follow_line
    if follow is None:
        try:
            follow = weights.resolve() == demo_model_path(settings.cache_dir).resolve()
        except OSError:
            follow = False
    return settings.train.model_line if follow else None


@dataclass(frozen=True)
class Served(Generic[T]):
    """What the slot holds: the weights, their model once loaded, and the registry version (None
    for weights that did not come from the registry)."""

    weights: Path
    model: T | None = None
    version: int | None = None


class ModelSlot(Generic[T]):
    """The served model, loaded on first use and replaced whole by ``swap``."""

    def __init__(self, weights: Path, load: Callable[[Path], T], version: int | None = None) -> None:
        self._load = load
        self._current: Served[T] = Served(weights, None, version)
        self._lock = threading.Lock()  # one load at a time; readers never take it once loaded

    @property
    def current(self) -> Served[T]:
        return self._current

    def model(self) -> T:
        served = self._current
        if served.model is not None:
            return served.model
        with self._lock:
            served = self._current
            if served.model is None:
                served = Served(served.weights, self._load(served.weights), served.version)
                self._current = served
        return served.model  # type: ignore[return-value]

    def swap(self, weights: Path, version: int | None) -> T:
        """Load ``weights`` (the old model serves meanwhile), then make them current. A failed
        load raises and leaves the slot as it was."""
        with self._lock:
            model = self._load(weights)
            self._current = Served(weights, model, version)
        return model


class ChampionWatcher:
    """Keeps a slot on ``line``'s champion (see the module docstring); ``on_swap`` runs after each
    swap with the new champion, in the watcher's thread."""

    def __init__(
        self,
        settings: Settings,
        line: str,
        slot: ModelSlot[Any],
        on_swap: Callable[[lines.ModelRef], None] | None = None,
    ) -> None:
        self.settings, self.line, self.slot, self.on_swap = settings, line, slot, on_swap
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._failed: set[int] = set()  # versions that would not load: logged once, not retried
        self.error: str | None = None  # why the champion is not what is served (for /health)
        self._registry_down = False
        self._threads: list[threading.Thread] = []

    def start(self) -> ChampionWatcher:
        for target, name in ((self._poll, "champion-poll"), (self._listen, "champion-listen")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def check(self) -> bool:
        """One look at the alias; True when a new champion was swapped in."""
        try:
            version = lines.champion_version(self.settings, self.line)
        except LabelloopError as e:
            if not self._registry_down:
                log.warning("hot reload: cannot read the champion of %r: %s", self.line, e)
            self._registry_down = True
            return False
        self._registry_down = False
        if version is None or version == self.slot.current.version or version in self._failed:
            return False
        t0 = time.monotonic()
        was = self._served_name()
        try:
            ref = lines.get_version(self.settings, self.line, version)
            ref.weights = lines.fetch_weights(self.settings, ref)
            self.slot.swap(ref.weights, ref.version)
        except Exception as e:
            self._failed.add(version)
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            self.error = f"{self.line}-v{version} cannot be served, still serving {was}: {reason}"
            log.error("hot reload (pid %d): %s", os.getpid(), self.error)
            return False
        self.error = None
        log.info(
            "hot reload (pid %d): now serving %s (was %s), loaded in %.1fs",
            os.getpid(),
            ref.model_version,
            was,
            time.monotonic() - t0,
        )
        if self.on_swap is not None:
            try:
                self.on_swap(ref)
            except Exception:
                log.exception("hot reload: after serving %s", ref.model_version)
        return True

    def _served_name(self) -> str:
        served = self.slot.current
        name = getattr(served.model, "model_version", None)
        return str(name) if name else str(served.weights)

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.settings.serve.reload_poll_s)
            self._wake.clear()
            if not self._stop.is_set():
                self.check()

    def _listen(self) -> None:
        """Wake the poller on an announcement for this line; reconnect after a Redis outage."""
        down = False
        while not self._stop.is_set():
            try:
                conn = Redis.from_url(self.settings.queue.redis_url, socket_connect_timeout=2)
                sub = conn.pubsub(ignore_subscribe_messages=True)
                sub.subscribe(channel(self.settings))
                if down:
                    log.info("hot reload: Redis pub/sub is back on %s", channel(self.settings))
                    self._wake.set()  # an announcement may have been missed while it was down
                down = False
                while not self._stop.is_set():
                    msg = sub.get_message(timeout=1.0)
                    if msg and _line_of(msg.get("data")) == self.line:
                        self._wake.set()
            except Exception as e:
                if not down:
                    log.warning(
                        "hot reload: Redis pub/sub unavailable at %s (%s); polling the registry every %.0fs",
                        self.settings.queue.redis_url,
                        type(e).__name__,
                        self.settings.serve.reload_poll_s,
                    )
                down = True
                self._stop.wait(5)


def _line_of(data: object) -> str | None:
    try:
        return str(json.loads(data)["line"])  # type: ignore[arg-type]
    except (TypeError, ValueError, KeyError):
        return None
