"""Amplitude adapter: golden requests, skips/rejects, batching, classification, and the contract fake."""

from __future__ import annotations

import copy
from typing import Any
from urllib.parse import parse_qs

import orjson
import pytest

from destinations import amplitude
from destinations.base import Message, Request, Response, Verdict
from tests.fakes.amplitude import make_app
from tests.fakes.base import FakeServer
from tests.fakes.base import send as send_as_is
from tests.fixtures import messages as fx

KEY = "amp-key"
HTTPAPI = "https://api2.amplitude.com/2/httpapi"
JSON_HEADERS = {"Content-Type": "application/json"}
T = 1795377951829
ANON = "5b1a3d4e-8f2c-4a7b-9e10-1234567890ab"
FAKE_BASE = "http://127.0.0.1:9/amp"

# what BASE_CONTEXT and the fixture ids become on every event
WHO = {"user_id": "user-1", "device_id": ANON, "time": T}
CTX = {"ip": "203.0.113.7", "language": "en-US"}
UTM = {"user_properties": {"utm_campaign": "spring", "utm_source": "newsletter", "utm_medium": "email"}}
GROUPS = {"groups": {"company": "acct-42"}}


def settings(**kw: Any) -> amplitude.Settings:
    return amplitude.ADAPTER.validate_settings({"api_key": KEY, **kw})


def build(events: list[dict[str, Any]], **kw: Any):
    return amplitude.build_requests([Message(e) for e in events], settings(**kw))


def only_events(events: list[dict[str, Any]], **kw: Any) -> list[dict[str, Any]]:
    built = build(events, **kw)
    assert not built.skips and not built.rejects, (built.skips, built.rejects)
    [req] = built.requests
    assert (req.method, req.url, dict(req.headers), req.messages) == ("POST", HTTPAPI, JSON_HEADERS,
                                                                      tuple(range(len(events))))
    body = orjson.loads(req.body)
    assert body["api_key"] == KEY
    return body["events"]


def minimal(type_: str, **fields: Any) -> dict[str, Any]:
    return {"type": type_, "messageId": "m-1", "userId": "user-0001", "timestamp": "2026-11-22T20:05:51.829Z", **fields}


def m(iid: str) -> str:
    return f"a1b2c3d4-0000-4000-8000-00000000000{iid}"


# ---------------------------------------------------------------------------------------------
# golden: track, page, screen
# ---------------------------------------------------------------------------------------------


def test_track_minimal_exact_request() -> None:
    [req] = build([minimal("track", event="Clicked")]).requests
    assert (req.method, req.url, dict(req.headers), req.messages) == ("POST", HTTPAPI, JSON_HEADERS, (0,))
    assert orjson.loads(req.body) == {"api_key": KEY, "events": [{
        "event_type": "Clicked", "user_id": "user-0001", "time": T, "insert_id": "m-1", "event_properties": {}}]}


def test_track_full() -> None:
    event = copy.deepcopy(fx.TRACK)
    event["context"].update({"os": {"name": "iOS", "version": "18.1"},
                             "device": {"id": "dev-12345", "model": "iPhone16,1", "manufacturer": "Apple",
                                        "type": "ios"},
                             "network": {"carrier": "O2"}, "app": {"version": "3.2.1"},
                             "location": {"country": "GB", "city": "London", "latitude": 51.5, "longitude": -0.12},
                             "sessionId": 1795377000000})
    assert only_events([event]) == [{
        "event_type": "Signed Up", "user_id": "user-1", "device_id": "dev-12345", "time": T, "insert_id": m(2),
        "ip": "203.0.113.7", "language": "en-US", "os_name": "iOS", "os_version": "18.1",
        "device_model": "iPhone16,1", "device_manufacturer": "Apple", "platform": "ios", "carrier": "O2",
        "app_version": "3.2.1", "country": "GB", "city": "London", "location_lat": 51.5, "location_lng": -0.12,
        "session_id": 1795377000000,
        "event_properties": {"plan": "pro", "trial": True, "seats": 3}, **UTM, **GROUPS}]


