"""Mixpanel adapter: golden requests, skips/rejects, batching, classification, and the contract fake."""

from __future__ import annotations

import base64
import copy
from typing import Any

import orjson
import pytest

from destinations import mixpanel
from destinations.base import Message, Request, Response, Verdict
from tests.fakes.base import FakeServer
from tests.fakes.base import send as send_as_is
from tests.fakes.mixpanel import make_app
from tests.fixtures import messages as fx

TOKEN = "tok"
BASIC_TOKEN = "Basic " + base64.b64encode(b"tok:").decode()
IMPORT = "https://api.mixpanel.com/import?strict=1"
ENGAGE = "https://api.mixpanel.com/engage?verbose=1"
GROUPS = "https://api.mixpanel.com/groups?verbose=1"
IMPORT_HEADERS = {"Content-Type": "application/json", "Authorization": BASIC_TOKEN}
PLAIN_HEADERS = {"Content-Type": "application/json"}
T = 1795377951829  # 2026-11-22T20:05:51.829Z


def fixture_clock() -> float:
    return T / 1000 + 60  # the fake's "now": a minute after the fixtures happened
ANON = "5b1a3d4e-8f2c-4a7b-9e10-1234567890ab"

# what BASE_CONTEXT becomes on every event
CTX = {
    "ip": "203.0.113.7",
    "$current_url": "https://shop.example.com/pricing?a=1",
    "$referrer": "https://example.org/",
    "mp_lib": "analytics.js",
    "$lib_version": "next-1.84.3",
    "utm_campaign": "spring",
    "utm_source": "newsletter",
    "utm_medium": "email",
    "$group_id": "acct-42",
}


def settings(**kw: Any) -> mixpanel.Settings:
    return mixpanel.ADAPTER.validate_settings({"project_token": TOKEN, **kw})


def build(events: list[dict[str, Any]], **kw: Any):
    return mixpanel.build_requests([Message(e) for e in events], settings(**kw))


def shape(req: Request) -> tuple[str, str, dict[str, str], Any, tuple[int, ...]]:
    return req.method, req.url, dict(req.headers), orjson.loads(req.body or b"null"), req.messages


def minimal(type_: str, **fields: Any) -> dict[str, Any]:
    return {"type": type_, "messageId": "m-1", "userId": "u-1", "timestamp": "2026-11-22T20:05:51.829Z", **fields}


# ---------------------------------------------------------------------------------------------
# golden: track, page, screen
# ---------------------------------------------------------------------------------------------


def test_track_minimal() -> None:
    built = build([minimal("track", event="Clicked")])
    assert not built.skips and not built.rejects
    assert [shape(r) for r in built.requests] == [(
        "POST", IMPORT, IMPORT_HEADERS,
        [{"event": "Clicked", "properties": {
            "ip": 0, "time": T, "distinct_id": "u-1", "$insert_id": "m-1", "token": TOKEN, "$user_id": "u-1"}}],
        (0,),
    )]


def test_track_full_simplified_id_merge() -> None:
    built = build([fx.TRACK])
    assert [shape(r) for r in built.requests] == [(
        "POST", IMPORT, IMPORT_HEADERS,
        [{"event": "Signed Up", "properties": {
            **CTX, "plan": "pro", "trial": True, "seats": 3,
            "time": T, "distinct_id": "user-1", "$insert_id": "a1b2c3d4-0000-4000-8000-000000000002",
            "token": TOKEN, "$device_id": ANON, "$user_id": "user-1"}}],
        (0,),
    )]


def test_track_original_id_merge_and_full_context() -> None:
    event = copy.deepcopy(fx.TRACK)
    event["context"].update({
        "os": {"name": "iOS", "version": "18.1"}, "device": {"manufacturer": "Apple", "model": "iPhone16,1"},
        "app": {"version": "3.2.1", "build": "321"}, "screen": {"width": 390, "height": 844},
    })
    [req] = build([event], id_merge="original").requests
    assert orjson.loads(req.body)[0]["properties"] == {
        **CTX, "$os": "iOS", "$os_version": "18.1", "$manufacturer": "Apple", "$model": "iPhone16,1",
        "$app_version_string": "3.2.1", "$app_build_number": "321", "$screen_width": 390, "$screen_height": 844,
        "plan": "pro", "trial": True, "seats": 3,
        "time": T, "distinct_id": "user-1", "$insert_id": "a1b2c3d4-0000-4000-8000-000000000002", "token": TOKEN,
    }
    # keys are ordered as built: context, then properties, then Mixpanel's reserved fields
    assert list(orjson.loads(req.body)[0]["properties"])[-1] == "token"


