"""Delivery enriches a stored item from its JSON to the enriched JSON on a shallow view
(``Enrichment.apply_json``: top-level and context members kept as raw bytes, only what the rules read
decoded), where the console and the event tester enrich a parsed event (``Enrichment.apply``). Both
run the same rules; this holds them to the same result, parsed, over random items that ingest's
checks accept and random request facts (batch context and integrations, sentAt, client ip, path,
generated messageId, tracking-plan violations, records migrated already enriched)."""

from __future__ import annotations

import random
from typing import Any

import msgspec
import orjson
import pytest

from destinations.base import Message
from proxy import enrich as enrich_module
from proxy import spec
from proxy.enrich import Enrichment
from proxy.spool import records
from proxy.spool.base import Append, Item, Route, Work
from tests.test_ingest_fast_path import random_event

RECEIVED = 1_764_000_000.25
LIBRARIES: list[Any] = [None, {"name": "analytics.js", "version": "2"}, {"name": "analytics-ios"},
                        {"name": "analytics-kotlin"}, {"name": "analytics-python"}, "analytics-ios", {"name": 5}, []]
CONTEXTS: list[Any] = [None, b'{"library":{"name":"analytics.js"},"locale":"en"}', b'{"direct":true}', b"{}"]
INTEGRATIONS: list[Any] = [None, b'{"All":false,"hook":true}', b"{}"]
SENT: list[Any] = [None, "2026-01-01T00:00:01.000Z", "not a time"]
TIMES: list[Any] = ["2026-01-01T00:00:00.500Z", "2026-01-01T00:00:00+02:00", "2026-01-01", "yesterday", 7,
                    "9999-12-31T23:59:59Z", "0001-01-01T00:00:00Z"]


def accepted(rng: random.Random) -> tuple[dict[str, Any], str | None] | None:
    """A random item the checks accept, with the path's call type; or None."""
    event = random_event(rng)
    if not isinstance(event, dict):
        return None
    if rng.random() < 0.5:
        event["timestamp"] = rng.choice(TIMES)
    if rng.random() < 0.4:
        ctx = event.get("context") if isinstance(event.get("context"), dict) else {}
        ctx = dict(ctx)
        library = rng.choice(LIBRARIES)
        if library is not None:
            ctx["library"] = library
        if rng.random() < 0.2:
            ctx["ip"] = "10.1.2.3"
        if rng.random() < 0.2:
            ctx["direct"] = rng.choice([True, False, "true"])
        event["context"] = ctx
    for name in ("channel", "version", "writeKey", "receivedAt"):
        if rng.random() < 0.1:
            event[name] = rng.choice(["mobile", 1, "k"])
    call_type = rng.choice([None, None, "track", "identify"])
    try:
        raw = orjson.dumps(event)
    except orjson.JSONEncodeError:  # numbers beyond 64 bits: ingest refuses those
        return None
    try:
        spec.check(orjson.loads(raw), call_type, 100)
    except spec.Invalid:
        return None
    return event, call_type


