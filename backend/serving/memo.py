"""The result memo: an image predicted once by a model with given settings is not predicted again.

A result is the canonical ImageItem (before any label config is applied, so every project shares
it) stored in Redis under ``<prefix>:memo:<scope>:<image sha256>``, where the scope hashes what
changes a prediction besides the pixels: the model version, the artifact and runtime serving it,
the task and the prediction settings (``PredictSettings.fingerprint``). Redis makes it shared by
every gunicorn worker and host. It is bounded twice: each entry expires after ``memo_ttl_s`` and an
index (a sorted set by write time) keeps at most ``memo_entries``, the oldest dropped first.
Duplicate images inside one request are forwarded once.

Redis down costs nothing but the memo: a failed call is logged once and the memo is skipped for
``RETRY_S`` seconds, the images are predicted as without it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from itertools import islice
from typing import Any

from labelloop.backend.inference.images import Fetched
from labelloop.backend.inference.predictor import Outcome
from labelloop.connectors.formats.canonical_json import item_from_dict, item_to_dict
from labelloop.settings import Settings

log = logging.getLogger(__name__)
WINDOW = 32  # images looked up per Redis round trip
RETRY_S = 10.0  # after a failed Redis call, this long without the memo


@dataclass
class MemoStats:
    """Of the images given to ``predict``: how many came from the memo and how many were forwarded."""

    hits: int = 0
    forwards: int = 0


class ResultMemo:
    """One per process; thread-safe (redis-py's client pools its connections)."""

    def __init__(self, settings: Settings) -> None:
        self.entries = settings.predict.memo_entries
        self.ttl_s = settings.predict.memo_ttl_s
        self._url = settings.queue.redis_url
        self._prefix = f"{settings.queue.prefix}:memo"
        self._redis: Any = None
        self._down_until = 0.0
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.entries > 0

    def _client(self) -> Any | None:
        if not self.enabled or time.monotonic() < self._down_until:
            return None
        with self._lock:
            if self._redis is None:
                from redis import Redis

                self._redis = Redis.from_url(self._url, socket_connect_timeout=0.5, socket_timeout=2)
        return self._redis

    def _failed(self, what: str, e: Exception) -> None:
        if time.monotonic() >= self._down_until:
            log.warning("result memo: %s failed (%s: %s); predicting without it for %.0fs", what,
                        type(e).__name__, e, RETRY_S)  # fmt: skip
        self._down_until = time.monotonic() + RETRY_S

    def key(self, scope: str, sha256: str) -> str:
        return f"{self._prefix}:{scope}:{sha256}"

    def get_many(self, keys: list[str]) -> list[dict[str, Any] | None]:
        r = self._client()
        if r is None or not keys:
            return [None] * len(keys)
        try:
            raw = r.mget(keys)
        except Exception as e:
            self._failed("reading", e)
            return [None] * len(keys)
        return [json.loads(v) if v else None for v in raw]

    def put_many(self, entries: dict[str, dict[str, Any]]) -> None:
        r = self._client()
        if r is None or not entries:
            return
        index = f"{self._prefix}:index"
        now = time.time()
        try:
            pipe = r.pipeline(transaction=False)
            for k, doc in entries.items():
                pipe.set(k, json.dumps(doc, separators=(",", ":")), ex=int(self.ttl_s))
            pipe.zadd(index, {k: now for k in entries})
            pipe.zcard(index)
            size = pipe.execute()[-1]
            if size > self.entries:
                old = r.zpopmin(index, size - self.entries)
                if old:
                    r.delete(*[k for k, _ in old])
        except Exception as e:
            self._failed("writing", e)

    def predict(
        self,
        scope: str,
        fetched: Iterable[Fetched],
        forward: Callable[[Iterable[Fetched]], Iterator[Outcome]],
        stats: MemoStats,
    ) -> Iterator[Outcome]:
        """``forward``'s outcomes for ``fetched``, in order, with remembered images taken from the
        memo instead (``WINDOW`` images per lookup); new results are remembered."""
        if not self.enabled:
            for o in forward(fetched):
                stats.forwards += o.item is not None
                yield o
            return
        it = iter(fetched)
        while window := list(islice(it, WINDOW)):
            keys = [self.key(scope, f.sha256) if f.ok and f.sha256 else None for f in window]
            wanted = sorted({k for k in keys if k})
            found = {k: d for k, d in zip(wanted, self.get_many(wanted), strict=True) if d is not None}
            first: dict[str, Fetched] = {}  # each distinct image not remembered: forwarded once
            misses = []
            for f, k in zip(window, keys, strict=True):
                if k is None or (k not in found and k not in first):
                    misses.append(f)
                    if k is not None:
                        first[k] = f
            outs = forward(misses)
            done: dict[int, Outcome] = {}
            new: dict[str, dict[str, Any]] = {}
            try:
                for f, k in zip(window, keys, strict=True):
                    if k is not None and k in found:
                        stats.hits += 1
                        yield Outcome(f, _item_for(f, found[k]))
                    elif k is not None and first[k] is not f:  # a duplicate forwarded in this window
                        o = done[id(first[k])]
                        stats.hits += o.item is not None
                        yield Outcome(f, replace(o.item, uri=f.uri)) if o.item else _failed_as(f, o)
                    else:
                        o = done[id(f)] = next(outs)
                        if o.item is not None:
                            stats.forwards += 1
                            if k is not None:
                                new[k] = item_to_dict(replace(o.item, uri=""))
                        yield o
            finally:
                outs.close()  # type: ignore[attr-defined]
                self.put_many(new)


def scope_of(model_version: str, served: str, task: str, fingerprint: str) -> str:
    """The part of a memo key that changes whenever predictions could."""
    return hashlib.sha256(f"{model_version}|{served}|{task}|{fingerprint}".encode()).hexdigest()[:20]


def _item_for(f: Fetched, doc: dict[str, Any]) -> Any:
    return replace(item_from_dict({**doc, "uri": f.uri}), uri=f.uri, sha256=f.sha256)


def _failed_as(f: Fetched, o: Outcome) -> Outcome:
    return Outcome(Fetched(f.uri, error=o.error, kind=o.kind))