def test_anonymous_track_gets_device_distinct_id_and_hashed_insert_id() -> None:
    # ajs-next-<ts>-<uuid> is 59 chars: too long for $insert_id, so a digest of it is sent
    [req] = build([fx.ANONYMOUS_TRACK]).requests
    props = orjson.loads(req.body)[0]["properties"]
    assert props["distinct_id"] == f"$device:{ANON}"
    assert props["$device_id"] == ANON and "$user_id" not in props
    assert props["$insert_id"] == "806d1644-1c32-d7e2-fb4e-c2876e439406"  # sha256(messageId)[:32], UUID-shaped
    [req2] = build([fx.ANONYMOUS_TRACK], id_merge="original").requests
    assert orjson.loads(req2.body)[0]["properties"]["distinct_id"] == ANON


@pytest.mark.parametrize("mid", ["null", "a" * 37, "has space", "ünïcode", "msg_with_underscore"])
def test_invalid_message_ids_become_valid_insert_ids(mid: str) -> None:
    iid = mixpanel.insert_id({"messageId": mid})
    assert len(iid) == 36 and all(c in "0123456789abcdef-" for c in iid)
    assert iid == mixpanel.insert_id({"messageId": mid})  # deterministic: retries deduplicate


def test_page_minimal_and_full() -> None:
    [req] = build([minimal("page")]).requests
    assert shape(req) == ("POST", IMPORT, IMPORT_HEADERS, [{"event": "Loaded a Page", "properties": {
        "ip": 0, "time": T, "distinct_id": "u-1", "$insert_id": "m-1", "token": TOKEN, "$user_id": "u-1"}}], (0,))
    [req] = build([fx.PAGE], page_event="Viewed Page").requests
    assert orjson.loads(req.body) == [{"event": "Viewed Page", "properties": {
        **CTX, "name": "Pricing", "category": "Docs", "url": "https://shop.example.com/pricing?a=1",
        "path": "/pricing", "title": "Pricing", "referrer": "https://example.org/",
        "time": T, "distinct_id": "user-1", "$insert_id": "a1b2c3d4-0000-4000-8000-000000000003",
        "token": TOKEN, "$device_id": ANON, "$user_id": "user-1"}}]


def test_screen_minimal_and_full() -> None:
    [req] = build([minimal("screen", name="Home")]).requests
    assert orjson.loads(req.body) == [{"event": "Loaded a Screen", "properties": {
        "ip": 0, "name": "Home", "time": T, "distinct_id": "u-1", "$insert_id": "m-1", "token": TOKEN,
        "$user_id": "u-1"}}]
    [req] = build([fx.SCREEN]).requests
    assert orjson.loads(req.body) == [{"event": "Loaded a Screen", "properties": {
        **CTX, "name": "Home", "variant": "dark",
        "time": T, "distinct_id": "user-1", "$insert_id": "a1b2c3d4-0000-4000-8000-000000000004",
        "token": TOKEN, "$device_id": ANON, "$user_id": "user-1"}}]


# ---------------------------------------------------------------------------------------------
# golden: identify, group, alias
# ---------------------------------------------------------------------------------------------


def test_identify_minimal() -> None:
    [req] = build([minimal("identify", traits={"email": "a@b.co"})]).requests
    assert shape(req) == ("POST", ENGAGE, PLAIN_HEADERS, [{
        "$token": TOKEN, "$distinct_id": "u-1", "$ip": 0, "$time": T, "$set": {"$email": "a@b.co"}}], (0,))