def test_session_id_from_integrations_options() -> None:
    event = {**minimal("track", event="X"), "integrations": {"Amplitude": {"session_id": 1795377000001}}}
    assert only_events([event])[0]["session_id"] == 1795377000001


def test_page_minimal_and_full() -> None:
    assert only_events([minimal("page")]) == [{
        "event_type": "Loaded a Page", "user_id": "user-0001", "time": T, "insert_id": "m-1", "event_properties": {}}]
    assert only_events([fx.PAGE]) == [{
        "event_type": "Viewed Pricing Page", **WHO, "insert_id": m(3), **CTX,
        "event_properties": {"name": "Pricing", "category": "Docs", "url": "https://shop.example.com/pricing?a=1",
                             "path": "/pricing", "title": "Pricing", "referrer": "https://example.org/"},
        **UTM, **GROUPS}]
    assert only_events([minimal("page", category="Docs")])[0]["event_type"] == "Viewed Docs Page"


def test_screen_minimal_and_full() -> None:
    assert only_events([minimal("screen")]) == [{
        "event_type": "Loaded a Screen", "user_id": "user-0001", "time": T, "insert_id": "m-1", "event_properties": {}}]
    assert only_events([fx.SCREEN]) == [{
        "event_type": "Viewed Home Screen", **WHO, "insert_id": m(4), **CTX,
        "event_properties": {"name": "Home", "variant": "dark"}, **UTM, **GROUPS}]


# ---------------------------------------------------------------------------------------------
# golden: identify, group, alias
# ---------------------------------------------------------------------------------------------


def test_identify_minimal_and_full() -> None:
    assert only_events([minimal("identify", traits={"email": "a@b.co"})]) == [{
        "event_type": "$identify", "user_id": "user-0001", "time": T, "insert_id": "m-1",
        "user_properties": {"$set": {"email": "a@b.co"}}}]
    assert only_events([fx.IDENTIFY]) == [{
        "event_type": "$identify", **WHO, "insert_id": m(1), **CTX,
        "user_properties": {"$set": {"email": "ada@example.com", "firstName": "Ada", "lastName": "Lovelace",
                                     "plan": "pro", "createdAt": "2026-01-02T03:04:05Z", "logins": 7,
                                     "name": "Ada Lovelace"}}}]


def test_identify_without_traits_is_skipped() -> None:
    built = build([minimal("identify")])
    assert not built.requests and "without traits" in built.skips[0].reason


def test_group_minimal_and_full() -> None:
    assert only_events([minimal("group", groupId="g-1")]) == [{
        "event_type": "$identify", "user_id": "user-0001", "time": T, "insert_id": "m-1",
        "groups": {"company": "g-1"}, "user_properties": {"$set": {"company": "g-1"}}}]
    assert only_events([fx.GROUP], group_type="account") == [
        {"event_type": "$identify", **WHO, "insert_id": m(5), **CTX,
         "groups": {"account": "acct-42"}, "user_properties": {"$set": {"account": "acct-42"}}},
        {"event_type": "$groupidentify", **WHO, "insert_id": m(5) + "-1", **CTX,
         "groups": {"account": "acct-42"},
         "group_properties": {"$set": {"name": "Acme Inc", "plan": "enterprise", "employees": 120}}},
    ]


def test_alias_goes_to_user_mapping() -> None:
    [req] = build([fx.ALIAS], user_mapping=True).requests
    assert (req.method, req.url, dict(req.headers), req.messages) == (
        "POST", "https://api.amplitude.com/usermap", {"Content-Type": "application/x-www-form-urlencoded"}, (0,))
    form = {k: v[0] for k, v in parse_qs(req.body.decode()).items()}
    assert form["api_key"] == KEY
    assert orjson.loads(form["mapping"]) == [{"user_id": "old-id-9", "global_user_id": "user-1"}]
    [req] = build([minimal("alias", previousId="anon-7")], user_mapping=True, region="eu").requests
    assert req.url == "https://api.eu.amplitude.com/usermap"
    assert orjson.loads(parse_qs(req.body.decode())["mapping"][0]) == [{"user_id": "anon-7",
                                                                        "global_user_id": "user-0001"}]


