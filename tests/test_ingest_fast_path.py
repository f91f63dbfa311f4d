"""Ingest decides the common valid event on a fast path (msgspec-typed fields, proxy/ingest.py
``_Fast``) and everything else on the general one (``_Fields`` + spec.check). The fast path is only
an optimisation: for every request, both must reach the same decision (stored items, their routes,
rejected items and reasons, or the error of a request refused as a whole). This drives the same
random requests through both, with the fast path on and forced off."""

from __future__ import annotations

import random
from typing import Any

import msgspec
import pytest
from aiohttp.test_utils import make_mocked_request

from proxy import ingest as ingest_module
from proxy.config import load_config
from proxy.ingest import BadRequest, Ingest
from proxy.routing import Router

KEY = "fast-key"

CONFIG = f"""
server: {{host: 127.0.0.1, port: 0}}
storage: {{path: DATA}}
sources:
  - name: web
    write_keys: [{KEY}]
destinations:
  - name: hook
    type: webhook
    settings: {{url: "http://127.0.0.1:9/hook"}}
    filters: {{types: [track, identify]}}
  - name: other
    type: webhook
    settings: {{url: "http://127.0.0.1:9/other"}}
    filters: {{exclude_events: [Skipped]}}
"""

SENTINEL = object()  # the field is left out
# per field: (usual values, unusual or invalid ones); each field takes an unusual value 1 time in 30
IDS = ([SENTINEL, "u1", "user-2"], [None, "", "   ", "\u3000", 12, 1.5, 0, True, False, [], {}, "x" * 101,
                                    "x" * 100])
STRINGS = ([SENTINEL, "Order Completed", "Skipped"], [None, "", " ", 3, True, ["a"], {"a": 1}])
OBJECTS = ([SENTINEL, {}, {"a": 1, "nested": {"b": [1, 2]}}], [None, [], "text", 5, True])
INTEGRATIONS = ([SENTINEL, {}, {"All": False}, {"All": False, "hook": True}, {"other": False}],
                [None, "x", [1], 3])
TYPES = (["track", "identify", "page", "screen", "group", "alias"],
         [SENTINEL, None, "Track", "", 1, ["track"], {"t": 1}])
NUMBERS = [1, 2**63, 2**64, 2**64 + 1, -(2**63) - 1, 1e300, 12345678901234567890123]
FIELDS = {
    "type": TYPES, "userId": IDS, "anonymousId": IDS, "previousId": IDS, "groupId": IDS,
    "messageId": IDS, "event": STRINGS, "name": STRINGS, "category": STRINGS, "timestamp": STRINGS,
    "sentAt": STRINGS, "originalTimestamp": STRINGS, "properties": OBJECTS, "traits": OBJECTS,
    "context": OBJECTS, "integrations": INTEGRATIONS,
}


def encode(value: Any) -> bytes:
    return msgspec.json.encode(value)  # integers beyond 64 bits too (orjson refuses them)


def random_event(rng: random.Random) -> Any:
    if rng.random() < 0.02:
        return rng.choice([[1, 2], "an event", 7, None])
    event: dict[str, Any] = {}
    for field, (usual, unusual) in FIELDS.items():
        value = rng.choice(unusual if rng.random() < 1 / 30 else usual)
        if value is not SENTINEL:
            event[field] = value
    if rng.random() < 0.05:
        event.setdefault("properties", {})
        if isinstance(event["properties"], dict):
            event["properties"] = {**event["properties"], "n": rng.choice(NUMBERS)}
    if rng.random() < 0.03:
        deep: Any = 1
        for _ in range(rng.choice([10, 63, 64, 70])):
            deep = {"d": deep}
        event["properties"] = deep
    return event


def decide(ingest: Ingest, body: bytes, segment: str, call_type: str | None) -> Any:
    request = make_mocked_request("POST", f"/v1/{segment}", headers={"Content-Type": "application/json"})
    try:
        prepared = ingest.prepare(request, body, segment, call_type)
    except BadRequest as exc:
        return ("refused", exc.status, exc.code)
    items = [(item.raw, item.index, prepared.routes[item.route], item.message_id is not None,
              None if item.message_id is not None else item.dedup) for item in prepared.items]
    return ("stored", items, prepared.rejected)


@pytest.fixture(scope="module")
def ingest(tmp_path_factory: pytest.TempPathFactory) -> Ingest:
    path = tmp_path_factory.mktemp("fast") / "trackrelay.yaml"
    path.write_text(CONFIG.replace("DATA", str(path.parent / "data")))
    config = load_config(path)

    class NoSpool:
        def refusal(self) -> None:
            return None

    return Ingest(config, NoSpool(), Router(config.destinations))  # type: ignore[arg-type]


