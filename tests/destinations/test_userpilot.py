"""Userpilot adapter: golden cases (Segment message in, exact request out) for identify, track and
group, the skipped calls and their reasons, metadata value shaping, its rate limit, classification
of Userpilot's answers, and every built request checked against the contract fake."""

from __future__ import annotations

import copy
import urllib.parse
from typing import Any

import orjson
import pytest

from destinations import userpilot
from destinations.base import Message, Request, Response, Verdict
from tests.fakes.base import FakeServer
from tests.fakes.base import send as send_as_is
from tests.fakes.userpilot import make_app
from tests.fixtures import messages as fx

KEY = "up_key_0123456789abcdef"
HEADERS = {"Content-Type": "application/json", "Authorization": f"Token {KEY}", "X-API-Version": "2020-09-22"}
BASE = "https://analytex.userpilot.io"
T0 = "2026-01-01T00:00:00.000Z"


def settings(**over: Any) -> userpilot.Settings:
    return userpilot.ADAPTER.validate_settings({**userpilot.Settings.example, **over})


def build(*events: dict[str, Any], **over: Any):
    return userpilot.build_requests([Message(copy.deepcopy(e)) for e in events], settings(**over))


def requests_of(built) -> list[tuple[str, str, dict[str, str], Any, tuple[int, ...]]]:
    assert not built.skips and not built.rejects, (built.skips, built.rejects)
    return [(r.method, r.url, dict(r.headers), orjson.loads(r.body), r.messages) for r in built.requests]


def msg(type_: str, **fields: Any) -> dict[str, Any]:
    return {"type": type_, "messageId": f"m-{type_}-1", "timestamp": T0, **fields}


def test_identify_minimal() -> None:
    assert requests_of(build(msg("identify", userId="u1"))) == [
        ("POST", f"{BASE}/v1/identify", HEADERS, {"user_id": "u1", "metadata": {}}, (0,))
    ]


def test_identify_full() -> None:
    event = {**fx.IDENTIFY, "traits": {**fx.IDENTIFY["traits"], "address": {"city": "London", "zip": None},
                                       "roles": ["admin", "billing"], "beta": True, "nickname": None}}
    assert requests_of(build(event)) == [(
        "POST", f"{BASE}/v1/identify", HEADERS,
        {"user_id": "user-1",
         "metadata": {"email": "ada@example.com", "firstName": "Ada", "lastName": "Lovelace", "plan": "pro",
                      "logins": 7, "address_city": "London", "roles": "admin, billing", "beta": "true",
                      "created_at": "2026-01-02T03:04:05Z"},
         "company": {"id": "acct-42"}},
        (0,),
    )]


def test_identify_company_trait_wins_over_context_group() -> None:
    event = msg("identify", userId="u1", context={"groupId": "ctx-g"},
                traits={"name": "Ada", "company": {"id": 77, "name": "Acme", "createdAt": "2020-01-01T00:00:00Z"}})
    (_, _, _, body, _), = requests_of(build(event))
    assert body == {"user_id": "u1", "metadata": {"name": "Ada"},
                    "company": {"id": "77", "name": "Acme", "created_at": "2020-01-01T00:00:00Z"}}


def test_identify_company_trait_without_id_stays_user_metadata() -> None:
    event = msg("identify", userId="u1", traits={"company": {"name": "Acme"}, "title": "CTO"})
    (_, _, _, body, _), = requests_of(build(event))
    assert body == {"user_id": "u1", "metadata": {"company_name": "Acme", "title": "CTO"}}
    (_, _, _, body, _), = requests_of(build(msg("identify", userId="u1", traits={"company": "Acme"})))
    assert body == {"user_id": "u1", "metadata": {"company": "Acme"}}


def test_identify_user_only_keeps_the_user_out_of_context_group() -> None:
    event = {**fx.IDENTIFY, "integrations": {"Userpilot": {"userOnly": True}}}
    (_, _, _, body, _), = requests_of(build(event))
    assert "company" not in body


