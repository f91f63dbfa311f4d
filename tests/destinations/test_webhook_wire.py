"""Webhook through a running trackrelay: a receiver with a body limit (413 past it) never sees a
request over the destination's ``max_bytes``; an event too large on its own is dead-lettered with its
size, the others are delivered."""

from __future__ import annotations

import pytest

from tests.fakes.base import FakeServer
from tests.fakes.recorder import Recorder
from tests.helpers import TrackRelay

DELIVERY = {"flush_interval": 0.05, "backoff_initial": 0.05, "backoff_max": 0.5}


@pytest.mark.parametrize("batch_size", [1, 10])
def test_an_event_over_max_bytes_is_dead_lettered_and_the_receiver_never_sees_it(tmp_path, batch_size) -> None:
    rec = Recorder()
    rec.max_body = 2048
    with FakeServer(rec.app()) as server, TrackRelay(tmp_path, destinations=[{
        "name": "hook", "type": "webhook", "delivery": DELIVERY,
        "settings": {"url": server.url + "/in", "batch_size": batch_size, "max_bytes": 2048},
    }]) as tr:
        batch = [
            {"type": "track", "messageId": "small-1", "userId": "u1", "event": "E"},
            {"type": "track", "messageId": "big-1", "userId": "u1", "event": "E", "properties": {"blob": "x" * 4000}},
            {"type": "track", "messageId": "small-2", "userId": "u1", "event": "E"},
        ]
        status, body, _ = tr.post("/v1/batch", {"writeKey": tr.write_key, "batch": batch})
        assert status == 200, body
        dead = tr.wait_dead_letters("hook", 1)
        server.wait_for(lambda _: len(rec.delivered_ids()) >= 2, timeout=20)
    assert sorted(rec.delivered_ids()) == ["small-1", "small-2"]
    assert rec.too_large == [], "no request over max_bytes may reach the receiver"
    [(message_id, reason)] = dead
    assert message_id == "big-1" and "max_bytes is 2048" in reason
