"""A bounded fuzz run (hypothesis payloads, ``labelloop.bench.fuzz``) against a real gunicorn
backend with auth on: 0 5xx, every 4xx with a JSON message, no worker lost. ``labelloop bench fuzz``
is the >= 10,000-request run."""

from __future__ import annotations

from labelloop.bench.fuzz import fuzz


def test_fuzzed_backend_never_answers_5xx_or_a_bare_4xx(backend_factory) -> None:  # type: ignore[no-untyped-def]
    b = backend_factory(
        LABELLOOP_BEARER_TOKEN="fuzz-token",
        LABELLOOP_HTTP_WORKERS="2",
        LABELLOOP_FETCH_DEADLINE_S="2",
        LABELLOOP_IMGSZ="64",
    )
    report = fuzz(b.url, 1000, {"Authorization": "Bearer fuzz-token"}, log=b.workdir / "backend.log")
    assert report.requests == 1000
    assert not report.server_errors, report.server_errors[:5]
    assert not report.bare_4xx, report.bare_4xx[:5]
    assert not report.transport_errors, report.transport_errors[:5]
    assert report.workers_lost == 0, (report.worker_deaths, b.log()[-3000:])
    assert report.by_status.get("200", 0) > 100 and report.by_status.get("401", 0) > 50, report.by_status
