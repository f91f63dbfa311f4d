"""The Tracking API as Segment's clients use it, against a real server process."""

from __future__ import annotations

import base64
import gzip
import socket
import threading
import time
import urllib.request
from datetime import datetime

import orjson
import pytest

from tests.helpers import WRITE_KEY, TrackRelay

OTHER_KEY = "other-source-key"


@pytest.fixture(scope="module")
def tr(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ingest")
    with TrackRelay(
        tmp,
        sources=[{"name": "web", "write_keys": [WRITE_KEY]}, {"name": "server", "write_keys": [OTHER_KEY]}],
        destinations=[
            # unreachable on purpose: these tests look at routing and the spool, not delivery
            {"name": "hook", "type": "webhook", "settings": {"url": "http://127.0.0.1:9/hook"},
             "delivery": {"backoff_initial": 60}},
            {"name": "mp", "type": "webhook", "sources": ["server"], "settings": {"url": "http://127.0.0.1:9/mp"},
             "delivery": {"backoff_initial": 60}},
        ],
        server={"cors_origins": ["*"]},
    ) as server:
        yield server


def by_id(tr: TrackRelay) -> dict[str, dict]:
    return {e["messageId"]: e for e in tr.spool_events()}


def basic(key: str, colon: bool = True) -> str:
    return "Basic " + base64.b64encode((key + (":" if colon else "")).encode()).decode()


def parse(ts: str) -> datetime:
    return datetime.fromisoformat(ts)


# --- paths and types ---------------------------------------------------------------------------


@pytest.mark.parametrize("path,type_", [
    ("/v1/track", "track"), ("/v1/t", "track"), ("/v1/identify", "identify"), ("/v1/i", "identify"),
    ("/v1/page", "page"), ("/v1/p", "page"), ("/v1/screen", "screen"), ("/v1/s", "screen"),
    ("/v1/group", "group"), ("/v1/g", "group"), ("/v1/alias", "alias"), ("/v1/a", "alias"),
])
def test_single_event_paths_take_type_from_path(tr, path, type_):
    mid = f"path-{path.replace('/', '-')}"
    body = {"writeKey": WRITE_KEY, "userId": "u1", "messageId": mid, "event": "E", "groupId": "g1",
            "previousId": "p0", "type": "identify"}
    status, payload, headers = tr.post(path, body)
    assert (status, payload) == (200, {"success": True})
    assert by_id(tr)[mid]["type"] == type_


@pytest.mark.parametrize("path", ["/v1/batch", "/v1/b", "/v1/import"])
def test_batch_paths(tr, path):
    mids = [f"batch{path[-2:]}-{i}" for i in range(3)]
    batch = [{"type": "track", "event": "E", "userId": "u", "messageId": m} for m in mids]
    status, payload, _ = tr.post(path, {"writeKey": WRITE_KEY, "batch": batch})
    assert (status, payload) == (200, {"success": True})
    stored = by_id(tr)
    assert all(m in stored for m in mids)


def test_metrics_path_accepts_and_stores_nothing(tr):
    before = len(tr.spool_events())
    status, payload, _ = tr.post("/v1/m", {"series": [{"type": "Counter", "metric": "x", "value": 1}]},
                                 headers={"Content-Type": "text/plain"})
    assert (status, payload) == (200, {"success": True})
    assert len(tr.spool_events()) == before


# --- auth --------------------------------------------------------------------------------------


def test_write_key_in_body_header_or_both(tr):
    ev = {"type": "track", "event": "E", "userId": "u"}
    assert tr.post("/v1/track", {**ev, "writeKey": WRITE_KEY, "messageId": "auth-body"})[0] == 200
    assert tr.post("/v1/track", {**ev, "messageId": "auth-basic"},
                   headers={"Authorization": basic(WRITE_KEY)})[0] == 200
    assert tr.post("/v1/track", {**ev, "messageId": "auth-nocolon"},
                   headers={"Authorization": basic(WRITE_KEY, colon=False)})[0] == 200
    assert tr.post("/v1/batch", {"batch": [{**ev, "messageId": "auth-both"}], "writeKey": WRITE_KEY},
                   headers={"Authorization": basic(WRITE_KEY)})[0] == 200
    # analytics-next batching: the key sits in the items
    assert tr.post("/v1/b", {"batch": [{**ev, "messageId": "auth-item", "writeKey": WRITE_KEY}]})[0] == 200
    # a Bearer token (OAuth) next to a body key: the body key authenticates
    assert tr.post("/v1/track", {**ev, "writeKey": WRITE_KEY, "messageId": "auth-bearer"},
                   headers={"Authorization": "Bearer abc.def"})[0] == 200
    stored = by_id(tr)
    for mid in ("auth-body", "auth-basic", "auth-nocolon", "auth-both", "auth-item", "auth-bearer"):
        assert stored[mid]["_trackrelay"]["source"] == "web"
        assert "writeKey" not in stored[mid]


def test_missing_key_and_unknown_key_are_400(tr):
    status, payload, headers = tr.post("/v1/track", {"event": "E", "userId": "u"})
    assert status == 400
    assert payload == {"success": False, "code": "invalid_request", "message": "An invalid write key was provided"}
    # unknown key: 400, the one status every Segment SDK drops without retrying (README, unknown_write_key)
    status, payload, _ = tr.post("/v1/track", {"writeKey": "nope", "event": "E", "userId": "u"})
    assert status == 400 and payload["success"] is False and payload["code"] == "invalid_write_key"
    assert "nope" not in payload["message"]
    status, _, _ = tr.post("/v1/batch",
                           {"writeKey": "nope", "batch": [{"type": "track", "event": "E", "userId": "u"}] * 3})
    assert status == 400
    metrics = tr.get("/metrics")[1].decode()
    assert 'trackrelay_events_refused_total{reason="unknown_write_key"} 4.0' in metrics


@pytest.mark.parametrize("header", ["Basic !!!notbase64", "Basic " + base64.b64encode(b"\xff\xfe").decode()])
def test_broken_basic_header(tr, header):
    status, payload, _ = tr.post("/v1/track", {"event": "E", "userId": "u"}, headers={"Authorization": header})
    assert status == 400 and payload["code"] == "invalid_authorization"


# --- decoding and limits -----------------------------------------------------------------------


def test_text_plain_body_is_parsed(tr):
    raw = orjson.dumps({"writeKey": WRITE_KEY, "userId": "u", "event": "E", "messageId": "textplain"})
    status, _, _ = tr.post("/v1/t", None, raw=raw, headers={"Content-Type": "text/plain"})
    assert status == 200 and "textplain" in by_id(tr)


def test_gzip_body(tr):
    raw = gzip.compress(orjson.dumps({"writeKey": WRITE_KEY, "batch": [
        {"type": "identify", "userId": "u", "traits": {"a": 1}, "messageId": "gz-1"}]}))
    status, payload, _ = tr.post("/v1/batch", None, raw=raw, headers={"Content-Encoding": "gzip"})
    assert (status, payload) == (200, {"success": True})
    assert by_id(tr)["gz-1"]["traits"] == {"a": 1}


def test_gzip_bomb_is_refused_cheaply_and_server_keeps_serving(tr):
    bomb = gzip.compress(b"[" + b" " * (200 * 1024 * 1024) + b"]", compresslevel=9)
    assert len(bomb) < 500 * 1024
    status, payload, _ = tr.post("/v1/batch", None, raw=bomb, headers={"Content-Encoding": "gzip"})
    assert status == 400 and payload["code"] == "request_too_large"
    status, _, _ = tr.post("/v1/batch", None, raw=b"\x1f\x8b\x08garbage", headers={"Content-Encoding": "gzip"})
    assert status == 400
    assert tr.get("/healthz")[0] == 200


def test_unsupported_content_encoding(tr):
    status, payload, _ = tr.post("/v1/track", None, raw=b"xx", headers={"Content-Encoding": "br"})
    assert status == 400 and payload["code"] == "unsupported_encoding"


@pytest.mark.parametrize("raw,code", [
    (b"{not json", "invalid_json"), (b"", "invalid_json"), (b"[1,2]", "invalid_json"),
    (b'"str"', "invalid_json"), (b"null", "invalid_json"),
    (b"[" * 100_000 + b"]" * 100_000, "invalid_json"),
])
def test_malformed_bodies(tr, raw, code):
    status, payload, headers = tr.post("/v1/track", None, raw=raw)
    assert status == 400 and payload["code"] == code and payload["success"] is False
    assert headers["Access-Control-Allow-Origin"] == "*"


def test_deep_nesting_inside_an_object(tr):
    deep = (b'{"writeKey":"' + WRITE_KEY.encode() + b'","userId":"u","event":"E","properties":'
            + b'{"a":' * 5000 + b"1" + b"}" * 5000 + b"}")
    status, payload, _ = tr.post("/v1/track", None, raw=deep)
    assert status == 400 and payload["success"] is False


def test_oversized_single_event_and_request(tr):
    big = {"writeKey": WRITE_KEY, "userId": "u", "event": "E", "properties": {"x": "a" * 33_000}}
    status, payload, _ = tr.post("/v1/track", big)
    assert status == 400 and payload["code"] == "event_too_large"
    huge = {"writeKey": WRITE_KEY, "batch": [{"type": "track", "event": "E", "userId": "u",
                                              "properties": {"x": "a" * 20_000}} for _ in range(30)]}
    status, payload, _ = tr.post("/v1/batch", huge)
    assert status == 400 and payload["code"] == "request_too_large"
    # way over the limit, not even read completely
    status, payload, _ = tr.post("/v1/batch", None, raw=b"{" + b" " * 5_000_000 + b"}")
    assert status == 400 and payload["code"] == "request_too_large"


def test_batch_over_2500_events(tr):
    batch = [{"type": "track", "event": "E", "userId": "u"} for _ in range(2501)]
    status, payload, _ = tr.post("/v1/batch", {"writeKey": WRITE_KEY, "batch": batch})
    assert status == 400 and payload["code"] == "batch_too_large"


def test_invalid_items_do_not_sink_valid_ones(tr):
    good = [{"type": "track", "event": "Good", "userId": "u", "messageId": f"mix-good-{i}"} for i in range(3)]
    bad = [
        {"type": "track", "userId": "u", "messageId": "mix-bad-noname"},                      # no event name
        {"type": "track", "event": "E", "messageId": "mix-bad-noid"},                         # no identity
        {"type": "track", "event": "E", "userId": "u", "properties": [1], "messageId": "mix-bad-props"},
        {"type": "nonsense", "userId": "u", "messageId": "mix-bad-type"},
        "not an object",
        {"type": "track", "event": "E", "userId": "u", "messageId": "mix-bad-big", "properties": {"x": "a" * 40_000}},
        {"type": "track", "event": 5, "userId": "u", "messageId": "mix-bad-eventtype"},
        {"type": "alias", "userId": "u", "messageId": "mix-bad-alias"},                       # no previousId
    ]
    status, payload, headers = tr.post("/v1/batch", {"writeKey": WRITE_KEY, "batch": good[:2] + bad + good[2:]})
    assert (status, payload) == (200, {"success": True})
    assert headers["X-Trackrelay-Rejected"] == str(len(bad))
    stored = by_id(tr)
    assert all(g["messageId"] in stored for g in good)
    assert not any(k.startswith("mix-bad") for k in stored)
    metrics = tr.get("/metrics")[1].decode()
    for reason in ("missing_event_name", "missing_identity", "invalid_field_type", "invalid_type",
                   "not_an_object", "event_too_large", "missing_previous_id"):
        assert f'reason="{reason}"' in metrics, reason
    logs = tr.logs()
    assert '"event_rejected"' in logs and "mix-bad-noname" in logs


def test_batch_with_only_invalid_items_is_400(tr):
    status, payload, _ = tr.post("/v1/batch", {"writeKey": WRITE_KEY, "batch": [{"type": "track", "userId": "u"}]})
    assert status == 400 and payload["code"] == "missing_event_name"
    status, payload, _ = tr.post("/v1/batch", {"writeKey": WRITE_KEY, "batch": {"not": "a list"}})
    assert status == 400 and payload["code"] == "invalid_batch"


@pytest.mark.parametrize("body,code", [
    ({"userId": "u"}, "missing_event_name"),
    ({"event": "E"}, "missing_identity"),
    ({"event": "E", "userId": {"a": 1}}, "invalid_field_type"),
    ({"event": "E", "userId": "u", "context": "x"}, "invalid_field_type"),
    ({"event": "E", "userId": "u", "timestamp": 5}, "invalid_field_type"),
    ({"event": "E", "userId": "u", "messageId": "m" * 101}, "message_id_too_long"),
])
def test_invalid_single_events(tr, body, code):
    status, payload, _ = tr.post("/v1/track", {"writeKey": WRITE_KEY, **body})
    assert status == 400 and payload["code"] == code


def test_unknown_paths_and_methods(tr):
    status, payload, headers = tr.post("/v1/nothing", {"writeKey": WRITE_KEY})
    assert status == 404 and payload["success"] is False and headers["Access-Control-Allow-Origin"] == "*"
    status, payload, _ = tr.get("/v1/track")
    assert status == 405 and payload["code"] == "method_not_allowed"
    status, payload, _ = tr.get("/nope")
    assert status == 404 and payload["code"] == "not_found"
    req = urllib.request.Request(tr.url + "/v1/track", data=b"{}", method="PUT")
    try:
        urllib.request.urlopen(req)
    except urllib.error.HTTPError as e:
        assert e.code == 405 and orjson.loads(e.read())["success"] is False


def test_garbage_over_raw_socket_does_not_hurt(tr):
    with socket.create_connection(("127.0.0.1", tr.port)) as s:
        s.sendall(b"\x00\x01\x02 NOT HTTP\r\n\r\n")
        s.settimeout(5)
        try:
            s.recv(1024)
        except (TimeoutError, ConnectionResetError):
            pass
    assert tr.get("/healthz")[0] == 200


# --- CORS --------------------------------------------------------------------------------------


def test_preflight_and_cors_on_every_response(tr):
    req = urllib.request.Request(tr.url + "/v1/t", method="OPTIONS", headers={
        "Origin": "http://page.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type,x-retry-count"})
    with urllib.request.urlopen(req) as r:
        assert r.status in (200, 204)
        allow = r.headers["Access-Control-Allow-Headers"].lower()
        for h in ("content-type", "authorization", "x-retry-count"):
            assert h in allow
        assert "POST" in r.headers["Access-Control-Allow-Methods"]
        assert r.headers["Access-Control-Allow-Origin"] == "http://page.example"
    for status_path, body in ((200, {"writeKey": WRITE_KEY, "userId": "u", "event": "E"}), (400, {"userId": "u"})):
        status, _, headers = tr.post("/v1/t", body, headers={"Origin": "http://page.example"})
        assert status == status_path
        assert headers["Access-Control-Allow-Origin"] == "http://page.example"
        assert "Retry-After" in headers["Access-Control-Expose-Headers"]
        assert "X-RateLimit-Reset" in headers["Access-Control-Expose-Headers"]


# --- settings ----------------------------------------------------------------------------------


def test_settings_endpoint(tr):
    status, body, headers = tr.get(f"/v1/projects/{WRITE_KEY}/settings", headers={"Origin": "http://page.example"})
    assert status == 200
    seg = body["integrations"]["Segment.io"]
    assert seg["apiKey"] == WRITE_KEY
    assert seg["apiHost"] == f"127.0.0.1:{tr.port}/v1" and seg["protocol"] == "http"
    assert list(body["integrations"]) == ["Segment.io"]
    assert body["metrics"]["sampleRate"] == 0 and body["remotePlugins"] == []
    assert headers["Access-Control-Allow-Origin"] == "http://page.example"
    status, body, _ = tr.get("/v1/projects/unknown-key/settings")
    assert status == 404 and body["success"] is False


# --- enrichment --------------------------------------------------------------------------------


def test_enrichment_of_a_batch(tr):
    body = {
        "writeKey": WRITE_KEY,
        "sentAt": "2026-11-22T20:00:10.000Z",
        "context": {"library": {"name": "analytics-python", "version": "2.4.0"}, "shared": 1},
        "integrations": {"Mixpanel": False},
        "batch": [
            {"type": "track", "event": "A", "userId": "u", "messageId": "enr-1",
             "timestamp": "2026-11-22T20:00:05.000Z", "context": {"shared": 2}},
            {"type": "track", "event": "B", "userId": "u", "messageId": "enr-2",
             "timestamp": "2026-11-22T20:00:05.000+00:00", "sentAt": "2026-11-22T20:00:06.000Z"},
            {"type": "identify", "userId": "u", "traits": {}},
        ],
    }
    status, _, _ = tr.post("/v1/batch", body)
    assert status == 200
    events = [e for e in tr.spool_events() if e.get("userId") == "u" and e.get("receivedAt")]
    stored = by_id(tr)
    e1, e2 = stored["enr-1"], stored["enr-2"]
    assert e1["receivedAt"] == e2["receivedAt"]
    received = parse(e1["receivedAt"])
    # timestamp = receivedAt - (sentAt - originalTimestamp): batch sentAt for e1, its own for e2
    assert (received - parse(e1["timestamp"])).total_seconds() == pytest.approx(5.0, abs=0.002)
    assert (received - parse(e2["timestamp"])).total_seconds() == pytest.approx(1.0, abs=0.002)
    assert e1["originalTimestamp"] == "2026-11-22T20:00:05.000Z"
    # batch context merged, the item's own keys win
    assert e1["context"]["shared"] == 2 and e1["context"]["library"]["name"] == "analytics-python"
    assert e2["context"]["shared"] == 1
    assert e1["integrations"] == {"Mixpanel": False}
    # server-side library: no context.ip
    assert "ip" not in e1["context"] and e1["channel"] == "server"
    generated = [e for e in events if e["type"] == "identify" and e["messageId"].startswith("api-")]
    assert generated, "a messageId is generated when absent"
    assert generated[-1]["timestamp"] == generated[-1]["receivedAt"]


def test_context_ip_for_browser_and_direct_traffic_only(tr):
    tr.post("/v1/t", {"writeKey": WRITE_KEY, "userId": "u", "event": "E", "messageId": "ip-browser"})
    tr.post("/v1/track", {"writeKey": WRITE_KEY, "userId": "u", "event": "E", "messageId": "ip-direct",
                          "context": {"direct": True}})
    tr.post("/v1/t", {"writeKey": WRITE_KEY, "userId": "u", "event": "E", "messageId": "ip-kept",
                      "context": {"ip": "0.0.0.0"}})
    tr.post("/v1/t", {"writeKey": WRITE_KEY, "userId": "u", "event": "E", "messageId": "ip-untrusted-xff"},
            headers={"X-Forwarded-For": "198.51.100.9"})
    tr.post("/v1/track", {"writeKey": WRITE_KEY, "userId": "u", "event": "E", "messageId": "ip-server"})
    stored = by_id(tr)
    assert stored["ip-browser"]["context"]["ip"] == "127.0.0.1"
    assert stored["ip-browser"]["channel"] == "browser"
    assert stored["ip-direct"]["context"]["ip"] == "127.0.0.1"
    assert stored["ip-kept"]["context"]["ip"] == "0.0.0.0"
    assert stored["ip-untrusted-xff"]["context"]["ip"] == "127.0.0.1"  # XFF from an untrusted peer ignored
    assert "ip" not in stored["ip-server"]["context"]


def test_x_forwarded_for_from_trusted_proxy(tmp_path):
    with TrackRelay(tmp_path, server={"trusted_proxies": ["127.0.0.0/8"]}) as t2:
        t2.post("/v1/t", {"writeKey": WRITE_KEY, "userId": "u", "event": "E", "messageId": "xff"},
                headers={"X-Forwarded-For": "198.51.100.9, 127.0.0.5"})
        assert by_id(t2)["xff"]["context"]["ip"] == "198.51.100.9"


# --- dedup and routing -------------------------------------------------------------------------


def test_dedup_on_source_and_message_id(tr):
    ev = {"type": "track", "event": "E", "userId": "u", "messageId": "dup-1"}
    for _ in range(3):
        assert tr.post("/v1/batch", {"writeKey": WRITE_KEY, "batch": [ev, ev]})[0] == 200
    assert tr.post("/v1/batch", {"writeKey": OTHER_KEY, "batch": [ev]})[0] == 200
    stored = [e for e in tr.spool_events() if e["messageId"] == "dup-1"]
    assert sorted(e["_trackrelay"]["source"] for e in stored) == ["server", "web"]


def test_routing_records_why_a_destination_was_skipped(tr):
    cases = {
        "route-all": {},
        "route-none": {"All": False},
        "route-only-hook": {"All": False, "hook": True},
        "route-by-display-name": {"All": False, "Webhooks": {"some": "option"}},
        "route-explicit-false": {"hook": False, "Segment.io": False},
    }
    for mid, integrations in cases.items():
        tr.post("/v1/track", {"writeKey": WRITE_KEY, "userId": "u", "event": "E", "messageId": mid,
                              "integrations": integrations})
    tr.post("/v1/track", {"writeKey": OTHER_KEY, "userId": "u", "event": "E", "messageId": "route-server"})
    stored = by_id(tr)
    meta = {mid: stored[mid]["_trackrelay"] for mid in list(cases) + ["route-server"]}
    assert meta["route-all"]["destinations"] == ["hook"]
    assert meta["route-all"]["skipped"] == {"mp": "source_not_listed"}
    assert meta["route-none"]["destinations"] == []
    assert meta["route-none"]["skipped"]["hook"] == "disabled_by_integrations"
    assert meta["route-only-hook"]["destinations"] == ["hook"]
    assert meta["route-by-display-name"]["destinations"] == ["hook"]
    assert meta["route-explicit-false"]["destinations"] == []
    assert meta["route-server"]["destinations"] == ["hook", "mp"]


def test_health_and_readiness(tr):
    assert tr.get("/healthz")[0] == 200
    status, body, _ = tr.get("/readyz")
    assert status == 200 and body["status"] == "ready"


def test_concurrent_requests_share_commits(tr):
    mids = [f"conc-{i}" for i in range(200)]
    errors = []

    def send(chunk):
        for m in chunk:
            status, _, _ = tr.post("/v1/t", {"writeKey": WRITE_KEY, "userId": "u", "event": "E", "messageId": m})
            if status != 200:
                errors.append(status)

    threads = [threading.Thread(target=send, args=(mids[i::8],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    stored = by_id(tr)
    assert all(m in stored for m in mids)


def test_spool_full_answers_429_with_retry_after(tmp_path):
    with TrackRelay(tmp_path, storage={"max_bytes": "200KB", "retention": "1h"},
                    destinations=[{"name": "dead", "type": "webhook", "settings": {"url": "http://127.0.0.1:9/x"},
                                   "delivery": {"backoff_initial": 600}}]) as t2:
        blob = "x" * 20_000
        statuses = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            status, payload, headers = t2.post("/v1/batch", {"writeKey": WRITE_KEY, "batch": [
                {"type": "track", "event": "E", "userId": "u", "properties": {"blob": blob}} for _ in range(10)]})
            statuses.append(status)
            if status == 429:
                assert payload["code"] == "spool_full" and int(headers["Retry-After"]) > 0
                assert headers["Access-Control-Expose-Headers"]
                break
            assert status == 200
            time.sleep(0.3)  # the size is refreshed by the maintenance loop
        assert statuses[-1] == 429, statuses
        stored = t2.spool_events()
        assert len(stored) == 10 * statuses.count(200)


def test_unknown_write_key_accept_and_drop_answers_200_and_stores_nothing(tmp_path):
    with TrackRelay(tmp_path, server={"unknown_write_key": "accept_and_drop"}) as t2:
        status, payload, _ = t2.post("/v1/batch", {"writeKey": "stranger", "batch": [
            {"type": "track", "event": "E", "userId": "u", "messageId": f"drop-{i}"} for i in range(3)]})
        assert (status, payload) == (200, {"success": True})
        assert t2.post("/v1/t", {"writeKey": WRITE_KEY, "userId": "u", "event": "E", "messageId": "kept"})[0] == 200
        assert [e["messageId"] for e in t2.spool_events()] == ["kept"]
        metrics = t2.get("/metrics")[1].decode()
        assert 'trackrelay_events_dropped_total{reason="unknown_write_key"} 3.0' in metrics
        # a missing key is still a client error, whatever the policy
        assert t2.post("/v1/track", {"event": "E", "userId": "u"})[0] == 400


# --- nesting and numbers -------------------------------------------------------------------------


def _nested(depth: int) -> bytes:
    return b'{"a":' * (depth - 1) + b"1" + b"}" * (depth - 1)


@pytest.mark.parametrize("depth", [100, 254, 300, 1000])
def test_too_deep_nesting_is_a_400_never_a_500(tr, depth):
    body = b'{"writeKey":"' + WRITE_KEY.encode() + b'","userId":"u","event":"E","properties":' + _nested(depth) + b"}"
    status, payload, _ = tr.post("/v1/track", None, raw=body)
    assert status == 400 and payload["code"] in ("too_deeply_nested", "invalid_json")
    if depth < 900:  # beyond the JSON decoder's own recursion limit the body is not JSON we read
        assert payload["code"] == "too_deeply_nested"


def test_a_batch_keeps_its_valid_items_when_one_is_too_deep(tr):
    deep = b'{"type":"track","event":"E","userId":"u","messageId":"deep-bad","properties":' + _nested(80) + b"}"
    good = orjson.dumps({"type": "track", "event": "E", "userId": "u", "messageId": "deep-good",
                         "properties": {"a": {"b": {"c": [1, [2, [3]]]}}}})
    body = b'{"writeKey":"' + WRITE_KEY.encode() + b'","batch":[' + deep + b"," + good + b"]}"
    status, payload, headers = tr.post("/v1/batch", None, raw=body)
    assert status == 200 and headers["X-Trackrelay-Rejected"] == "1"
    stored = by_id(tr)
    assert "deep-good" in stored and "deep-bad" not in stored
    assert stored["deep-good"]["properties"] == {"a": {"b": {"c": [1, [2, [3]]]}}}
    assert 'reason="too_deeply_nested"' in tr.get("/metrics")[1].decode()


def test_numbers_are_kept_exactly_or_refused_never_changed(tr):
    big = (b'{"writeKey":"' + WRITE_KEY.encode() + b'","userId":"u","event":"E","messageId":"num-big",'
           b'"properties":{"n":123456789012345678901234567890}}')
    status, payload, _ = tr.post("/v1/track", None, raw=big)
    assert status == 400 and payload["code"] == "number_out_of_range"
    huge = big.replace(b"123456789012345678901234567890", b"1e400")
    status, payload, _ = tr.post("/v1/track", None, raw=huge)
    assert status == 400 and payload["code"] == "number_out_of_range"
    # the 64-bit extremes, a long digit string and an exponent in a string are fine and kept exactly
    ok = (b'{"writeKey":"' + WRITE_KEY.encode() + b'","userId":"u","event":"E","messageId":"num-ok",'
          b'"properties":{"max":18446744073709551615,"min":-9223372036854775808,"id":"123456789012345678901234567890",'
          b'"note":"x e999 y","f":1.5e300,"g":0.1}}')
    assert tr.post("/v1/track", None, raw=ok)[0] == 200
    batch = (b'{"writeKey":"' + WRITE_KEY.encode() + b'","batch":[{"type":"track","event":"E","userId":"u",'
             b'"messageId":"num-batch-bad","properties":{"n":99999999999999999999}},'
             b'{"type":"track","event":"E","userId":"u","messageId":"num-batch-good","properties":{"n":9}}]}')
    status, _, headers = tr.post("/v1/batch", None, raw=batch)
    assert status == 200 and headers["X-Trackrelay-Rejected"] == "1"
    stored = by_id(tr)
    props = stored["num-ok"]["properties"]
    assert props["max"] == 18446744073709551615 and props["min"] == -9223372036854775808
    assert props["id"] == "123456789012345678901234567890" and props["f"] == 1.5e300 and props["g"] == 0.1
    assert "num-big" not in stored and "num-batch-bad" not in stored and "num-batch-good" in stored


def test_invalid_utf8_is_a_400(tr):
    body = b'{"writeKey":"' + WRITE_KEY.encode() + b'","userId":"u","event":"E","properties":{"s":"\xff\xfe"}}'
    status, payload, _ = tr.post("/v1/track", None, raw=body)
    assert status == 400 and payload["code"] == "invalid_json"
