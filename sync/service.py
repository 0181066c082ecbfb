"""The sync: pull what changed on each source into the store, version it, and start retraining.

One pass, per source: read the stored cursor, pull what changed since it through the platform's
connector, and ingest annotations, tombstones, quarantine and the new cursor in ONE transaction
(:func:`labelloop.sync.ingest.ingest`), so a kill at any moment leaves the store either before or
after the pass, never between. Then: a new dataset version when enough has changed since the
last one; the retrain trigger against the version the current model was trained on; and, for
Label Studio, the annotators' agreement written back where a QA lead looks (a task field and the
saved view "Annotators disagree").

A source that cannot be reached (platform, network) or a database that is down costs one log line
and a backoff for that source; the other sources and the loop go on, and the next pass re-pulls
from the stored cursor, so nothing is lost. Reconciliation (listing every task id to find
deletions) runs on the first pass and then every ``sync.reconcile_interval_s``, because it reads
the whole project while a cursor poll reads only what changed.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from labelloop.connectors.platform import LabelingPlatform, Target
from labelloop.errors import ConfigError, StoreError
from labelloop.retry import Backoff, is_retryable
from labelloop.settings import Settings, SyncSource
from labelloop.sync import stats
from labelloop.sync.events import EventWatcher, beat
from labelloop.sync.fetch import fetch_missing, missing, reader_for
from labelloop.sync.ingest import IngestReport, ingest, load_cursor
from labelloop.sync.prelabel import Bar, no_bar, open_platform
from labelloop.sync.store import Store
from labelloop.sync.trigger import enqueue_retrain, retrain_known, should_retrain
from labelloop.sync.versions import changes_since, latest, pending_labels, snapshot

log = logging.getLogger(__name__)
DISAGREE_VIEW = "Annotators disagree"
Opener = Callable[[str, Settings], LabelingPlatform]


@dataclass
class SourceReport:
    source: str
    ok: bool = True
    pulled: int = 0
    new_revisions: int = 0
    unchanged: int = 0
    tombstoned: int = 0
    tasks_deleted: int = 0
    quarantined: int = 0
    reconciled: bool = False
    skipped: bool = False  # backing off after a failure
    disagreements: int | None = None  # tasks under the agreement threshold (written back)
    images_fetched: int = 0  # image bytes stored in the blob store this pass
    images_failed: int = 0
    fetch_s: float = 0.0
    pull_s: float = 0.0  # reading the platform
    ingest_s: float = 0.0  # writing the store (one transaction)
    seconds: float = 0.0
    error: str | None = None

    @property
    def changed(self) -> int:
        return self.new_revisions + self.tombstoned + self.tasks_deleted


@dataclass
class PassReport:
    number: int
    sources: list[SourceReport] = field(default_factory=list)
    changes_since_version: int = 0
    version: str | None = None  # the head version after the pass
    version_created: bool = False
    trigger: str | None = None  # the trigger's reason, when it was weighed
    job_id: str | None = None  # the retrain this pass enqueued
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.errors and all(s.ok for s in self.sources)

    @property
    def changed(self) -> int:
        return sum(s.changed for s in self.sources)

    def line(self) -> str:
        """The one summary line a pass prints."""
        parts = [
            f"pass {self.number}: {sum(s.pulled for s in self.sources)} pulled",
            f"{sum(s.new_revisions for s in self.sources)} new",
            f"{sum(s.tombstoned + s.tasks_deleted for s in self.sources)} deleted",
            f"{sum(s.quarantined for s in self.sources)} quarantined",
            f"{sum(s.images_fetched for s in self.sources)} images fetched",
        ]
        bad = [s.source for s in self.sources if not s.ok]
        if bad:
            parts.append(f"{len(bad)} source(s) failing")
        if self.version:
            parts.append(f"version {self.version[:12]}{' (new)' if self.version_created else ''}")
        if self.job_id:
            parts.append(f"retrain enqueued ({self.job_id})")
        return ", ".join(parts) + f" in {self.seconds:.2f}s"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok, "changed": self.changed}


@dataclass
class _Source:
    spec: SyncSource
    settings: Settings
    platform: LabelingPlatform | None = None
    target: Target | None = None
    failures: int = 0
    next_try: float = 0.0
    last_reconcile: float | None = None
    written_agreement: dict[str, float] = field(default_factory=dict)
    reader: Callable[[str, str | None], bytes] | None = None  # image bytes, for this platform
    fetch_failures: int = 0  # passes in a row whose image fetch left some missing
    fetch_again_at: float | None = None  # when missing images are tried again on a quiet pass

    @property
    def container(self) -> int:
        return int(self.spec.project if self.spec.project is not None else self.spec.task)  # type: ignore[arg-type]

    @property
    def name(self) -> str:
        kind = "project" if self.spec.project is not None else "task"
        url = self.spec.url or (self.target.url if self.target else None) or "(settings URL)"
        return f"{self.spec.platform} {kind} {self.container} at {url}"


def source_settings(settings: Settings, spec: SyncSource) -> Settings:
    """The settings a source's platform is opened with: its own URL over the section's."""
    if not spec.url:
        return settings
    section = "labelstudio" if spec.platform == "labelstudio" else "cvat"
    return settings.with_(**{section: {"url": spec.url}})


class SyncService:
    """The sync loop over ``sources``. ``trained_on`` names the dataset version the current model
    was trained on (None: no model yet); the caller passes the registry's answer, because the
    registry lives above the sync."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        sources: Sequence[SyncSource],
        *,
        trained_on: Callable[[], str | None] = lambda: None,
        bar: Bar = no_bar,
        opener: Opener = open_platform,
        backoff: Backoff = Backoff(base_s=2.0, cap_s=300.0),
        enqueue: bool = True,
        fetch_images: bool | None = None,
    ) -> None:
        if not sources:
            raise ConfigError(
                "no sync sources: add [[sync.sources]] to labelloop.toml or pass "
                "-t labelstudio --project N / -t cvat --task N"
            )
        self.settings = settings
        self.store = store
        self.sources = [_Source(s, source_settings(settings, s)) for s in sources]
        self.trained_on = trained_on
        self.bar = bar
        self.opener = opener
        self.backoff = backoff
        self.enqueue = enqueue
        self.fetch_images = settings.sync.fetch_images if fetch_images is None else fetch_images
        self.passes = 0
        self._weighed_at: float | None = None
        self._enqueued: str | None = None  # the last retrain this service enqueued
        self._store_down = False

    # -------------------------------------------------------------------- one pass

    def run_once(self, *, force_reconcile: bool = False) -> PassReport:
        t0 = time.monotonic()
        self.passes += 1
        report = PassReport(self.passes)
        for src in self.sources:
            report.sources.append(self._pass_source(src, force_reconcile))
        try:
            self._version_and_trigger(report)
            if self._store_down:
                log.info("the store is reachable again")
                self._store_down = False
        except Exception as e:
            report.errors.append(f"versioning/trigger: {_first(e)}")
            if not self._store_down:
                log.warning("versioning or the trigger failed (%s); the next pass tries again", _first(e))
                self._store_down = True
        report.seconds = round(time.monotonic() - t0, 3)
        return report

    def _pass_source(self, src: _Source, force_reconcile: bool) -> SourceReport:
        t0 = time.monotonic()
        out = SourceReport(src.target.key if src.target else src.name)
        if time.monotonic() < src.next_try:
            out.skipped, out.ok, out.error = True, False, "backing off after a failure"
            return out
        try:
            if src.platform is None:
                src.platform = self.opener(src.spec.platform, src.settings)
                src.target = Target(src.platform.name, src.platform.url, src.container)
                out.source = src.target.key
            assert src.target is not None
            now = time.monotonic()
            reconcile = (
                force_reconcile
                or src.last_reconcile is None
                or now - src.last_reconcile >= self.settings.sync.reconcile_interval_s
            )
            cursor = load_cursor(self.store, src.target)
            t_pull = time.monotonic()
            with self.bar(f"pull {src.name}", 0) as advance:
                res = src.platform.pull_changes(src.container, cursor, reconcile=reconcile, progress=advance)
            out.pull_s = round(time.monotonic() - t_pull, 3)
            with self.bar(f"ingest {src.target.key}", len(res.annotations)) as advance:
                got: IngestReport = ingest(self.store, src.target, res, progress=advance)
            out.ingest_s = got.seconds
            if reconcile:
                src.last_reconcile = now
            out.reconciled = reconcile
            for k in ("pulled", "new_revisions", "unchanged", "tombstoned", "tasks_deleted", "quarantined"):
                setattr(out, k, getattr(got, k))
            if got.quarantined:
                log.warning(
                    "%s: %d annotation(s) quarantined: %s",
                    src.name,
                    got.quarantined,
                    "; ".join(got.reasons[:3]),
                )
            if src.failures:
                log.info("%s is reachable again after %d failed pass(es)", src.name, src.failures)
            src.failures, src.next_try = 0, 0.0
            due = src.fetch_again_at is not None and time.monotonic() >= src.fetch_again_at
            if self.fetch_images and (got.new_revisions or got.new_items or reconcile or due):
                self._fetch_images(src, out)
            if src.spec.platform == "labelstudio" and (got.changed or not src.written_agreement):
                out.disagreements = self._write_agreement(src)
        except Exception as e:
            out.ok, out.error = False, _first(e)
            self._failed(src, e)
        out.seconds = round(time.monotonic() - t0, 3)
        return out

    def _failed(self, src: _Source, e: BaseException) -> None:
        retryable = is_retryable(e) or isinstance(e, StoreError)
        delay = self.backoff.delay(src.failures) if retryable else self.backoff.cap_s
        if src.failures == 0:  # one line per outage, not one per retry
            what = "unreachable" if retryable else "failing"
            log.warning("%s %s (%s); retrying with backoff, next in %.0fs", src.name, what, _first(e), delay)
        src.failures += 1
        src.next_try = time.monotonic() + delay
        if src.platform is not None:
            with contextlib.suppress(Exception):  # a broken connection may not close cleanly
                src.platform.close()
            src.platform = src.reader = None  # the reader reads through that platform

    def _fetch_images(self, src: _Source, out: SourceReport) -> None:
        """The bytes of this source's items that the blob store lacks (training and export need them)."""
        assert src.platform is not None and src.target is not None
        todo = missing(self.store, src.target)
        if not todo:
            src.fetch_failures, src.fetch_again_at = 0, None
            return
        if src.reader is None:  # one fetcher per source, not one per pass
            src.reader = reader_for(src.settings, src.platform, src.container)
        t0 = time.monotonic()
        with self.bar(f"images {src.name}", len(todo)) as advance:
            got = fetch_missing(
                self.store,
                todo,
                src.reader,
                progress=advance,
            )
        out.images_fetched, out.images_failed = got.fetched, got.failed
        out.fetch_s = round(time.monotonic() - t0, 3)
        if not got.failed:
            src.fetch_failures, src.fetch_again_at = 0, None
            return
        delay = self.backoff.delay(src.fetch_failures)  # a pass with no changes tries them then
        src.fetch_failures += 1
        src.fetch_again_at = time.monotonic() + delay
        log.warning(
            "%s: %d image(s) could not be fetched (tried again in %.0fs): %s",
            src.name,
            got.failed,
            delay,
            "; ".join(got.reasons[:3]),
        )

    def _write_agreement(self, src: _Source) -> int:
        """Annotator F1 of every multi-annotator task of this source into a task field (only values
        that changed since this process last wrote them) and the view of those under the threshold."""
        assert src.platform is not None and src.target is not None
        rep = stats.agreement(self.store)
        mine = {t.task_id: round(t.f1, 4) for t in rep.tasks if t.source_key == src.target.key}
        changed: dict[str, float | None] = {
            k: v for k, v in mine.items() if src.written_agreement.get(k) != v
        }
        flagged = sum(v < rep.threshold for v in mine.values())
        if changed or (flagged and not src.written_agreement):
            src.platform.write_priority(
                src.container,
                changed,
                field_name=self.settings.sync.agreement_field,
                view=DISAGREE_VIEW if flagged else None,
                below=rep.threshold,
            )
            src.written_agreement.update({k: v for k, v in changed.items() if v is not None})
        return flagged

    # -------------------------------------------------------------------- versions and the trigger

    def _version_and_trigger(self, report: PassReport) -> None:
        rules = self.settings.trigger
        now = time.monotonic()
        age_due = rules.max_age_h is not None and (self._weighed_at is None or now - self._weighed_at >= 60)
        # a retrain this service enqueued that Redis forgot (restarted without persistence) is
        # weighed again from the store, and enqueued again while the labels are still pending
        known = self._enqueued is None or retrain_known(self.settings, self._enqueued)
        weigh = report.changed > 0 or self._weighed_at is None or age_due or not known
        fire: tuple[str, str] | None = None
        with self.store.transaction() as s:
            head = latest(s)
            changes = changes_since(s, head.id if head else None) if (report.changed or head is None) else 0
            report.changes_since_version = changes
            if changes >= self.settings.sync.snapshot_min_changes:
                made = snapshot(s, f"sync: {changes} changed task(s)")
                head, report.version_created = made.version, made.created
            if weigh and self.enqueue:
                self._weighed_at = now
                pending = pending_labels(s, self.trained_on())
                decision = should_retrain(len(pending.items), pending.age_h(), rules)
                report.trigger = decision.reason
                if decision.fire:
                    made = snapshot(s, f"sync: retrain ({decision.reason})")
                    head = made.version
                    report.version_created = report.version_created or made.created
                    fire = (head.id, decision.reason)
            report.version = head.id if head else None
        if fire:  # after the commit: the version exists before any worker is told to train on it
            report.job_id = enqueue_retrain(self.settings, *fire)
            if report.job_id:
                self._enqueued = report.job_id
                log.info("retrain of version %s enqueued: %s", fire[0][:12], fire[1])

    # -------------------------------------------------------------------- the loop

    def run(
        self,
        *,
        stop: threading.Event | None = None,
        max_passes: int | None = None,
        on_pass: Callable[[PassReport], None] | None = None,
        watcher: EventWatcher | None = None,
    ) -> None:
        """Pass after pass until ``stop`` is set (or ``max_passes``); between passes wait
        ``sync.interval_s`` or less when a webhook event arrives."""
        stop = stop or threading.Event()
        watcher = watcher or EventWatcher(self.settings)
        try:
            while not stop.is_set():
                report = self.run_once()
                self._beat(watcher, report)
                if on_pass:
                    on_pass(report)
                if max_passes is not None and self.passes >= max_passes:
                    return
                wait = self.settings.sync.interval_s
                soonest = min((s.next_try for s in self.sources if s.failures), default=None)
                if soonest is not None:
                    wait = max(0.5, min(wait, soonest - time.monotonic()))
                watcher.wait(wait, stop)
        finally:
            watcher.close()
            self.close()

    def _beat(self, watcher: EventWatcher, report: PassReport) -> None:
        try:
            beat(watcher.conn, self.settings, socket.gethostname(), {"pass": report.number, "ok": report.ok})
        except Exception as e:
            log.debug("sync heartbeat not written: %s", e)

    def close(self) -> None:
        for src in self.sources:
            if src.platform is not None:
                try:
                    src.platform.close()
                finally:
                    src.platform = src.reader = None


def _first(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:300]
