"""journy.io adapter: golden requests for every call, B2B identification, limits, classify, fake."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from destinations import journy
from destinations.base import Message, Request, Verdict
from tests.fakes.base import FakeServer, send
from tests.fakes.journy import make_app
from tests.fixtures.messages import ALL, ANONYMOUS_TRACK, GROUP, IDENTIFY, PAGE, SCREEN, TRACK

ADAPTER = journy.ADAPTER
KEY = "jy_test_key"
BASE = "https://api.journy.io"
HEADERS = {"X-Api-Key": KEY, "Content-Type": "application/json"}
TS = "2026-11-22T20:05:51.829Z"


def build(*events: dict[str, Any], **extra: Any):
    settings = ADAPTER.validate_settings({"api_key": KEY, **extra})
    return ADAPTER.build_requests([Message(e) for e in events], settings)


def shape(request: Request) -> tuple[str, str, dict[str, str], Any]:
    return request.method, request.url, dict(request.headers), orjson.loads(request.body or b"null")


def minimal(type_: str, **fields: Any) -> dict[str, Any]:
    return {"type": type_, "messageId": "m-1", "timestamp": TS, **fields}


# ---------------------------------------------------------------------------------------------
# identify -> users/upsert
# ---------------------------------------------------------------------------------------------


def test_identify_minimal() -> None:
    built = build(minimal("identify", userId="u1"))
    assert [shape(r) for r in built.requests] == [
        ("POST", f"{BASE}/users/upsert", HEADERS, {"identification": {"userId": "u1"}, "properties": {}})
    ]
    assert built.requests[0].messages == (0,)


def test_identify_full_properties_flattened_to_accepted_types() -> None:
    event = {**IDENTIFY, "traits": {**IDENTIFY["traits"], "id": "user-1", "address": {"city": "Ghent"},
                                    "roles": ["admin", 2], "teams": [{"id": 1}], "left": None, "score": 1.5}}
    assert [shape(r) for r in build(event).requests] == [(
        "POST", f"{BASE}/users/upsert", HEADERS,
        {"identification": {"userId": "user-1", "email": "ada@example.com"},
         "properties": {"firstName": "Ada", "lastName": "Lovelace", "plan": "pro",
                        "createdAt": "2026-01-02T03:04:05Z", "logins": 7, "address.city": "Ghent",
                        "roles": ["admin", "2"], "teams": '[{"id":1}]', "left": None, "score": 1.5,
                        "name": "Ada Lovelace"}},
    )]


def test_identify_by_email_only() -> None:
    built = build(minimal("identify", anonymousId="a1", traits={"email": " ada@example.com", "plan": "pro"}))
    assert shape(built.requests[0])[3] == {"identification": {"email": "ada@example.com"},
                                           "properties": {"plan": "pro"}}


def test_identify_with_an_invalid_email_keeps_it_as_a_property() -> None:
    built = build(minimal("identify", userId="u1", traits={"email": "not-an-email"}))
    assert shape(built.requests[0])[3] == {"identification": {"userId": "u1"}, "properties": {"email": "not-an-email"}}


def test_identify_without_user_id_or_email_is_skipped() -> None:
    built = build(minimal("identify", anonymousId="a1", traits={"plan": "pro"}))
    assert not built.requests and "userId" in built.skips[0].reason


# ---------------------------------------------------------------------------------------------
# track -> /track with user and account
# ---------------------------------------------------------------------------------------------


def test_track_minimal() -> None:
    built = build(minimal("track", userId="u1", event="login"))
    assert [shape(r) for r in built.requests] == [(
        "POST", f"{BASE}/track", HEADERS,
        {"identification": {"user": {"userId": "u1"}}, "name": "login", "triggeredAt": TS, "metadata": {}},
    )]


def test_track_full_user_in_account_metadata_scalars_only() -> None:
    event = {**TRACK, "properties": {"plan": "pro", "trial": True, "seats": 3, "billing": {"cycle": "yearly"},
                                     "ids": [1, 2], "coupon": None}}
    assert [shape(r) for r in build(event).requests] == [(
        "POST", f"{BASE}/track", HEADERS,
        {"identification": {"user": {"userId": "user-1"}, "account": {"accountId": "acct-42"}},
         "name": "Signed Up", "triggeredAt": TS,
         "metadata": {"plan": "pro", "trial": True, "seats": 3, "billing.cycle": "yearly", "ids": "[1,2]"}},
    )]


@pytest.mark.parametrize("name", ["Journy.io", "journy.io", "Journy"])
def test_track_user_only_leaves_the_account_out(name: str) -> None:
    body = shape(build({**TRACK, "integrations": {name: {"userOnly": True}}}).requests[0])[3]
    assert body["identification"] == {"user": {"userId": "user-1"}}


def test_anonymous_track_in_an_account_is_an_account_event() -> None:
    body = shape(build(ANONYMOUS_TRACK).requests[0])[3]
    assert body["identification"] == {"account": {"accountId": "acct-42"}}


def test_track_with_neither_user_nor_account_is_skipped() -> None:
    built = build(minimal("track", anonymousId="a1", event="x"))
    assert not built.requests and "account" in built.skips[0].reason


def test_track_without_a_name_is_rejected() -> None:
    built = build(minimal("track", userId="u1", event="  "))
    assert not built.requests and "event name" in built.rejects[0].reason


# ---------------------------------------------------------------------------------------------
# group -> accounts/upsert + accounts/users/add
# ---------------------------------------------------------------------------------------------


def test_group_minimal_without_user() -> None:
    built = build(minimal("group", groupId="c1", anonymousId="a1"))
    assert [shape(r) for r in built.requests] == [
        ("POST", f"{BASE}/accounts/upsert", HEADERS, {"identification": {"accountId": "c1"}, "properties": {}})
    ]


def test_group_full_account_with_domain_then_member_link() -> None:
    event = {**GROUP, "traits": {**GROUP["traits"], "website": "https://www.Acme.com/about", "tags": ["b2b"]}}
    built = build(event)
    assert [shape(r) for r in built.requests] == [
        ("POST", f"{BASE}/accounts/upsert", HEADERS,
         {"identification": {"accountId": "acct-42", "domain": "www.acme.com"},
          "properties": {"name": "Acme Inc", "plan": "enterprise", "employees": 120,
                         "website": "https://www.Acme.com/about", "tags": ["b2b"]}}),
        ("POST", f"{BASE}/accounts/users/add", HEADERS,
         {"account": {"accountId": "acct-42"}, "users": [{"identification": {"userId": "user-1"}}]}),
    ]
    assert all(r.messages == (0,) for r in built.requests)


def test_group_domain_trait_wins_and_bad_domains_are_left_out() -> None:
    body = shape(build(minimal("group", groupId="c1", traits={"domain": "acme.io", "website": "x.org"})).requests[0])[3]
    assert body["identification"] == {"accountId": "c1", "domain": "acme.io"}
    body = shape(build(minimal("group", groupId="c1", traits={"website": "not a domain"})).requests[0])[3]
    assert body["identification"] == {"accountId": "c1"}


def test_group_without_group_id_is_rejected() -> None:
    built = build(minimal("group", userId="u1"))
    assert not built.requests and "groupId" in built.rejects[0].reason


# ---------------------------------------------------------------------------------------------
# page, screen, alias
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("event", [PAGE, SCREEN, minimal("page", userId="u1")])
def test_page_and_screen_are_skipped_by_default(event: dict[str, Any]) -> None:
    built = build(event)
    assert not built.requests and "page_events" in built.skips[0].reason


def test_page_full_as_event_when_enabled() -> None:
    assert [shape(r) for r in build(PAGE, page_events=True).requests] == [(
        "POST", f"{BASE}/track", HEADERS,
        {"identification": {"user": {"userId": "user-1"}, "account": {"accountId": "acct-42"}},
         "name": "Page Viewed", "triggeredAt": TS,
         "metadata": {"url": "https://shop.example.com/pricing?a=1", "path": "/pricing", "title": "Pricing",
                      "referrer": "https://example.org/", "name": "Pricing", "category": "Docs"}},
    )]


def test_screen_minimal_as_event_when_enabled() -> None:
    assert shape(build(minimal("screen", userId="u1"), page_events=True).requests[0])[3] == {
        "identification": {"user": {"userId": "u1"}}, "name": "Screen Viewed", "triggeredAt": TS, "metadata": {}}


@pytest.mark.parametrize("event", [minimal("alias", userId="u1", previousId="old"),
                                   {**minimal("alias", userId="u1", previousId="old"), "context": {"groupId": "c"}}])
def test_alias_is_skipped(event: dict[str, Any]) -> None:
    built = build(event)
    assert not built.requests and "merge" in built.skips[0].reason


def test_rate_limit_is_declared_for_the_engine() -> None:
    assert ADAPTER.max_requests_per_second == pytest.approx(5000 / 3600, rel=0.01)


# ---------------------------------------------------------------------------------------------
# classify (shared rule) on journy.io's answers, and the contract fake
# ---------------------------------------------------------------------------------------------


@pytest.fixture()
def fake():
    with FakeServer(make_app(KEY)) as server:
        yield server


def test_every_request_built_for_the_fixtures_is_accepted(fake: FakeServer) -> None:
    for page_events in (False, True):
        for request in build(*ALL, endpoint=fake.url, page_events=page_events).requests:
            response = send(request)
            assert response.status == 201, response.body
            assert ADAPTER.classify(request, response).verdict is Verdict.OK
            assert "X-RateLimit-Remaining" in response.headers
    app = fake.app
    assert app["users"]["user-1"]["plan"] == "pro"
    assert app["accounts"]["acct-42"]["name"] == "Acme Inc"
    assert ("acct-42", "user-1") in app["members"]
    assert [e["name"] for e in app["events"]].count("Signed Up") == 2
    assert any(e["name"] == "Page Viewed" for e in app["events"])


def test_the_fake_refuses_what_journy_refuses_with_its_error_bodies(fake: FakeServer) -> None:
    good = build(minimal("track", userId="u1", event="login"), endpoint=fake.url).requests[0]

    no_key = send(Request("POST", good.url, {"Content-Type": "application/json"}, good.body, (0,)))
    assert no_key.status == 401 and no_key.json()["meta"]["status"] == 401 and no_key.json()["message"]
    wrong = send(Request("POST", good.url, {**good.headers, "X-Api-Key": "nope"}, good.body, (0,)))
    assert wrong.status == 401

    nested = send(Request("POST", good.url, good.headers, orjson.dumps(
        {"identification": {"user": {"userId": "u1"}}, "name": "x", "metadata": {"a": {"b": 1}, "l": [1]}}), (0,)))
    assert nested.status == 400
    assert set(nested.json()["errors"]["fields"]) == {"metadata.a", "metadata.l"}
    nobody = send(Request("POST", good.url, good.headers, orjson.dumps({"identification": {}, "name": "x"}), (0,)))
    assert nobody.status == 400 and "identification" in nobody.json()["errors"]["fields"]
    bad_email = send(Request("POST", f"{fake.url}/users/upsert", good.headers,
                             orjson.dumps({"identification": {"email": "nope"}}), (0,)))
    assert bad_email.status == 400 and "identification.email" in bad_email.json()["errors"]["fields"]

    for response in (no_key, wrong, nested, nobody, bad_email):
        outcome = ADAPTER.classify(good, response)
        assert outcome.verdict is Verdict.PERMANENT and str(response.status) in outcome.reason


def test_the_fake_rate_limit_is_retried(fake: FakeServer) -> None:
    fake.app["limits"]["rate_limit"] = 1
    request = build(minimal("identify", userId="u1"), endpoint=fake.url).requests[0]
    assert send(request).status == 201
    throttled = send(request)
    assert throttled.status == 429 and throttled.headers["X-RateLimit-Remaining"] == "0"
    assert ADAPTER.classify(request, throttled).verdict is Verdict.RETRY