def test_alias_skipped_without_user_mapping_and_rejected_when_unusable() -> None:
    built = build([fx.ALIAS])
    assert not built.requests and "user_mapping" in built.skips[0].reason
    built = build([minimal("alias", previousId="user-0001"), {**minimal("alias", previousId="p"), "userId": None}],
                  user_mapping=True)
    assert [(r.index, r.reason) for r in built.rejects] == [
        (0, "alias previousId equals userId"), (1, "alias call without a userId")]


# ---------------------------------------------------------------------------------------------
# golden: ecommerce and revenue
# ---------------------------------------------------------------------------------------------

ORDER_PROPS = fx.ORDER_COMPLETED["properties"]


def test_order_completed_with_several_products_revenue_per_product() -> None:
    assert only_events([fx.ORDER_COMPLETED]) == [
        {"event_type": "Order Completed", **WHO, "insert_id": m(7), **CTX,
         "event_properties": ORDER_PROPS, **UTM, **GROUPS},
        {"event_type": "Product Purchased", **WHO, "insert_id": m(7) + "-1", **CTX,
         "event_properties": {"product_id": "p-1", "sku": "SKU-1", "name": "Mug", "price": 10.0, "quantity": 2,
                              "category": "Kitchen", "order_id": "ord-1001"},
         "price": 10.0, "quantity": 2, "revenue": 20.0, "productId": "p-1", "revenueType": "Purchase",
         "currency": "EUR", **UTM, **GROUPS},
        {"event_type": "Product Purchased", **WHO, "insert_id": m(7) + "-2", **CTX,
         "event_properties": {"product_id": "p-2", "sku": "SKU-2", "name": "Tea", "price": 5.0, "quantity": 1,
                              "brand": "Leaf", "order_id": "ord-1001"},
         "price": 5.0, "quantity": 1, "revenue": 5.0, "productId": "p-2", "revenueType": "Purchase",
         "currency": "EUR", **UTM, **GROUPS},
    ]


def test_order_completed_revenue_on_the_order() -> None:
    events = only_events([fx.ORDER_COMPLETED], revenue_per_product=False)
    assert events[0] == {"event_type": "Order Completed", **WHO, "insert_id": m(7), **CTX,
                         "event_properties": ORDER_PROPS, "revenue": 25.0, "revenueType": "Purchase",
                         "currency": "EUR", **UTM, **GROUPS}
    # product events then carry no revenue field at all: nothing is counted twice
    for ev in events[1:]:
        assert ev["event_type"] == "Product Purchased"
        assert not {"price", "quantity", "revenue", "productId", "revenueType", "currency"} & ev.keys()
    # a product without price: revenue stays on the order even with revenue_per_product
    unpriced = copy.deepcopy(fx.ORDER_COMPLETED)
    del unpriced["properties"]["products"][1]["price"]
    events = only_events([unpriced])
    assert events[0]["revenue"] == 25.0 and all("revenue" not in ev for ev in events[1:])
    # product events off: one event with the order's revenue
    events = only_events([{**fx.ORDER_COMPLETED, "event": "Completed Order"}], product_purchased_events=False)
    assert [(ev["event_type"], ev["revenue"]) for ev in events] == [("Completed Order", 25.0)]


def test_refund() -> None:
    assert only_events([fx.ORDER_REFUNDED]) == [{
        "event_type": "Order Refunded", **WHO, "insert_id": m(8), **CTX,
        "event_properties": {"order_id": "ord-1001", "total": 27.5, "currency": "EUR"},
        "revenue": -27.5, "revenueType": "Refund", "currency": "EUR", **UTM, **GROUPS}]


def test_revenue_without_products() -> None:
    assert only_events([fx.REVENUE_NO_PRODUCTS]) == [{
        "event_type": "Upgraded Plan", **WHO, "insert_id": m(9), **CTX,
        "event_properties": {"revenue": 99.0, "currency": "USD", "plan": "pro"},
        "revenue": 99.0, "revenueType": "Purchase", "currency": "USD", **UTM, **GROUPS}]
    [ev] = only_events([minimal("track", event="Renewed", properties={
        "revenue": "12.5", "currency": "gbp", "product_id": "plan-pro", "revenue_type": "Subscription"})])
    assert {k: ev[k] for k in ("revenue", "productId", "revenueType", "currency")} == {
        "revenue": 12.5, "productId": "plan-pro", "revenueType": "Subscription", "currency": "GBP"}


