"""PostHog adapter: golden requests, identities, groups, limits, classification, and every built
request checked against the capture contract fake."""

from __future__ import annotations

import copy
import urllib.error
import urllib.request
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from destinations import posthog, semantic
from destinations.base import Message, Request, Response, Verdict
from tests.fakes import posthog as fake_posthog
from tests.fakes.base import FakeServer
from tests.fixtures import messages as fx

URL = "https://us.i.posthog.com/batch/"
HEADERS = {"Content-Type": "application/json"}
KEY = "phc_example_project_key_123"
TS = "2026-11-22T20:05:51.829Z"
ANON = "5b1a3d4e-8f2c-4a7b-9e10-1234567890ab"
# What every fixture message's context (BASE_CONTEXT) contributes.
CTX = {
    "$current_url": "https://shop.example.com/pricing?a=1", "$host": "shop.example.com", "$pathname": "/pricing",
    "$referrer": "https://example.org/", "$referring_domain": "example.org", "$ip": "203.0.113.7",
    "$raw_user_agent": "Mozilla/5.0 (X11; Linux x86_64) Chrome/156.0", "$lib": "analytics.js",
    "$lib_version": "next-1.84.3", "$browser_language": "en-US",
    "utm_campaign": "spring", "utm_source": "newsletter", "utm_medium": "email",
    "$groups": {"company": "acct-42"},
}


def settings(**extra: Any) -> posthog.Settings:
    return posthog.ADAPTER.validate_settings({**posthog.Settings.example, **extra})


def build(*events: dict[str, Any], **extra: Any):
    return posthog.build_requests([Message(e) for e in events], settings(**extra))


def only_event(event: dict[str, Any], **extra: Any) -> dict[str, Any]:
    built = build(event, **extra)
    assert not built.skips and not built.rejects, (built.skips, built.rejects)
    [req] = built.requests
    assert (req.method, req.url, dict(req.headers), req.messages) == ("POST", URL, HEADERS, (0,))
    body = orjson.loads(req.body)
    assert list(body) == ["api_key", "batch"] and body["api_key"] == KEY
    [out] = body["batch"]
    return out


def minimal(type_: str, **fields: Any) -> dict[str, Any]:
    return {"type": type_, "messageId": "a1b2c3d4-0000-4000-8000-0000000000ff", "anonymousId": "anon-1",
            "timestamp": TS, **fields}


MIN_UUID = "a1b2c3d4-0000-4000-8000-0000000000ff"


# ---------------------------------------------------------------------------------------------
# the six calls, minimal and full
# ---------------------------------------------------------------------------------------------


def test_track_minimal() -> None:
    assert only_event(minimal("track", event="Clicked")) == {
        "event": "Clicked", "distinct_id": "anon-1", "properties": {}, "timestamp": TS, "uuid": MIN_UUID}


def test_track_full() -> None:
    assert only_event(fx.TRACK) == {
        "event": "Signed Up", "distinct_id": "user-1",
        "properties": {"plan": "pro", "trial": True, "seats": 3, **CTX},
        "timestamp": TS, "uuid": "a1b2c3d4-0000-4000-8000-000000000002"}


def test_page_minimal() -> None:
    assert only_event(minimal("page", properties={"url": "https://a.example/x?y=1"})) == {
        "event": "$pageview", "distinct_id": "anon-1",
        "properties": {"url": "https://a.example/x?y=1", "$current_url": "https://a.example/x?y=1",
                       "$host": "a.example"},
        "timestamp": TS, "uuid": MIN_UUID}


def test_page_full() -> None:
    assert only_event(fx.PAGE) == {
        "event": "$pageview", "distinct_id": "user-1",
        "properties": {"url": "https://shop.example.com/pricing?a=1", "path": "/pricing", "title": "Pricing",
                       "referrer": "https://example.org/", **CTX, "name": "Pricing", "category": "Docs"},
        "timestamp": TS, "uuid": "a1b2c3d4-0000-4000-8000-000000000003"}


def test_screen_minimal() -> None:
    assert only_event(minimal("screen", name="Home")) == {
        "event": "$screen", "distinct_id": "anon-1", "properties": {"$screen_name": "Home"},
        "timestamp": TS, "uuid": MIN_UUID}


