"""Userpilot through a running trackrelay: identify, track and group reach the contract fake, a
429 is retried, and page calls are skipped (never sent)."""

from __future__ import annotations

import importlib.util

import pytest

from tests.fakes.base import FakeServer
from tests.fakes.userpilot import make_app
from tests.helpers import TrackRelay

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("proxy.cli") is None, reason="the trackrelay server (proxy.cli) is not there yet"
)

DELIVERY = {"flush_interval": 0.05, "backoff_initial": 0.05, "backoff_max": 0.5}
KEY = "up-wire-key"


def test_userpilot_end_to_end(tmp_path) -> None:
    app = make_app(api_key=KEY)
    app["script"].append((429, {"errors": [{"error_code": "rate_limited", "error": "Too Many Requests",
                                            "message": "slow down", "details": ""}]}, {"Retry-After": "0"}))
    with FakeServer(app) as fake, TrackRelay(tmp_path, destinations=[{
        "name": "up", "type": "userpilot", "delivery": DELIVERY,
        "settings": {"api_key": KEY, "endpoint": fake.url},
    }]) as tr:
        batch = [
            {"type": "identify", "messageId": "p-1", "userId": "u1", "traits": {"email": "u1@example.com"},
             "context": {"groupId": "acct-1"}},
            {"type": "track", "messageId": "p-2", "userId": "u1", "event": "Report Exported",
             "properties": {"rows": 12}},
            {"type": "group", "messageId": "p-3", "userId": "u1", "groupId": "acct-1", "traits": {"name": "Acme"}},
            {"type": "page", "messageId": "p-4", "userId": "u1", "name": "Pricing"},
        ]
        status, body, _ = tr.post("/v1/batch", {"writeKey": tr.write_key, "batch": batch})
        assert status == 200, body
        fake.wait_for(lambda _: len(app["accepted"]) >= 4, timeout=20)
        accepted = list(app["accepted"])
        recorded = fake.snapshot()
        _, metrics, _ = tr.get("/metrics")
    text = metrics.decode() if isinstance(metrics, bytes) else str(metrics)
    assert 'trackrelay_events_skipped_total{destination="up",reason="unsupported_by_destination"} 1.0' in text
    assert sorted(p for p, _ in accepted) == ["/v1/companies/identify", "/v1/identify", "/v1/identify", "/v1/track"]
    assert ("/v1/track", {"user_id": "u1", "event_name": "Report Exported", "metadata": {"rows": 12}}) in accepted
    assert ("/v1/companies/identify", {"company_id": "acct-1", "metadata": {"name": "Acme"}}) in accepted
    assert ("/v1/identify",
            {"user_id": "u1", "metadata": {"email": "u1@example.com"}, "company": {"id": "acct-1"}}) in accepted
    assert any(r.status == 429 for r in recorded)
    assert all(r.headers.get("X-API-Version") == "2020-09-22" for r in recorded)