# ---------------------------------------------------------------------------------------------
# ids, settings, limits
# ---------------------------------------------------------------------------------------------


def test_anonymous_event_has_only_device_id_and_message_id_as_insert_id() -> None:
    [ev] = only_events([fx.ANONYMOUS_TRACK])
    assert "user_id" not in ev and ev["device_id"] == ANON
    assert ev["insert_id"] == fx.ANONYMOUS_TRACK["messageId"]


def test_short_and_placeholder_ids() -> None:
    # userId "42" is shorter than Amplitude's 5-char minimum: Amplitude would drop it, so do we
    [ev] = only_events([{**minimal("track", event="X"), "userId": "42", "anonymousId": "anon-12345"}])
    assert "user_id" not in ev and ev["device_id"] == "anon-12345"
    built = build([{**minimal("track", event="X"), "userId": "42", "anonymousId": "null"}])
    assert not built.requests and "min_id_length" in built.rejects[0].reason
    # with min_id_length the short id is kept and the option is sent
    [req] = build([{**minimal("track", event="X"), "userId": "42"}], min_id_length=2).requests
    body = orjson.loads(req.body)
    assert body["events"][0]["user_id"] == "42" and body["options"] == {"min_id_length": 2}


def test_other_rejects_and_skips() -> None:
    built = build([minimal("track"), {"type": "track", "messageId": "x", "userId": "user-0001", "event": "X"},
                   minimal("flush")])
    assert not built.requests
    assert "event name" in built.rejects[0].reason and "timestamp" in built.rejects[1].reason
    assert built.skips[0].index == 2 and "no event mapping" in built.skips[0].reason


@pytest.mark.parametrize("region,api,url", [
    ("us", "http_v2", "https://api2.amplitude.com/2/httpapi"),
    ("eu", "http_v2", "https://api.eu.amplitude.com/2/httpapi"),
    ("us", "batch", "https://api2.amplitude.com/batch"),
    ("eu", "batch", "https://api.eu.amplitude.com/batch"),
])
def test_hosts_and_apis(region: str, api: str, url: str) -> None:
    [req] = build([fx.TRACK], region=region, api=api).requests
    assert req.url == url


def test_endpoint_override_applies_to_every_path() -> None:
    urls = [r.url for r in build([fx.TRACK, fx.ALIAS], endpoint="http://127.0.0.1:9/amp/", user_mapping=True).requests]
    assert urls == ["http://127.0.0.1:9/amp/2/httpapi", "http://127.0.0.1:9/amp/usermap"]


def test_split_by_event_count_never_splitting_a_message() -> None:
    events = [minimal("track", event="X", messageId=f"m-{i}") for i in range(9)] + [fx.ORDER_COMPLETED]
    reqs = build(events, max_events_per_request=10).requests
    assert [len(orjson.loads(r.body)["events"]) for r in reqs] == [9, 3]
    assert reqs[1].messages == (9,)


def test_split_by_bytes_for_http_v2_but_not_batch() -> None:
    blob = [f"{i:04d}" + "x" * 1000 for i in range(100)]  # ~100 KB of strings within Amplitude's 1024
    events = [minimal("track", event="X", messageId=f"m-{i}", properties={"blob": blob}) for i in range(15)]
    reqs = build(events).requests
    assert len(reqs) == 2 and all(len(r.body) < 1_000_000 for r in reqs)
    assert len(build(events, api="batch").requests) == 1
    huge = build([minimal("track", event="X", properties={"blob": ["x" * 1000] * 1000})])
    assert not huge.requests and "bytes" in huge.rejects[0].reason


# ---------------------------------------------------------------------------------------------
# classify
# ---------------------------------------------------------------------------------------------


def _batch() -> Request:
    events = [minimal("track", event="A", messageId="m-a"), fx.ORDER_COMPLETED,
              minimal("track", event="B", messageId="m-b")]
    [req] = build(events).requests
    assert len(orjson.loads(req.body)["events"]) == 5 and req.messages == (0, 1, 2)
    return req