def test_screen_full_with_mobile_context() -> None:
    event = copy.deepcopy(fx.SCREEN)
    event["context"] = {"ip": "198.51.100.1", "library": {"name": "analytics-ios", "version": "4.1.8"},
                        "device": {"id": "dev-1", "manufacturer": "Apple", "model": "iPhone15,2", "type": "ios"},
                        "os": {"name": "iOS", "version": "17.2"},
                        "app": {"name": "Shop", "version": "2.3", "build": "230", "namespace": "com.shop"},
                        "screen": {"width": 1179, "height": 2556, "density": 3}, "timezone": "Europe/Paris",
                        "locale": "fr-FR"}
    assert only_event(event) == {
        "event": "$screen", "distinct_id": "user-1",
        "properties": {"variant": "dark", "$ip": "198.51.100.1", "$lib": "analytics-ios", "$lib_version": "4.1.8",
                       "$device_id": "dev-1", "$device_manufacturer": "Apple", "$device_model": "iPhone15,2",
                       "$device_type": "ios", "$os": "iOS", "$os_version": "17.2", "$app_name": "Shop",
                       "$app_version": "2.3", "$app_build": "230", "$app_namespace": "com.shop",
                       "$screen_width": 1179, "$screen_height": 2556, "$screen_density": 3,
                       "$timezone": "Europe/Paris", "$browser_language": "fr-FR", "$screen_name": "Home"},
        "timestamp": TS, "uuid": "a1b2c3d4-0000-4000-8000-000000000004"}


def test_identify_minimal_anonymous_sets_traits_without_linking() -> None:
    assert only_event(minimal("identify", traits={"plan": "free"})) == {
        "event": "$identify", "distinct_id": "anon-1", "properties": {"$set": {"plan": "free"}},
        "timestamp": TS, "uuid": MIN_UUID}


def test_identify_full_sets_traits_and_links_the_anonymous_id() -> None:
    assert only_event(fx.IDENTIFY, set_once_traits=["created_at"]) == {
        "event": "$identify", "distinct_id": "user-1",
        "properties": {**CTX, "$anon_distinct_id": ANON,
                       "$set": {"email": "ada@example.com", "firstName": "Ada", "lastName": "Lovelace", "plan": "pro",
                                "logins": 7, "name": "Ada Lovelace"},
                       "$set_once": {"createdAt": "2026-01-02T03:04:05Z"}},
        "timestamp": TS, "uuid": "a1b2c3d4-0000-4000-8000-000000000001"}


def test_identify_takes_context_traits_when_traits_are_empty() -> None:
    event = minimal("identify", userId="u-1", context={"traits": {"email": "a@b.co"}})
    assert only_event(event)["properties"] == {"$anon_distinct_id": "anon-1", "$set": {"email": "a@b.co"}}


def test_group_minimal() -> None:
    assert only_event(minimal("group", groupId="g-1")) == {
        "event": "$groupidentify", "distinct_id": "anon-1",
        "properties": {"$groups": {"company": "g-1"}, "$group_type": "company", "$group_key": "g-1", "$group_set": {}},
        "timestamp": TS, "uuid": MIN_UUID}


def test_group_full_with_a_custom_group_type() -> None:
    assert only_event(fx.GROUP, group_type="organization") == {
        "event": "$groupidentify", "distinct_id": "user-1",
        "properties": {**CTX, "$groups": {"organization": "acct-42"}, "$group_type": "organization",
                       "$group_key": "acct-42",
                       "$group_set": {"name": "Acme Inc", "plan": "enterprise", "employees": 120}},
        "timestamp": TS, "uuid": "a1b2c3d4-0000-4000-8000-000000000005"}


def test_alias_minimal() -> None:
    assert only_event(minimal("alias", userId="new-1", previousId="old-1")) == {
        "event": "$create_alias", "distinct_id": "new-1", "properties": {"alias": "old-1"},
        "timestamp": TS, "uuid": MIN_UUID}