def test_fast_and_general_paths_decide_the_same(ingest: Ingest, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(20261202)
    requests: list[tuple[bytes, str, str | None]] = []
    for _ in range(1000):
        event = random_event(rng)
        if isinstance(event, dict):
            event["writeKey"] = KEY
        requests.append((encode(event), "track", "track"))
        requests.append((encode(event), "identify", "identify"))
    for _ in range(300):
        batch: dict[str, Any] = {"writeKey": KEY, "batch": [random_event(rng) for _ in range(rng.randint(1, 8))]}
        if rng.random() < 0.3:
            batch["context"] = {"library": {"name": "analytics-python"}}
        if rng.random() < 0.3:
            batch["integrations"] = rng.choice([{"All": False}, {"hook": False}, {}])
        requests.append((encode(batch), "batch", None))

    fast = [decide(ingest, *r) for r in requests]
    monkeypatch.setattr(Ingest, "fast_valid", lambda self, f, call_type, batch_integrations: False)
    general = [decide(ingest, *r) for r in requests]
    assert fast == general
    # the comparison covered both outcomes and every kind of refusal it could
    kinds = {d[0] for d in fast}
    assert kinds == {"stored", "refused"}
    stored = sum(len(d[1]) for d in fast if d[0] == "stored")
    assert stored > 1500, stored  # most random events are valid: the fast path was exercised
    reasons = {reason for d in fast if d[0] == "stored" for _, reason in d[2]}
    reasons |= {d[2] for d in fast if d[0] == "refused"}
    assert {"invalid_type", "invalid_field_type", "missing_identity", "missing_event_name", "missing_group_id",
            "missing_previous_id", "message_id_too_long", "number_out_of_range", "too_deeply_nested",
            "not_an_object"} <= reasons


def test_the_fast_path_takes_the_common_event(ingest: Ingest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The benchmark's (and analytics.js's) typical event is decided by the fast path alone."""
    calls: list[bool] = []
    real = Ingest.fast_valid

    def spy(self: Ingest, f: Any, call_type: str | None, batch_integrations: bool) -> bool:
        calls.append(result := real(self, f, call_type, batch_integrations))
        return result

    monkeypatch.setattr(Ingest, "fast_valid", spy)
    monkeypatch.setattr(ingest_module, "_decode_fields", None)  # the general decoder must not be needed
    event = {"type": "track", "event": "Order Completed", "userId": "u1", "anonymousId": "a1",
             "messageId": "m-1", "timestamp": "2026-12-02T00:00:00.000Z", "properties": {"revenue": 12.5},
             "context": {"library": {"name": "analytics.js"}}, "integrations": {}}
    result = decide(ingest, encode({"writeKey": KEY, "batch": [event, {**event, "messageId": "m-2"}]}),
                    "batch", None)
    assert result[0] == "stored" and len(result[1]) == 2 and result[2] == []
    assert calls == [True, True]


@pytest.mark.parametrize(("body", "suspect"), [
    (b'{"n":123456789012345678901234}', True),  # beyond 64 bits
    (b'{"n":1e400}', True), (b'{"n":1E+400}', True), (b'{"a":[1,2],"n":-2.5e-3,"m":1.5e300}', True),
    (b'{"id":"123456789012345678901234"}', False),  # a long id sent as a string
    (b'{"anonymousId":"3e456f12-7e89-4a1b-9e23-8f0e1d2c3b4a"}', False),  # hex "e456", "e89", ...
    (b'{"x":"e999","n":1e999}', True),  # a hit in a string, then a number
    (b'{"x":"a\\"e999"}', True),  # an escape before the hit: counted, the exact check decides
    (b'{"phone":"+4915123456789012345678"}', False),
    (b'{"n":18446744073709551615}', True),  # 2**64 - 1: a candidate; the exact check keeps it
    (b'{"n":1234567890123456789.5,"m":1e30}', True),
    (b'{"n":123456789012345678,"m":1e30,"s":"e1000"}', False),  # 18 digits, 2-digit exponent
])
def test_number_prefilter(body: bytes, suspect: bool) -> None:
    """The C-speed prefilter in front of the exact number check: never False for a number that may
    not survive (the exact check then decides), False for look-alikes inside strings."""
    from proxy.ingest import _suspect_number

    assert _suspect_number(body) is suspect


def test_delivery_normalises_stored_items_as_the_checks_would() -> None:
    """Delivery applies spec.normalize (not the whole spec.check) to stored items: on every item the
    checks accept, both must give the same event."""
    import copy

    from proxy import spec

    rng = random.Random(7)
    accepted = 0
    for _ in range(4000):
        event = random_event(rng)
        for call_type in (None, "track", "group", "alias"):
            try:
                checked = spec.check(copy.deepcopy(event), call_type, 100)
            except spec.Invalid:
                continue
            accepted += 1
            assert spec.normalize(copy.deepcopy(event), call_type) == checked, (event, call_type)
    assert accepted > 3000