def test_400_with_invalid_events_dead_letters_those_and_retries_the_rest() -> None:
    req = _batch()
    body = {"code": 400, "error": "Invalid field values on some events", "events_with_invalid_fields": {"price": [3]}}
    out = amplitude.classify(req, Response(400, {}, orjson.dumps(body)))
    # event 3 is the second Product Purchased: the order's message
    assert out.for_message(1).verdict is Verdict.PERMANENT and "price" in out.for_message(1).reason
    assert out.for_message(0).verdict is Verdict.RETRY and out.for_message(2).verdict is Verdict.RETRY


def test_400_silenced_devices() -> None:
    req = _batch()
    body = {"code": 400, "error": "Events silenced for device_id", "eps_threshold": 100,
            "exceeded_daily_quota_devices": {}, "silenced_devices": ["d"], "silenced_events": [4],
            "throttled_devices": {"d2": 101}, "throttled_events": [0]}
    out = amplitude.classify(req, Response(400, {}, orjson.dumps(body)))
    assert [out.for_message(i).verdict for i in range(3)] == [Verdict.RETRY, Verdict.RETRY, Verdict.PERMANENT]


def test_400_without_event_indexes_is_permanent() -> None:
    req = _batch()
    for body in ({"code": 400, "error": "Invalid API key"},
                 {"code": 400, "error": "Request missing required field", "missing_field": "api_key"}):
        out = amplitude.classify(req, Response(400, {}, orjson.dumps(body)))
        assert out.verdict is Verdict.PERMANENT and not out.per_message


def test_429_waits_as_amplitude_advises() -> None:
    req = _batch()
    body = orjson.dumps({"code": 429, "error": "Too many requests for some devices and users", "eps_threshold": 30,
                         "throttled_devices": {"C8F9E604": 31}, "throttled_users": {"u@x": 32},
                         "throttled_events": [3, 4]})
    out = amplitude.classify(req, Response(429, {}, body))
    assert out.verdict is Verdict.RETRY and out.retry_after == 30 and "2 users/devices" in out.reason
    [batch_req] = build([fx.TRACK], api="batch").requests
    assert amplitude.classify(batch_req, Response(429, {}, body)).retry_after == 15
    assert amplitude.classify(req, Response(429, {"Retry-After": "3"}, body)).retry_after == 3


def test_other_statuses() -> None:
    req = _batch()
    assert amplitude.classify(req, Response(200, {}, b'{"code":200,"events_ingested":5}')).verdict is Verdict.OK
    assert amplitude.classify(req,
                              Response(413, {},
                                       b'{"code":413,"error":"Payload too large"}')).verdict is Verdict.PERMANENT
    assert amplitude.classify(req, Response(403, {}, b'{"code":403,"error":"Forbidden"}')).verdict is Verdict.PERMANENT
    for status in (500, 502, 503, 504):
        assert amplitude.classify(req, Response(status, {}, b"")).verdict is Verdict.RETRY


# ---------------------------------------------------------------------------------------------
# against the contract fake
# ---------------------------------------------------------------------------------------------


def send(req: Request, base: str) -> tuple[int, bytes]:
    answer = send_as_is(req, req.url.replace(FAKE_BASE, base))
    return answer.status, answer.body


@pytest.mark.parametrize("api", ["http_v2", "batch"])
def test_every_built_request_is_accepted_by_the_fake(api: str) -> None:
    with FakeServer(make_app(api_key=KEY)) as fake:
        built = build(fx.ALL, endpoint=FAKE_BASE, api=api, user_mapping=True)
        assert not built.skips and not built.rejects
        for req in built.requests:
            status, body = send(req, fake.url)
            assert status == 200, body
            assert amplitude.classify(req, Response(status, {}, body)).verdict is Verdict.OK
        types = [ev["event_type"] for ev in fake.app["events"]]
        assert types == ["$identify", "Signed Up", "Viewed Pricing Page", "Viewed Home Screen", "$identify",
                         "$groupidentify", "Order Completed", "Product Purchased", "Product Purchased",
                         "Order Refunded", "Upgraded Plan", "Viewed Docs"]
        assert fake.app["mappings"] == [{"user_id": "old-id-9", "global_user_id": "user-1"}]