def test_identify_full_renames_reserved_traits_and_links_the_anonymous_id() -> None:
    event = copy.deepcopy(fx.IDENTIFY)
    event["traits"].update({"phone": "+44 20 1234", "avatar": "https://x/a.png", "username": "ada",
                            "address": {"city": "London", "state": "LDN", "country": "GB", "street": "1 Main St"},
                            "company": {"name": "Analytical Engines"}})
    engage, link = None, None
    for req in build([event]).requests:
        if req.url == ENGAGE:
            engage = shape(req)
        else:
            link = shape(req)
    assert engage == ("POST", ENGAGE, PLAIN_HEADERS, [{
        "$token": TOKEN, "$distinct_id": "user-1", "$ip": "203.0.113.7", "$time": T,
        "$set": {"$email": "ada@example.com", "$first_name": "Ada", "$last_name": "Lovelace", "plan": "pro",
                 "$created": "2026-01-02T03:04:05Z", "logins": 7, "$phone": "+44 20 1234",
                 "$avatar": "https://x/a.png", "$username": "ada", "$city": "London", "$region": "LDN",
                 "$country_code": "GB", "address": {"street": "1 Main St"},
                 "company": {"name": "Analytical Engines"}, "$name": "Ada Lovelace"}}], (0,))
    # Simplified ID Merge: an event carrying both $device_id and $user_id merges the two
    assert link == ("POST", IMPORT, IMPORT_HEADERS, [{"event": "$identify", "properties": {
        "ip": "203.0.113.7", "$anon_distinct_id": f"$device:{ANON}", "time": T, "distinct_id": "user-1",
        "$insert_id": "a1b2c3d4-0000-4000-8000-000000000001", "token": TOKEN,
        "$device_id": ANON, "$user_id": "user-1"}}], (0,))


def test_identify_original_id_merge_sends_merge() -> None:
    [link] = [r for r in build([fx.IDENTIFY], id_merge="original").requests if r.url == IMPORT]
    assert orjson.loads(link.body) == [{"event": "$merge", "properties": {
        "ip": "203.0.113.7", "$distinct_ids": ["user-1", ANON], "time": T, "distinct_id": "user-1",
        "$insert_id": "a1b2c3d4-0000-4000-8000-000000000001", "token": TOKEN}}]


def test_identify_without_traits_or_link_is_skipped() -> None:
    built = build([minimal("identify")])
    assert not built.requests
    assert built.skips[0].index == 0 and "without traits" in built.skips[0].reason


def test_group_minimal() -> None:
    built = build([minimal("group", groupId="g-1")])
    assert [shape(r) for r in built.requests] == [
        ("POST", ENGAGE, PLAIN_HEADERS, [{"$token": TOKEN, "$distinct_id": "u-1", "$ip": 0, "$time": T,
                                          "$union": {"$group_id": ["g-1"]}}], (0,)),
    ]


def test_group_full() -> None:
    built = build([fx.GROUP], group_key="company")
    assert [shape(r) for r in built.requests] == [
        ("POST", ENGAGE, PLAIN_HEADERS, [{"$token": TOKEN, "$distinct_id": "user-1", "$ip": "203.0.113.7",
                                          "$time": T, "$union": {"company": ["acct-42"]}}], (0,)),
        ("POST", GROUPS, PLAIN_HEADERS, [{"$token": TOKEN, "$group_key": "company", "$group_id": "acct-42",
                                          "$set": {"$name": "Acme Inc", "plan": "enterprise", "employees": 120}}],
         (0,)),
    ]


def test_group_without_group_id_is_rejected() -> None:
    built = build([minimal("group")])
    assert not built.requests and "groupId" in built.rejects[0].reason


def test_alias_is_skipped_under_simplified_id_merge() -> None:
    built = build([fx.ALIAS])
    assert not built.requests
    assert "Simplified ID Merge" in built.skips[0].reason


def test_alias_minimal_and_full_under_original_id_merge() -> None:
    [req] = build([minimal("alias", previousId="anon-7")], id_merge="original").requests
    assert shape(req) == ("POST", IMPORT, IMPORT_HEADERS, [{"event": "$create_alias", "properties": {
        "ip": 0, "alias": "u-1", "time": T, "distinct_id": "anon-7", "$insert_id": "m-1", "token": TOKEN}}], (0,))
    [req] = build([fx.ALIAS], id_merge="original").requests
    assert orjson.loads(req.body) == [{"event": "$create_alias", "properties": {
        "ip": "203.0.113.7", "alias": "user-1", "time": T, "distinct_id": "old-id-9",
        "$insert_id": "a1b2c3d4-0000-4000-8000-000000000006", "token": TOKEN}}]


def test_alias_rejections() -> None:
    built = build([minimal("alias", previousId="u-1"), {**minimal("alias", previousId="p"), "userId": None,
                                                         "anonymousId": "a-1"}], id_merge="original")
    assert [(r.index, r.reason) for r in built.rejects] == [
        (0, "alias previousId equals userId"), (1, "alias call without a userId")]


