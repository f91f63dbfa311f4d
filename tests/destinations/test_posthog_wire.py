"""PostHog through a running trackrelay: Segment calls posted to the server reach the capture
fake's /batch/ as PostHog events (with uuid, $groups, $anon_distinct_id...), a 503 is retried,
and an event PostHog would refuse is dead-lettered instead of failing the batch."""

from __future__ import annotations

import importlib.util

import pytest

from destinations.semantic import message_uuid
from tests.destinations.test_ga4_wire import wait_counter
from tests.fakes.base import FakeServer
from tests.fakes.posthog import make_app
from tests.helpers import TrackRelay

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("proxy.cli") is None, reason="the trackrelay server (proxy.cli) is not there yet"
)

DELIVERY = {"flush_interval": 0.05, "backoff_initial": 0.05, "backoff_max": 0.5}
KEY = "phc_wire_project_key"
UUID2 = "0b7e1c1e-6a8e-4c55-9a4e-2f7f1f0c0002"


def segment_batch() -> list[dict]:
    ctx = {"groupId": "acct-1", "ip": "198.51.100.4"}
    return [
        {"type": "identify", "messageId": "p-1", "userId": "u1", "anonymousId": "a1",
         "traits": {"email": "u1@example.com", "first_name": "Ada"}},
        {"type": "track", "messageId": UUID2, "userId": "u1", "event": "Order Completed", "context": ctx,
         "properties": {"order_id": "o-1", "revenue": 30, "products": [{"product_id": "p1"}, {"product_id": "p2"}]}},
        {"type": "page", "messageId": "p-3", "anonymousId": "a2", "name": "Pricing",
         "properties": {"url": "https://example.com/pricing"}},
        {"type": "screen", "messageId": "p-4", "userId": "u1", "name": "Home"},
        {"type": "group", "messageId": "p-5", "userId": "u1", "groupId": "acct-1", "traits": {"name": "Acme"}},
        {"type": "alias", "messageId": "p-6", "userId": "u1", "previousId": "old-u1"},
        # PostHog cuts distinct_ids at 200 characters (one person would become two): dead-lettered
        {"type": "track", "messageId": "p-7", "userId": "u" * 250, "event": "Too Long Id"},
    ]


def test_posthog_end_to_end(tmp_path) -> None:
    app = make_app(api_key=KEY)
    app["fail_next"].append((503, "transient error, please retry"))
    with FakeServer(app) as fake, TrackRelay(tmp_path, destinations=[{
        "name": "ph", "type": "posthog", "delivery": DELIVERY,
        "settings": {"api_key": KEY, "endpoint": fake.url},
    }]) as tr:
        status, body, _ = tr.post("/v1/batch", {"writeKey": tr.write_key, "batch": segment_batch()})
        assert status == 200, body
        fake.wait_for(lambda _: len(app["accepted"]) >= 6, timeout=20)
        assert wait_counter(tr, "dead_lettered", "ph", 1) == 1
        assert wait_counter(tr, "delivered", "ph", 6) == 6
        requests = fake.snapshot()
        logs = tr.logs()
    events = {e["event"]: e for e in app["accepted"]}
    assert sorted(events) == ["$create_alias", "$groupidentify", "$identify", "$pageview", "$screen", "Order Completed"]
    assert events["$identify"]["distinct_id"] == "u1"
    assert events["$identify"]["properties"]["$anon_distinct_id"] == "a1"
    assert events["$identify"]["properties"]["$set"] == {"email": "u1@example.com", "firstName": "Ada", "name": "Ada"}
    order = events["Order Completed"]
    assert order["uuid"] == UUID2 and order["properties"]["$groups"] == {"company": "acct-1"}
    assert order["properties"]["$ip"] == "198.51.100.4" and order["properties"]["revenue"] == 30
    assert events["$pageview"]["distinct_id"] == "a2"
    assert events["$pageview"]["properties"]["$current_url"] == "https://example.com/pricing"
    assert events["$pageview"]["uuid"] == message_uuid("p-3")
    assert events["$screen"]["properties"]["$screen_name"] == "Home"
    assert events["$groupidentify"]["properties"]["$group_key"] == "acct-1"
    assert events["$create_alias"]["properties"]["alias"] == "old-u1"
    assert [r.status for r in requests][:2] == [503, 200]  # the 503 was retried
    assert all(r.path == "/batch/" for r in requests)
    assert KEY not in logs