def test_fake_refuses_what_amplitude_refuses_and_classify_maps_it_back() -> None:
    with FakeServer(make_app(api_key="other-key")) as fake:
        [req] = build([fx.TRACK], endpoint=FAKE_BASE).requests
        status, body = send(req, fake.url)
        assert (status, orjson.loads(body)) == (400, {"code": 400, "error": "Invalid API key"})
        assert amplitude.classify(req, Response(status, {}, body)).verdict is Verdict.PERMANENT

    with FakeServer(make_app(api_key=KEY)) as fake:
        good = _batch()
        payload = orjson.loads(good.body)
        payload["events"][1]["time"] = "2026-11-22T20:05:51Z"  # ISO time: Amplitude answers 400
        payload["events"][4]["user_id"] = "null"
        bad = Request("POST", FAKE_BASE + "/2/httpapi", good.headers, orjson.dumps(payload), good.messages)
        status, body = send(bad, fake.url)
        assert status == 400
        assert orjson.loads(body) == {"code": 400, "error": "Invalid field values on some events",
                                      "events_with_invalid_fields": {"time": [1], "user_id": [4]}}
        assert fake.app["events"] == []  # nothing of a refused request is ingested
        out = amplitude.classify(bad, Response(status, {}, body))
        assert [out.for_message(i).verdict for i in range(3)] == [Verdict.RETRY, Verdict.PERMANENT, Verdict.PERMANENT]

        # the retried message alone then goes through
        [retry] = build([minimal("track", event="A", messageId="m-a")], endpoint=FAKE_BASE).requests
        assert send(retry, fake.url)[0] == 200

        fake.app["eps_threshold"] = 2
        [burst] = build([minimal("track", event="X", messageId=f"b-{i}") for i in range(3)],
                        endpoint=FAKE_BASE).requests
        status, body = send(burst, fake.url)
        answer = orjson.loads(body)
        assert status == 429 and answer["throttled_events"] == [0, 1,
                                                                2] and answer["throttled_users"] == {"user-0001": 3}
        out = amplitude.classify(burst, Response(status, {}, body))
        assert out.verdict is Verdict.RETRY and out.retry_after == 30

        missing = Request("POST", FAKE_BASE + "/usermap", {"Content-Type": "application/x-www-form-urlencoded"},
                          b"api_key=" + KEY.encode() + b"&mapping=%5B%7B%22user_id%22%3A%22a%22%7D%5D", (0,))
        status, body = send(missing, fake.url)
        assert status == 400 and b"global_user_id" in body
        assert amplitude.classify(missing, Response(status, {}, body)).verdict is Verdict.PERMANENT


def test_event_positions_do_not_confuse_a_message_id_ending_in_a_counter() -> None:
    # "m-x-1" looks like the first extra event of "m-x" but is a message of its own
    events = [minimal("track", event="A", messageId="m-x"), minimal("track", event="B", messageId="m-x-1")]
    [req] = build(events).requests
    assert amplitude.event_positions(req) == [0, 1]
    [order] = build([fx.ORDER_COMPLETED, fx.GROUP]).requests
    assert amplitude.event_positions(order) == [0, 0, 0, 1, 1]


# ---------------------------------------------------------------------------------------------
# strings over 1024 characters (Amplitude's documented limit): cut and noted, or rejected for ids
# ---------------------------------------------------------------------------------------------


