"""Unit tests of the per-item enrichment's clock handling (proxy/enrich.py); the HTTP-level behaviour is
covered in test_ingest.py."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from proxy.enrich import batch_sent_at, enrich, iso_epoch

RECEIVED = datetime(2026, 11, 22, 20, 0, 10, tzinfo=UTC).timestamp()
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


# --- channel and context.ip per library (names as the SDKs set them, read from their sources) ------

PEER = "203.0.113.7"


def from_library(library, short_path, **fields):
    event = item(timestamp="2026-11-22T19:59:05.000Z", context={"library": library}, **fields)
    return enrich(event, RECEIVED, RECEIVED_ISO, None, PEER, short_path)


@pytest.mark.parametrize("library,short_path,channel,gets_ip", [
    # analytics-kotlin and analytics-swift post to /v1/b (a short path), React Native to its `proxy`
    # URL (usually /v1/batch), legacy analytics-android gzip to /v1/import
    ({"name": "analytics-kotlin", "version": "1.24.0"}, True, "mobile", True),
    ({"name": "analytics-swift", "version": "1.9.1"}, True, "mobile", True),
    ({"name": "analytics-react-native", "version": "2.21.0"}, False, "mobile", True),
    ({"name": "analytics-react-native", "version": "2.21.0"}, True, "mobile", True),
    ({"name": "analytics-android", "version": "4.11.3"}, False, "mobile", True),
    ({"name": "analytics-ios", "version": "4.1.8"}, False, "mobile", True),
    ({"name": "analytics-flutter", "version": "1.1.7"}, False, "mobile", True),
    ("analytics-ios", False, "mobile", True),  # analytics-ios 1.x: the library as a bare string
    # browsers: analytics-next (and classic analytics.js) report "analytics.js" on any path
    ({"name": "analytics.js", "version": "npm:next-1.81.0"}, True, "browser", True),
    ({"name": "analytics.js", "version": "next-1.81.0"}, False, "browser", True),
    # servers: never the peer's ip (it is the server, not the user)
    ({"name": "@segment/analytics-node", "version": "2.1.0"}, False, "server", False),
    ({"name": "analytics-python", "version": "2.3.3"}, False, "server", False),
    ({"name": "analytics-ruby", "version": "2.4.0"}, False, "server", False),
    ({}, False, "server", False),
])
def test_channel_and_ip_by_library(library, short_path, channel, gets_ip):
    out = from_library(library, short_path)
    assert out["channel"] == channel
    assert out["context"].get("ip") == (PEER if gets_ip else None)


def test_a_short_path_without_a_known_library_is_browser_traffic():
    out = enrich(item(), RECEIVED, RECEIVED_ISO, None, PEER, True)
    assert (out["channel"], out["context"]["ip"]) == ("browser", PEER)


@pytest.mark.parametrize("name", ["analytics-kotlin", "analytics.js", "analytics-react-native"])
def test_an_ip_and_a_channel_the_client_sent_are_kept(name):
    out = from_library({"name": name}, True, channel="server")
    assert out["channel"] == "server"
    event = item(context={"library": {"name": name}, "ip": "198.51.100.1"})
    assert enrich(event, RECEIVED, RECEIVED_ISO, None, PEER, False)["context"]["ip"] == "198.51.100.1"


def test_direct_server_traffic_gets_the_peer_ip():
    event = item(context={"library": {"name": "analytics-python"}, "direct": True})
    out = enrich(event, RECEIVED, RECEIVED_ISO, None, PEER, False)
    assert (out["channel"], out["context"]["ip"]) == ("server", PEER)


def test_golden_analytics_kotlin_item():
    """One item exactly as analytics-kotlin 1.24 batches it (core/.../platform/plugins/ContextPlugin.kt,
    the batch's sentAt from EventPipeline), enriched."""
    event = {
        "properties": {"plan": "pro"}, "event": "Signed Up", "type": "track",
        "messageId": "5b5f4c4c-9c1f-4a8e-8c22-6b6b2f2d8a11", "anonymousId": "a-1", "integrations": {},
        "context": {
            "app": {"name": "Demo", "version": "1.0", "namespace": "com.example.demo", "build": "1"},
            "device": {"id": "d1", "manufacturer": "Google", "model": "Pixel 8", "type": "android"},
            "library": {"name": "analytics-kotlin", "version": "1.24.0"},
            "os": {"name": "Android", "version": "14"}, "locale": "en-US", "timezone": "Europe/Berlin",
            "instanceId": "i-1",
        },
        "userId": "", "timestamp": "2026-11-22T19:59:05.000Z",
        "_metadata": {"bundled": [], "unbundled": [], "bundledIds": []},
    }
    batch = {"batch": [event], "sentAt": "2026-11-22T20:00:00.000Z", "writeKey": "wk"}
    out = enrich(event, RECEIVED, RECEIVED_ISO, batch_sent_at(batch), PEER, True)
    assert out == {
        **event,
        "context": {**event["context"], "ip": PEER},
        "channel": "mobile", "version": 2, "receivedAt": RECEIVED_ISO,
        "originalTimestamp": "2026-11-22T19:59:05.000Z", "timestamp": "2026-11-22T19:59:15.000Z",
        "sentAt": "2026-11-22T20:00:00.000Z",
    }
