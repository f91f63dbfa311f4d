"""Unit tests of the per-item enrichment's clock handling (proxy/enrich.py); the HTTP-level behaviour is
covered in test_ingest.py."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from proxy.enrich import batch_sent_at, enrich, iso_epoch

RECEIVED = datetime(2026, 11, 22, 20, 0, 10, tzinfo=timezone.utc).timestamp()
RECEIVED_ISO = iso_epoch(RECEIVED)


def item(**fields):
    return {"type": "track", "event": "E", "userId": "u", "messageId": "m", **fields}


def run(event, batch=None):
    return enrich(event, RECEIVED, RECEIVED_ISO, batch_sent_at(batch or {}), None, False)


def test_batch_sent_at_corrects_the_clock_and_is_recorded_on_the_item():
    out = run(item(timestamp="2026-11-22T19:59:05.000Z"), {"sentAt": "2026-11-22T20:00:00.000Z"})
    # the client was 55 s ahead of its own send: timestamp = receivedAt - 55 s
    assert out["timestamp"] == "2026-11-22T19:59:15.000Z"
    assert out["originalTimestamp"] == "2026-11-22T19:59:05.000Z"
    assert out["sentAt"] == "2026-11-22T20:00:00.000Z"


def test_the_items_own_sent_at_wins_over_the_batchs():
    out = run(item(timestamp="2026-11-22T19:59:05.000Z", sentAt="2026-11-22T19:59:06.000Z"),
              {"sentAt": "2026-11-22T20:00:00.000Z"})
    assert out["timestamp"] == "2026-11-22T20:00:09.000Z"
    assert out["sentAt"] == "2026-11-22T19:59:06.000Z"


@pytest.mark.parametrize("batch", [{}, {"sentAt": "yesterday"}, {"sentAt": ""}, {"sentAt": None}, {"sentAt": 17}])
def test_without_a_usable_sent_at_the_client_timestamp_is_kept(batch):
    assert batch_sent_at(batch) is None
    out = run(item(timestamp="2026-11-22T19:59:05.000Z"), batch)
    assert out["timestamp"] == "2026-11-22T19:59:05.000Z"
    assert "sentAt" not in out


def test_an_empty_item_sent_at_falls_back_to_the_batchs_and_is_left_as_sent():
    out = run(item(timestamp="2026-11-22T19:59:05.000Z", sentAt=""), {"sentAt": "2026-11-22T20:00:00.000Z"})
    assert out["timestamp"] == "2026-11-22T19:59:15.000Z"
    assert out["sentAt"] == ""


def test_an_unparsable_item_timestamp_is_replaced_by_received_at():
    out = run(item(timestamp="not a time"), {"sentAt": "2026-11-22T20:00:00.000Z"})
    assert out["timestamp"] == RECEIVED_ISO
    assert "originalTimestamp" not in out and "sentAt" not in out
