"""The operator console's API against a real server (issue 14): auth on every path, nothing of it
on the ingest port, CSRF, traces, the event tester, dead letters, and no configured secret in any
response. Plus the bounded parts in-process: live watchers and the trace index."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import uuid

import orjson
import pytest
import yaml

from proxy.admin.app import create_admin_app
from proxy.admin.mask import Masker
from proxy.admin.observer import Live, Traces
from proxy.config import load_config
from proxy.observe import TAPS
from proxy.spool import Append, AppendResult, Item, Route
from tests.admin.support import ADMIN_TOKEN, GA4_SECRET, SECRETS, console_server
from tests.helpers import ROOT, WRITE_KEY

pytestmark = pytest.mark.timeout(120)

ORDER = {"type": "track", "event": "Order Completed", "userId": "user-1", "anonymousId": "anon-1",
         "properties": {"order_id": "o-1", "revenue": 30, "currency": "USD",
                        "products": [{"product_id": "p1", "name": "Shoe", "price": 15, "quantity": 2}]}}


def admin_paths(config_path) -> list[tuple[str, str]]:
    """Every (method, path) the console routes, placeholders filled in."""
    config = load_config(config_path)
    app = create_admin_app(config, main=None)  # type: ignore[arg-type]
    out = []
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        if path is None or route.method == "HEAD":
            continue
        out.append((route.method, re.sub(r"\{[^}]+\}", "x1", path)))
    assert len(out) >= 12, out
    return out + [("GET", "/static/app.js"), ("GET", "/static/uPlot.iife.min.js"), ("GET", "/no-such-page")]


def send(console, event: dict) -> str:
    mid = event.get("messageId") or f"m-{uuid.uuid4()}"
    status, body, _ = console.tr.post("/v1/track" if event["type"] == "track" else f"/v1/{event['type']}",
                                      {**event, "messageId": mid}, auth=True)
    assert status == 200, body
    return mid


def test_every_path_needs_the_token_and_none_is_on_the_ingest_port(tmp_path):
    with console_server(tmp_path) as c:
        paths = admin_paths(c.tr.config_path)
        for method, path in paths:
            body = {} if method == "POST" else None
            for token in (None, "wrong-token-wrong-token", ADMIN_TOKEN + "x"):
                status, raw, headers = c.call(method, path, body, token=token)
                assert status == 401, (method, path, token, status, raw[:200])
                assert ADMIN_TOKEN.encode() not in raw
            status, raw, _ = c.call(method, path, body, token=None, headers={"Cookie": "trackrelay_admin=forged"})
            assert status == 401, (method, path, status)
            # the console is not reachable through the ingest port, token or not
            status, raw, _ = c.call(method, path, body, base=c.tr.url)
            assert status in (404, 405), (method, path, status, raw[:200])
            if method == "GET":
                assert status == 404, (path, status)
        # with the token the pages answer
        assert c.call("GET", "/")[0] == 200
        assert c.call("GET", "/static/app.js")[0] == 200
        assert c.call("GET", "/no-such-page")[0] == 404
        # the unauthenticated page is the login form, with status 401
        status, raw, headers = c.call("GET", "/", token=None)
        assert status == 401 and b'name="token"' in raw


def test_login_cookie_and_csrf(tmp_path):
    with console_server(tmp_path) as c:
        origin = {"Origin": c.url}
        status, raw, headers = c.call("POST", "/login", b"token=wrong", token=None,
                                      headers={"Content-Type": "application/x-www-form-urlencoded", **origin})
        assert status == 401 and b"Wrong token" in raw
        status, raw, headers = c.call("POST", "/login", f"token={ADMIN_TOKEN}".encode(), token=None,
                                      headers={"Content-Type": "application/x-www-form-urlencoded",
                                               "Origin": "http://evil.example"})
        assert status == 403
        import urllib.request

        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *a, **k):  # type: ignore[no-untyped-def]
                return None
        req = urllib.request.Request(c.url + "/login", data=f"token={ADMIN_TOKEN}".encode(), method="POST",
                                     headers={"Content-Type": "application/x-www-form-urlencoded", **origin})
        try:
            urllib.request.build_opener(NoRedirect).open(req, timeout=10)
            raise AssertionError("expected a 303")
        except urllib.error.HTTPError as e:
            assert e.code == 303
            cookie = e.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and ADMIN_TOKEN not in cookie
        jar = {"Cookie": cookie.split(";", 1)[0]}
        assert c.call("GET", "/api/stats", token=None, headers=jar)[0] == 200
        dry = {"event": ORDER}
        # state-changing calls with the cookie: the custom header, from our own origin
        assert c.call("POST", "/api/test-event", dry, token=None, headers=jar)[0] == 403
        assert c.call("POST", "/api/test-event", dry, token=None,
                      headers={**jar, "X-TrackRelay-CSRF": "1", "Origin": "http://evil.example"})[0] == 403
        assert c.call("POST", "/api/test-event", dry, token=None,
                      headers={**jar, "X-TrackRelay-CSRF": "1", **origin})[0] == 200
        # bearer calls carry no ambient credential: no CSRF header needed
        assert c.call("POST", "/api/test-event", dry)[0] == 200
        assert c.call("POST", "/logout", None, token=None, headers={**jar, "X-TrackRelay-CSRF": "1"})[0] == 200
        assert c.call("GET", "/api/stats", token=None, headers=jar)[0] == 401


def test_trace_dead_letters_replay_tester_and_no_secret_anywhere(tmp_path):
    with console_server(tmp_path) as c:
        c.hook.default = (400, {}, b'{"error": "refused for the test"}')
        ok = send(c, ORDER)
        ident = send(c, {"type": "identify", "userId": "user-1", "traits": {"email": "a@example.com"}})
        # delivered to GA4 (the contract fake accepted it) and dead-lettered by the webhook
        trace = c.wait(lambda: (t := c.trace(ok)) and {r["destination"]: r.get("outcome", {}).get("disposition")
                                                        for r in t["routes"]} == {"ga4": "delivered", "hook": "dead"}
                       and t, what="the trace's outcomes")
        assert c.ga4.app["accepted"] and c.ga4.app["accepted"][0]["name"] == "purchase"
        ga4_attempt = next(a for a in trace["attempts"] if a["destination"] == "ga4")
        assert ga4_attempt["verdict"] == "ok" and ga4_attempt["response"]["status"] == 204
        assert "api_secret=***" in ga4_attempt["request"]["url"]
        assert ga4_attempt["request"]["body"]["events"][0]["name"] == "purchase"
        hook_attempt = next(a for a in trace["attempts"] if a["destination"] == "hook")
        assert hook_attempt["response"]["status"] == 400 and hook_attempt["verdict"] == "permanent"
        assert hook_attempt["request"]["headers"]["X-Signature"] == "***"
        assert hook_attempt["request"]["headers"]["X-Api-Credential"] == "***"
        assert hook_attempt["request"]["headers"]["X-Plain"] == "***"  # every configured header value is a secret
        assert trace["event"]["receivedAt"] and trace["event"]["messageId"] == ok
        assert trace["event"]["channel"] == "server" and "writeKey" not in trace["event"]
        status, missing = c.json("GET", "/api/trace/never-seen")
        assert status == 404 and missing["success"] is False

        status, dead = c.json("GET", "/api/dead-letters?destination=hook")
        assert status == 200
        c.wait(lambda: c.json("GET", "/api/dead-letters?destination=hook")[1]["total"] == 2, what="2 dead letters")
        status, dead = c.json("GET", "/api/dead-letters?destination=hook")
        assert {d["message_id"] for d in dead["dead_letters"]} == {ok, ident}
        first = dead["dead_letters"][0]
        status, one = c.json("GET", f"/api/dead-letters/{first['id']}")
        assert status == 200 and one["event"]["messageId"] == first["message_id"] and "refused" in one["response"]

        status, dry = c.json("POST", "/api/test-event", {"event": ORDER})
        assert status == 200, dry
        by_dest = {d["destination"]: d for d in dry["events"][0]["destinations"]}
        assert by_dest["ga4"]["decision"] == "send"
        assert by_dest["ga4"]["requests"][0]["body"]["events"][0]["name"] == "purchase"
        assert by_dest["ga4"]["requests"][0]["url"].endswith("api_secret=***")
        status, skipped = c.json("POST", "/api/test-event",
                                 {"event": {**ORDER, "integrations": {"Webhooks": False}}, "destination": "hook"})
        assert skipped["events"][0]["destinations"][0] == {
            "destination": "hook", "type": "webhook", "decision": "skipped", "stage": "routing",
            "reason": "disabled_by_integrations"}
        status, bad = c.json("POST", "/api/test-event", {"event": {"type": "track"}})
        assert status == 200 and bad["events"][0]["valid"] is False
        status, bad = c.json("POST", "/api/test-event", b"{not json")
        assert status == 400 and bad["code"] == "invalid_json"
        sent_before = len(c.ga4.app["accepted"])
        status, sent = c.json("POST", "/api/test-event", {"event": ORDER, "destination": "ga4", "send": True})
        assert status == 200 and sent["sent"][0]["response"]["status"] == 204 and sent["sent"][0]["outcome"] == "ok"
        assert len(c.ga4.app["accepted"]) == sent_before + 1

        # replay: the receiver takes them now
        c.hook.default = 200
        status, job = c.json("POST", "/api/dead-letters/replay", {"ids": [first["id"]]})
        assert status in (200, 202) and job["job"]["total"] == 1
        c.wait(lambda: first["message_id"] in c.hook.delivered_ids(), what="the replayed event delivered")
        status, job = c.json("POST", "/api/dead-letters/replay", {"all": True, "destination": "hook"})
        c.wait(lambda: {ok, ident} <= set(c.hook.delivered_ids()), what="all replayed events delivered")
        status, bad = c.json("POST", "/api/dead-letters/replay", {})
        assert status == 400

        # every answer the console gives, searched for every configured secret
        bodies = [c.call(m, p, b)[1] for m, p, b in [
            ("GET", "/", None), ("GET", "/static/app.js", None), ("GET", "/api/info", None),
            ("GET", "/api/stats", None), ("GET", "/api/stats?exact=1", None), ("GET", f"/api/trace/{ok}", None),
            ("GET", f"/api/trace/{ident}", None), ("GET", "/api/recent", None), ("GET", "/api/dead-letters", None),
            ("GET", f"/api/dead-letters/{first['id']}", None), ("POST", "/api/test-event", {"event": ORDER}),
            ("POST", "/api/test-event",
             {"event": {**ORDER, "writeKey": WRITE_KEY}, "destination": "hook", "send": True}),
            ("POST", "/api/test-event", {"event": {"type": "identify", "userId": "u", "traits": {"k": GA4_SECRET}}}),
            ("GET", "/api/jobs/1", None), ("GET", "/login", None)]]
        bodies.append(c.call("GET", "/", token=None)[1])
        blob = b"\n".join(bodies)
        for label, secret in SECRETS.items():
            assert secret.encode() not in blob, f"the {label} appears in a console response"
        assert b"purchase" in blob  # the search ran over real content


def test_live_stream_over_http(tmp_path):
    import http.client

    with console_server(tmp_path) as c:
        conn = http.client.HTTPConnection("127.0.0.1", c.port, timeout=15)
        conn.request("GET", "/api/live?type=track", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        resp = conn.getresponse()
        assert resp.status == 200 and resp.getheader("Content-Type").startswith("text/event-stream")
        assert b"event: hello" in resp.fp.readline() + resp.fp.readline() + resp.fp.readline() + resp.fp.readline()
        send(c, {"type": "identify", "userId": "filtered-out"})
        mid = send(c, {**ORDER, "writeKey": WRITE_KEY})
        c.tr.post("/v1/batch", {"batch": [{"type": "track", "event": "ok", "userId": "u"},
                                          {"type": "track", "userId": "no event name"}]}, auth=True)
        got = b""
        while got.count(b"event: item") < 2:
            got += resp.fp.readline()
        conn.close()
        items = [orjson.loads(line[6:]) for line in got.splitlines() if line.startswith(b"data: ")]
        items = [i for i in items if "kind" in i]
        assert items[0]["messageId"] == mid and items[0]["event"] == "Order Completed"
        assert items[0]["destinations"] == ["ga4", "hook"] and "writeKey" not in items[0]["payload"]
        assert all(i["type"] == "track" for i in items)
        assert b"filtered-out" not in got and WRITE_KEY.encode() not in got


def _append(mids: list[str]) -> Append:
    items = [Item(orjson.dumps({"type": "track", "event": "E", "userId": "u", "messageId": m}), i + 1, 0, i)
             for i, m in enumerate(mids)]
    return Append("web", 0, 1000.0, items, [Route(("d",), {"e": "source_not_listed"})])


async def test_live_registers_only_while_watched_and_drops_for_a_slow_watcher():
    live = Live(Masker(["secret-value"]), queue_size=3)
    before = (list(TAPS.stored), list(TAPS.refused))
    watcher = live.watch({"type": "track"})
    assert live.stored in TAPS.stored and live.refused in TAPS.refused
    append = _append([f"m{i}" for i in range(10)])
    TAPS.emit(TAPS.stored, append, AppendResult(10, 0), [it.raw for it in append.items])
    assert watcher.queue.qsize() == 3 and watcher.dropped == 7  # bounded: the rest dropped and counted
    live.unwatch(watcher)
    assert (TAPS.stored, TAPS.refused) == before  # nobody watches: ingest's taps are empty again
    assert live.dropped_total == 7
    await asyncio.sleep(0)


def test_trace_index_is_bounded_by_count_and_age():
    traces = Traces(Masker([]), max_events=3, max_age=60, max_attempts=2)
    traces.stored(_append(["a", "b"]), AppendResult(2, 0), [])
    traces.stored(_append(["c", "d"]), AppendResult(2, 0), [])
    assert list(traces.index) == ["b", "c", "d"] and traces.evicted == 1
    late = _append(["e"])
    late.received_at = 1000.0 + 61
    traces.stored(late, AppendResult(1, 0), [])
    assert list(traces.index) == ["e"]
    t = traces.get("e")
    assert t is not None and t["event"]["receivedAt"] and t["routes"][1] == {
        "destination": "e", "decision": "skipped", "reason": "source_not_listed"}


def test_cli_test_event_prints_the_ga4_purchase_request(tmp_path):
    config = {"sources": [{"name": "web", "write_keys": [WRITE_KEY]}],
              "destinations": [{"name": "ga4", "type": "ga4",
                                "settings": {"measurement_id": "G-ABC123XYZ", "api_secret": GA4_SECRET}},
                               {"name": "hook", "type": "webhook", "settings": {"url": "http://127.0.0.1:9/"}}]}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = subprocess.run([sys.executable, "-m", "proxy", "test-event", "--config", str(path), "--destination", "ga4",
                           "-"], input=orjson.dumps(ORDER), capture_output=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = orjson.loads(proc.stdout)
    [dest] = out["events"][0]["destinations"]
    req = dest["requests"][0]
    assert dest["destination"] == "ga4" and req["method"] == "POST"
    assert req["url"] == "https://www.google-analytics.com/mp/collect?measurement_id=G-ABC123XYZ&api_secret=***"
    assert req["body"]["events"][0]["name"] == "purchase"
    assert req["body"]["events"][0]["params"]["transaction_id"] == "o-1"
    assert GA4_SECRET.encode() not in proc.stdout
    bad = subprocess.run([sys.executable, "-m", "proxy", "test-event", "--config", str(path), "-"],
                         input=b"nope", capture_output=True, cwd=ROOT, timeout=60)
    assert bad.returncode == 2 and b"invalid_json" in bad.stderr
