"""Fuzz a running ML backend from its own OpenAPI description (``/openapi.json``) with schemathesis.

Cases are generated per operation, valid ones (positive) and ones that break the description
(negative), and sent with the credentials; each answer is checked against the description:
no 5xx, a status code and content type it lists, a body matching its schema (so every 4xx is the
JSON ``{"error": "<message>"}`` the description promises), invalid data refused, and auth
enforced (schemathesis re-sends a case without and with wrong credentials). Not checked: that
valid-looking data is accepted, since no schema can say which hostnames are trusted or which
images exist, so a well-formed request may be refused with a 4xx message.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from labelloop.errors import ConfigError

MAX_NOTES = 20  # failures and transport errors kept verbatim (the counts are complete)
REQUESTS = "labelloop_requests_total{"


@dataclass
class SchemaFuzzReport:
    cases: int = 0  # generated cases sent
    requests: int = 0  # every request the backend answered (its /metrics), the auth probes too
    by_operation: dict[str, int] = field(default_factory=dict)
    by_status: dict[str, int] = field(default_factory=dict)
    failures: int = 0  # cases with at least one failed check
    by_check: dict[str, int] = field(default_factory=dict)  # failed checks by title
    notes: list[str] = field(default_factory=list)  # the first failures: case, check, answer
    transport_errors: list[str] = field(default_factory=list)
    not_generated: list[str] = field(default_factory=list)  # operation/mode with no case possible
    seconds: float = 0.0

    @property
    def server_errors(self) -> int:
        return sum(v for k, v in self.by_status.items() if k.startswith("5"))

    @property
    def ok(self) -> bool:
        return not (self.failures or self.transport_errors or self.server_errors)


def _checks() -> list[Any]:
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi import checks as oc

    return [
        not_a_server_error,
        oc.status_code_conformance,
        oc.content_type_conformance,
        oc.response_schema_conformance,
        oc.response_headers_conformance,
        oc.negative_data_rejection,
        oc.ignored_auth,
    ]


def _served(url: str, auth: dict[str, str]) -> int:
    """Requests the backend has answered, all workers together (labelloop_requests_total)."""
    import requests

    text = requests.get(f"{url}/metrics", headers=auth, timeout=30).text
    return round(sum(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines() if ln.startswith(REQUESTS)))


def _has_inputs(op: Any) -> bool:
    return bool(op.body or op.query or op.headers or op.path_parameters or op.cookies)


def schema_fuzz(
    url: str, n: int, token: str, *, seed: int = 0, progress: Callable[[int], None] | None = None
) -> SchemaFuzzReport:
    """About ``n`` schemathesis cases against the backend at ``url`` (its /openapi.json, which must
    list the bearer scheme), spread over its operations in both modes; what failed, counted.
    schemathesis holds the bearer ``token`` as the scheme's credentials, so its auth check knows
    which requests carry them and probes each operation without and with wrong ones."""
    try:
        import requests
        import schemathesis
        from hypothesis import HealthCheck, Phase, given, settings
        from hypothesis import seed as hseed
        from hypothesis.errors import HypothesisException
        from schemathesis.core.failures import Failure, FailureGroup
    except ImportError as e:  # a dev dependency: the benchmark's, not the backend's
        raise ConfigError("labelloop bench fuzz needs schemathesis: pip install 'labelloop[dev]'") from e

    report, status, checks_failed, ops = SchemaFuzzReport(), Counter[str](), Counter[str](), Counter[str]()
    session = requests.Session()
    # a fresh connection each time: a reused keep-alive one can race gunicorn's idle close
    session.headers["Connection"] = "close"
    auth = {"Authorization": f"Bearer {token}"}
    config = schemathesis.Config.from_dict({"auth": {"openapi": {"bearer": {"bearer": token}}}})
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", config=config, headers=auth, timeout=30)
    positive, negative = schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE
    # a GET without parameters is one case, and has nothing to negate; the rest share ``n``
    pairs = [
        (op, mode)
        for op in (r.ok() for r in schema.get_all_operations())
        for mode in (positive, negative)
        if mode is positive or _has_inputs(op)
    ]
    per = max(1, n // max(1, sum(_has_inputs(op) for op, _ in pairs)))
    checks = _checks()
    served_before = _served(url, auth)
    t0 = time.monotonic()

    def send(case: Any) -> None:
        report.cases += 1
        if progress is not None:
            progress(1)
        ops[case.operation.label] += 1
        kw = {"session": session, "timeout": 60}
        try:
            r = case.call(base_url=url, **kw)
        except requests.RequestException as e:
            if len(report.transport_errors) < MAX_NOTES:
                report.transport_errors.append(f"{case.operation.label}: {type(e).__name__}: {e}")
            return
        status[str(r.status_code)] += 1
        try:
            case.validate_response(r, checks=checks, transport_kwargs={**kw, "base_url": url})
        except (FailureGroup, Failure) as e:
            failures = e.exceptions if isinstance(e, FailureGroup) else (e,)
            report.failures += 1
            for f in failures:
                checks_failed[f.title] += 1
            if len(report.notes) < MAX_NOTES:
                body = json.dumps(case.body, default=repr)[:300] if case.body is not None else ""
                titles = "; ".join(f.title for f in failures)
                answer = f"{r.status_code} {r.text[:200]}"
                report.notes.append(f"{case.operation.label} {body} -> {answer}: {titles}")

    for op, mode in pairs:

        @hseed(seed)
        @settings(
            max_examples=per if _has_inputs(op) else 1,
            deadline=None,
            database=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(op.as_strategy(generation_mode=mode))
        def one(case: Any) -> None:
            send(case)

        try:
            one()
        except HypothesisException as e:  # no case could be made: said, not hidden
            report.not_generated.append(f"{op.label} {mode.value}: {type(e).__name__}")
    report.seconds = time.monotonic() - t0
    report.requests = _served(url, auth) - served_before - 1  # less the first count's own request
    report.by_status = dict(sorted(status.items()))
    report.by_check = dict(checks_failed.most_common())
    report.by_operation = dict(sorted(ops.items()))
    return report
