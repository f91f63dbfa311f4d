"""Usertour adapter: golden requests for every call, renaming/limits, classify, and the fake."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from destinations import usertour
from destinations.base import Message, Request, Response, Verdict
from tests.fakes.base import FakeServer, send
from tests.fakes.usertour import make_app
from tests.fixtures.messages import ALL, GROUP, IDENTIFY, PAGE, SCREEN, TRACK

ADAPTER = usertour.ADAPTER
TOKEN = "utp_test_token"
BASE = "https://api.usertour.io/v2/projects/proj1/environments/env1"
HEADERS = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
TS = "2026-11-22T20:05:51.829Z"


def settings(**extra: Any) -> usertour.Settings:
    return ADAPTER.validate_settings({"api_token": TOKEN, "project_id": "proj1", "environment_id": "env1", **extra})


def build(*events: dict[str, Any], **extra: Any):
    return ADAPTER.build_requests([Message(e) for e in events], settings(**extra))


def shape(request: Request) -> tuple[str, str, dict[str, str], Any]:
    return request.method, request.url, dict(request.headers), orjson.loads(request.body or b"null")


def minimal(type_: str, **fields: Any) -> dict[str, Any]:
    return {"type": type_, "messageId": "m-1", "timestamp": TS, **fields}


# ---------------------------------------------------------------------------------------------
# identify
# ---------------------------------------------------------------------------------------------


def test_identify_minimal() -> None:
    built = build(minimal("identify", userId="u1"))
    assert [shape(r) for r in built.requests] == [("PUT", f"{BASE}/users/u1", HEADERS, {"attributes": {}})]
    assert built.requests[0].messages == (0,)
    assert not built.skips and not built.rejects


def test_identify_full_traits_flattened_and_keys_made_code_names() -> None:
    event = {**IDENTIFY, "userId": "user/1 a", "traits": {
        **IDENTIFY["traits"], "id": "user/1 a", "address": {"city": "Paris", "postalCode": "75001"},
        "plan-type": "pro", "1st_seen": "2026-01-01", "tags": ["a", "b"], "teams": [{"id": 1}],
        "x": 1, "nothing": None, "empty": {},
    }}
    built = build(event)
    assert [shape(r) for r in built.requests] == [(
        "PUT", f"{BASE}/users/user%2F1%20a", HEADERS,
        {"attributes": {
            "email": "ada@example.com", "firstName": "Ada", "lastName": "Lovelace", "plan": "pro",
            "logins": 7, "address_city": "Paris", "address_postalCode": "75001", "plan_type": "pro",
            "attr_1st_seen": "2026-01-01", "tags": ["a", "b"], "teams": '[{"id":1}]', "x_": 1,
            "nothing": None, "name": "Ada Lovelace", "signed_up_at": "2026-01-02T03:04:05Z",
        }},
    )]


def test_identify_falls_back_to_context_traits() -> None:
    event = minimal("identify", userId="u1", context={"traits": {"email": "a@b.co"}})
    assert shape(build(event).requests[0])[3] == {"attributes": {"email": "a@b.co"}}


def test_identify_without_user_id_is_skipped() -> None:
    built = build(minimal("identify", anonymousId="anon-1", traits={"email": "a@b.co"}))
    assert not built.requests
    assert built.skips[0].index == 0 and "userId" in built.skips[0].reason


# ---------------------------------------------------------------------------------------------
# track (+ B2B company, userOnly)
# ---------------------------------------------------------------------------------------------


def test_track_minimal() -> None:
    built = build(minimal("track", userId="u1", event="signup"))
    assert [shape(r) for r in built.requests] == [
        ("POST", f"{BASE}/events", HEADERS, {"userId": "u1", "name": "signup", "occurredAt": TS})
    ]


def test_track_full_goes_to_the_company_in_context_group_id() -> None:
    event = {**TRACK, "properties": {"plan": "pro", "trial": True, "seats": 3, "billing": {"cycle": "yearly"},
                                     "item ids": [1, 2], "price($)": 9.5}}
    assert [shape(r) for r in build(event).requests] == [(
        "POST", f"{BASE}/events", HEADERS,
        {"userId": "user-1", "name": "Signed_Up", "companyId": "acct-42",
         "attributes": {"plan": "pro", "trial": True, "seats": 3, "billing_cycle": "yearly",
                        "item_ids": [1, 2], "price": 9.5},
         "occurredAt": "2026-11-22T20:05:51.829Z"},
    )]


def test_track_user_only_leaves_the_company_out() -> None:
    event = {**TRACK, "integrations": {"Usertour": {"userOnly": True}}}
    body = shape(build(event).requests[0])[3]
    assert "companyId" not in body and body["userId"] == "user-1"


def test_track_timestamp_falls_back_to_original_timestamp_and_converts_offsets() -> None:
    event = minimal("track", userId="u1", event="x_done", timestamp=None, originalTimestamp="2026-05-01T12:00:00+02:00")
    assert shape(build(event).requests[0])[3]["occurredAt"] == "2026-05-01T10:00:00.000Z"


def test_track_without_user_id_is_skipped() -> None:
    built = build({**TRACK, "userId": None})
    assert not built.requests and "userId" in built.skips[0].reason


@pytest.mark.parametrize(("fields", "needle"), [
    ({"event": "!!!"}, "cannot be made a Usertour codeName"),
    ({"event": "e" * 101}, "cannot be made a Usertour codeName"),
    ({"event": ""}, "without an event name"),
    ({"userId": "u" * 201}, "at most 200"),
    ({"context": {"groupId": "c" * 201}}, "at most 200"),
    ({"properties": {"a-b": 1, "a_b": 2}}, "both become 'a_b'"),
    ({"properties": {"k" * 101: 1}}, "cannot be made a Usertour codeName"),
    ({"properties": {"blob": "x" * 110_000}}, "parses at most 102400"),
])
def test_track_the_api_would_refuse_is_rejected_with_a_reason(fields: dict[str, Any], needle: str) -> None:
    built = build({**minimal("track", userId="u1", event="ok_event"), **fields})
    assert not built.requests and not built.skips
    assert built.rejects[0].index == 0 and needle in built.rejects[0].reason


def test_event_name_not_starting_with_a_letter_gets_a_prefix() -> None:
    built = build(minimal("track", userId="u1", event="2FA enabled"))
    assert shape(built.requests[0])[3]["name"] == "event_2FA_enabled"


# ---------------------------------------------------------------------------------------------
# group: company + membership
# ---------------------------------------------------------------------------------------------


def test_group_minimal_without_user_writes_the_company_only() -> None:
    built = build(minimal("group", groupId="c1", anonymousId="anon-1"))
    assert [shape(r) for r in built.requests] == [("PUT", f"{BASE}/companies/c1", HEADERS, {"attributes": {}})]


def test_group_full_user_company_then_membership() -> None:
    event = {**GROUP, "traits": {**GROUP["traits"], "createdAt": "2020-01-01T00:00:00Z", "website": "https://acme.com"},
             "integrations": {"Usertour": {"membership": {"role": "admin", "seat type": "paid"}}}}
    built = build(event)
    assert [shape(r) for r in built.requests] == [
        ("PUT", f"{BASE}/users/user-1", HEADERS, {"attributes": {}}),
        ("PUT", f"{BASE}/companies/acct-42", HEADERS,
         {"attributes": {"name": "Acme Inc", "plan": "enterprise", "employees": 120,
                         "website": "https://acme.com", "signed_up_at": "2020-01-01T00:00:00Z"}}),
        ("PUT", f"{BASE}/companies/acct-42/memberships/user-1", HEADERS,
         {"attributes": {"role": "admin", "seat_type": "paid"}}),
    ]
    assert all(r.messages == (0,) for r in built.requests)


def test_group_without_group_id_is_rejected() -> None:
    built = build(minimal("group", userId="u1"))
    assert not built.requests and "groupId" in built.rejects[0].reason


# ---------------------------------------------------------------------------------------------
# page, screen, alias
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("event", [PAGE, SCREEN, minimal("page", userId="u1"), minimal("screen", userId="u1")])
def test_page_and_screen_are_skipped_by_default(event: dict[str, Any]) -> None:
    built = build(event)
    assert not built.requests and "no page-view API" in built.skips[0].reason


def test_page_full_as_event_when_enabled() -> None:
    assert [shape(r) for r in build(PAGE, page_events=True).requests] == [(
        "POST", f"{BASE}/events", HEADERS,
        {"userId": "user-1", "name": "segment_page_viewed", "companyId": "acct-42",
         "attributes": {"url": "https://shop.example.com/pricing?a=1", "path": "/pricing", "title": "Pricing",
                        "referrer": "https://example.org/", "name": "Pricing", "category": "Docs"},
         "occurredAt": TS},
    )]


def test_screen_minimal_as_event_when_enabled() -> None:
    assert [shape(r) for r in build(minimal("screen", userId="u1"), page_events=True).requests] == [
        ("POST", f"{BASE}/events", HEADERS, {"userId": "u1", "name": "segment_screen_viewed", "occurredAt": TS})
    ]


@pytest.mark.parametrize("event", [minimal("alias", userId="u1", previousId="old"),
                                   {**minimal("alias", userId="u1", previousId="old"), "context": {"groupId": "c"}}])
def test_alias_is_skipped(event: dict[str, Any]) -> None:
    built = build(event)
    assert not built.requests and "merge or re-key" in built.skips[0].reason


def test_endpoint_override_for_self_hosted() -> None:
    built = build(minimal("identify", userId="u1"), endpoint="https://usertour.internal:8443/")
    assert built.requests[0].url == "https://usertour.internal:8443/v2/projects/proj1/environments/env1/users/u1"


def test_settings_need_project_and_environment() -> None:
    with pytest.raises(ValidationError, match="environment_id"):
        ADAPTER.validate_settings({"api_token": TOKEN, "project_id": "p"})
    with pytest.raises(ValidationError, match="project_id"):
        ADAPTER.validate_settings({"api_token": TOKEN, "environment_id": "e"})


# ---------------------------------------------------------------------------------------------
# classify: Usertour's error envelope
# ---------------------------------------------------------------------------------------------


def _envelope(code: str, message: str, **extra: Any) -> bytes:
    return orjson.dumps({"error": {"code": code, "message": message, **extra, "doc_url": "https://docs.usertour.io"}})


EVENT_REQ = Request("POST", f"{BASE}/events", {}, b"{}", (0,))
MEMBERSHIP_REQ = Request("PUT", f"{BASE}/companies/c1/memberships/u1", {}, b"{}", (3,))


def test_classify_validation_error_is_permanent_with_issues_in_the_reason() -> None:
    body = _envelope("E1017", "name: bad", issues=[{"rule": "schema", "message": "bad", "path": "name"}])
    outcome = ADAPTER.classify(EVENT_REQ, Response(400, {}, body))
    assert outcome.verdict is Verdict.PERMANENT
    assert outcome.reason == "HTTP 400 E1017: name: bad (name: bad)"


@pytest.mark.parametrize(("status", "code"), [(401, "E1010"), (401, "E1020"), (403, "E1000"), (403, "E1029")])
def test_classify_auth_errors_are_permanent(status: int, code: str) -> None:
    outcome = ADAPTER.classify(EVENT_REQ, Response(status, {}, _envelope(code, "no")))
    assert outcome.verdict is Verdict.PERMANENT and code in outcome.reason


def test_classify_rate_limit_retries_after_the_header() -> None:
    outcome = ADAPTER.classify(EVENT_REQ, Response(429, {"Retry-After": "7"}, _envelope("E1013", "Too many requests")))
    assert outcome.verdict is Verdict.RETRY and outcome.retry_after == 7


def test_classify_membership_not_found_is_retried_other_404_not() -> None:
    assert ADAPTER.classify(MEMBERSHIP_REQ,
                            Response(404, {}, _envelope("E1002", "Company not found"))).verdict is Verdict.RETRY
    assert ADAPTER.classify(EVENT_REQ,
                            Response(404, {}, _envelope("E1033", "Unknown API route"))).verdict is Verdict.PERMANENT


def test_classify_success_and_non_json_errors() -> None:
    assert ADAPTER.classify(EVENT_REQ, Response(201, {}, b"{}")).verdict is Verdict.OK
    outcome = ADAPTER.classify(EVENT_REQ, Response(502, {}, b"<html>bad gateway</html>"))
    assert outcome.verdict is Verdict.RETRY and "bad gateway" in outcome.reason


# ---------------------------------------------------------------------------------------------
# against the contract fake
# ---------------------------------------------------------------------------------------------


@pytest.fixture()
def fake():
    with FakeServer(make_app(TOKEN, "proj1", "env1")) as server:
        yield server


def test_every_request_built_for_the_fixtures_is_accepted(fake: FakeServer) -> None:
    for page_events in (False, True):
        built = build(*ALL, endpoint=fake.url, page_events=page_events)
        for request in built.requests:
            response = send(request)
            assert ADAPTER.classify(request, response).verdict is Verdict.OK, (request, response.body)
    app = fake.app
    assert app["users"]["user-1"]["email"] == "ada@example.com"
    assert app["companies"]["acct-42"] == {"name": "Acme Inc", "plan": "enterprise", "employees": 120}
    assert ("acct-42", "user-1") in app["memberships"]
    names = [e["codeName"] for e in app["events"]]
    assert names.count("Signed_Up") == 2 and "Order_Completed" in names and "segment_page_viewed" in names
    # the first Signed_Up came before the group call created the company: Usertour drops the link
    assert [e["companyId"] for e in app["events"] if e["codeName"] == "Signed_Up"] == [None, "acct-42"]


def test_the_fake_refuses_what_usertour_refuses_with_its_error_bodies(fake: FakeServer) -> None:
    good = build(minimal("track", userId="u1", event="ok_event"), endpoint=fake.url).requests[0]

    no_auth = send(Request(good.method, good.url, {"Content-Type": "application/json"}, good.body, (0,)))
    assert no_auth.status == 401 and no_auth.json()["error"]["code"] == "E1010"
    bad_key = send(Request(good.method, good.url, {**good.headers, "Authorization": "Bearer utp_wrong"}, good.body,
                           (0,)))
    assert bad_key.status == 403 and bad_key.json()["error"]["code"] == "E1000"
    other_env = send(Request(good.method, good.url.replace("/env1/", "/env2/"), good.headers, good.body, (0,)))
    assert other_env.status == 403 and other_env.json()["error"]["code"] == "E1029"

    bad_key_name = send(Request(good.method, good.url, good.headers,
                                orjson.dumps({"userId": "u1", "name": "ok_event", "attributes": {"a.b": 1}}), (0,)))
    error = bad_key_name.json()["error"]
    assert bad_key_name.status == 400 and error["code"] == "E1017" and error["issues"][0]["path"] == "attributes.a.b"
    nested = send(Request(good.method, good.url, good.headers,
                          orjson.dumps({"userId": "u1", "name": "ok_event", "attributes": {"obj": {"x": 1}}}), (0,)))
    assert nested.status == 400
    built_in = send(Request(good.method, good.url, good.headers,
                            orjson.dumps({"userId": "u1", "name": "flow_completed"}), (0,)))
    assert built_in.status == 400
    extra_key = send(Request("PUT", f"{fake.url}/v2/projects/proj1/environments/env1/users/u1", good.headers,
                             orjson.dumps({"attributes": {}, "traits": {}}), (0,)))
    assert extra_key.status == 400

    for response in (no_auth, bad_key, other_env, bad_key_name, built_in):
        assert ADAPTER.classify(good, response).verdict is Verdict.PERMANENT

    membership = build(minimal("group", userId="u9", groupId="c9"), endpoint=fake.url).requests[2]
    early = send(membership)  # before its user and company writes
    assert early.status == 404 and early.json()["error"]["code"] == "E1002"
    assert ADAPTER.classify(membership, early).verdict is Verdict.RETRY


def test_the_fake_rate_limit_is_retried_after_its_header(fake: FakeServer) -> None:
    fake.app["limits"]["rate_limit"] = 1
    request = build(minimal("identify", userId="u1"), endpoint=fake.url).requests[0]
    assert send(request).status == 200
    throttled = send(request)
    assert throttled.status == 429 and throttled.json()["error"]["code"] == "E1013"
    outcome = ADAPTER.classify(request, throttled)
    assert outcome.verdict is Verdict.RETRY and outcome.retry_after == 7


@pytest.mark.parametrize("name", ["page_viewed", "flow_started", "checklist completed"])
def test_a_track_named_like_a_built_in_usertour_event_is_rejected(name):
    built = build(minimal("track", userId="u1", event=name))
    assert built.requests == []
    assert [r.index for r in built.rejects] == [0] and "built-in Usertour event" in built.rejects[0].reason


def test_page_events_use_names_the_events_api_accepts():
    fake_app = make_app(TOKEN, "proj1", "env1")
    with FakeServer(fake_app) as fake:
        for event in (minimal("page", userId="u1", name="Home"), minimal("screen", userId="u1", name="Feed")):
            [req] = build(event, endpoint=fake.url, page_events=True).requests
            assert send(req).status in (200, 201)
        # the old name is what the API refuses
        [req] = build(minimal("page", userId="u1", name="Home"), endpoint=fake.url, page_events=True).requests
        body = orjson.loads(req.body)
        body["name"] = "page_viewed"
        old = type(req)(req.method, req.url, req.headers, orjson.dumps(body), req.messages)
        assert send(old).status == 400
