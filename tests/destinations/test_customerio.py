"""Customer.io adapter: golden cases (Segment message in, exact request out) for the Track API
(v2 batch + v1 anonymous events) and the Data Pipelines API, skips/rejects at Customer.io's limits,
batch splitting, classification of its real answers (incl. 207 partial success), and every built
request checked against the contract fake."""

from __future__ import annotations

import copy
import urllib.parse
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from destinations import customerio
from destinations.base import Message, MessageOutcome, Request, Response, Verdict
from destinations.semantic import _CROCKFORD, epoch_ms, is_ulid, ulid_for
from tests.fakes.base import FakeServer
from tests.fakes.base import send as send_as_is
from tests.fakes.customerio import make_app
from tests.fixtures import messages as fx

AUTH = "Basic M2YyYTljMGQxZTp0cmtfa2V5XzAxMjM0NTY3ODk="  # 3f2a9c0d1e:trk_key_0123456789
HEADERS = {"Content-Type": "application/json", "Authorization": AUTH}
BATCH_URL = "https://track.customer.io/api/v2/batch"
EVENTS_URL = "https://track.customer.io/api/v1/events"
T0 = "2026-01-01T00:00:00.000Z"
T0_S = 1767225600
FX_S = 1795377951  # the fixtures' timestamp 2026-11-22T20:05:51.829Z in unix seconds


def settings(**over: Any) -> customerio.Settings:
    return customerio.ADAPTER.validate_settings({**customerio.Settings.example, **over})


def build(*events: dict[str, Any], **over: Any):
    return customerio.build_requests([Message(copy.deepcopy(e)) for e in events], settings(**over))


def only_entry(built) -> dict[str, Any]:
    assert not built.skips and not built.rejects, (built.skips, built.rejects)
    assert len(built.requests) == 1
    req = built.requests[0]
    assert (req.method, req.url, dict(req.headers), req.messages) == ("POST", BATCH_URL, HEADERS, (0,))
    body = orjson.loads(req.body)
    assert list(body) == ["batch"] and len(body["batch"]) == 1
    return body["batch"][0]


def msg(type_: str, **fields: Any) -> dict[str, Any]:
    return {"type": type_, "messageId": f"m-{type_}-1", "timestamp": T0, **fields}


# ------------------------------------------------------------------------------------------
# identify
# ------------------------------------------------------------------------------------------


def test_identify_minimal() -> None:
    entry = only_entry(build(msg("identify", userId="u1")))
    assert entry == {"type": "person", "identifiers": {"id": "u1"}, "action": "identify",
                     "attributes": {}, "timestamp": T0_S}


def test_identify_full() -> None:
    event = {**fx.IDENTIFY, "traits": {**fx.IDENTIFY["traits"], "address": {"city": "London"},
                                       "last_seen": "2026-11-01T10:00:00Z", "score": None}}
    entry = only_entry(build(event))
    assert entry == {
        "type": "person",
        "identifiers": {"id": "user-1"},
        "action": "identify",
        "attributes": {
            "email": "ada@example.com", "firstName": "Ada", "lastName": "Lovelace", "plan": "pro",
            "logins": 7, "address": {"city": "London"}, "last_seen": 1793527200, "score": None,
            "created_at": 1767323045,
            "anonymous_id": "5b1a3d4e-8f2c-4a7b-9e10-1234567890ab",
        },
        "timestamp": FX_S,
        "cio_relationships": [{"identifiers": {"object_type_id": "1", "object_id": "acct-42"}}],
    }


def test_identify_identifier_forms_and_created_at_units() -> None:
    assert only_entry(build(msg("identify", userId="cio_03000001")))["identifiers"] == {"cio_id": "03000001"}
    assert only_entry(build(msg("identify", userId="ada@example.com")))["identifiers"] == {"email": "ada@example.com"}
    by_email = only_entry(build(msg("identify", anonymousId="anon-1",
                                    traits={"email": "x@y.io", "createdAt": 1767225600123})))
    assert by_email["identifiers"] == {"email": "x@y.io"}
    assert by_email["attributes"] == {"email": "x@y.io", "created_at": 1767225600, "anonymous_id": "anon-1"}
    # createdAt wins over created_at; context.traits used when traits are empty
    entry = only_entry(build(msg("identify", userId="u1", traits={},
                                 context={"traits": {"created_at": "2026-01-02",
                                                     "createdAt": "2026-01-01T00:00:00Z"}})))
    assert entry["attributes"] == {"created_at": T0_S}


