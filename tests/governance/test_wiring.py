"""Governance wired into a real server: destination filter steps and transforms applied by the
delivery worker, tracking plans at ingest (flag: context.violations; block: the blocked store and
its replay). Destinations are webhooks posting to a recording receiver (one path per destination)."""

from __future__ import annotations

import subprocess
import sys
import time

import orjson
from aiohttp import web

from destinations.base import Verdict
from proxy.delivery.engine import Result, fold_results
from proxy.governance.filters import sample_bucket
from tests.fakes.base import FakeServer
from tests.helpers import ROOT, WRITE_KEY, TrackRelay, metric, wait

FAST = {"flush_interval": 0.05, "backoff_initial": 0.2, "backoff_max": 1.0}
PLAN = {
    "events": {
        "Order Completed": {"type": "object", "required": ["order_id"],
                            "properties": {"order_id": {"type": "string"}, "revenue": {"type": "number"}}},
        "Signed Up": None,
    },
}


def hook(name: str, url: str, **extra) -> dict:
    return {"name": name, "type": "webhook", "settings": {"url": url + "/" + name}, "delivery": FAST, **extra}


def cli(tr: TrackRelay, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "proxy", *args, "--config", str(tr.config_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)




def send(tr: TrackRelay, events: list[dict]) -> None:
    status, body, _ = tr.post("/v1/batch", {"writeKey": WRITE_KEY, "batch": events})
    assert (status, body) == (200, {"success": True})


def receiver():
    """An app answering 200 that remembers (path, event) for each event posted to it (the path is
    the destination's name)."""
    seen: list[tuple[str, dict]] = []

    async def handle(request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        for e in body if isinstance(body, list) else [body]:
            seen.append((request.path.strip("/"), e))
        return web.Response(status=200)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app, seen


def got(seen, dest: str) -> list[dict]:
    return [e for path, e in list(seen) if path == dest]


# -- fold_results (pure) ---------------------------------------------------------------------------------


def test_fold_results_gives_each_work_the_worst_of_its_messages():
    ok = Result(Verdict.OK, attempts=1, done=frozenset({"a", "b"}))
    ok2 = Result(Verdict.OK, attempts=2, done=frozenset({"a"}))
    retry = Result(Verdict.RETRY, "503", 503, "busy", 3.0, 2, frozenset({"a"}))
    retry2 = Result(Verdict.RETRY, "429", 429, None, 7.0, 1, frozenset())
    dead = Result(Verdict.PERMANENT, "400 bad", 400, "bad", None, 1)
    skipped = Result(None, "unsupported")
    owners = [0, 1, 1, 2, 2, 2, 3, 3, 4, 4]
    results = [ok, ok2, ok, ok, retry, retry2, skipped, ok, skipped, skipped]
    folded = fold_results(owners, results, 6)
    assert len(folded) == 6
    assert folded[0] is ok                                          # one message: its own result
    assert folded[1].verdict is Verdict.OK and folded[1].done == frozenset({"a"}) and folded[1].attempts == 2
    w2 = folded[2]
    assert (w2.verdict, w2.reason, w2.status, w2.retry_after, w2.attempts) == (Verdict.RETRY, "503", 503, 7.0, 2)
    assert w2.done == frozenset()                  # only what every message got done is not sent again
    assert folded[3].verdict is Verdict.OK          # delivered and skipped: delivered
    assert folded[4].verdict is None and folded[4].reason == "unsupported"   # all skipped: skipped
    assert folded[5].verdict is None                # no message at all
    assert fold_results([0, 0, 0], [ok, dead, retry], 1)[0].verdict is Verdict.PERMANENT
    assert fold_results([0, 0], [retry, dead], 1)[0].reason == "400 bad"


# -- filters and transforms -----------------------------------------------------------------------------


def test_list_filters_let_through_exactly_what_they_allow_and_count_skips_per_step(tmp_path):
    app, seen = receiver()
    steps = [
        {"drop": {"if": 'event == "Debug" or context.library.name startswith "test-"'}},
        {"allow": {"if": 'type in ["track", "identify"]'}},
        {"sample": {"percent": 50, "by": "userId"}},
        {"drop_fields": ["properties.email", "context.ip", "traits.phone"]},
        {"keep_fields": {"properties": ["order_id", "revenue"]}},
    ]
    users = [f"user-{i}" for i in range(40)]
    inside = sorted(u for u in users if sample_bucket(u) < 5000)
    assert 5 < len(inside) < 35
    events = [{"type": "track", "event": "Order Completed", "userId": u, "messageId": f"o-{i}",
               "properties": {"order_id": f"o{i}", "revenue": i, "email": "a@b.c", "coupon": "X"},
               "context": {"ip": "10.1.1.1", "library": {"name": "analytics.js"}}} for i, u in enumerate(users)]
    events += [
        {"type": "track", "event": "Debug", "userId": inside[0], "messageId": "debug"},
        {"type": "track", "event": "X", "userId": inside[0], "messageId": "lib",
         "context": {"library": {"name": "test-runner"}}},
        {"type": "page", "name": "Home", "userId": inside[0], "messageId": "page"},
        {"type": "identify", "userId": inside[0], "messageId": "ident", "traits": {"phone": "123", "name": "N"}},
    ]
    with FakeServer(app) as fake, TrackRelay(tmp_path, destinations=[
            hook("filtered", fake.url, filters=steps), hook("plain", fake.url)]) as tr:
        send(tr, events)
        wait(lambda: len(got(seen, "plain")) == len(events), what="plain gets everything")
        want = {f"o-{i}" for i, u in enumerate(users) if u in inside} | {"ident"}
        wait(lambda: {e["messageId"] for e in got(seen, "filtered")} == want, what="filtered subset")
        wait(lambda: metric(tr, "trackrelay_events_skipped_total", destination="filtered") == len(events) - len(want),
             what="skip counts")
        assert metric(tr, "trackrelay_events_skipped_total", destination="filtered", reason="filter:1:drop") == 2
        assert metric(tr, "trackrelay_events_skipped_total", destination="filtered", reason="filter:2:allow") == 1
        assert metric(tr, "trackrelay_events_skipped_total", destination="filtered",
                      reason="filter:3:sample") == len(users) - len(inside)
        filtered = {e["messageId"]: e for e in got(seen, "filtered")}
        order = filtered[next(m for m in want if m.startswith("o-"))]
        assert set(order["properties"]) == {"order_id", "revenue"}
        assert "ip" not in order["context"] and order["context"]["library"]["name"] == "analytics.js"
        assert filtered["ident"]["traits"] == {"name": "N"}
        # the other destination got the events untouched
        plain = {e["messageId"]: e for e in got(seen, "plain")}
        assert plain["o-0"]["properties"]["email"] == "a@b.c" and plain["o-0"]["context"]["ip"] == "10.1.1.1"
        assert len(got(seen, "filtered")) == len(want)   # nothing twice
        # webhooks forward JSON, so the steps ran on a partial decode of it: apart from the removed
        # fields, each event is exactly the plain destination's (the enriched event)
        for mid, e in filtered.items():
            expected = orjson.loads(orjson.dumps(plain[mid]))
            if "properties" in expected:
                expected["properties"] = {k: v for k, v in expected["properties"].items()
                                          if k in ("order_id", "revenue")}
            expected["context"].pop("ip", None)
            expected.get("traits", {}).pop("phone", None)
            assert e == expected, mid


def test_transforms_returning_none_one_many_and_raising(tmp_path):
    app, seen = receiver()
    mod = "tests.governance.sample_transforms"
    with FakeServer(app) as fake, TrackRelay(tmp_path, destinations=[
            hook("one", fake.url, transform=f"{mod}:identity"),
            hook("none", fake.url, transform=f"{mod}:drop"),
            hook("many", fake.url, transform=f"{mod}:split"),
            hook("boom", fake.url, transform=f"{mod}:boom"),
            hook("plain", fake.url)]) as tr:
        send(tr, [{"type": "track", "event": "Clicked", "userId": "u", "messageId": f"t-{i}"} for i in range(3)])
        wait(lambda: len(got(seen, "many")) == 9 and len(got(seen, "one")) == 3 and len(got(seen, "plain")) == 3,
             what="deliveries")
        assert all(e["properties"]["seen_by_transform"] is True for e in got(seen, "one"))
        assert "seen_by_transform" not in (got(seen, "plain")[0].get("properties") or {})
        many = sorted((e["messageId"], e["event"]) for e in got(seen, "many"))
        assert many == sorted([(f"t-{i}", "Clicked") for i in range(3)] + [(f"t-{i}:1", "Second") for i in range(3)]
                              + [("own-id", "Third")] * 3)
        wait(lambda: metric(tr, "trackrelay_events_skipped_total", destination="none", reason="transform") == 3,
             what="transform skips")
        dead = tr.wait_dead_letters("boom", 3)
        assert sorted(m for m, _ in dead) == ["t-0", "t-1", "t-2"]
        assert all("Traceback" in r and "KeyError: 'no such thing: Clicked'" in r for _, r in dead)
        assert got(seen, "none") == [] and got(seen, "boom") == []
        assert metric(tr, "trackrelay_events_dead_lettered_total", destination="boom", reason="transform") == 3
        wait(lambda: metric(tr, "trackrelay_events_delivered_total", destination="many") == 3,
             what="one outcome per stored event")
        time.sleep(0.3)
        assert len(got(seen, "many")) == 9 and len(got(seen, "boom")) == 0   # no retry loop


# -- tracking plans -----------------------------------------------------------------------------------


def test_plan_in_flag_mode_delivers_with_context_violations(tmp_path):
    app, seen = receiver()
    sources = [{"name": "web", "write_keys": [WRITE_KEY],
                "tracking_plan": {**PLAN, "unplanned_events": "flag", "on_violation": "flag"}}]
    with FakeServer(app) as fake, TrackRelay(tmp_path, sources=sources, destinations=[hook("h", fake.url)]) as tr:
        send(tr, [
            {"type": "track", "event": "Order Completed", "userId": "u", "messageId": "good",
             "properties": {"order_id": "o1", "revenue": 3}},
            {"type": "track", "event": "Order Completed", "userId": "u", "messageId": "bad",
             "properties": {"revenue": "lots"}},
            {"type": "track", "event": "Mystery", "userId": "u", "messageId": "unplanned"},
            {"type": "page", "name": "Home", "userId": "u", "messageId": "page"},
        ])
        wait(lambda: len(got(seen, "h")) == 4, what="all four delivered")
        events = {e["messageId"]: e for e in got(seen, "h")}
        assert "violations" not in events["good"].get("context", {})
        assert "violations" not in events["page"].get("context", {})
        bad = {(v["type"], v["field"]) for v in events["bad"]["context"]["violations"]}
        assert bad == {("Required", "properties.order_id"), ("Type", "properties.revenue")}
        assert events["unplanned"]["context"]["violations"][0]["type"] == "Unplanned"
        assert metric(tr, "trackrelay_plan_violations_total", source="web", action="flag") == 2


def test_plan_in_block_mode_delivers_nothing_keeps_lists_shows_and_replays(tmp_path):
    app, seen = receiver()
    sources = [{"name": "web", "write_keys": [WRITE_KEY],
                "tracking_plan": {**PLAN, "unplanned_events": "block", "on_violation": "block"}}]
    with FakeServer(app) as fake, TrackRelay(tmp_path, sources=sources, destinations=[
            hook("a", fake.url), hook("b", fake.url, filters={"types": ["identify"]})]) as tr:
        send(tr, [
            {"type": "track", "event": "Order Completed", "userId": "u", "messageId": "bad",
             "properties": {"revenue": 1}},
            {"type": "track", "event": "Mystery", "userId": "u", "messageId": "unplanned"},
            {"type": "track", "event": "Signed Up", "userId": "u", "messageId": "fine"},
        ])
        wait(lambda: len(got(seen, "a")) == 1, what="the planned event")
        assert got(seen, "a")[0]["messageId"] == "fine"
        listed: list[dict] = []

        def blocked() -> bool:
            out = cli(tr, "plan", "blocked", "list", "--json")
            assert out.returncode == 0, out.stderr
            listed[:] = [orjson.loads(line) for line in out.stdout.splitlines() if line.strip()]
            return len(listed) == 2
        wait(blocked, what="two blocked events")
        assert sorted(d["message_id"] for d in listed) == ["bad", "unplanned"]
        assert all(d["source"] == "web" and d["reason"].startswith("blocked_by_tracking_plan") for d in listed)
        assert metric(tr, "trackrelay_events_skipped_total", destination="a", reason="blocked_by_tracking_plan") == 2
        assert metric(tr, "trackrelay_plan_violations_total", source="web", action="block") == 2
        bad = next(d for d in listed if d["message_id"] == "bad")
        shown = cli(tr, "plan", "blocked", "show", str(bad["id"]))
        assert shown.returncode == 0, shown.stderr
        detail = orjson.loads(shown.stdout)
        assert detail["violations"] == [{"type": "Required", "field": "properties.order_id",
                                         "description": "properties.order_id is required"}]
        assert detail["event"]["properties"] == {"revenue": 1}
        text = cli(tr, "plan", "blocked", "list")
        assert "Required properties.order_id" in text.stdout and "2 blocked event(s)" in text.stdout
        assert cli(tr, "plan", "blocked", "list", "--source", "nope").returncode == 2
        assert "blocked:web" not in cli(tr, "check").stdout     # the store is not an orphan destination
        # replay: to the destinations the events would have reached (b takes identify only), plan ignored
        out = cli(tr, "plan", "blocked", "replay", "-q", str(bad["id"]))
        assert out.returncode == 0 and "1 blocked event(s) put on the queues" in out.stdout, out.stdout + out.stderr
        wait(lambda: len(got(seen, "a")) == 2, what="the replayed event")
        replayed = got(seen, "a")[1]
        assert replayed["messageId"] == "bad" and replayed["context"]["violations"][0]["type"] == "Required"
        out = cli(tr, "plan", "blocked", "list", "--json")
        assert [orjson.loads(line)["message_id"] for line in out.stdout.splitlines()] == ["unplanned"]
        assert cli(tr, "plan", "blocked", "replay", "-q").returncode == 0
        wait(lambda: len(got(seen, "a")) == 3, what="the second replayed event")
        assert cli(tr, "plan", "blocked", "list", "--json").stdout.strip() == ""
        time.sleep(0.3)
        assert got(seen, "b") == [] and len(got(seen, "a")) == 3
