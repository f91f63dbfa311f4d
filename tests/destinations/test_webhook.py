"""Webhook adapter: golden requests, batching, signing."""

from __future__ import annotations

import hashlib
import hmac

import orjson
import pytest
from pydantic import ValidationError

from destinations.base import Message
from destinations.webhook import ADAPTER, sign
from tests.fixtures.messages import ALL_CALLS, IDENTIFY, TRACK


def settings(**kw):
    return ADAPTER.validate_settings({"url": "https://hooks.example.com/in", **kw})


def test_one_event_per_request_golden():
    built = ADAPTER.build_requests([Message(TRACK)], settings())
    assert not built.skips and not built.rejects
    [req] = built.requests
    assert (req.method, req.url, dict(req.headers)) == ("POST", "https://hooks.example.com/in",
                                                        {"Content-Type": "application/json"})
    assert orjson.loads(req.body) == TRACK and req.messages == (0,)


def test_every_call_type_is_sent_unchanged():
    built = ADAPTER.build_requests([Message(m) for m in ALL_CALLS], settings(method="PUT"))
    assert [orjson.loads(r.body) for r in built.requests] == ALL_CALLS
    assert {r.method for r in built.requests} == {"PUT"}


def test_batched_json_arrays_respect_size_and_bytes():
    msgs = [Message({**TRACK, "messageId": f"m{i}"}) for i in range(25)]
    built = ADAPTER.build_requests(msgs, settings(batch_size=10))
    assert [len(r.messages) for r in built.requests] == [10, 10, 5]
    assert [e["messageId"] for r in built.requests for e in orjson.loads(r.body)] == [f"m{i}" for i in range(25)]
    one = len(orjson.dumps(msgs[0].event))
    built = ADAPTER.build_requests(msgs, settings(batch_size=10, max_bytes=max(1024, 3 * one + 4)))
    assert all(len(r.body) <= max(1024, 3 * one + 4) for r in built.requests)
    assert sum(len(r.messages) for r in built.requests) == 25


def test_signature_is_hmac_sha1_of_the_exact_body():
    built = ADAPTER.build_requests([Message(IDENTIFY)], settings(shared_secret="topsecret",
                                                                  headers={"Authorization": "Bearer t"}))
    [req] = built.requests
    expected = hmac.new(b"topsecret", req.body, hashlib.sha1).hexdigest()
    assert req.headers["X-Signature"] == expected == sign("topsecret", req.body)
    assert req.headers["Authorization"] == "Bearer t"
    assert "topsecret" not in repr(req) and "Bearer t" not in repr(req)


@pytest.mark.parametrize("bad", [{"url": "ftp://x"}, {"url": "http://x", "method": "GET"},
                                 {"url": "http://x", "batch_size": 0}])
def test_invalid_settings(bad):
    with pytest.raises(ValidationError):
        ADAPTER.validate_settings(bad)


@pytest.mark.parametrize("batch_size", [1, 10])
def test_an_event_over_max_bytes_is_rejected_not_sent(batch_size):
    small = {**TRACK, "messageId": "small"}
    big = {**TRACK, "messageId": "big", "properties": {"blob": "x" * 3000}}
    size = len(orjson.dumps(big)) + (0 if batch_size == 1 else 2)
    built = ADAPTER.build_requests([Message(small), Message(big), Message(small)],
                                   settings(batch_size=batch_size, max_bytes=2048))
    [reject] = built.rejects
    assert reject.index == 1
    assert reject.reason == f"event is {size} bytes as a request body; this webhook's max_bytes is 2048"
    assert [i for r in built.requests for i in r.messages] == [0, 2]
    assert all(len(r.body) <= 2048 for r in built.requests)


def test_an_event_exactly_at_max_bytes_is_sent():
    event = {**TRACK, "properties": {"pad": ""}}
    event["properties"]["pad"] = "x" * (2048 - len(orjson.dumps(event)))
    assert len(orjson.dumps(event)) == 2048
    built = ADAPTER.build_requests([Message(event)], settings(max_bytes=2048))
    assert not built.rejects
    [req] = built.requests
    assert len(req.body) == 2048