def test_alias_full() -> None:
    assert only_event(fx.ALIAS) == {
        "event": "$create_alias", "distinct_id": "user-1", "properties": {**CTX, "alias": "old-id-9"},
        "timestamp": TS, "uuid": "a1b2c3d4-0000-4000-8000-000000000006"}


def test_alias_without_user_id_is_rejected() -> None:
    built = build(minimal("alias", previousId="old"))
    assert built.requests == [] and "userId and previousId" in built.rejects[0].reason


# ---------------------------------------------------------------------------------------------
# ecommerce, revenue (passed through as properties)
# ---------------------------------------------------------------------------------------------


def test_order_completed_with_several_products_passes_through() -> None:
    out = only_event(fx.ORDER_COMPLETED)
    assert out == {"event": "Order Completed", "distinct_id": "user-1",
                   "properties": {**fx.ORDER_COMPLETED["properties"], **CTX},
                   "timestamp": TS, "uuid": "a1b2c3d4-0000-4000-8000-000000000007"}
    assert [p["product_id"] for p in out["properties"]["products"]] == ["p-1", "p-2"]


def test_refund() -> None:
    assert only_event(fx.ORDER_REFUNDED) == {
        "event": "Order Refunded", "distinct_id": "user-1",
        "properties": {"order_id": "ord-1001", "total": 27.5, "currency": "EUR", **CTX},
        "timestamp": TS, "uuid": "a1b2c3d4-0000-4000-8000-000000000008"}


def test_revenue_without_products() -> None:
    assert only_event(fx.REVENUE_NO_PRODUCTS)["properties"] == {"revenue": 99.0, "currency": "USD", "plan": "pro",
                                                                **CTX}


# ---------------------------------------------------------------------------------------------
# identities, uuid, groups, person profiles
# ---------------------------------------------------------------------------------------------


def test_uuid_is_the_message_id_when_it_is_a_uuid_else_a_stable_uuid5() -> None:
    out = only_event(fx.ANONYMOUS_TRACK)
    assert out["distinct_id"] == ANON
    derived = semantic.message_uuid(fx.ANONYMOUS_TRACK["messageId"])
    assert out["uuid"] == derived and semantic.is_uuid(derived) and derived[14] == "5"
    assert only_event(fx.ANONYMOUS_TRACK)["uuid"] == derived  # a resend carries the same uuid
    upper = only_event(minimal("track", event="E", messageId="A1B2C3D4-0000-4000-8000-0000000000FF"))
    assert upper["uuid"] == MIN_UUID
    assert "uuid" not in only_event({"type": "track", "event": "E", "userId": "u"})


def test_call_properties_win_over_context_properties() -> None:
    event = minimal("track", event="E", context={"groupId": "g-1", "page": {"url": "https://a.example/"}},
                    properties={"$groups": {"team": "t-1"}, "$current_url": "https://mine.example/"})
    assert only_event(event)["properties"] == {"$groups": {"team": "t-1"}, "$current_url": "https://mine.example/",
                                               "$host": "a.example"}


def test_identified_only_marks_anonymous_events_personless() -> None:
    anon = only_event(minimal("track", event="E"), person_profiles="identified_only")
    assert anon["properties"] == {"$process_person_profile": False}
    known = only_event(minimal("track", event="E", userId="u-1"), person_profiles="identified_only")
    assert known["properties"] == {}
    ident = only_event(minimal("identify", traits={"a": 1}), person_profiles="identified_only")
    assert "$process_person_profile" not in ident["properties"]


@pytest.mark.parametrize("event,reason", [
    ({"type": "track", "event": "E", "messageId": "m"}, "distinct_id"),
    (minimal("track", event="  "), "event name"),
    (minimal("track"), "event name"),
    (minimal("group"), "groupId"),
    (minimal("track", event="E", userId="u" * 201), "200"),
    (minimal("track", event="E", properties={"blob": "x" * 1_000_000}), "1 MB"),
])
def test_events_posthog_would_refuse_are_rejected(event, reason) -> None:
    built = build(event)
    assert built.requests == [] and len(built.rejects) == 1 and reason in built.rejects[0].reason


# ---------------------------------------------------------------------------------------------
# batching, endpoints, settings
# ---------------------------------------------------------------------------------------------