# ---------------------------------------------------------------------------------------------
# golden: ecommerce and revenue
# ---------------------------------------------------------------------------------------------


def test_order_completed_with_several_products() -> None:
    built = build([fx.ORDER_COMPLETED])
    base = {"time": T, "distinct_id": "user-1"}
    tail = {"token": TOKEN, "$device_id": ANON, "$user_id": "user-1"}
    order = fx.ORDER_COMPLETED["properties"]
    assert [shape(r) for r in built.requests] == [
        ("POST", IMPORT, IMPORT_HEADERS, [
            {"event": "Order Completed", "properties": {
                **CTX, **order, **base, "$insert_id": "a1b2c3d4-0000-4000-8000-000000000007", **tail}},
            {"event": "Product Purchased", "properties": {
                **CTX, "order_id": "ord-1001", "checkout_id": "chk-1",
                "product_id": "p-1", "sku": "SKU-1", "name": "Mug", "price": 10.0, "quantity": 2, "category": "Kitchen",
                **base, "$insert_id": "d3df39c2-19dd-8c07-bfdd-b96fef6bfe2f", **tail}},
            {"event": "Product Purchased", "properties": {
                **CTX, "order_id": "ord-1001", "checkout_id": "chk-1",
                "product_id": "p-2", "sku": "SKU-2", "name": "Tea", "price": 5.0, "quantity": 1, "brand": "Leaf",
                **base, "$insert_id": "81d31d0c-724b-8306-df1d-4aa2c41f76b2", **tail}},
        ], (0,)),
        ("POST", ENGAGE, PLAIN_HEADERS, [{
            "$token": TOKEN, "$distinct_id": "user-1", "$ip": "203.0.113.7", "$time": T,
            "$append": {"$transactions": {"$time": "2026-11-22T20:05:51", "$amount": 25.0, "currency": "EUR",
                                          "order_id": "ord-1001"}}}], (0,)),
    ]


def test_order_completed_v1_alias_and_setting_off() -> None:
    event = {**fx.ORDER_COMPLETED, "event": "Completed Order"}
    [imp, _] = build([event]).requests
    assert [r["event"] for r in orjson.loads(imp.body)] == ["Completed Order", "Product Purchased", "Product Purchased"]
    [imp, _] = build([fx.ORDER_COMPLETED], product_purchased_events=False).requests
    assert [r["event"] for r in orjson.loads(imp.body)] == ["Order Completed"]


def test_refund_appends_a_negative_transaction() -> None:
    built = build([fx.ORDER_REFUNDED])
    assert [shape(r) for r in built.requests] == [
        ("POST", IMPORT, IMPORT_HEADERS, [{"event": "Order Refunded", "properties": {
            **CTX, "order_id": "ord-1001", "total": 27.5, "currency": "EUR",
            "time": T, "distinct_id": "user-1", "$insert_id": "a1b2c3d4-0000-4000-8000-000000000008",
            "token": TOKEN, "$device_id": ANON, "$user_id": "user-1"}}], (0,)),
        ("POST", ENGAGE, PLAIN_HEADERS, [{
            "$token": TOKEN, "$distinct_id": "user-1", "$ip": "203.0.113.7", "$time": T,
            "$append": {"$transactions": {"$time": "2026-11-22T20:05:51", "$amount": -27.5, "currency": "EUR",
                                          "order_id": "ord-1001"}}}], (0,)),
    ]


def test_revenue_without_products() -> None:
    built = build([fx.REVENUE_NO_PRODUCTS])
    assert [shape(r) for r in built.requests] == [
        ("POST", IMPORT, IMPORT_HEADERS, [{"event": "Upgraded Plan", "properties": {
            **CTX, "revenue": 99.0, "currency": "USD", "plan": "pro",
            "time": T, "distinct_id": "user-1", "$insert_id": "a1b2c3d4-0000-4000-8000-000000000009",
            "token": TOKEN, "$device_id": ANON, "$user_id": "user-1"}}], (0,)),
        ("POST", ENGAGE, PLAIN_HEADERS, [{
            "$token": TOKEN, "$distinct_id": "user-1", "$ip": "203.0.113.7", "$time": T,
            "$append": {"$transactions": {"$time": "2026-11-22T20:05:51", "$amount": 99.0, "currency": "USD"}}}],
         (0,)),
    ]
    # no revenue field, or revenue tracking off: no profile update
    assert [r.url for r in build([minimal("track", event="X", properties={"revenue": "abc"})]).requests] == [IMPORT]
    assert [r.url for r in build([fx.REVENUE_NO_PRODUCTS], track_revenue=False).requests] == [IMPORT]


