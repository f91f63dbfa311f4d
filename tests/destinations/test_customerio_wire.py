"""Customer.io through a running trackrelay: Segment batches posted to the server reach the
contract fake as Customer.io Track API / Data Pipelines requests, a 503 is retried, and an event
Customer.io would refuse never reaches it."""

from __future__ import annotations

import importlib.util
import time

import pytest

from tests.fakes.base import FakeServer
from tests.fakes.customerio import make_app
from tests.helpers import TrackRelay

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("proxy.cli") is None, reason="the trackrelay server (proxy.cli) is not there yet"
)

DELIVERY = {"flush_interval": 0.05, "backoff_initial": 0.05, "backoff_max": 0.5}
SITE, KEY, CDP_KEY = "site-wire", "track-wire-key", "cdp-wire-key"


def segment_batch() -> list[dict]:
    return [
        {"type": "identify", "messageId": "w-1", "userId": "u1", "anonymousId": "a1",
         "traits": {"email": "u1@example.com", "plan": "pro"}, "context": {"groupId": "acct-1"}},
        {"type": "track", "messageId": "w-2", "userId": "u1", "event": "Signed Up", "properties": {"seats": 3}},
        {"type": "track", "messageId": "w-3", "anonymousId": "a2", "event": "Viewed Docs"},
        {"type": "page", "messageId": "w-4", "userId": "u1", "name": "Pricing",
         "properties": {"url": "https://example.com/pricing"}},
        {"type": "screen", "messageId": "w-5", "userId": "u1", "name": "Home"},
        {"type": "group", "messageId": "w-6", "userId": "u1", "groupId": "acct-1", "traits": {"name": "Acme"}},
        {"type": "alias", "messageId": "w-7", "userId": "u1", "previousId": "old-u1"},
        {"type": "track", "messageId": "w-8", "userId": "u1", "event": "x" * 150},  # over 100 bytes: dead-lettered
    ]


PARTIAL = [  # one batch: Customer.io answers 207 refusing only the merge into an unknown person
    {"type": "identify", "messageId": "q-1", "userId": "u5", "traits": {"plan": "free"}},
    {"type": "alias", "messageId": "q-2", "userId": "nobody", "previousId": "u5"},
    {"type": "track", "messageId": "q-3", "userId": "u5", "event": "Upgraded"},
]


def test_track_mode_end_to_end(tmp_path) -> None:
    app = make_app(site_id=SITE, api_key=KEY)
    app["script"].append((503, {"message": "unavailable"}, {}))  # first call fails: must be retried
    with FakeServer(app) as fake, TrackRelay(tmp_path, destinations=[{
        "name": "cio", "type": "customerio", "delivery": DELIVERY,
        "settings": {"site_id": SITE, "api_key": KEY, "endpoint": fake.url},
    }]) as tr:
        status, body, _ = tr.post("/v1/batch", {"writeKey": tr.write_key, "batch": segment_batch()})
        assert status == 200, body
        fake.wait_for(lambda _: len(app["accepted"]) >= 7, timeout=20)
        accepted = list(app["accepted"])
        dead = tr.wait_dead_letters("cio", 1)
    assert len(dead) == 1 and dead[0][0] == "w-8"
    assert dead[0][1].endswith("event name is 150 bytes; Customer.io accepts at most 100")
    v2 = {item.get("action"): item for api, item in accepted if api == "v2" and item["type"] == "person"}
    v1 = [item for api, item in accepted if api == "v1"]
    assert len(accepted) == 7
    assert v2["identify"]["identifiers"] == {"id": "u1"}
    assert v2["identify"]["cio_relationships"] == [{"identifiers": {"object_type_id": "1", "object_id": "acct-1"}}]
    assert v2["event"]["name"] == "Signed Up" and v2["event"]["attributes"] == {"seats": 3}
    assert v2["page"]["name"] == "https://example.com/pricing" and v2["screen"]["name"] == "Home"
    assert v2["merge"] == {"type": "person", "action": "merge", "primary": {"id": "u1"}, "secondary": {"id": "old-u1"}}
    assert v1 and v1[0]["anonymous_id"] == "a2" and v1[0]["name"] == "Viewed Docs"
    objects = [item for api, item in accepted if item.get("type") == "object"]
    assert objects[0]["identifiers"] == {"object_type_id": "1", "object_id": "acct-1"}
    assert all("x" * 150 != item.get("name") for _, item in accepted)
    assert any(r.status == 503 for r in fake.snapshot())


def test_pipelines_mode_end_to_end(tmp_path) -> None:
    app = make_app(pipelines_key=CDP_KEY)
    with FakeServer(app) as fake, TrackRelay(tmp_path, destinations=[{
        "name": "cdp", "type": "customerio", "delivery": DELIVERY,
        "settings": {"mode": "pipelines", "api_key": CDP_KEY, "endpoint": fake.url},
    }]) as tr:
        events = segment_batch()[:7]
        status, body, _ = tr.post("/v1/batch", {"writeKey": tr.write_key, "batch": events})
        assert status == 200, body
        fake.wait_for(lambda _: len(app["accepted"]) >= len(events), timeout=20)
        sent = [item for _, item in app["accepted"]]
        requests = fake.snapshot()
    assert sorted(m["messageId"] for m in sent) == sorted(e["messageId"] for e in events)
    assert all(r.headers.get("X-Strict-Mode") == "1" for r in requests)
    assert not app["dropped"]


def test_track_mode_207_partial_success(tmp_path) -> None:
    app = make_app(site_id=SITE, api_key=KEY)
    with FakeServer(app) as fake, TrackRelay(tmp_path, destinations=[{
        "name": "cio", "type": "customerio", "delivery": DELIVERY,
        "settings": {"site_id": SITE, "api_key": KEY, "endpoint": fake.url},
    }]) as tr:
        status, body, _ = tr.post("/v1/batch", {"writeKey": tr.write_key, "batch": PARTIAL})
        assert status == 200, body
        fake.wait_for(lambda reqs: any(r.status == 207 for r in reqs), timeout=20)
        dead = tr.wait_dead_letters("cio", 1)
        time.sleep(0.5)  # a wrongly retried batch would show up as more requests
        batches = [r for r in fake.snapshot() if r.path == "/api/v2/batch"]
    assert len(dead) == 1 and dead[0][0] == "q-2"
    assert "Customer.io refused batch item" in dead[0][1] and "primary person does not exist" in dead[0][1]
    assert sorted(item.get("action") for _, item in app["accepted"]) == ["event", "identify"]
    assert len(batches) == 1, "the accepted items of a 207 must not be sent again"