def test_identify_without_timestamp_conversion_keeps_strings() -> None:
    entry = only_entry(build(msg("identify", userId="u1", traits={"trial_end": "2026-02-01T00:00:00Z"}),
                             convert_timestamps=False))
    assert entry["attributes"] == {"trial_end": "2026-02-01T00:00:00Z"}


def test_identify_user_only_does_not_join_the_account() -> None:
    event = {**fx.IDENTIFY, "integrations": {"Customer.io": {"userOnly": True}}}
    assert "cio_relationships" not in only_entry(build(event))


def test_anonymous_identify_is_skipped() -> None:
    built = build(msg("identify", anonymousId="anon-1", traits={"plan": "pro"}))
    assert not built.requests and not built.rejects
    assert built.skips[0].index == 0 and "no anonymous people" in built.skips[0].reason


# ------------------------------------------------------------------------------------------
# track / page / screen
# ------------------------------------------------------------------------------------------


def test_track_minimal() -> None:
    entry = only_entry(build(msg("track", userId="u1", event="Signed Up")))
    assert entry == {"type": "person", "identifiers": {"id": "u1"}, "action": "event", "name": "Signed Up",
                     "id": "01KDVDNA00KPRE1495FFT1MQKZ", "timestamp": T0_S, "attributes": {}}


def test_track_full() -> None:
    event = copy.deepcopy(fx.ORDER_COMPLETED)
    event["properties"]["shipped_at"] = "2026-11-23T08:00:00.000Z"
    entry = only_entry(build(event))
    expected_props = {**fx.ORDER_COMPLETED["properties"], "shipped_at": 1795420800}
    assert entry == {"type": "person", "identifiers": {"id": "user-1"}, "action": "event",
                     "name": "Order Completed", "id": "01M82DTX2NN00WW4A2JBAG20T0",
                     "timestamp": FX_S, "attributes": expected_props}


def test_anonymous_track_goes_to_v1_events() -> None:
    built = build(fx.ANONYMOUS_TRACK)
    assert not built.skips and not built.rejects and len(built.requests) == 1
    req = built.requests[0]
    assert (req.method, req.url, dict(req.headers), req.messages) == ("POST", EVENTS_URL, HEADERS, (0,))
    assert orjson.loads(req.body) == {"name": "Viewed Docs", "type": "event",
                                      "anonymous_id": "5b1a3d4e-8f2c-4a7b-9e10-1234567890ab",
                                      "id": "01M82DTX2NG1PHCH0W6BBY5YTE", "timestamp": FX_S, "data": {}}


def test_page_minimal() -> None:
    entry = only_entry(build(msg("page", userId="u1", name="Home")))
    assert entry == {"type": "person", "identifiers": {"id": "u1"}, "action": "page", "name": "Home",
                     "id": "01KDVDNA00YVATV11CWZS72YWG", "timestamp": T0_S, "attributes": {"name": "Home"}}


def test_page_full() -> None:
    entry = only_entry(build(fx.PAGE))
    assert entry == {
        "type": "person", "identifiers": {"id": "user-1"}, "action": "page",
        "name": "https://shop.example.com/pricing?a=1", "id": "01M82DTX2N6612W683XQ9F94M9", "timestamp": FX_S,
        "attributes": {"url": "https://shop.example.com/pricing?a=1", "path": "/pricing",
                       "referrer": "https://example.org/", "search": "?a=1", "title": "Pricing",
                       "name": "Pricing", "category": "Docs"},
    }


