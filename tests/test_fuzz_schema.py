"""A bounded schemathesis run (``labelloop.bench.schema_fuzz``) against a real gunicorn backend with
bearer auth, from the /openapi.json it serves: every answer matches the description (status,
content type, body schema: every 4xx a JSON ``error``), invalid data is refused, auth is enforced,
no 5xx and no worker lost. ``labelloop bench fuzz`` runs thousands of these cases."""

from __future__ import annotations

import requests

from labelloop.bench.schema_fuzz import schema_fuzz

TOKEN = "schema-token"


def test_schemathesis_cases_match_the_openapi_description(backend_factory) -> None:  # type: ignore[no-untyped-def]
    b = backend_factory(
        LABELLOOP_BEARER_TOKEN=TOKEN,
        LABELLOOP_HTTP_WORKERS="2",
        LABELLOOP_FETCH_DEADLINE_S="2",
        LABELLOOP_IMGSZ="64",
    )
    auth = {"Authorization": f"Bearer {TOKEN}"}
    doc = requests.get(f"{b.url}/openapi.json", headers=auth, timeout=10).json()
    assert doc["security"] == [{"bearer": []}]  # what this server requires, not "optional"
    boots = b.log_path.read_text().count("Booting worker")
    report = schema_fuzz(b.url, 300, TOKEN)
    assert report.failures == 0, (report.by_check, report.notes[:5])
    assert report.server_errors == 0 and not report.transport_errors, report.transport_errors[:5]
    assert report.cases >= 250, report.by_operation
    assert report.requests > report.cases  # the auth check probed without and with wrong credentials
    assert {"POST /predict", "POST /setup", "POST /webhook"} <= set(report.by_operation)
    assert report.by_status.get("200", 0) > 50 and report.by_status.get("400", 0) > 20, report.by_status
    assert report.by_status.get("401", 0) > 0  # probes without or with wrong credentials
    assert b.log_path.read_text().count("Booting worker") == boots, b.log()  # no worker died, none replaced
