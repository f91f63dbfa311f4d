"""Segment adapter: batch endpoint, write keys (own or passthrough), Segment's limits."""

from __future__ import annotations

import base64
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta

import orjson
from pydantic import SecretStr

from destinations.base import Message, at_send_time
from destinations.segment import ADAPTER
from tests.fakes.base import FakeServer, send
from tests.fakes.segment import ACCEPTED, CLOCK_OFFSET, TIMESTAMPS, make_app
from tests.fixtures.messages import ALL_CALLS, TRACK


def auth(key: str) -> str:
    return "Basic " + base64.b64encode(f"{key}:".encode()).decode()


def test_forwards_unchanged_with_own_key_golden():
    s = ADAPTER.validate_settings({"write_key": "WK_FWD"})
    built = ADAPTER.build_requests([Message(m, "web") for m in ALL_CALLS], s)
    [req] = built.requests
    assert req.method == "POST" and req.url == "https://api.segment.io/v1/batch"
    assert dict(req.headers) == {"Content-Type": "application/json", "Authorization": auth("WK_FWD")}
    assert req.stamps_sent_at
    body = orjson.loads(at_send_time(req, datetime(2026, 11, 22, 22, 0, 0, 250000, UTC).timestamp()).body)
    # each item: originalTimestamp = trackrelay's corrected timestamp, no sentAt of its own
    assert body["batch"] == [{**{k: v for k, v in m.items() if k not in ("receivedAt", "sentAt")},
                              "originalTimestamp": m["timestamp"]} for m in ALL_CALLS]
    # the batch sentAt is the moment of the attempt
    assert body["sentAt"] == "2026-11-22T22:00:00.250Z"
    assert req.messages == tuple(range(len(ALL_CALLS)))


def test_an_event_forwarded_hours_late_keeps_its_event_time_in_segment():
    """Segment: timestamp = receivedAt - (sentAt - originalTimestamp). An event that happened (and
    reached trackrelay) 2 h ago, with a device clock 10 min fast and its own sentAt, forwarded now:
    Segment's correction must give the original event time, not the delivery time."""
    now = datetime.now(UTC)
    happened = now - timedelta(hours=2)
    iso = lambda d: d.isoformat(timespec="milliseconds").replace("+00:00", "Z")  # noqa: E731
    device = happened + timedelta(minutes=10)
    stored = {**TRACK, "messageId": "late-1", "originalTimestamp": iso(device),
              "sentAt": iso(device + timedelta(seconds=1)),
              "timestamp": iso(happened), "receivedAt": iso(happened + timedelta(seconds=1))}
    with FakeServer(make_app({"k"})) as fake:
        s = ADAPTER.validate_settings({"write_key": "k", "endpoint": fake.url})
        [req] = ADAPTER.build_requests([Message(stored)], s).requests
        assert send(req).status == 200
        got = fake.app[TIMESTAMPS]["late-1"]
        assert abs(got - happened.timestamp()) < 5, (datetime.fromtimestamp(got, UTC), happened)
        # the same request, retried by delivery 30 min later: stamped at that attempt, still the event time
        fake.app[CLOCK_OFFSET][0] = 1800
        later = at_send_time(req, time.time() + 1800)
        http = urllib.request.Request(req.url, data=later.body, headers=dict(req.headers), method="POST")
        with urllib.request.urlopen(http, timeout=10) as r:
            assert r.status == 200
        assert abs(fake.app[TIMESTAMPS]["late-1"] - happened.timestamp()) < 5
        assert fake.app[ACCEPTED][0][1]["originalTimestamp"] == iso(happened)
        assert "sentAt" not in fake.app[ACCEPTED][0][1]


def test_the_fake_refuses_an_unstamped_send_time():
    with FakeServer(make_app({"k"})) as fake:
        s = ADAPTER.validate_settings({"write_key": "k", "endpoint": fake.url})
        [req] = ADAPTER.build_requests([Message(TRACK)], s).requests
        http = urllib.request.Request(req.url, data=req.body.replace(b"\x00", b""), headers=dict(req.headers))
        try:
            urllib.request.urlopen(http, timeout=10)
            raise AssertionError("accepted a placeholder sentAt")
        except urllib.error.HTTPError as e:
            assert e.code == 400


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
    by_auth = {r.headers["Authorization"]: [e["messageId"] for e in orjson.loads(at_send_time(r, 0).body)["batch"]]
               for r in built.requests}
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