def test_anonymous_page_and_screen_go_to_v1_events_with_their_type() -> None:
    built = build(msg("page", anonymousId="anon-1", name="Home"), msg("screen", anonymousId="anon-1", name="Feed"))
    bodies = [orjson.loads(r.body) for r in built.requests]
    assert [r.url for r in built.requests] == [EVENTS_URL, EVENTS_URL]
    assert bodies == [
        {"name": "Home", "type": "page", "anonymous_id": "anon-1", "id": "01KDVDNA00YVATV11CWZS72YWG",
         "timestamp": T0_S, "data": {"name": "Home"}},
        {"name": "Feed", "type": "screen", "anonymous_id": "anon-1", "id": "01KDVDNA00T1EWZ9BBJG1JM1PH",
         "timestamp": T0_S, "data": {}},
    ]


def test_screen_minimal() -> None:
    entry = only_entry(build(msg("screen", userId="u1", name="Home")))
    assert entry == {"type": "person", "identifiers": {"id": "u1"}, "action": "screen", "name": "Home",
                     "id": "01KDVDNA00T1EWZ9BBJG1JM1PH", "timestamp": T0_S, "attributes": {}}


def test_screen_full() -> None:
    entry = only_entry(build(fx.SCREEN))
    assert entry == {"type": "person", "identifiers": {"id": "user-1"}, "action": "screen", "name": "Home",
                     "id": "01M82DTX2NADAGQ1V6XYK57XJZ", "timestamp": FX_S, "attributes": {"variant": "dark"}}


def test_message_id_becomes_a_ulid_dedup_key() -> None:
    ulid_id = "01ARZ3NDEKTSV4RRFFQ69G5FAV"
    assert only_entry(build(msg("track", userId="u1", event="E", messageId=ulid_id)))["id"] == ulid_id
    derived = ulid_for("m-track-1", epoch_ms({"timestamp": T0}))
    assert is_ulid(derived) and derived == ulid_for("m-track-1", epoch_ms({"timestamp": T0}))
    assert derived != ulid_for("m-track-2", epoch_ms({"timestamp": T0}))
    ms = 0
    for ch in derived[:10]:
        ms = ms * 32 + _CROCKFORD.index(ch)
    assert ms == T0_S * 1000  # the ULID's time part is the event time


# ------------------------------------------------------------------------------------------
# group / alias
# ------------------------------------------------------------------------------------------


def test_group_minimal() -> None:
    entry = only_entry(build(msg("group", userId="u1", groupId="g1")))
    assert entry == {"type": "object", "identifiers": {"object_type_id": "1", "object_id": "g1"}, "action": "identify",
                     "attributes": {}, "cio_relationships": [{"identifiers": {"id": "u1"}}]}


def test_group_full() -> None:
    event = {**fx.GROUP, "traits": {**fx.GROUP["traits"], "createdAt": "2020-05-01T00:00:00Z", "objectTypeId": "2"}}
    entry = only_entry(build(event, object_type_id="3"))
    assert entry == {"type": "object", "identifiers": {"object_type_id": "2", "object_id": "acct-42"},
                     "action": "identify",
                     "attributes": {"name": "Acme Inc", "plan": "enterprise", "employees": 120,
                                    "created_at": 1588291200},
                     "cio_relationships": [{"identifiers": {"id": "user-1"}}]}


def test_anonymous_group_relates_the_anonymous_person() -> None:
    entry = only_entry(build(msg("group", anonymousId="anon-1", groupId="g1", traits={"name": "Acme"}),
                             object_type_id="4"))
    assert entry == {"type": "object", "identifiers": {"object_type_id": "4", "object_id": "g1"},
                     "action": "identify_anonymous", "attributes": {"name": "Acme"},
                     "cio_relationships": [{"identifiers": {"anonymous_id": "anon-1"}}]}


def test_alias_minimal_is_a_merge() -> None:
    entry = only_entry(build(msg("alias", userId="u1", previousId="u0")))
    assert entry == {"type": "person", "action": "merge", "primary": {"id": "u1"}, "secondary": {"id": "u0"}}