# ---------------------------------------------------------------------------------------------
# settings, hosts, auth
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("region,host", [("us", "https://api.mixpanel.com"), ("eu", "https://api-eu.mixpanel.com"),
                                         ("in", "https://api-in.mixpanel.com")])
def test_regional_hosts(region: str, host: str) -> None:
    urls = {r.url for r in build([fx.IDENTIFY, fx.GROUP], region=region).requests}
    assert urls == {f"{host}/import?strict=1", f"{host}/engage?verbose=1", f"{host}/groups?verbose=1"}


def test_endpoint_override_and_strict_off() -> None:
    [req] = build([fx.TRACK], endpoint="http://127.0.0.1:9/mp/", strict=False).requests
    assert req.url == "http://127.0.0.1:9/mp/import?strict=0"


def test_service_account_auth() -> None:
    [req] = build([fx.TRACK], service_account_username="sa.user", service_account_secret="s3cret",
                  project_id=1234).requests
    assert req.url == IMPORT + "&project_id=1234"
    assert req.headers["Authorization"] == "Basic " + base64.b64encode(b"sa.user:s3cret").decode()
    assert orjson.loads(req.body)[0]["properties"]["token"] == TOKEN
    with pytest.raises(ValueError, match="together"):
        settings(service_account_username="sa.user", service_account_secret="s3cret")


# ---------------------------------------------------------------------------------------------
# rejects and limits
# ---------------------------------------------------------------------------------------------


def test_rejects_with_reasons() -> None:
    events = [
        {**minimal("track", event="X"), "userId": "null", "anonymousId": "undefined"},
        minimal("track"),
        {**minimal("track", event="X"), "timestamp": "1970-06-01T00:00:00Z"},
        minimal("track", event="X", properties={f"p{i}": i for i in range(300)}),
        minimal("track", event="X", properties={"a": {"b": {"c": {"d": {"e": 1}}}}}),
        minimal("track", event="X", properties={"tags": list(range(300))}),
        # over 1 MB even with every string cut to 255 characters
        minimal("track", event="X", properties={"blob": {f"k{i}": ["x" * 255] * 250 for i in range(20)}}),
        {"type": "track", "messageId": "m", "userId": "u", "event": "X"},
    ]
    built = build(events)
    assert not built.requests
    reasons = {r.index: r.reason for r in built.rejects}
    assert "no usable userId or anonymousId" in reasons[0]
    assert "without an event name" in reasons[1]
    assert "1971" in reasons[2]
    assert "306 properties; Mixpanel accepts fewer than 255" in reasons[3]
    assert "nested more than 3" in reasons[4]
    assert "300 elements" in reasons[5]
    assert "1 MB" in reasons[6]
    assert "no timestamp" in reasons[7]


def test_placeholder_user_id_falls_back_to_anonymous_id() -> None:
    [req] = build([{**fx.TRACK, "userId": "undefined"}]).requests
    props = orjson.loads(req.body)[0]["properties"]
    assert props["distinct_id"] == f"$device:{ANON}" and "$user_id" not in props


def test_unknown_call_type_is_skipped() -> None:
    built = build([minimal("flush")])
    assert built.skips[0].index == 0 and "no mapping" in built.skips[0].reason


def test_import_is_split_at_2000_records_without_splitting_an_order() -> None:
    events = [minimal("track", event="X", messageId=f"m-{i}") for i in range(1999)] + [fx.ORDER_COMPLETED]
    imports = [r for r in build(events).requests if r.url == IMPORT]
    assert [len(orjson.loads(r.body)) for r in imports] == [1999, 3]
    assert imports[0].messages == tuple(range(1999)) and imports[1].messages == (1999,)


def test_requests_stay_under_the_byte_limit() -> None:
    blob = {f"p{j}": "x" * 255 for j in range(200)}  # ~53 KB of 255-character strings (not cut)
    events = [minimal("track", event="X", messageId=f"m-{i}", properties=blob) for i in range(40)]
    imports = build(events).requests
    assert len(imports) > 1
    assert all(len(r.body) <= mixpanel.MAX_REQUEST_BYTES for r in imports)
    assert [i for r in imports for i in r.messages] == list(range(40))