def test_one_batch_request_for_many_events_and_10mb_split() -> None:
    small = [minimal("track", event="E", messageId=f"m{n}") for n in range(300)]
    built = build(*small)
    assert len(built.requests) == 1 and built.requests[0].messages == tuple(range(300))
    big = [minimal("track", event="E", messageId=f"m{n}", properties={"blob": "x" * 800_000}) for n in range(30)]
    built = build(*big)
    assert len(built.requests) == 3
    assert [len(r.messages) for r in built.requests] == [12, 12, 6]
    assert all(len(r.body) <= 10_000_000 for r in built.requests)
    assert [i for r in built.requests for i in r.messages] == list(range(30))


def test_endpoints_regions_and_self_hosted() -> None:
    event = minimal("track", event="E")
    assert build(event, region="eu").requests[0].url == "https://eu.i.posthog.com/batch/"
    assert build(event,
                 endpoint="https://posthog.internal.example/").requests[0].url == "https://posthog.internal.example/batch/"
    assert build(event, endpoint="http://127.0.0.1:8000/ph").requests[0].url == "http://127.0.0.1:8000/ph/batch/"


def test_historical_migration_flag() -> None:
    body = orjson.loads(build(minimal("track", event="E"), historical_migration=True).requests[0].body)
    assert list(body) == ["api_key", "historical_migration", "batch"] and body["historical_migration"] is True


@pytest.mark.parametrize("key", ["phx_personal_key", "", "   ", "k" * 65, "clé"])
def test_api_key_must_be_a_project_key(key: str) -> None:
    with pytest.raises(ValidationError) as err:
        settings(api_key=key)
    if key.strip():
        assert key not in str(err.value)


def test_api_key_whitespace_is_trimmed_and_not_in_reprs() -> None:
    s = settings(api_key="  phc_abc\n")
    req = posthog.build_requests([Message(minimal("track", event="E"))], s).requests[0]
    assert orjson.loads(req.body)["api_key"] == "phc_abc"
    assert "phc_abc" not in repr(s) + repr(req)


# ---------------------------------------------------------------------------------------------
# classify (capture's real answers)
# ---------------------------------------------------------------------------------------------

REQ = Request("POST", URL, HEADERS, b"{}", (0, 1))


@pytest.mark.parametrize("status,body,verdict", [
    (200, b'{"status":"Ok"}', Verdict.OK),
    (200, b'{"status":1}', Verdict.OK),
    (400, b"event submitted without a distinct_id", Verdict.PERMANENT),
    (400, b"failed to parse request: UUID parsing failed", Verdict.PERMANENT),
    (400, b"maximum event size exceeded", Verdict.PERMANENT),
    (401, b"API key is not valid: personal_api_key", Verdict.PERMANENT),
    (429, b"rate limited", Verdict.RETRY),
    (503, b"transient error, please retry", Verdict.RETRY),
])
def test_classify_capture_answers(status: int, body: bytes, verdict: Verdict) -> None:
    out = posthog.classify(REQ, Response(status, {}, body))
    assert out.verdict is verdict
    if verdict is not Verdict.OK:
        assert body.decode() in out.reason


def test_quota_limited_events_are_not_a_silent_success() -> None:
    out = posthog.classify(REQ, Response(200, {}, b'{"status":"Ok","quota_limited":["events"]}'))
    assert out.verdict is Verdict.PERMANENT and "quota" in out.reason
    assert posthog.classify(REQ,
                            Response(200, {}, b'{"status":"Ok","quota_limited":["recordings"]}')).verdict is Verdict.OK


# ---------------------------------------------------------------------------------------------
# against the contract fake
# ---------------------------------------------------------------------------------------------


def _post(url: str, body: bytes) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, headers=HEADERS, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_every_built_request_is_accepted_by_the_fake() -> None:
    events = fx.ALL + [minimal("track", event="Order Completed", messageId="not-a-uuid",
                               properties={"products": [{"product_id": "p"}], "revenue": 3})]
    with FakeServer(fake_posthog.make_app()) as fake:
        built = build(*events, endpoint=fake.url, person_profiles="identified_only")
        assert not built.rejects and not built.skips
        for req in built.requests:
            status, payload = _post(req.url, req.body)
            assert status == 200 and orjson.loads(payload) == {"status": "Ok"}
            assert posthog.classify(req, Response(status, {}, payload)).verdict is Verdict.OK
        accepted = fake.app["accepted"]
        assert [e["event"] for e in accepted] == [
            "$identify", "Signed Up", "$pageview", "$screen", "$groupidentify", "$create_alias",
            "Order Completed", "Order Refunded", "Upgraded Plan", "Viewed Docs", "Order Completed"]
        assert fake.app["dropped"] == []