def test_alias_full() -> None:
    entry = only_entry(build({**fx.ALIAS, "previousId": "old@example.com"}))
    assert entry == {"type": "person", "action": "merge", "primary": {"id": "user-1"},
                     "secondary": {"email": "old@example.com"}}


def test_alias_from_the_anonymous_id_sets_anonymous_id() -> None:
    entry = only_entry(build(msg("alias", userId="u1", anonymousId="anon-1", previousId="anon-1")))
    assert entry == {"type": "person", "identifiers": {"id": "u1"}, "action": "identify",
                     "attributes": {"anonymous_id": "anon-1"}, "timestamp": T0_S}


# ------------------------------------------------------------------------------------------
# skips, rejects, limits, batching
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "event,reason",
    [
        (msg("track", userId="u1", event="  "), "without an event name"),
        (msg("track", userId="u1", event="e" * 101), "event name is 101 bytes"),
        (msg("track", userId="u1", event="é" * 51), "event name is 102 bytes"),
        (msg("screen", userId="u1"), "screen call without a name"),
        (msg("page", userId="u1", properties={"url": "https://x.io/" + "p" * 490}), "page name is 503 characters"),
        (msg("track", userId="u" * 151, event="E"), "person identifier is 151 bytes"),
        (msg("identify", userId="u1", traits={"bio": "b" * 1001}), "value of attribute 'bio' is 1001 bytes"),
        (msg("identify", userId="u1", traits={f"t{n}": n for n in range(301)}), "301 attributes"),
        (msg("identify", userId="u1", traits={"k" * 151: 1}), "longer than 150 bytes"),
        (msg("track", userId="u1", event="Big", properties={"blob": "x" * 100_001}), "event data is 100"),
        (msg("track", userId="u1", event="Big", properties={"blob": "x" * 40_000}), "at most 32000 per item"),
        (msg("group", userId="u1"), "without groupId"),
        (msg("group", userId="u1", groupId="g1", traits={"object_type_id": "companies"}), "string-formatted integer"),
        (msg("alias", userId="u1"), "needs both userId and previousId"),
        (msg("track", event="E"), "without userId or anonymousId"),
    ],
)
def test_events_customerio_would_refuse_are_rejected(event: dict[str, Any], reason: str) -> None:
    built = build(event)
    assert not built.requests and not built.skips
    assert len(built.rejects) == 1 and built.rejects[0].index == 0
    assert reason in built.rejects[0].reason


def test_alias_to_itself_and_unknown_types_are_skipped() -> None:
    built = build(msg("alias", userId="u1", previousId="u1"), {"type": "delete", "messageId": "x", "userId": "u1"})
    assert [(s.index, s.reason) for s in built.skips] == [
        (0, "alias with previousId equal to userId: nothing to merge"),
        (1, "call type 'delete' is not a Segment call Customer.io takes"),
    ]


def test_batches_split_at_500kb_and_keep_every_message() -> None:
    events = [msg("track", userId=f"u{n}", event="Read", messageId=f"m{n}", properties={"text": "x" * 20_000})
              for n in range(60)]
    built = build(*events)
    assert not built.skips and not built.rejects
    assert len(built.requests) == 3
    for req in built.requests:
        assert req.url == BATCH_URL and len(req.body) <= 500_000
        assert len(orjson.loads(req.body)["batch"]) == len(req.messages)
    assert [i for r in built.requests for i in r.messages] == list(range(60))


def test_batches_split_at_1000_items() -> None:
    built = build(*[msg("track", userId="u1", event="Tick", messageId=f"m{n}") for n in range(1001)])
    assert [len(r.messages) for r in built.requests] == [1000, 1]


def test_regions_and_endpoint() -> None:
    assert build(fx.TRACK, region="eu").requests[0].url == "https://track-eu.customer.io/api/v2/batch"
    assert build(fx.ANONYMOUS_TRACK, region="eu").requests[0].url == "https://track-eu.customer.io/api/v1/events"
    assert build(fx.TRACK, endpoint="http://127.0.0.1:9/cio/").requests[0].url == "http://127.0.0.1:9/cio/api/v2/batch"
    assert build(fx.TRACK, mode="pipelines", region="eu").requests[0].url == "https://cdp-eu.customer.io/v1/batch"
    assert build(fx.TRACK, mode="pipelines").requests[0].url == "https://cdp.customer.io/v1/batch"