def test_groups_are_split_at_200() -> None:
    events = [minimal("group", messageId=f"m-{i}", groupId=f"g-{i}", traits={"name": "n"}) for i in range(250)]
    groups = [r for r in build(events).requests if r.url == GROUPS]
    assert [len(r.messages) for r in groups] == [200, 50]


# ---------------------------------------------------------------------------------------------
# classify
# ---------------------------------------------------------------------------------------------


def _order_batch() -> tuple[Request, list[str]]:
    events = [minimal("track", event="A", messageId="m-a"), fx.ORDER_COMPLETED,
              minimal("track", event="B", messageId="m-b")]
    [imp] = [r for r in build(events).requests if r.url == IMPORT]
    return imp, [rec["properties"]["$insert_id"] for rec in orjson.loads(imp.body)]


def test_partial_failure_only_dead_letters_the_failed_messages() -> None:
    req, insert_ids = _order_batch()
    assert req.messages == (0, 1, 2) and len(insert_ids) == 5
    body = {"code": 400, "error": "some data points in the request failed validation", "status": "Bad Request",
            "num_records_imported": 3,
            "failed_records": [{"index": 3, "$insert_id": insert_ids[3], "field": "properties.price",
                                "message": "'properties.price' is invalid"}]}
    out = mixpanel.classify(req, Response(400, {}, orjson.dumps(body)))
    assert out.verdict is Verdict.OK
    # record 3 is the second Product Purchased of the order: message 1 fails, 0 and 2 are delivered
    assert out.for_message(0).verdict is Verdict.OK and out.for_message(2).verdict is Verdict.OK
    assert out.for_message(1).verdict is Verdict.PERMANENT
    assert "properties.price" in out.for_message(1).reason


def test_partial_failure_by_insert_id_key_variants() -> None:
    req, insert_ids = _order_batch()
    for key in ("insert_id", "$insert_id"):
        body = {"code": 400, "error": "some data points in the request failed validation", "status": "Bad Request",
                "num_records_imported": 4, "failed_records": [{key: insert_ids[4], "field": "event", "message": "bad"}]}
        out = mixpanel.classify(req, Response(400, {}, orjson.dumps(body)))
        assert [out.for_message(i).verdict for i in range(3)] == [Verdict.OK, Verdict.OK, Verdict.PERMANENT]


def test_import_errors() -> None:
    req, _ = _order_batch()
    unauthorized = orjson.dumps({"code": 401, "error": "Invalid credentials", "status": "Unauthorized"})
    out = mixpanel.classify(req, Response(401, {}, unauthorized))
    assert out.verdict is Verdict.PERMANENT and "Invalid credentials" in out.reason
    limited = orjson.dumps({"code": 429, "error": "Project exceeded rate limits. Please retry the request with "
                                                  "exponential backoff.", "status": "Too Many Requests"})
    assert mixpanel.classify(req, Response(429, {}, limited)).verdict is Verdict.RETRY
    assert mixpanel.classify(req, Response(502, {}, b"")).verdict is Verdict.RETRY
    too_big = orjson.dumps({"code": 413, "error": "request exceeds max limit of 2097152 bytes",
                            "status": "Request Entity Too Large"})
    assert mixpanel.classify(req, Response(413, {}, too_big)).verdict is Verdict.PERMANENT
    plain_400 = orjson.dumps({"code": 400, "error": "unable to parse request body", "status": "Bad Request"})
    assert mixpanel.classify(req, Response(400, {}, plain_400)).verdict is Verdict.PERMANENT
    ok = orjson.dumps({"code": 200, "num_records_imported": 5, "status": "OK"})
    assert mixpanel.classify(req, Response(200, {}, ok)).verdict is Verdict.OK


def test_engage_and_groups_answers() -> None:
    [engage] = [r for r in build([fx.IDENTIFY]).requests if r.url == ENGAGE]
    assert mixpanel.classify(engage, Response(200, {}, b'{"status":1,"error":null}')).verdict is Verdict.OK
    assert mixpanel.classify(engage, Response(200, {}, b"1")).verdict is Verdict.OK
    out = mixpanel.classify(engage, Response(200, {}, b'{"status":0,"error":"$token, missing or empty"}'))
    assert out.verdict is Verdict.PERMANENT and "$token" in out.reason
    assert mixpanel.classify(engage, Response(200, {}, b"0")).verdict is Verdict.PERMANENT
    assert mixpanel.classify(engage, Response(503, {}, b"")).verdict is Verdict.RETRY