def test_long_property_strings_are_cut_to_1024_and_noted() -> None:
    long = "x" * 1500
    built = build([
        minimal("track", event="Searched", properties={"query": long, "n": 1, "tags": ["a", long],
                                                       "deep": {"k": long}}),
        minimal("identify", messageId="m-2", traits={"bio": long, "plan": "pro"}),
        minimal("track", messageId="m-3", event="Fine", properties={"s": "y" * 1024}),
    ])
    assert not built.rejects
    [req] = built.requests
    track, ident, fine = orjson.loads(req.body)["events"]
    props = track["event_properties"]
    assert props == {"query": "x" * 1024, "n": 1, "tags": ["a", "x" * 1024], "deep": {"k": "x" * 1024}}
    assert ident["user_properties"]["$set"] == {"bio": "x" * 1024, "plan": "pro"}
    assert fine["event_properties"]["s"] == "y" * 1024  # exactly at the limit: untouched
    assert [(n.index, n.reason) for n in built.notes] == [
        (0, ("strings over 1024 characters cut to 1024 (Amplitude's limit): "
             "event_properties.query, event_properties.tags[1], event_properties.deep.k")),
        (1, "strings over 1024 characters cut to 1024 (Amplitude's limit): user_properties.$set.bio"),
    ]


@pytest.mark.parametrize(("fields", "what"), [
    ({"userId": "u" * 1025}, "user_id is 1025 characters"),
    ({"event": "E" * 1025}, "event_type is 1025 characters"),
    ({"messageId": "i" * 1025}, "insert_id is 1025 characters"),
    ({"context": {"groupId": "g" * 1025}}, "group 'company' is over 1024 characters"),
])
def test_identifying_strings_over_1024_are_rejected_not_cut(fields: dict[str, Any], what: str) -> None:
    built = build([{**minimal("track", event="X"), **fields}])
    assert not built.requests and not built.notes
    [reject] = built.rejects
    assert what in reject.reason


def test_alias_ids_over_1024_are_rejected() -> None:
    built = build([minimal("alias", previousId="p" * 2000)], user_mapping=True)
    assert not built.requests
    [reject] = built.rejects
    assert "alias id is over 1024" in reject.reason


def test_the_fake_refuses_strings_over_1024_and_accepts_what_the_adapter_cut() -> None:
    long = "z" * 3000
    with FakeServer(make_app(api_key=KEY)) as fake:
        [req] = build([minimal("track", event="Searched", properties={"query": long})], endpoint=FAKE_BASE).requests
        body = orjson.loads(req.body)
        body["events"][0]["event_properties"]["query"] = long  # what went out before the adapter cut it
        uncut = Request(req.method, req.url, req.headers, orjson.dumps(body), req.messages)
        status, answer = send(uncut, fake.url)
        assert status == 400
        assert orjson.loads(answer)["events_with_invalid_fields"] == {"event_properties": [0]}
        assert amplitude.classify(uncut, Response(status, {}, answer)).for_message(0).verdict is Verdict.PERMANENT

        status, _ = send(req, fake.url)
        assert status == 200
        assert fake.app["events"][0]["event_properties"]["query"] == "z" * 1024


def nested(depth: int) -> dict[str, Any]:
    """Properties ``depth`` objects deep, counting the properties object itself."""
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"n": value}
    return value


def test_properties_nested_over_40_objects_are_rejected() -> None:
    assert amplitude.object_depth(nested(40)) == 40
    ok = build([minimal("track", event="X", properties=nested(40))])
    assert not ok.rejects and len(ok.requests) == 1
    deep = build([minimal("track", event="X", properties=nested(41)),
                  minimal("identify", messageId="m-2", traits=nested(40))])  # inside $set: 41
    assert not deep.requests
    assert [(r.index, r.reason) for r in deep.rejects] == [
        (0, "event_properties are nested more than 40 objects deep; Amplitude accepts at most 40 layers"),
        (1, "user_properties are nested more than 40 objects deep; Amplitude accepts at most 40 layers"),
    ]


def test_the_fake_refuses_properties_nested_over_40_objects() -> None:
    with FakeServer(make_app(api_key=KEY)) as fake:
        [req] = build([minimal("track", event="X", properties=nested(40))], endpoint=FAKE_BASE).requests
        assert send(req, fake.url)[0] == 200
        body = orjson.loads(req.body)
        body["events"][0]["event_properties"] = {"more": body["events"][0]["event_properties"]}
        status, answer = send(Request(req.method, req.url, req.headers, orjson.dumps(body), req.messages), fake.url)
        assert status == 400 and orjson.loads(answer)["events_with_invalid_fields"] == {"event_properties": [0]}
