"""The mobile SDKs' requests, byte for byte as their sources build them, against a real server process.

Shapes (read from the SDK sources):
- analytics-kotlin 1.24 (core/.../HTTPClient.kt ``upload``): ``POST https://{apiHost}/b``,
  ``Content-Type: text/plain``, ``Content-Encoding: gzip``, chunked streaming, ``User-Agent:
  analytics-kotlin/x``, no Authorization; body ``{"batch": […], "sentAt", "writeKey"}``; resends add
  ``X-Retry-Count`` (EventPipeline.kt).
- analytics-swift (Sources/Segment/Utilities/Networking/HTTPClient.swift): ``POST {apiHost}/b``,
  ``Content-Type: application/json; charset=utf-8``, not compressed, no Authorization.
- analytics-react-native 2.x (packages/core/src/api.ts): ``POST`` to its ``proxy`` URL (a full URL,
  commonly ``…/v1/batch``), ``application/json; charset=utf-8``, ``{batch, sentAt, writeKey}``,
  ``X-Retry-Count`` on retries.
- analytics-android 4.x (ConnectionFactory.java ``upload``): ``POST https://{apiHost}/import``,
  ``Content-Type: application/json``, ``Content-Encoding: gzip``, chunked.
"""

from __future__ import annotations

import gzip
import http.client
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from tests.helpers import WRITE_KEY, TrackRelay

SENT_AT = "2026-11-22T20:00:00.000Z"


@pytest.fixture(scope="module")
def tr(tmp_path_factory):
    with TrackRelay(tmp_path_factory.mktemp("mobile")) as server:
        yield server


def chunks(data: bytes, size: int = 700) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]


def send(tr: TrackRelay, path: str, body: bytes, headers: dict[str, str], chunked: bool = False
         ) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", tr.port, timeout=30)
    try:
        if chunked:
            # HttpURLConnection.setChunkedStreamingMode(0): no Content-Length, Transfer-Encoding: chunked
            conn.request("POST", path, body=chunks(body), headers=headers, encode_chunked=True)
        else:
            conn.request("POST", path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, orjson.loads(resp.read())
    finally:
        conn.close()


def mobile_event(library: str, version: str, os_name: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": "track", "event": "Order Completed", "properties": {"revenue": 12.5, "currency": "EUR"},
        "anonymousId": "anon-" + library, "messageId": str(uuid.uuid4()),
        "timestamp": "2026-11-22T19:59:58.000Z", "integrations": {},
        "context": {
            "app": {"name": "Demo", "version": "1.0", "build": "1"},
            "device": {"id": "dev-1", "manufacturer": "Acme", "model": "Phone", "type": os_name.lower()},
            "library": {"name": library, "version": version},
            "os": {"name": os_name, "version": "17"}, "locale": "en-US", "timezone": "Europe/Berlin",
        },
        **extra,
    }


def stored(tr: TrackRelay, mids: list[str]) -> list[dict[str, Any]]:
    by_id = {}
    for event in tr.spool_events():
        by_id.setdefault(event["messageId"], []).append(event)
    assert all(m in by_id for m in mids), "an accepted event is missing from the spool"
    assert all(len(by_id[m]) == 1 for m in mids), "a resend was stored twice"
    return [by_id[m][0] for m in mids]


def assert_mobile(events: list[dict[str, Any]]) -> None:
    for event in events:
        assert event["channel"] == "mobile"
        assert event["context"]["ip"] == "127.0.0.1"
        assert event["_trackrelay"]["source"] == "web"
        assert "writeKey" not in event
        assert event["originalTimestamp"] == "2026-11-22T19:59:58.000Z"


def test_analytics_kotlin_gzip_text_plain_chunked_with_a_resend(tr):
    events = [mobile_event("analytics-kotlin", "1.24.0", "Android") for _ in range(3)]
    body = gzip.compress(orjson.dumps({"batch": events, "sentAt": SENT_AT, "writeKey": WRITE_KEY}))
    headers = {"Content-Type": "text/plain", "Content-Encoding": "gzip", "User-Agent": "analytics-kotlin/1.24.0"}
    assert send(tr, "/v1/b", body, headers, chunked=True) == (200, {"success": True})
    # the response was "lost": the SDK sends the same file again, with X-Retry-Count
    assert send(tr, "/v1/b", body, {**headers, "X-Retry-Count": "1"}, chunked=True) == (200, {"success": True})
    assert_mobile(stored(tr, [e["messageId"] for e in events]))


def test_analytics_swift_json_charset_no_auth(tr):
    events = [mobile_event("analytics-swift", "1.9.1", "iOS") for _ in range(2)]
    body = orjson.dumps({"batch": events, "sentAt": SENT_AT, "writeKey": WRITE_KEY})
    headers = {"Content-Type": "application/json; charset=utf-8", "User-Agent": "analytics-ios/1.9.1",
               "Accept-Encoding": "gzip"}
    assert send(tr, "/v1/b", body, headers) == (200, {"success": True})
    assert_mobile(stored(tr, [e["messageId"] for e in events]))


def test_analytics_react_native_to_its_proxy_url_on_v1_batch(tr):
    events = [mobile_event("analytics-react-native", "2.21.0", "iOS") for _ in range(2)]
    body = orjson.dumps({"batch": events, "sentAt": SENT_AT, "writeKey": WRITE_KEY})
    headers = {"Content-Type": "application/json; charset=utf-8"}
    assert send(tr, "/v1/batch", body, headers) == (200, {"success": True})
    assert send(tr, "/v1/batch", body, {**headers, "X-Retry-Count": "2"}) == (200, {"success": True})
    assert_mobile(stored(tr, [e["messageId"] for e in events]))


def test_legacy_analytics_android_gzip_to_v1_import(tr):
    events = [mobile_event("analytics-android", "4.11.3", "Android") for _ in range(2)]
    body = gzip.compress(orjson.dumps({"batch": events, "sentAt": SENT_AT, "writeKey": WRITE_KEY}))
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip",
               "User-Agent": "analytics-android/4.11.3"}
    assert send(tr, "/v1/import", body, headers, chunked=True) == (200, {"success": True})
    assert_mobile(stored(tr, [e["messageId"] for e in events]))


def test_a_mobile_event_keeps_the_ip_and_channel_it_sent(tr):
    event = mobile_event("analytics-kotlin", "1.24.0", "Android", channel="server")
    event["context"]["ip"] = "198.51.100.9"
    body = gzip.compress(orjson.dumps({"batch": [event], "sentAt": SENT_AT, "writeKey": WRITE_KEY}))
    headers = {"Content-Type": "text/plain", "Content-Encoding": "gzip"}
    assert send(tr, "/v1/b", body, headers, chunked=True) == (200, {"success": True})
    [got] = stored(tr, [event["messageId"]])
    assert (got["channel"], got["context"]["ip"]) == ("server", "198.51.100.9")


def test_a_server_library_on_v1_batch_gets_no_ip(tr):
    event = {"type": "track", "event": "E", "userId": "u", "messageId": str(uuid.uuid4()),
             "context": {"library": {"name": "analytics-python", "version": "2.3.3"}}}
    status, _, _ = tr.post("/v1/batch", {"batch": [event], "writeKey": WRITE_KEY})
    assert status == 200
    [got] = stored(tr, [event["messageId"]])
    assert got["channel"] == "server" and "ip" not in got["context"]