# ---------------------------------------------------------------------------------------------
# against the contract fake
# ---------------------------------------------------------------------------------------------


def send(req: Request, base: str, default_base: str = "http://127.0.0.1:9/mp") -> tuple[int, bytes]:
    answer = send_as_is(req, req.url.replace(default_base, base))
    return answer.status, answer.body


@pytest.mark.parametrize("id_merge", ["simplified", "original"])
def test_every_built_request_is_accepted_by_the_fake(id_merge: str) -> None:
    with FakeServer(make_app(token=TOKEN, clock=fixture_clock)) as fake:
        built = build(fx.ALL, endpoint="http://127.0.0.1:9/mp", id_merge=id_merge)
        for req in built.requests:
            status, body = send(req, fake.url)
            response = Response(status, {}, body)
            assert mixpanel.classify(req, response).verdict is Verdict.OK, (req, body)
            if "/import" in req.url:
                assert orjson.loads(body)["num_records_imported"] == len(orjson.loads(req.body))
        app = fake.app
        # identify link, track, page, screen, order (+2 products), refund, revenue, anonymous track; + alias in original
        assert len(app["events"]) == (10 if id_merge == "simplified" else 11)
        assert not app["dropped"]
        assert {p["$distinct_id"] for p in app["profiles"]} == {"user-1"}
        assert app["groups"][0]["$group_id"] == "acct-42"


def test_every_built_request_with_service_account_is_accepted() -> None:
    with FakeServer(make_app(token=TOKEN, service_account=("sa", "pw", 77), clock=fixture_clock)) as fake:
        built = build(fx.ALL_CALLS, endpoint="http://127.0.0.1:9/mp", service_account_username="sa",
                      service_account_secret="pw", project_id=77)
        statuses = [send(r, fake.url)[0] for r in built.requests]
        assert statuses and all(s == 200 for s in statuses)


def test_fake_refuses_bad_credentials_and_invalid_records_like_mixpanel() -> None:
    with FakeServer(make_app(token="the-real-token", clock=fixture_clock)) as fake:
        [req] = build([fx.TRACK], endpoint="http://127.0.0.1:9/mp").requests
        status, body = send(req, fake.url)
        assert status == 401
        assert orjson.loads(body) == {"code": 401, "error": "Invalid credentials", "status": "Unauthorized"}
        assert mixpanel.classify(req, Response(status, {}, body)).verdict is Verdict.PERMANENT

    with FakeServer(make_app(token=TOKEN, clock=fixture_clock)) as fake:
        good, _ = _order_batch()
        records = orjson.loads(good.body)
        records[1]["properties"]["time"] = "yesterday"
        records[4]["properties"]["distinct_id"] = "null"
        bad = Request("POST", "http://127.0.0.1:9/mp/import?strict=1", good.headers, orjson.dumps(records),
                      good.messages)
        status, body = send(bad, fake.url)
        answer = orjson.loads(body)
        assert status == 400 and answer["num_records_imported"] == 3
        assert [(f["index"], f["field"]) for f in answer["failed_records"]] == [
            (1, "properties.time"), (4, "properties.distinct_id")]
        out = mixpanel.classify(bad, Response(status, {}, body))
        # record 1 is the order (message 1); record 4 is message 2
        assert [out.for_message(i).verdict for i in range(3)] == [Verdict.OK, Verdict.PERMANENT, Verdict.PERMANENT]
        assert len(fake.app["events"]) == 3

        [engage] = [r for r in build([fx.IDENTIFY], endpoint="http://127.0.0.1:9/mp").requests if "/engage" in r.url]
        broken = orjson.loads(engage.body)
        del broken[0]["$token"]
        status, body = send(Request("POST", engage.url, engage.headers, orjson.dumps(broken), (0,)), fake.url)
        assert status == 200 and orjson.loads(body) == {"status": 0, "error": "$token, missing or empty"}
        assert mixpanel.classify(engage, Response(status, {}, body)).verdict is Verdict.PERMANENT