@pytest.mark.parametrize("body,status,text", [
    (b"{not json", 400, "failed to parse request"),
    ({"api_key": KEY, "batch": []}, 400, "request holds no event"),
    ({"api_key": KEY, "batch": [{"event": "", "distinct_id": "u"}]}, 400, "event submitted with an empty event name"),
    ({"api_key": KEY, "batch": [{"event": "e"}]}, 400, "event submitted without a distinct_id"),
    ({"api_key": KEY, "batch": [{"event": "e", "distinct_id": ""}]}, 400, "event submitted without a distinct_id"),
    ({"api_key": KEY, "batch": [{"distinct_id": "u"}]}, 400, "failed to parse request"),
    ({"api_key": KEY, "batch": [{"event": "e", "distinct_id": "u", "uuid": "ajs-1"}]}, 400, "failed to parse request"),
    ({"batch": [{"event": "e", "distinct_id": "u"}]}, 401, "event submitted without an api_key"),
    ({"api_key": "phx_personal", "batch": [{"event": "e", "distinct_id": "u"}]}, 401,
     "API key is not valid: personal_api_key"),
    ({"api_key": "", "batch": [{"event": "e", "distinct_id": "u"}]}, 401, "API key is not valid: empty"),
    ({"api_key": KEY, "batch": [{"event": "e", "distinct_id": "u", "properties": {"x": "y" * 1_100_000}}]},
     400, "maximum event size exceeded"),
])
def test_the_fake_refuses_invalid_requests_with_captures_error_bodies(body, status: int, text: str) -> None:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    with FakeServer(fake_posthog.make_app()) as fake:
        got_status, payload = _post(fake.url + "/batch/", raw)
        assert got_status == status and text in payload.decode()
        assert fake.app["accepted"] == []
        req = Request("POST", fake.url + "/batch/", HEADERS, raw, (0,))
        assert posthog.classify(req, Response(got_status, {}, payload)).verdict is Verdict.PERMANENT


def test_the_fake_takes_properties_distinct_id_and_drops_unknown_keys_with_200() -> None:
    with FakeServer(fake_posthog.make_app()) as fake:
        ok = {"api_key": KEY, "batch": [{"event": "e", "properties": {"distinct_id": "u"}}]}
        assert _post(fake.url + "/batch/", orjson.dumps(ok))[0] == 200
        other = {"api_key": "phc_someone_else", "batch": [{"event": "e", "distinct_id": "u"}]}
        assert _post(fake.url + "/batch/", orjson.dumps(other))[0] == 200
        assert len(fake.app["accepted"]) == 1 and len(fake.app["dropped"]) == 1


def test_the_fake_cuts_long_distinct_ids_like_capture_and_the_adapter_never_sends_one() -> None:
    long_id = "u" * 230
    with FakeServer(fake_posthog.make_app()) as fake:
        body = orjson.dumps({"api_key": KEY, "batch": [{"event": "e", "distinct_id": long_id}]})
        assert _post(fake.url + "/batch/", body)[0] == 200  # capture says nothing...
        assert fake.app["accepted"][0]["distinct_id"] == "u" * 200  # ...and keeps 200 characters
        assert fake.app["truncated"] == [long_id]

        fake.app["truncated"].clear()
        built = build(minimal("track", event="E", userId=long_id), minimal("track", event="E", messageId="m2",
                                                                            userId="u" * 200), endpoint=fake.url)
        assert [r.index for r in built.rejects] == [0]
        for req in built.requests:
            assert _post(req.url, req.body)[0] == 200
        assert fake.app["truncated"] == []
        assert fake.app["accepted"][-1]["distinct_id"] == "u" * 200
