"""Segment adapter: batch endpoint, write keys (own or passthrough), Segment's limits."""

from __future__ import annotations

import base64

import orjson
from pydantic import SecretStr

from destinations.base import Message
from destinations.segment import ADAPTER
from tests.fixtures.messages import ALL_CALLS, TRACK


def auth(key: str) -> str:
    return "Basic " + base64.b64encode(f"{key}:".encode()).decode()


def test_forwards_unchanged_with_own_key_golden():
    s = ADAPTER.validate_settings({"write_key": "WK_FWD"})
    built = ADAPTER.build_requests([Message(m, "web") for m in ALL_CALLS], s)
    [req] = built.requests
    assert req.method == "POST" and req.url == "https://api.segment.io/v1/batch"
    assert dict(req.headers) == {"Content-Type": "application/json", "Authorization": auth("WK_FWD")}
    body = orjson.loads(req.body)
    assert body["batch"] == [{k: v for k, v in m.items() if k != "receivedAt"} for m in ALL_CALLS]
    assert body["sentAt"] == "2026-11-22T20:05:51.829Z"
    assert req.messages == tuple(range(len(ALL_CALLS)))


def test_regions_and_endpoint():
    eu = ADAPTER.validate_settings({"write_key": "k", "region": "eu"})
    assert ADAPTER.build_requests([Message(TRACK)], eu).requests[0].url == "https://events.eu1.segmentapis.com/v1/batch"
    own = ADAPTER.validate_settings({"write_key": "k", "endpoint": "http://127.0.0.1:9999/"})
    assert ADAPTER.build_requests([Message(TRACK)], own).requests[0].url == "http://127.0.0.1:9999/v1/batch"


def test_passthrough_groups_by_the_key_each_event_arrived_with():
    s = ADAPTER.validate_settings({"write_key": "passthrough"})
    msgs = [Message({**TRACK, "messageId": "a"}, "web", SecretStr("K1")),
            Message({**TRACK, "messageId": "b"}, "ios", SecretStr("K2")),
            Message({**TRACK, "messageId": "c"}, "web", SecretStr("K1")),
            Message({**TRACK, "messageId": "d"}, "web", None)]
    built = ADAPTER.build_requests(msgs, s)
    by_auth = {r.headers["Authorization"]: [e["messageId"] for e in orjson.loads(r.body)["batch"]] for r in built.requests}
    assert by_auth == {auth("K1"): ["a", "c"], auth("K2"): ["b"]}
    assert [(r.index, "unknown" in r.reason) for r in built.rejects] == [(3, True)]


def test_limits_32kb_event_and_500kb_request():
    s = ADAPTER.validate_settings({"write_key": "k"})
    big = {**TRACK, "properties": {"x": "a" * 33_000}}
    msgs = [Message({**TRACK, "messageId": str(i), "properties": {"x": "b" * 20_000}}) for i in range(60)]
    built = ADAPTER.build_requests([Message(big)] + msgs, s)
    assert [r.index for r in built.rejects] == [0] and "32768" in built.rejects[0].reason
    assert all(len(r.body) <= 500 * 1024 for r in built.requests)
    assert sorted(i for r in built.requests for i in r.messages) == list(range(1, 61))
    assert len(built.requests) >= 3