def test_track_minimal() -> None:
    assert requests_of(build(msg("track", userId="u1", event="Signed Up"))) == [
        ("POST", f"{BASE}/v1/track", HEADERS, {"user_id": "u1", "event_name": "Signed Up", "metadata": {}}, (0,))
    ]


def test_track_full() -> None:
    assert requests_of(build(fx.ORDER_COMPLETED)) == [(
        "POST", f"{BASE}/v1/track", HEADERS,
        {"user_id": "user-1", "event_name": "Order Completed",
         "metadata": {"order_id": "ord-1001", "checkout_id": "chk-1", "affiliation": "web", "total": 27.5,
                      "revenue": 25.0, "shipping": 3.0, "tax": 2.0, "discount": 2.5, "coupon": "SPRING",
                      "currency": "EUR",
                      "products": '[{"product_id":"p-1","sku":"SKU-1","name":"Mug","price":10.0,"quantity":2,'
                                  '"category":"Kitchen"},{"product_id":"p-2","sku":"SKU-2","name":"Tea","price":5.0,'
                                  '"quantity":1,"brand":"Leaf"}]'}},
        (0,),
    )]


def test_group_minimal_is_a_company_identify_plus_membership() -> None:
    assert requests_of(build(msg("group", userId="u1", groupId="g1"))) == [
        ("POST", f"{BASE}/v1/companies/identify", HEADERS, {"company_id": "g1", "metadata": {}}, (0,)),
        ("POST", f"{BASE}/v1/identify", HEADERS, {"user_id": "u1", "company": {"id": "g1"}}, (0,)),
    ]


def test_group_full() -> None:
    event = {**fx.GROUP, "traits": {**fx.GROUP["traits"], "created_at": "2020-05-01T00:00:00Z"}}
    assert requests_of(build(event)) == [
        ("POST", f"{BASE}/v1/companies/identify", HEADERS,
         {"company_id": "acct-42", "metadata": {"name": "Acme Inc", "plan": "enterprise", "employees": 120,
                                                "created_at": "2020-05-01T00:00:00Z"}}, (0,)),
        ("POST", f"{BASE}/v1/identify", HEADERS, {"user_id": "user-1", "company": {"id": "acct-42"}}, (0,)),
    ]


def test_anonymous_group_only_identifies_the_company() -> None:
    assert requests_of(build(msg("group", anonymousId="a1", groupId="g1"))) == [
        ("POST", f"{BASE}/v1/companies/identify", HEADERS, {"company_id": "g1", "metadata": {}}, (0,)),
    ]


@pytest.mark.parametrize(
    "event,reason",
    [
        (fx.PAGE, "page calls: Userpilot's HTTP API has no page or screen endpoint"),
        (fx.SCREEN, "screen calls: Userpilot's HTTP API has no page or screen endpoint"),
        (fx.ALIAS, "alias calls: Userpilot has no API to merge or rename users"),
        (fx.ANONYMOUS_TRACK, "track without userId: Userpilot records events for identified users only"),
        (msg("identify", anonymousId="a1", traits={"plan": "pro"}),
         "identify without userId: Userpilot's API needs an identified user_id"),
    ],
)
def test_calls_userpilot_cannot_take_are_skipped_with_a_reason(event: dict[str, Any], reason: str) -> None:
    built = build(event)
    assert not built.requests and not built.rejects
    assert [(s.index, s.reason) for s in built.skips] == [(0, reason)]


@pytest.mark.parametrize(
    "event,reason",
    [
        (msg("track", userId="u1", event=" "), "without an event name"),
        (msg("group", userId="u1"), "without groupId"),
    ],
)
def test_events_userpilot_would_refuse_are_rejected(event: dict[str, Any], reason: str) -> None:
    built = build(event)
    assert not built.requests and len(built.rejects) == 1 and reason in built.rejects[0].reason


def test_regions_endpoint_and_rate_limit() -> None:
    assert build(fx.TRACK, region="eu").requests[0].url == "https://analytex-eu.userpilot.io/v1/track"
    assert build(fx.TRACK,
                 endpoint="https://acme.userpilot.io/").requests[0].url == "https://acme.userpilot.io/v1/track"
    assert userpilot.ADAPTER.max_requests_per_second == 10


