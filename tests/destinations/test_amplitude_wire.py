"""Amplitude through a running trackrelay: Segment calls posted to the server reach the contract
fake as HTTP V2 events and a User Mapping request; a 503 is retried; an event with no id Amplitude
would take is dead-lettered without being sent."""

from __future__ import annotations

import importlib.util

import pytest

from tests.fakes.amplitude import make_app
from tests.fakes.base import FakeServer
from tests.helpers import TrackRelay

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("proxy.cli") is None, reason="the trackrelay server (proxy.cli) is not there yet"
)

DELIVERY = {"flush_interval": 0.05, "backoff_initial": 0.05, "backoff_max": 0.5}
KEY = "wire-amp-key"


def segment_batch() -> list[dict]:
    ctx = {"ip": "198.51.100.4", "locale": "en-GB", "campaign": {"name": "launch", "source": "x"}}
    return [
        {"type": "identify", "messageId": "w-1", "userId": "user-1", "anonymousId": "anon-0001", "context": ctx,
         "traits": {"email": "u1@example.com", "first_name": "Uma"}},
        {"type": "track", "messageId": "w-2", "userId": "user-1", "event": "Signed Up", "properties": {"seats": 3},
         "context": ctx},
        {"type": "track", "messageId": "w-3", "anonymousId": "anon-0002", "event": "Viewed Docs"},
        {"type": "page", "messageId": "w-4", "userId": "user-1", "name": "Pricing"},
        {"type": "screen", "messageId": "w-5", "userId": "user-1", "name": "Home"},
        {"type": "group", "messageId": "w-6", "userId": "user-1", "groupId": "acct-1", "traits": {"name": "Acme"}},
        {"type": "alias", "messageId": "w-7", "userId": "user-1", "previousId": "old-user-1"},
        {"type": "track", "messageId": "w-8", "userId": "user-1", "event": "Order Completed",
         "properties": {"order_id": "o-1", "revenue": 30, "currency": "eur",
                        "products": [{"product_id": "p1", "price": 10, "quantity": 2},
                                     {"product_id": "p2", "price": 10}]}},
        {"type": "track", "messageId": "w-9", "userId": "user-1", "event": "Order Refunded",
         "properties": {"order_id": "o-1", "total": 30}},
        # "null" is an id Amplitude refuses: dead-lettered by the adapter, never sent
        {"type": "track", "messageId": "w-10", "userId": "null", "anonymousId": "0", "event": "Ghost"},
    ]


def test_end_to_end(tmp_path) -> None:
    app = make_app(api_key=KEY)
    app["script"].append((503, {"code": 503, "error": "Service Unavailable"}))
    with FakeServer(app) as fake, TrackRelay(tmp_path, destinations=[{
        "name": "amp", "type": "amplitude", "delivery": DELIVERY,
        "settings": {"api_key": KEY, "endpoint": fake.url, "user_mapping": True},
    }]) as tr:
        status, body, _ = tr.post("/v1/batch", {"writeKey": tr.write_key, "batch": segment_batch()})
        assert status == 200, body
        fake.wait_for(lambda _: len({e["insert_id"] for e in app["events"]}) >= 11 and app["mappings"], timeout=20)
        dead = tr.wait_dead_letters("amp", 1)
        events = list(app["events"])
        mappings = list(app["mappings"])
        requests = fake.snapshot()

    assert any(r.status == 503 for r in requests)
    assert [d[0] for d in dead] == ["w-10"] and "no usable user_id or device_id" in dead[0][1]
    assert all(e["event_type"] != "Ghost" for e in events)
    by_id = {e["insert_id"]: e for e in events}
    assert sorted(by_id) == sorted(["w-1", "w-2", "w-3", "w-4", "w-5", "w-6", "w-6-1", "w-8", "w-8-1", "w-8-2", "w-9"])
    assert by_id["w-1"]["event_type"] == "$identify"
    assert by_id["w-1"]["user_properties"] == {"$set": {"email": "u1@example.com", "firstName": "Uma", "name": "Uma"}}
    assert by_id["w-2"]["user_id"] == "user-1" and by_id["w-2"]["ip"] == "198.51.100.4"
    assert by_id["w-2"]["user_properties"] == {"utm_campaign": "launch", "utm_source": "x"}
    assert "user_id" not in by_id["w-3"] and by_id["w-3"]["device_id"] == "anon-0002"
    assert by_id["w-4"]["event_type"] == "Viewed Pricing Page" and by_id["w-5"]["event_type"] == "Viewed Home Screen"
    assert by_id["w-6-1"]["event_type"] == "$groupidentify"
    assert by_id["w-6-1"]["group_properties"] == {"$set": {"name": "Acme"}}
    assert "revenue" not in by_id["w-8"]
    assert [(by_id[i]["productId"], by_id[i]["revenue"], by_id[i]["currency"]) for i in ("w-8-1", "w-8-2")] == [
        ("p1", 20, "EUR"), ("p2", 10, "EUR")]
    assert (by_id["w-9"]["revenue"], by_id["w-9"]["revenueType"]) == (-30, "Refund")
    assert mappings == [{"user_id": "old-user-1", "global_user_id": "user-1"}]


def test_long_strings_are_cut_counted_and_the_fake_takes_them(tmp_path) -> None:
    """A property value over 1024 characters would be refused by the fake (as over Amplitude's
    limit); trackrelay cuts it, delivers the event and counts it as modified. A userId over the limit
    is dead-lettered instead."""
    app = make_app(api_key=KEY)
    with FakeServer(app) as fake, TrackRelay(tmp_path, destinations=[{
        "name": "amp", "type": "amplitude", "delivery": DELIVERY,
        "settings": {"api_key": KEY, "endpoint": fake.url},
    }]) as tr:
        batch = [
            {"type": "track", "messageId": "long-1", "userId": "user-1", "event": "Searched",
             "properties": {"query": "q" * 3000}},
            {"type": "track", "messageId": "long-id", "userId": "u" * 1100, "event": "Searched"},
        ]
        status, body, _ = tr.post("/v1/batch", {"writeKey": tr.write_key, "batch": batch})
        assert status == 200, body
        dead = tr.wait_dead_letters("amp", 1)
        fake.wait_for(lambda _: len(app["events"]) >= 1, timeout=20)
        text = tr.get("/metrics")[1].decode()
        requests = fake.snapshot()
    assert all(r.status == 200 for r in requests), "the fake must have nothing to refuse"
    [event] = app["events"]
    assert event["event_properties"]["query"] == "q" * 1024
    assert 'trackrelay_events_modified_total{destination="amp"} 1.0' in text
    assert [d[0] for d in dead] == ["long-id"] and "user_id is 1100 characters" in dead[0][1]