def test_apply_json_equals_apply_on_the_parsed_item(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(enrich_module.uuid, "uuid4", lambda: "fixed")  # the fallback messageId, made comparable
    rng = random.Random(20261202)
    compared = 0
    while compared < 3000:
        got = accepted(rng)
        if got is None:
            continue
        event, call_type = got
        raw = orjson.dumps(event)
        if rng.random() < 0.3:  # as clients send it: spaces, escapes; kept as sent where untouched
            raw = orjson.dumps(event, option=orjson.OPT_INDENT_2)
        facts = (RECEIVED, rng.choice([None, "203.0.113.9"]), rng.random() < 0.3, call_type, rng.choice(SENT),
                 rng.choice(CONTEXTS), rng.choice(INTEGRATIONS))
        mid = rng.choice([None, "api-generated"])
        violations = rng.choice([None, orjson.dumps([{"type": "Unplanned", "field": "event", "description": "x"}])])
        expected = Enrichment(*facts).apply(orjson.loads(raw), mid)
        if violations is not None:
            expected["context"]["violations"] = orjson.loads(violations)
        out = Enrichment(*facts).apply_json(raw, mid, violations)
        assert orjson.loads(out) == expected, (raw, facts, mid)
        compared += 1


def test_untouched_members_keep_their_bytes() -> None:
    raw = b'{"type":"track","event":"E","userId":"u","properties":{ "price" : 1E2, "name":"caf\\u00e9" }}'
    out = Enrichment(RECEIVED, None, False, None, None, None, None).apply_json(raw)
    assert b'"properties":{ "price" : 1E2, "name":"caf\\u00e9" }' in out
    event = orjson.loads(out)
    assert event["properties"] == {"price": 100.0, "name": "café"}
    assert event["receivedAt"] == event["timestamp"] == "2025-11-24T16:00:00.250Z"
    assert event["messageId"].startswith("api-") and event["channel"] == "server" and event["version"] == 2


def test_the_context_is_rewritten_only_when_a_rule_changes_it() -> None:
    ctx = b'{"library":{"name":"analytics.js"} , "page":{"path":"/a"}}'
    raw = b'{"type":"page","anonymousId":"a","context":' + ctx + b"}"
    browser = orjson.loads(Enrichment(RECEIVED, "198.51.100.7", False, None, None, None, None).apply_json(raw))
    assert browser["context"] == {"library": {"name": "analytics.js"}, "page": {"path": "/a"}, "ip": "198.51.100.7"}
    assert browser["channel"] == "browser"
    server = Enrichment(RECEIVED, None, False, None, None, None, None).apply_json(raw)
    assert b'"page":{"path":"/a"}' in server and orjson.loads(server)["context"]["library"] == {"name": "analytics.js"}


@pytest.mark.parametrize("enriched", [False, True])
def test_record_materialize_json_equals_materialize(enriched: bool) -> None:
    items = [b'{"type":"track","event":"A","userId":"u1","messageId":"m1"}',
             b'{"type":"identify","userId":2,"traits":{"plan":"pro"}}',
             b'{"type":"track","event":"B","anonymousId":"a","messageId":"m3","context":{"library":{"name":"analytics-swift"}}}']
    append = Append("web", 0, RECEIVED, [
        Item(items[0], 1, 0, 0),
        Item(items[1], 2, 0, 1, message_id="api-fixed"),
        Item(items[2], 3, 0, 2, violations=[{"type": "Required", "field": "properties.x", "description": "missing"}]),
    ], [Route(("hook",), {})], client_ip="192.0.2.1", call_type=None, sent_at="2025-11-24T16:00:00.000Z",
        context=b'{"locale":"de"}', enriched=enriched)
    rec = records.Record(records.encode(append))
    for pos, raw in rec.raw_items():
        assert orjson.loads(rec.materialize_json(pos, raw)) == rec.materialize(pos, raw)
    if not enriched:
        *_, (pos, raw) = rec.raw_items()
        event = orjson.loads(rec.materialize_json(pos, raw))
        assert event["context"]["violations"][0]["field"] == "properties.x"
        assert event["context"]["ip"] == "192.0.2.1" and event["context"]["locale"] == "de"
        assert event["channel"] == "mobile"


def test_a_stored_item_that_is_not_an_object_fails_as_the_parsed_path_does() -> None:
    enrichment = Enrichment(RECEIVED, None, False, None, None, None, None)
    with pytest.raises(ValueError):
        enrichment.apply_json(b"[1, 2]")
    with pytest.raises(ValueError):
        enrichment.apply_json(b'{"type": "track", ')
    assert isinstance(msgspec.json.decode(enrichment.apply_json(b'{"type":"track","event":"E","userId":"u"}')),
                      dict)


def test_leased_work_makes_only_what_is_asked_for() -> None:
    """A Work read from the log makes the enriched JSON for json() (pass-through adapters) and the
    dict for parsed() (mapping adapters, filters): never one from the other when it has the record."""
    append = Append("web", 0, RECEIVED, [Item(b'{"type":"track","event":"A","userId":"u1","messageId":"m1"}', 1, 0, 0)],
                    [Route(("hook",), {})])
    rec = records.Record(records.encode(append))
    (pos, raw), = rec.raw_items()
    calls: list[str] = []

    class Counting:
        def materialize(self, position: int, item: bytes) -> dict[str, Any]:
            calls.append("dict")
            return rec.materialize(position, item)

        def materialize_json(self, position: int, item: bytes) -> bytes:
            calls.append("json")
            return rec.materialize_json(position, item)

    as_json = Work("ref", "web", 0, RECEIVED, len(raw), stored=(Counting(), pos, raw))
    message = Message(as_json.event, "web", raw=as_json.raw, lazy=as_json)
    assert orjson.loads(message.json())["messageId"] == "m1" and calls == ["json"]
    as_dict = Work("ref", "web", 0, RECEIVED, len(raw), stored=(Counting(), pos, raw))
    message = Message(as_dict.event, "web", raw=as_dict.raw, lazy=as_dict)
    assert message.event["receivedAt"] == "2025-11-24T16:00:00.250Z" and calls == ["json", "dict"]
    assert orjson.loads(as_dict.json()) == message.event and calls == ["json", "dict"]  # encoded from the dict
    assert as_json.parsed() == as_dict.parsed()
