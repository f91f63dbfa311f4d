"""GA4 through a running trackrelay: Segment calls posted to the server reach the Measurement
Protocol fake as GA4 events, unsupported calls are skipped, events GA4 would drop are
dead-lettered instead of vanishing behind a 2xx, the api_secret never reaches the logs, and the
validation-server mode sends to /debug/mp/collect."""

from __future__ import annotations

import importlib.util
import re
import time

import pytest

from tests.fakes.base import FakeServer
from tests.fakes.ga4 import make_app
from tests.helpers import TrackRelay

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("proxy.cli") is None, reason="the trackrelay server (proxy.cli) is not there yet"
)

DELIVERY = {"flush_interval": 0.05, "backoff_initial": 0.05, "backoff_max": 0.5}
MID, SECRET = "G-WIRE123", "wire-secret-0b9f"


def counter(tr: TrackRelay, name: str, destination: str) -> float:
    status, body, _ = tr.get("/metrics")
    text = body.decode() if isinstance(body, bytes) else str(body)
    pattern = re.compile(rf'^trackrelay_events_{name}_total{{[^}}]*destination="{destination}"[^}}]*}} (\S+)$', re.M)
    return sum(float(v) for v in pattern.findall(text))


def wait_counter(tr: TrackRelay, name: str, destination: str, at_least: float, timeout: float = 20) -> float:
    deadline = time.monotonic() + timeout
    while True:
        value = counter(tr, name, destination)
        if value >= at_least or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def segment_batch() -> list[dict]:
    return [
        {"type": "identify", "messageId": "g-1", "userId": "u1", "anonymousId": "a1", "traits": {"plan": "pro"}},
        {"type": "track", "messageId": "g-2", "userId": "u1", "anonymousId": "a1", "event": "Order Completed",
         "properties": {"order_id": "o-1", "revenue": 30, "currency": "eur",
                        "products": [{"product_id": "p1", "name": "Mug", "price": 10, "quantity": 2},
                                     {"product_id": "p2", "name": "Tea", "price": 10}]}},
        {"type": "track", "messageId": "g-3", "userId": "u1", "anonymousId": "a1", "event": "Order Refunded",
         "properties": {"order_id": "o-1", "total": 30}},
        {"type": "page", "messageId": "g-4", "anonymousId": "a2", "name": "Pricing",
         "properties": {"url": "https://example.com/pricing", "title": "Pricing"}},
        {"type": "group", "messageId": "g-5", "userId": "u1", "anonymousId": "a1", "groupId": "acct-1"},
        {"type": "alias", "messageId": "g-6", "userId": "u1", "previousId": "old"},
        {"type": "screen", "messageId": "g-7", "userId": "u1", "anonymousId": "a1", "name": "Home"},
        {"type": "track", "messageId": "g-8", "userId": "u1", "anonymousId": "a1", "event": "Upgraded Plan",
         "properties": {"revenue": 99, "plan": "pro"}},
        {"type": "track", "messageId": "g-9", "userId": "u1", "anonymousId": "a1", "event": "Session Start"},
    ]


def test_ga4_end_to_end(tmp_path) -> None:
    app = make_app(measurement_id=MID, api_secret=SECRET)
    with FakeServer(app) as fake, TrackRelay(tmp_path, destinations=[{
        "name": "ga", "type": "ga4", "delivery": DELIVERY,
        "settings": {"measurement_id": MID, "api_secret": SECRET, "endpoint": fake.url},
    }]) as tr:
        status, body, _ = tr.post("/v1/batch", {"writeKey": tr.write_key, "batch": segment_batch()})
        assert status == 200, body
        fake.wait_for(lambda _: len(app["accepted"]) >= 5, timeout=20)
        assert wait_counter(tr, "skipped", "ga", 3) == 3  # identify, alias, screen
        assert wait_counter(tr, "dead_lettered", "ga", 1) == 1  # "Session Start" is reserved
        assert wait_counter(tr, "delivered", "ga", 5) == 5
        logs = tr.logs()
        requests = fake.snapshot()
    accepted = {e["name"]: e for e in app["accepted"]}
    assert sorted(accepted) == ["Upgraded_Plan", "join_group", "page_view", "purchase", "refund"]
    purchase = accepted["purchase"]
    assert purchase["client_id"] == "a1" and purchase["user_id"] == "u1"
    assert purchase["params"]["transaction_id"] == "o-1" and purchase["params"]["value"] == 30
    assert purchase["params"]["currency"] == "EUR"
    assert [i["item_id"] for i in purchase["params"]["items"]] == ["p1", "p2"]
    assert accepted["refund"]["params"]["value"] == 30 and accepted["refund"]["params"]["currency"] == "USD"
    assert accepted["page_view"]["client_id"] == "a2"
    assert accepted["page_view"]["params"]["page_location"] == "https://example.com/pricing"
    assert accepted["Upgraded_Plan"]["params"]["value"] == 99
    assert app["dropped"] == []
    assert all(r.path == "/mp/collect" and r.query["api_secret"] == SECRET for r in requests)
    assert SECRET not in logs


def test_ga4_validation_server_mode(tmp_path) -> None:
    app = make_app(measurement_id=MID, api_secret=SECRET)
    with FakeServer(app) as fake, TrackRelay(tmp_path, destinations=[{
        "name": "gadebug", "type": "ga4", "delivery": DELIVERY,
        "settings": {"measurement_id": MID, "api_secret": SECRET, "endpoint": fake.url, "debug_validation": True},
    }]) as tr:
        status, body, _ = tr.post("/v1/batch", {"writeKey": tr.write_key, "batch": segment_batch()[1:5]})
        assert status == 200, body
        assert wait_counter(tr, "delivered", "gadebug", 4) == 4
        requests = fake.snapshot()
    assert requests and all(r.path == "/debug/mp/collect" and r.status == 200 for r in requests)
    assert app["accepted"] == []  # the validation server records nothing