def test_settings_require_site_id_in_track_mode_only() -> None:
    with pytest.raises(ValidationError, match="site_id is required"):
        customerio.ADAPTER.validate_settings({"api_key": "k"})
    s = customerio.ADAPTER.validate_settings({"api_key": "k", "mode": "pipelines"})
    assert s.site_id is None
    with pytest.raises(ValidationError):
        customerio.ADAPTER.validate_settings({**customerio.Settings.example, "object_type_id": "companies"})


# ------------------------------------------------------------------------------------------
# Data Pipelines mode
# ------------------------------------------------------------------------------------------

PIPE_HEADERS = {"Content-Type": "application/json", "Authorization": "Basic Y2RwX2tleV9hYmM6", "X-Strict-Mode": "1"}


def pipelines(*events: dict[str, Any], **over: Any):
    return build(*events, mode="pipelines", api_key="cdp_key_abc", **over)


MINIMAL = [
    {"type": "identify", "messageId": "p1", "userId": "u1"},
    {"type": "track", "messageId": "p2", "anonymousId": "a1", "event": "Clicked"},
    {"type": "page", "messageId": "p3", "userId": "u1"},
    {"type": "screen", "messageId": "p4", "userId": "u1", "name": "Feed"},
    {"type": "group", "messageId": "p5", "userId": "u1", "groupId": "g1"},
    {"type": "alias", "messageId": "p6", "userId": "u1", "previousId": "u0"},
]


@pytest.mark.parametrize("event", MINIMAL + fx.ALL_CALLS, ids=lambda e: f"{e['type']}-{e['messageId'][-2:]}")
def test_pipelines_forwards_each_call_as_a_segment_message(event: dict[str, Any]) -> None:
    built = pipelines(event)
    assert not built.skips and not built.rejects and len(built.requests) == 1
    req = built.requests[0]
    assert (req.method, req.url, dict(req.headers), req.messages) == (
        "POST", "https://cdp.customer.io/v1/batch", PIPE_HEADERS, (0,))
    expected = {k: v for k, v in event.items() if k not in ("receivedAt", "sentAt")}
    assert orjson.loads(req.body) == {"batch": [expected]}


def test_pipelines_user_only_drops_context_group_and_strict_mode_can_be_off() -> None:
    event = {**fx.TRACK, "integrations": {"Actions Customerio": {"userOnly": True}}}
    req = pipelines(event, strict_mode=False).requests[0]
    assert "X-Strict-Mode" not in req.headers
    sent = orjson.loads(req.body)["batch"][0]
    assert "groupId" not in sent["context"] and sent["context"]["ip"] == "203.0.113.7"
    assert sent["integrations"] == {"Actions Customerio": {"userOnly": True}}


@pytest.mark.parametrize(
    "event,reason",
    [
        ({"type": "track", "messageId": "x", "userId": "u1"}, "without an event name"),
        ({"type": "group", "messageId": "x", "userId": "u1"}, "without groupId"),
        ({"type": "alias", "messageId": "x", "userId": "u1"}, "needs both userId and previousId"),
        ({"type": "page", "messageId": "x"}, "without userId or anonymousId"),
        ({"type": "track", "messageId": "x", "userId": "u1", "event": "E", "properties": {"b": "x" * 33_000}},
         "at most 32000"),
    ],
)
def test_pipelines_rejects_what_strict_mode_would_refuse(event: dict[str, Any], reason: str) -> None:
    built = pipelines(event)
    assert not built.requests and len(built.rejects) == 1 and reason in built.rejects[0].reason


def test_pipelines_batches_split_at_500kb() -> None:
    events = [{"type": "track", "messageId": f"m{n}", "userId": "u1", "event": "E", "properties": {"t": "x" * 30_000}}
              for n in range(40)]
    built = pipelines(*events)
    assert len(built.requests) == 3 and all(len(r.body) <= 500_000 for r in built.requests)
    assert [i for r in built.requests for i in r.messages] == list(range(40))


