"""Mixpanel through a running trackrelay: Segment calls posted to the server reach the contract
fake as /import, /engage and /groups records; a 429 is retried; a record Mixpanel refuses in a
partial 400 is dead-lettered while the rest of its request counts as delivered and is not resent."""

from __future__ import annotations

import importlib.util
import time
from datetime import UTC, datetime, timedelta

import pytest

from tests.fakes.base import FakeServer
from tests.fakes.mixpanel import make_app
from tests.helpers import TrackRelay

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("proxy.cli") is None, reason="the trackrelay server (proxy.cli) is not there yet"
)

DELIVERY = {"flush_interval": 0.05, "backoff_initial": 0.05, "backoff_max": 0.5}
TOKEN = "wire-token"
RATE_LIMITED = {"code": 429,
                "error": "Project exceeded rate limits. Please retry the request with exponential backoff.",
                "status": "Too Many Requests"}


def segment_batch() -> list[dict]:
    future = (datetime.now(UTC) + timedelta(days=2)).isoformat().replace("+00:00", "Z")
    ctx = {"ip": "198.51.100.4", "campaign": {"name": "launch", "source": "x"}}
    return [
        {"type": "identify", "messageId": "w-1", "userId": "u1", "anonymousId": "anon-1", "context": ctx,
         "traits": {"email": "u1@example.com", "firstName": "Uma", "plan": "pro"}},
        {"type": "track", "messageId": "w-2", "userId": "u1", "event": "Signed Up", "properties": {"seats": 3},
         "context": ctx},
        {"type": "track", "messageId": "ajs-next-1795378208872-d72a710a-1111-4222-8333-444455556666",
         "anonymousId": "anon-2", "event": "Viewed Docs"},
        {"type": "page", "messageId": "w-4", "userId": "u1", "name": "Pricing"},
        {"type": "screen", "messageId": "w-5", "userId": "u1", "name": "Home"},
        {"type": "group", "messageId": "w-6", "userId": "u1", "groupId": "acct-1", "traits": {"name": "Acme"}},
        {"type": "alias", "messageId": "w-7", "userId": "u1", "previousId": "old-u1"},
        {"type": "track", "messageId": "w-8", "userId": "u1", "event": "Order Completed",
         "properties": {"order_id": "o-1", "revenue": 30, "currency": "eur",
                        "products": [{"product_id": "p1", "price": 10, "quantity": 2},
                                     {"product_id": "p2", "price": 10}]}},
        # no sentAt: the client timestamp is kept, two days ahead; Mixpanel refuses it in a partial 400
        {"type": "track", "messageId": "w-9", "userId": "u1", "event": "From The Future", "timestamp": future},
    ]


def test_end_to_end(tmp_path) -> None:
    app = make_app(token=TOKEN)
    app["script"].append((429, RATE_LIMITED))  # the first call is throttled: it must be retried
    with FakeServer(app) as fake, TrackRelay(tmp_path, destinations=[{
        "name": "mp", "type": "mixpanel", "delivery": DELIVERY,
        "settings": {"project_token": TOKEN, "endpoint": fake.url},
    }]) as tr:
        status, body, _ = tr.post("/v1/batch", {"writeKey": tr.write_key, "batch": segment_batch()})
        assert status == 200, body
        fake.wait_for(lambda _: len(app["events"]) >= 8 and len(app["groups"]) >= 1
                      and len({p.get("$distinct_id") + str(sorted(p)) for p in app["profiles"]}) >= 3, timeout=20)
        dead = tr.wait_dead_letters("mp", 1)
        time.sleep(0.5)  # a wrongly resent partial success would show up as more /import records
        events = list(app["events"])
        profiles = list(app["profiles"])
        groups = list(app["groups"])
        requests = fake.snapshot()

    assert any(r.status == 429 for r in requests)
    assert any(r.status == 400 and r.path == "/import" for r in requests)
    assert [d[0] for d in dead] == ["w-9"]
    assert "properties.time" in dead[0][1] and "future" in dead[0][1]

    by_name = {}
    for ev in events:
        by_name.setdefault(ev["event"], []).append(ev["properties"])
    assert sorted(by_name) == ["$identify", "Loaded a Page", "Loaded a Screen", "Order Completed",
                               "Product Purchased", "Signed Up", "Viewed Docs"]
    assert len(events) == 8, "records delivered in a partial success must not be sent again"
    signed = by_name["Signed Up"][0]
    assert signed["distinct_id"] == "u1" and signed["$user_id"] == "u1" and signed["$insert_id"] == "w-2"
    assert signed["ip"] == "198.51.100.4" and signed["utm_campaign"] == "launch" and signed["seats"] == 3
    docs = by_name["Viewed Docs"][0]
    assert docs["distinct_id"] == "$device:anon-2" and len(docs["$insert_id"]) == 36
    ident = by_name["$identify"][0]
    assert (ident["$device_id"], ident["$user_id"]) == ("anon-1", "u1")
    assert [p["product_id"] for p in by_name["Product Purchased"]] == ["p1", "p2"]

    sets = [p["$set"] for p in profiles if "$set" in p]
    assert sets and sets[0] == {"$email": "u1@example.com", "$first_name": "Uma", "plan": "pro", "$name": "Uma"}
    assert {"$group_id": ["acct-1"]} in [p.get("$union") for p in profiles]
    transactions = [p["$append"]["$transactions"] for p in profiles if "$append" in p]
    assert transactions and transactions[0]["$amount"] == 30 and transactions[0]["currency"] == "EUR"
    assert groups[0]["$group_id"] == "acct-1" and groups[0]["$set"] == {"$name": "Acme"}
    assert all(p["$token"] == TOKEN for p in profiles + groups)


def test_long_strings_are_cut_before_mixpanel_and_counted_as_modified(tmp_path) -> None:
    """Mixpanel cuts strings to 255 characters without a word; trackrelay cuts them itself and says so
    (trackrelay_events_modified_total, an event_modified log line), so the fake has nothing left to cut."""
    app = make_app(token=TOKEN)
    with FakeServer(app) as fake, TrackRelay(tmp_path, destinations=[{
        "name": "mp", "type": "mixpanel", "delivery": DELIVERY,
        "settings": {"project_token": TOKEN, "endpoint": fake.url},
    }]) as tr:
        batch = [
            {"type": "track", "messageId": "long-1", "userId": "u1", "event": "Searched",
             "properties": {"query": "q" * 600, "page": 2}},
            {"type": "track", "messageId": "short-1", "userId": "u1", "event": "Searched",
             "properties": {"query": "shoes"}},
        ]
        status, body, _ = tr.post("/v1/batch", {"writeKey": tr.write_key, "batch": batch})
        assert status == 200, body
        fake.wait_for(lambda _: len(app["events"]) >= 2, timeout=20)
        text = tr.get("/metrics")[1].decode()
        logs = tr.logs()
    assert app["truncated"] == [], "Mixpanel must find nothing to truncate"
    by_id = {e["properties"]["$insert_id"]: e["properties"] for e in app["events"]}
    assert by_id["long-1"]["query"] == "q" * 255 and by_id["long-1"]["page"] == 2
    assert by_id["short-1"]["query"] == "shoes"
    assert 'trackrelay_events_modified_total{destination="mp"} 1.0' in text
    assert "event_modified" in logs and "long-1" in logs and "query" in logs