def test_fake_refuses_an_invalid_insert_id_and_unmappable_answers_dead_letter_the_request() -> None:
    with FakeServer(make_app(token=TOKEN, clock=fixture_clock)) as fake:
        [good] = build([fx.TRACK], endpoint="http://127.0.0.1:9/mp").requests
        records = orjson.loads(good.body)
        records[0]["properties"]["$insert_id"] = "ajs-next-1795378208872-d72a710a-1111-4222-8333-444455556666"
        bad = Request("POST", good.url, good.headers, orjson.dumps(records), good.messages)
        status, body = send(bad, fake.url)
        answer = orjson.loads(body)
        assert status == 400 and answer["num_records_imported"] == 0
        assert answer["failed_records"][0]["field"] == "properties.$insert_id"
        assert mixpanel.classify(bad, Response(status, {}, body)).for_message(0).verdict is Verdict.PERMANENT
        # a failed record whose index and insert id match nothing we sent: the whole request is dead-lettered
        odd = orjson.dumps({"code": 400, "error": "some data points in the request failed validation",
                            "failed_records": [{"index": 7, "$insert_id": "zzz", "field": "x", "message": "y"}]})
        out = mixpanel.classify(good, Response(400, {}, odd))
        assert out.verdict is Verdict.PERMANENT and "unmappable" in out.reason
        # and a future time is refused like Mixpanel does
        records = orjson.loads(good.body)
        records[0]["properties"]["time"] = T + 2 * 3600 * 1000
        status, body = send(Request("POST", good.url, good.headers, orjson.dumps(records), (0,)), fake.url)
        assert status == 400 and "future" in orjson.loads(body)["failed_records"][0]["message"]


# ---------------------------------------------------------------------------------------------
# strings over 255 characters (Mixpanel truncates them silently: cut here, and noted)
# ---------------------------------------------------------------------------------------------


def test_long_strings_are_cut_to_255_and_noted() -> None:
    long = "x" * 300
    event = minimal("track", event="E" * 256, properties={
        "comment": long, "short": "ok", "nested": {"a": long}, "tags": ["t", long], "n": 3,
    })
    built = build([event, minimal("track", event="Fine", properties={"s": "y" * 255})])
    assert not built.rejects
    [req] = built.requests
    first, second = orjson.loads(req.body)
    assert first["event"] == "E" * 255
    props = first["properties"]
    assert props["comment"] == "x" * 255 and props["short"] == "ok" and props["n"] == 3
    assert props["nested"] == {"a": "x" * 255}
    assert props["tags"] == ["t", "x" * 255]
    assert second["properties"]["s"] == "y" * 255  # exactly 255: untouched
    [note] = built.notes
    assert note.index == 0
    assert note.reason == ("strings over 255 characters cut to 255 (Mixpanel truncates them): "
                           "event, comment, nested.a, tags[1]")


def test_long_strings_in_product_purchased_events_are_noted_once_per_path() -> None:
    event = minimal("track", event="Order Completed", properties={
        "order_id": "o1", "note": "n" * 400, "products": [{"product_id": "p1"}, {"product_id": "p2"}]})
    built = build([event])
    [note] = built.notes
    assert note.reason.endswith(": note")
    records = orjson.loads(built.requests[0].body)
    assert all(r["properties"]["note"] == "n" * 255 for r in records)


def test_an_id_over_255_characters_is_rejected_not_cut() -> None:
    built = build([minimal("track", event="X", userId="u" * 256)])
    assert not built.requests and not built.notes
    [reject] = built.rejects
    assert "distinct_id is 256 characters" in reject.reason and "merge different people" in reject.reason


def test_the_fake_truncates_long_strings_and_the_adapter_leaves_it_nothing_to_cut() -> None:
    long = "z" * 1000
    event = {**fx.TRACK, "properties": {**fx.TRACK.get("properties", {}), "comment": long}}
    with FakeServer(make_app(token=TOKEN, clock=fixture_clock)) as fake:
        [req] = build([event], endpoint="http://127.0.0.1:9/mp").requests
        raw = orjson.loads(req.body)
        raw[0]["properties"]["comment"] = long  # what was sent before the adapter cut strings
        unfixed = Request(req.method, req.url, req.headers, orjson.dumps(raw), req.messages)
        status, _ = send(unfixed, fake.url)
        assert status == 200  # Mixpanel says nothing...
        assert fake.app["truncated"] == [(raw[0]["properties"]["$insert_id"], "properties.comment")]
        assert fake.app["events"][0]["properties"]["comment"] == "z" * 255  # ...and keeps 255

        fake.app["truncated"].clear()
        status, _ = send(req, fake.url)
        assert status == 200
        assert fake.app["truncated"] == []
        assert fake.app["events"][1]["properties"]["comment"] == "z" * 255