# ------------------------------------------------------------------------------------------
# classify
# ------------------------------------------------------------------------------------------

BATCH_REQ = Request("POST", BATCH_URL, HEADERS, b'{"batch":[]}', (3, 5, 7))


def test_classify_207_fails_only_the_listed_items() -> None:
    body = orjson.dumps({"errors": [{"batch_index": 1, "reason": "invalid", "field": "attributes.plan",
                                     "message": "property value cannot be longer than 1000 bytes"}]})
    out = customerio.classify(BATCH_REQ, Response(207, {}, body))
    assert out.verdict is Verdict.OK
    assert out.per_message == {5: MessageOutcome(
        Verdict.PERMANENT,
        "Customer.io refused batch item 1: attributes.plan; property value cannot be longer than 1000 bytes; invalid")}
    assert out.for_message(3).verdict is Verdict.OK and out.for_message(7).verdict is Verdict.OK


def test_classify_plain_answers() -> None:
    assert customerio.classify(BATCH_REQ, Response(200, {}, b"{}")).verdict is Verdict.OK
    bad = customerio.classify(BATCH_REQ, Response(400, {}, b'{"message":"Bad Request"}'))
    assert bad.verdict is Verdict.PERMANENT and "Bad Request" in bad.reason
    assert customerio.classify(BATCH_REQ, Response(401, {}, b'{"message":"Unauthorized"}')).verdict is Verdict.PERMANENT
    throttled = customerio.classify(BATCH_REQ, Response(429, {"Retry-After": "3"}, b""))
    assert throttled.verdict is Verdict.RETRY and throttled.retry_after == 3
    unreadable = customerio.classify(BATCH_REQ, Response(207, {}, b"oops"))
    assert unreadable.verdict is Verdict.RETRY
    v1 = Request("POST", EVENTS_URL, HEADERS, b"{}", (2,))
    refused = customerio.classify(v1, Response(400, {}, b'{"meta":{"error":"name cannot be blank"}}'))
    assert refused.verdict is Verdict.PERMANENT and "name cannot be blank" in refused.reason


# ------------------------------------------------------------------------------------------
# against the contract fake
# ------------------------------------------------------------------------------------------


def send(req: Request, base: str) -> Response:
    return send_as_is(req, base + urllib.parse.urlsplit(req.url).path)  # same path, on the fake's host


@pytest.fixture()
def fake():
    with FakeServer(make_app(site_id="3f2a9c0d1e", api_key="trk_key_0123456789",
                             pipelines_key="cdp_key_abc")) as server:
        yield server


def test_every_track_mode_request_is_accepted_by_the_fake(fake) -> None:
    events = fx.ALL + [msg("page", anonymousId="anon-1", name="Home"), msg("screen", anonymousId="anon-1", name="Feed"),
                       msg("group", anonymousId="anon-1", groupId="g1"),
                       msg("alias", userId="u1", anonymousId="a", previousId="a"),
                       msg("identify", userId="cio_03000001"),
                       msg("identify", anonymousId="a", traits={"email": "a@b.io"})]
    built = build(*events)
    assert not built.rejects and not built.skips
    for req in built.requests:
        resp = send(req, fake.url)
        assert resp.status == 200, resp.body
        assert customerio.classify(req, resp).verdict is Verdict.OK
    accepted = fake.app["accepted"]
    assert len(accepted) == len(events)
    assert sorted(api for api, _ in accepted).count("v1") == 3


def test_every_pipelines_request_is_accepted_by_the_fake(fake) -> None:
    built = pipelines(*(fx.ALL + MINIMAL))
    for req in built.requests:
        assert send(req, fake.url).status == 200
    assert len(fake.app["accepted"]) == len(fx.ALL + MINIMAL) and not fake.app["dropped"]