def test_one_request_per_call_for_a_whole_batch() -> None:
    built = build(*([fx.TRACK] * 30))
    assert [r.messages for r in built.requests] == [(i,) for i in range(30)]


def test_classify_userpilot_answers() -> None:
    req = Request("POST", f"{BASE}/v1/track", HEADERS, b"{}", (0,))
    assert userpilot.ADAPTER.classify(req, Response(202, {}, b"{}")).verdict is Verdict.OK
    throttled = userpilot.ADAPTER.classify(req, Response(429, {"Retry-After": "12"}, b'{"errors":[]}'))
    assert throttled.verdict is Verdict.RETRY and throttled.retry_after == 12
    body = (b'{"errors":[{"error_code":"invalid_input","error":"Bad Request","message":"event_name is required",'
            b'"details":""}]}')
    refused = userpilot.ADAPTER.classify(req, Response(400, {}, body))
    assert refused.verdict is Verdict.PERMANENT and "event_name is required" in refused.reason
    assert userpilot.ADAPTER.classify(req, Response(401, {}, b"{}")).verdict is Verdict.PERMANENT


# ------------------------------------------------------------------------------------------
# against the contract fake
# ------------------------------------------------------------------------------------------


def send(req: Request, base: str) -> Response:
    return send_as_is(req, base + urllib.parse.urlsplit(req.url).path)  # same path, on the fake's host


def test_every_request_built_for_the_fixtures_is_accepted_by_the_fake() -> None:
    events = fx.ALL + [msg("identify", userId="u2", traits={"company": {"id": "c9", "tier": "gold", "tags": ["a"]}})]
    built = build(*events)
    with FakeServer(make_app(api_key=KEY)) as fake:
        for req in built.requests:
            resp = send(req, fake.url)
            assert resp.status == 202, resp.body
            assert userpilot.ADAPTER.classify(req, resp).verdict is Verdict.OK
        paths = [p for p, _ in fake.app["accepted"]]
    # identify, track x4 (one anonymous track skipped), group (company + membership), extra identify
    assert paths.count("/v1/track") == 4 and paths.count("/v1/companies/identify") == 1
    assert paths.count("/v1/identify") == 3
    assert {s.index for s in built.skips} == {2, 3, 5, 9}


def test_fake_refuses_with_userpilot_error_bodies_and_throttles() -> None:
    with FakeServer(make_app(api_key=KEY, requests_per_minute=3)) as fake:
        wrong = build(fx.TRACK, api_key="nope").requests[0]
        resp = send(wrong, fake.url)
        assert resp.status == 401
        assert orjson.loads(resp.body) == {"errors": [{"error_code": "unauthorized", "error": "Unauthorized",
                                                       "message": "Invalid API key", "details": ""}]}
        no_version = Request("POST", f"{BASE}/v1/track", {k: v for k, v in HEADERS.items() if k != "X-API-Version"},
                             b'{"user_id":"u1","event_name":"E"}', (0,))
        assert send(no_version, fake.url).status == 400
        nested = Request("POST", f"{BASE}/v1/identify", HEADERS, b'{"user_id":"u1","metadata":{"a":{"b":1}}}', (0,))
        resp = send(nested, fake.url)
        assert resp.status == 400 and userpilot.ADAPTER.classify(nested, resp).verdict is Verdict.PERMANENT
        assert (orjson.loads(resp.body)["errors"][0]["message"]
                == "metadata.a must be a string, a number or an ISO 8601 date")
        track = build(fx.TRACK).requests[0]
        assert send(track, fake.url).status == 202  # third request of the minute
        resp = send(track, fake.url)
        assert resp.status == 429 and userpilot.ADAPTER.classify(track, resp).verdict is Verdict.RETRY
        assert orjson.loads(resp.body)["errors"][0]["error_code"] == "rate_limited"
        assert fake.app["accepted"] == [("/v1/track", orjson.loads(track.body))]