def test_fake_refuses_bad_credentials_and_invalid_items_with_customerio_bodies(fake) -> None:
    wrong = build(fx.TRACK, api_key="nope").requests[0]
    resp = send(wrong, fake.url)
    assert resp.status == 401 and customerio.classify(wrong, resp).verdict is Verdict.PERMANENT

    good = orjson.loads(build(fx.TRACK).requests[0].body)["batch"][0]
    bad = {**good, "id": "not-a-ulid"}
    req = Request("POST", BATCH_URL, HEADERS, orjson.dumps({"batch": [good, bad]}), (4, 9))
    resp = send(req, fake.url)
    assert resp.status == 207
    assert orjson.loads(resp.body) == {"errors": [{"batch_index": 1, "reason": "invalid", "field": "id",
                                                   "message": "id must be a valid ULID"}]}
    out = customerio.classify(req, resp)
    assert out.for_message(4).verdict is Verdict.OK and out.for_message(9).verdict is Verdict.PERMANENT
    assert fake.app["accepted"] == [("v2", good)]

    blank = Request("POST", EVENTS_URL, HEADERS, b'{"name":" ","anonymous_id":"a"}', (0,))
    resp = send(blank, fake.url)
    assert resp.status == 400 and orjson.loads(resp.body) == {"meta": {"error": "event name must not be blank"}}

    strict = Request("POST", "https://cdp.customer.io/v1/batch", PIPE_HEADERS,
                     orjson.dumps({"batch": [{"type": "track", "userId": "u1"}]}), (0,))
    resp = send(strict, fake.url)
    assert resp.status == 400 and orjson.loads(resp.body) == {"code": "invalid_request",
                                                              "message": "batch[0]: event is required"}
    lax_headers = {k: v for k, v in PIPE_HEADERS.items() if k != "X-Strict-Mode"}
    resp = send(Request("POST", strict.url, lax_headers, strict.body, (0,)), fake.url)
    assert resp.status == 200 and fake.app["dropped"] == ["batch[0]: event is required"]


def test_fake_enforces_the_limits_the_adapter_checks(fake) -> None:
    # what the adapter rejects, the fake refuses: prove the fake's rules on hand-built items
    items = [
        {"type": "person", "identifiers": {"id": "u1"}, "action": "event", "name": "e" * 101},
        {"type": "person", "identifiers": {"id": "u1"}, "action": "identify", "attributes": {"bio": "b" * 1001}},
        {"type": "person", "identifiers": {"id": "u" * 151}, "action": "identify"},
        {"type": "object", "identifiers": {"object_type_id": "x", "object_id": "g"}, "action": "identify"},
        {"type": "person", "identifiers": {"id": "u1"}, "action": "event", "name": "E", "timestamp": "2026-01-01"},
    ]
    req = Request("POST", BATCH_URL, HEADERS, orjson.dumps({"batch": items}), (0, 1, 2, 3, 4))
    resp = send(req, fake.url)
    assert resp.status == 207
    assert [e["batch_index"] for e in orjson.loads(resp.body)["errors"]] == [0, 1, 2, 3, 4]
    big = Request("POST", BATCH_URL, HEADERS,
                  b'{"batch":[' + b",".join([orjson.dumps({"x": "y" * 30_000})] * 17) + b"]}", tuple(range(17)))
    resp = send(big, fake.url)
    assert resp.status == 400 and customerio.classify(big, resp).verdict is Verdict.PERMANENT


def test_fake_refuses_a_merge_into_a_person_it_does_not_know(fake) -> None:
    built = build(msg("alias", userId="u9", previousId="u8"), msg("identify", userId="u9"),
                  msg("alias", userId="u9", previousId="u7"))
    req = built.requests[0]
    resp = send(req, fake.url)
    assert resp.status == 207
    assert orjson.loads(resp.body) == {"errors": [{"batch_index": 0, "reason": "invalid", "field": "primary",
                                                   "message": "primary person does not exist"}]}
    out = customerio.classify(req, resp)
    assert out.for_message(0).verdict is Verdict.PERMANENT
    assert out.for_message(1).verdict is Verdict.OK and out.for_message(2).verdict is Verdict.OK
