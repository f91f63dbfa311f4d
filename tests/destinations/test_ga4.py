"""GA4 Measurement Protocol adapter: golden requests, limits, skips/rejects, classification, and
every built request checked against the contract fake (collect + validation server)."""

from __future__ import annotations

import copy
import urllib.request
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from destinations import ga4
from destinations.base import Message, Request, Response, Verdict
from tests.fakes import ga4 as fake_ga4
from tests.fakes.base import FakeServer
from tests.fixtures import messages as fx

URL = "https://www.google-analytics.com/mp/collect?measurement_id=G-ABC123XYZ&api_secret=mp-secret-value-1"
HEADERS = {"Content-Type": "application/json"}
TS = 1795377951829000  # fixtures' timestamp 2026-11-22T20:05:51.829Z in microseconds
ANON = "5b1a3d4e-8f2c-4a7b-9e10-1234567890ab"
HEAD = {"client_id": ANON, "user_id": "user-1", "ip_override": "203.0.113.7"}


def settings(**extra: Any) -> ga4.Settings:
    return ga4.ADAPTER.validate_settings({**ga4.Settings.example, **extra})


def build(*events: dict[str, Any], **extra: Any):
    return ga4.build_requests([Message(e) for e in events], settings(**extra))


def only_request(*events: dict[str, Any], **extra: Any) -> tuple[Request, dict[str, Any]]:
    built = build(*events, **extra)
    assert not built.skips and not built.rejects, (built.skips, built.rejects)
    assert len(built.requests) == 1
    req = built.requests[0]
    assert (req.method, req.url, dict(req.headers)) == ("POST", URL if not extra else req.url, HEADERS)
    return req, orjson.loads(req.body)


def minimal(type_: str, **fields: Any) -> dict[str, Any]:
    return {"type": type_, "messageId": "m-1", "anonymousId": "anon-1",
            "timestamp": "2026-11-22T20:05:51.829Z", **fields}


# ---------------------------------------------------------------------------------------------
# identify / alias / screen: no GA4 equivalent
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("event", [minimal("identify", traits={}), fx.IDENTIFY], ids=["minimal", "full"])
def test_identify_is_skipped_with_a_reason(event) -> None:
    built = build(event)
    assert built.requests == [] and built.rejects == []
    assert [s.index for s in built.skips] == [0]
    assert "GA4 has no user-profile call" in built.skips[0].reason


@pytest.mark.parametrize("event", [minimal("alias", userId="u", previousId="p"), fx.ALIAS], ids=["minimal", "full"])
def test_alias_is_skipped_with_a_reason(event) -> None:
    built = build(event)
    assert built.requests == [] and len(built.skips) == 1
    assert "no alias/merge call" in built.skips[0].reason


@pytest.mark.parametrize("event", [minimal("screen", name="Home"), fx.SCREEN], ids=["minimal", "full"])
def test_screen_is_skipped_by_default(event) -> None:
    built = build(event)
    assert built.requests == [] and len(built.skips) == 1
    assert "screen_view" in built.skips[0].reason and "screen_event_name" in built.skips[0].reason


def test_screen_minimal_as_custom_event() -> None:
    built = build(minimal("screen", name="Home"), screen_event_name="app_screen")
    body = orjson.loads(built.requests[0].body)
    assert body == {"client_id": "anon-1", "events": [
        {"name": "app_screen", "params": {"screen_name": "Home", "engagement_time_msec": 1}, "timestamp_micros": TS}]}


def test_screen_full_as_custom_event() -> None:
    built = build(fx.SCREEN, screen_event_name="app_screen")
    req = built.requests[0]
    assert req.url == URL and req.messages == (0,)
    assert orjson.loads(req.body) == {**HEAD, "events": [
        {"name": "app_screen", "params": {"screen_name": "Home", "variant": "dark", "engagement_time_msec": 1},
         "timestamp_micros": TS}]}


def test_screen_event_name_must_be_a_valid_unreserved_name() -> None:
    for bad in ("screen_view", "1screen", "app screen", "ga_screen", "x" * 41):
        with pytest.raises(ValidationError):
            settings(screen_event_name=bad)


# ---------------------------------------------------------------------------------------------
# track, page, group
# ---------------------------------------------------------------------------------------------


def test_track_minimal() -> None:
    _, body = only_request(minimal("track", event="Clicked"))
    assert body == {"client_id": "anon-1", "events": [
        {"name": "Clicked", "params": {"engagement_time_msec": 1}, "timestamp_micros": TS}]}


def test_track_full_signed_up_maps_to_sign_up() -> None:
    req, body = only_request(fx.TRACK)
    assert req.messages == (0,)
    assert body == {**HEAD, "events": [{
        "name": "sign_up",
        "params": {"plan": "pro", "trial": True, "seats": 3, "engagement_time_msec": 1},
        "timestamp_micros": TS,
    }]}


def test_page_minimal() -> None:
    _, body = only_request(minimal("page", context={"page": {"url": "https://a.example/x"}}))
    assert body == {"client_id": "anon-1", "events": [
        {"name": "page_view", "params": {"page_location": "https://a.example/x", "engagement_time_msec": 1},
         "timestamp_micros": TS}]}


def test_page_full() -> None:
    event = copy.deepcopy(fx.PAGE)
    event["properties"]["plan"] = "pro"
    event["integrations"] = {"Google Analytics 4": {"clientId": "123.456", "sessionId": 1795377000}}
    event["context"]["device"] = {"adTrackingEnabled": False}
    _, body = only_request(event)
    assert body == {
        "client_id": "123.456", "user_id": "user-1", "ip_override": "203.0.113.7", "non_personalized_ads": True,
        "events": [{
            "name": "page_view",
            "params": {"page_location": "https://shop.example.com/pricing?a=1", "page_title": "Pricing",
                       "page_referrer": "https://example.org/", "campaign": "spring", "source": "newsletter",
                       "medium": "email", "plan": "pro", "session_id": 1795377000, "engagement_time_msec": 1},
            "timestamp_micros": TS,
        }],
    }


def test_group_minimal() -> None:
    _, body = only_request(minimal("group", groupId="g-1"))
    assert body == {"client_id": "anon-1", "events": [
        {"name": "join_group", "params": {"group_id": "g-1", "engagement_time_msec": 1}, "timestamp_micros": TS}]}


def test_group_full_sends_no_traits() -> None:
    _, body = only_request(fx.GROUP)
    assert body == {**HEAD, "events": [
        {"name": "join_group", "params": {"group_id": "acct-42", "engagement_time_msec": 1}, "timestamp_micros": TS}]}


def test_group_without_group_id_is_rejected() -> None:
    built = build(minimal("group"))
    assert built.requests == [] and "groupId" in built.rejects[0].reason


# ---------------------------------------------------------------------------------------------
# ecommerce
# ---------------------------------------------------------------------------------------------


def test_order_completed_with_several_products_is_a_purchase() -> None:
    _, body = only_request(fx.ORDER_COMPLETED)
    assert body == {**HEAD, "events": [{
        "name": "purchase",
        "params": {
            "transaction_id": "ord-1001", "affiliation": "web", "coupon": "SPRING", "shipping": 3.0, "tax": 2.0,
            "value": 25.0, "currency": "EUR",
            "items": [
                {"item_id": "p-1", "item_name": "Mug", "item_category": "Kitchen", "price": 10.0, "quantity": 2},
                {"item_id": "p-2", "item_name": "Tea", "item_brand": "Leaf", "price": 5.0, "quantity": 1},
            ],
            "checkout_id": "chk-1", "discount": 2.5, "engagement_time_msec": 1,
        },
        "timestamp_micros": TS,
    }]}


def test_order_refunded_is_a_refund() -> None:
    _, body = only_request(fx.ORDER_REFUNDED)
    assert body == {**HEAD, "events": [{
        "name": "refund",
        "params": {"transaction_id": "ord-1001", "value": 27.5, "currency": "EUR", "engagement_time_msec": 1},
        "timestamp_micros": TS,
    }]}


def test_partial_refund_carries_items() -> None:
    event = minimal("track", event="Order Refunded", properties={
        "order_id": 77, "products": [{"product_id": "p-1", "price": 10, "quantity": 1}]})
    _, body = only_request(event)
    assert body["events"][0]["params"] == {
        "transaction_id": "77", "value": 10.0, "currency": "USD",
        "items": [{"item_id": "p-1", "price": 10.0, "quantity": 1}], "engagement_time_msec": 1}


def test_revenue_without_products_becomes_value_and_currency() -> None:
    _, body = only_request(fx.REVENUE_NO_PRODUCTS)
    assert body == {**HEAD, "events": [{
        "name": "Upgraded_Plan",
        "params": {"value": 99.0, "currency": "USD", "plan": "pro", "engagement_time_msec": 1},
        "timestamp_micros": TS,
    }]}


def test_currency_defaults_to_usd_and_is_upper_cased() -> None:
    _, body = only_request(minimal("track", event="Order Completed", properties={"order_id": "o", "revenue": "12.5"}))
    assert body["events"][0]["params"] == {"transaction_id": "o", "value": 12.5, "currency": "USD",
                                           "engagement_time_msec": 1}
    _, body = only_request(minimal("track", event="Order Completed",
                                   properties={"order_id": "o", "total": 3, "currency": "gbp"}))
    assert body["events"][0]["params"]["currency"] == "GBP"


def test_purchase_without_order_id_is_rejected() -> None:
    built = build(minimal("track", event="Order Completed", properties={"revenue": 3}))
    assert built.requests == [] and "transaction_id" in built.rejects[0].reason


def test_product_added_builds_the_item_from_the_properties() -> None:
    event = minimal("track", event="Added Product", properties={  # v1 alias
        "product_id": "p-9", "sku": "S-9", "name": "Lamp", "price": 12.5, "quantity": 2, "brand": "Lux",
        "variant": "red", "position": 3, "url": "https://x/p-9", "image_url": "https://x/p-9.png", "cart_id": "c-1"})
    _, body = only_request(event)
    assert body["events"][0] == {"name": "add_to_cart", "params": {
        "value": 25.0, "currency": "USD",
        "items": [{"item_id": "p-9", "item_name": "Lamp", "index": 3, "item_brand": "Lux", "item_variant": "red",
                   "price": 12.5, "quantity": 2}],
        "cart_id": "c-1", "engagement_time_msec": 1}, "timestamp_micros": TS}


def test_product_list_viewed_and_search_and_promotion_and_share_parameters() -> None:
    events = [
        minimal("track", event="Product List Viewed", properties={
            "list_id": "hot", "category": "Deals", "products": [{"product_id": "a"}, {"sku": "b", "name": "B"}]}),
        minimal("track", event="Products Searched", properties={"query": "blue mug"}),
        minimal("track", event="Promotion Clicked", properties={
            "promotion_id": "pr1", "name": "Spring", "creative": "banner", "position": "top"}),
        minimal("track", event="Cart Shared", properties={"share_via": "email", "cart_id": "c-7"}),
        minimal("track", event="Checkout Step Completed", properties={"step": 2, "shipping_method": "DHL"}),
        minimal("track", event="Checkout Step Completed", properties={"step": 3, "payment_method": "card"}),
        minimal("track", event="Checkout Step Completed", properties={"step": 1}),
    ]
    built = build(*events)
    body = orjson.loads(built.requests[0].body)
    got = [(e["name"], e["params"]) for e in body["events"]]
    assert got == [
        ("view_item_list", {"item_list_id": "hot", "item_list_name": "Deals",
                            "items": [{"item_id": "a"}, {"item_id": "b", "item_name": "B"}],
                            "engagement_time_msec": 1}),
        ("search", {"search_term": "blue mug", "engagement_time_msec": 1}),
        ("select_promotion", {"promotion_id": "pr1", "promotion_name": "Spring", "creative_name": "banner",
                              "creative_slot": "top", "engagement_time_msec": 1}),
        ("share", {"method": "email", "content_type": "cart", "item_id": "c-7", "engagement_time_msec": 1}),
        ("add_shipping_info", {"shipping_tier": "DHL", "step": 2, "engagement_time_msec": 1}),
        ("add_payment_info", {"payment_type": "card", "step": 3, "engagement_time_msec": 1}),
        ("Checkout_Step_Completed", {"step": 1, "engagement_time_msec": 1}),
    ]


@pytest.mark.parametrize("segment,expected", [
    ("Products Searched", "search"), ("Product List Viewed", "view_item_list"),
    ("Promotion Viewed", "view_promotion"), ("Promotion Clicked", "select_promotion"),
    ("Product Clicked", "select_item"), ("Product Viewed", "view_item"), ("Product Added", "add_to_cart"),
    ("Product Removed", "remove_from_cart"), ("Cart Viewed", "view_cart"), ("Checkout Started", "begin_checkout"),
    ("Payment Info Entered", "add_payment_info"), ("Order Completed", "purchase"), ("Order Refunded", "refund"),
    ("Product Added to Wishlist", "add_to_wishlist"), ("Product Shared", "share"), ("Cart Shared", "share"),
    # v1 aliases and case-insensitivity
    ("Viewed Product", "view_item"), ("Clicked Product", "select_item"), ("Added Product", "add_to_cart"),
    ("Removed Product", "remove_from_cart"), ("Started Order", "begin_checkout"), ("Completed Order", "purchase"),
    ("Viewed Product Category", "view_item_list"), ("order completed", "purchase"),
    # non-ecommerce recommended events
    ("Signed In", "login"), ("Signed Up", "sign_up"), ("Generate Lead", "generate_lead"),
    # ecommerce events with no GA4 counterpart stay custom, sanitised
    ("Order Cancelled", "Order_Cancelled"), ("Coupon Applied", "Coupon_Applied"),
    ("Product Removed from Wishlist", "Product_Removed_from_Wishlist"),
])
def test_event_name_table(segment: str, expected: str) -> None:
    event = minimal("track", event=segment, properties={"order_id": "o1", "product_id": "p1"})
    _, body = only_request(event)
    assert body["events"][0]["name"] == expected


@pytest.mark.parametrize("raw,expected", [
    ("Viewed Docs", "Viewed_Docs"), ("  2FA: enabled!  ", "FA_enabled"), ("a-b.c/d", "a_b_c_d"),
    ("Ünïcode Évent", "Unicode_Event"), ("日本 Event", "Event"), ("x" * 60, "x" * 40),
                                          ("already_fine_1", "already_fine_1"),
])
def test_custom_event_names_are_sanitised(raw: str, expected: str) -> None:
    _, body = only_request(minimal("track", event=raw))
    assert body["events"][0]["name"] == expected


@pytest.mark.parametrize("raw", ["Session Start", "first_visit", "ga_custom", "Firebase Thing", "!!!", ""])
def test_reserved_or_empty_event_names_are_rejected(raw: str) -> None:
    built = build(minimal("track", event=raw))
    assert built.requests == [] and len(built.rejects) == 1 and built.rejects[0].reason


# ---------------------------------------------------------------------------------------------
# GA4 limits enforced before sending
# ---------------------------------------------------------------------------------------------


def test_parameters_are_capped_at_25_keeping_mapped_session_and_engagement() -> None:
    props = {f"p{n:02d}": n for n in range(40)}
    props["session_id"] = "s-1"
    _, body = only_request(minimal("track", event="Big", properties=props))
    params = body["events"][0]["params"]
    assert len(params) == 25
    assert list(params)[:23] == [f"p{n:02d}" for n in range(23)]
    assert params["session_id"] == "s-1" and params["engagement_time_msec"] == 1


def test_parameter_names_and_values_follow_ga4_rules() -> None:
    props = {"long text": "y" * 150, "nested": {"a": 1, "b": {"c": "d"}}, "list": [1, 2], "none": None,
             "google_x": 1, "ga_y": 2, "_private": 3, "url": "u" * 2000, "n" * 50: "v", "nan": float("nan")}
    _, body = only_request(minimal("track", event="Rules", properties=props))
    params = body["events"][0]["params"]
    assert params == {"long_text": "y" * 100, "nested_a": 1, "nested_b_c": "d", "private": 3,
                      "url": "u" * 100, "n" * 40: "v", "engagement_time_msec": 1}


def test_page_location_keeps_1000_characters() -> None:
    url = "https://x.example/" + "a" * 1200
    _, body = only_request(minimal("page", properties={"url": url, "title": "t" * 400, "referrer": "r" * 500}))
    params = body["events"][0]["params"]
    assert params["page_location"] == url[:1000]
    assert params["page_title"] == "t" * 300 and params["page_referrer"] == "r" * 420


def test_user_properties_from_allowed_traits_and_explicit_user_properties() -> None:
    event = minimal("track", event="X", context={"traits": {"plan": "pro", "email": "ada@example.com", "seats": 4}},
                    properties={"user_properties": {"tier": "gold", "user_id": "no",
                                                    "way_too_long_user_property_name": 1,
                                                    "long_value": "z" * 37, "ok": {"value": 5}, "bad-name": 1}})
    _, body = only_request(event, user_property_traits=["plan", "seats", "missing"])
    assert body["user_properties"] == {"plan": {"value": "pro"}, "seats": {"value": 4},
                                       "tier": {"value": "gold"}, "ok": {"value": 5}}
    assert "user_properties" not in body["events"][0]["params"]


def test_25_events_per_request_and_one_request_per_identity() -> None:
    many = [minimal("track", event="E", messageId=f"m{n}") for n in range(60)]
    other = minimal("track", event="E", messageId="x", anonymousId="anon-2")
    built = build(*many, other)
    assert [len(r.messages) for r in built.requests] == [25, 25, 10, 1]
    assert built.requests[0].messages == tuple(range(25))
    assert built.requests[3].messages == (60,)
    assert orjson.loads(built.requests[3].body)["client_id"] == "anon-2"


def test_body_stays_under_130kb() -> None:
    products = [{"product_id": f"p{n}", "name": "n" * 90, "category": "c" * 90, "brand": "b" * 90, "price": 1}
                for n in range(80)]
    events = [minimal("track", event="Cart Viewed", messageId=f"m{n}", properties={"products": products})
              for n in range(10)]
    built = build(*events)
    assert len(built.requests) > 1
    assert sum(len(r.messages) for r in built.requests) == 10
    assert all(len(r.body) < 130_000 for r in built.requests)


def test_an_event_too_big_for_one_request_is_rejected() -> None:
    # 200 items (the most GA4 keeps) with every item field at its 100-character limit
    products = [{"product_id": f"p{n}".ljust(100, "i"), **{k: k[0] * 100 for k in (
        "name", "affiliation", "coupon", "brand", "category", "variant")}} for n in range(200)]
    built = build(minimal("track", event="Cart Viewed", properties={"products": products}))
    assert built.requests == [] and "130000" in built.rejects[0].reason


def test_events_backdated_more_than_72_hours_are_rejected() -> None:
    old = minimal("track", event="Old", timestamp="2026-11-18T20:00:00.000Z", receivedAt="2026-11-22T20:00:00.000Z")
    recent = minimal("track", event="Recent", timestamp="2026-11-20T20:00:00.000Z",
                     receivedAt="2026-11-22T20:00:00.000Z")
    built = build(old, recent)
    assert [r.index for r in built.rejects] == [0] and "72 hours" in built.rejects[0].reason
    assert built.requests[0].messages == (1,)


def test_user_id_over_256_characters_is_rejected() -> None:
    built = build(minimal("track", event="E", userId="u" * 257))
    assert built.requests == [] and "256" in built.rejects[0].reason


def test_user_id_is_the_client_id_when_there_is_no_anonymous_id() -> None:
    _, body = only_request({"type": "track", "event": "E", "userId": "u-1", "messageId": "m"})
    assert body == {"client_id": "u-1", "user_id": "u-1", "events": [
        {"name": "E", "params": {"engagement_time_msec": 1}}]}


def test_engagement_time_setting_and_property() -> None:
    _, body = only_request(minimal("track", event="E"), engagement_time_msec=None)
    assert body["events"][0]["params"] == {}
    _, body = only_request(minimal("track", event="E", properties={"engagement_time_msec": 2500}))
    assert body["events"][0]["params"] == {"engagement_time_msec": 2500}


# ---------------------------------------------------------------------------------------------
# URLs, secrets, settings
# ---------------------------------------------------------------------------------------------


def test_urls_for_region_endpoint_and_validation_server() -> None:
    event = minimal("track", event="E")
    assert build(event, region="eu").requests[0].url == (
        "https://region1.google-analytics.com/mp/collect?measurement_id=G-ABC123XYZ&api_secret=mp-secret-value-1")
    assert build(event, endpoint="http://127.0.0.1:9/ga/").requests[0].url == (
        "http://127.0.0.1:9/ga/mp/collect?measurement_id=G-ABC123XYZ&api_secret=mp-secret-value-1")
    assert build(event, debug_validation=True).requests[0].url == (
        "https://www.google-analytics.com/debug/mp/collect?measurement_id=G-ABC123XYZ&api_secret=mp-secret-value-1")
    assert build(event, api_secret="a&b=c").requests[0].url.endswith("api_secret=a%26b%3Dc")


def test_api_secret_is_redacted_from_the_request_repr() -> None:
    req = build(minimal("track", event="E")).requests[0]
    assert "mp-secret-value-1" in req.url  # the vendor only takes it there
    assert "mp-secret-value-1" not in repr(req)
    assert "api_secret=***" in repr(req) and "measurement_id=G-ABC123XYZ" in repr(req)


def test_measurement_id_must_be_a_web_stream_id() -> None:
    with pytest.raises(ValidationError):
        settings(measurement_id="UA-1234-1")


# ---------------------------------------------------------------------------------------------
# classify
# ---------------------------------------------------------------------------------------------

REQ = Request("POST", URL, HEADERS, b"{}", (4, 7, 9))
DEBUG_REQ = Request("POST", URL.replace("/mp/", "/debug/mp/"), HEADERS, b"{}", (4, 7, 9))


def test_collect_answers_2xx_even_for_bad_payloads_so_2xx_is_ok() -> None:
    assert ga4.classify(REQ, Response(204, {}, b"")).verdict is Verdict.OK
    assert ga4.classify(REQ, Response(500, {}, b"")).verdict is Verdict.RETRY
    assert ga4.classify(REQ, Response(429, {"Retry-After": "3"}, b"")).retry_after == 3


def test_validation_messages_fail_the_events_they_name() -> None:
    body = orjson.dumps({"validationMessages": [
        {"fieldPath": "events", "validationCode": "NAME_INVALID",
         "description": "Event at index: [1] has invalid name [_badEventName]. "
                        "Names must start with an alphabetic character."},
        {"fieldPath": "events[2].params.currency", "validationCode": "VALUE_REQUIRED",
         "description": "currency needed"},
    ]})
    out = ga4.classify(DEBUG_REQ, Response(200, {}, body))
    assert out.verdict is Verdict.OK
    assert out.for_message(4).verdict is Verdict.OK
    assert out.for_message(7).verdict is Verdict.PERMANENT and "NAME_INVALID" in out.for_message(7).reason
    assert out.for_message(9).verdict is Verdict.PERMANENT and "currency" in out.for_message(9).reason


def test_validation_message_about_the_request_fails_all_and_empty_means_valid() -> None:
    body = orjson.dumps({"validationMessages": [
        {"fieldPath": "client_id", "validationCode": "VALUE_REQUIRED", "description": "client_id is required"}]})
    out = ga4.classify(DEBUG_REQ, Response(200, {}, body))
    assert out.verdict is Verdict.PERMANENT and "client_id" in out.reason
    assert ga4.classify(DEBUG_REQ, Response(200, {}, b'{"validationMessages":[]}')).verdict is Verdict.OK
    assert ga4.classify(DEBUG_REQ, Response(200, {}, b"<html>")).verdict is Verdict.PERMANENT


# ---------------------------------------------------------------------------------------------
# against the contract fake
# ---------------------------------------------------------------------------------------------

EXTRA = [
    minimal("track", event="Product Viewed", messageId="e1", properties={"product_id": "p", "price": "9.5"}),
    minimal("track", event="Product List Viewed", messageId="e2",
            properties={"list_id": "l",
                        "products": [{"product_id": "a", "price": 1}, {"name": "B"}, {"brand": "no id"}]}),
    minimal("track", event="Checkout Started", messageId="e3",
            properties={"order_id": "o", "value": 5, "products": [{"sku": "s", "quantity": "3", "price": 1}]}),
    minimal("track", event="Order Completed", messageId="e4",
            properties={"order_id": "o2", "products": [{"product_id": "a", "price": 2, "quantity": 2}],
                        "currency": "xx"}),
    minimal("track", event="Weird: event / name", messageId="e5",
            properties={"k" * 45: "v" * 300, "obj": {"deep": {"er": [1]}}, **{f"c{n}": n for n in range(30)}}),
    minimal("track", event="With User Props", messageId="e6",
            properties={"user_properties": {"tier": "gold", "first_visit_time": 1, "x" * 30: 1}}),
    minimal("screen", name="Settings", messageId="e7"),
]


def _post(url: str, body: bytes) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, headers=HEADERS, method="POST")
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.status, r.read()


def test_every_built_request_is_accepted_by_the_fake_and_passes_the_validation_server() -> None:
    events = fx.ALL + EXTRA
    with FakeServer(fake_ga4.make_app()) as fake:
        for debug in (False, True):
            built = build(*events, endpoint=fake.url, screen_event_name="app_screen", debug_validation=debug,
                          user_property_traits=["plan"])
            assert not built.rejects, built.rejects
            sent = 0
            for req in built.requests:
                status, payload = _post(req.url, req.body)
                if debug:
                    assert status == 200 and orjson.loads(payload) == {"validationMessages": []}
                    assert ga4.classify(req, Response(status, {}, payload)).verdict is Verdict.OK
                else:
                    assert status == 204
                sent += len(req.messages)
            assert sent == len(events) - 2  # identify and alias are skipped
        app = fake.app
        assert app["dropped"] == []
        assert len(app["accepted"]) == len(events) - 2
        names = [e["name"] for e in app["accepted"]]
        assert {"purchase", "refund", "page_view", "join_group", "app_screen", "view_item",
                "Upgraded_Plan"} <= set(names)


def test_the_fake_drops_invalid_payloads_silently_and_the_validation_server_explains() -> None:
    bad = orjson.dumps({"client_id": "c", "events": [{"name": "_badEventName", "params": {}}]})
    with FakeServer(fake_ga4.make_app()) as fake:
        status, payload = _post(fake.url + "/mp/collect?measurement_id=G-ABC123XYZ&api_secret=mp-secret-value-1", bad)
        assert status == 204 and payload == b""
        assert fake.app["accepted"] == [] and len(fake.app["dropped"]) == 1
        status, payload = _post(fake.url + "/debug/mp/collect?measurement_id=G-ABC123XYZ&api_secret=x", bad)
        assert status == 200
        assert orjson.loads(payload) == {"validationMessages": [{
            "fieldPath": "events",
            "description": "Event at index: [0] has invalid name [_badEventName]. "
                           "Names must start with an alphabetic character.",
            "validationCode": "NAME_INVALID"}]}
        # a good payload with the wrong secret is dropped too (still 2xx)
        good = build(minimal("track", event="E"), endpoint=fake.url, api_secret="wrong").requests[0]
        assert _post(good.url, good.body)[0] == 204
        assert fake.app["accepted"] == [] and len(fake.app["dropped"]) == 2


@pytest.mark.parametrize("body,code", [
    ({"events": [{"name": "e"}]}, "VALUE_REQUIRED"),
    ({"client_id": "c", "events": [{"name": "e"}] * 26}, "EXCEEDED_MAX_ENTITIES"),
    ({"client_id": "c", "events": [{"name": "session_start"}]}, "NAME_RESERVED"),
    ({"client_id": "c", "events": [{"name": "e", "params": {f"p{n}": n for n in range(26)}}]}, "EXCEEDED_MAX_ENTITIES"),
    ({"client_id": "c", "events": [{"name": "e", "params": {"v": "x" * 101}}]}, "VALUE_OUT_OF_BOUNDS"),
    ({"client_id": "c", "events": [{"name": "e", "params": {"v": [1]}}]}, "VALUE_INVALID"),
    ({"client_id": "c", "events": [{"name": "e", "params": {"value": 3}}]}, "VALUE_REQUIRED"),
    ({"client_id": "c", "events": [{"name": "e", "params": {"items": [{"price": 1}]}}]}, "VALUE_REQUIRED"),
    ({"client_id": "c", "events": [{"name": "e", "params": {"items": [{"item_id": "a", "price": "$19"}]}}]},
     "VALUE_INVALID"),
    ({"client_id": "c", "user_properties": {"user_id": {"value": 1}}, "events": [{"name": "e"}]}, "NAME_RESERVED"),
])
def test_the_validation_server_fake_enforces_documented_limits(body: dict, code: str) -> None:
    messages = fake_ga4.validate(orjson.dumps(body))
    assert code in [m["validationCode"] for m in messages], messages


def test_more_than_200_items_sends_the_first_200_and_notes_the_truncation() -> None:
    products = [{"product_id": f"p{n}", "name": f"P{n}", "price": 1.5, "quantity": 1} for n in range(230)]
    order = minimal("track", event="Order Completed",
                    properties={"order_id": "o-1", "revenue": 345.0, "currency": "EUR", "products": products})
    built = build(order)
    assert not built.skips and not built.rejects
    assert [(n.index, n.reason) for n in built.notes] == [(0, (
        "items truncated: 230 products, GA4 keeps 200 per event; sent the first 200 "
        "(value and currency are the whole order's)"))]
    [req] = built.requests
    params = orjson.loads(req.body)["events"][0]["params"]
    assert [i["item_id"] for i in params["items"]] == [f"p{n}" for n in range(200)]
    assert (params["value"], params["currency"], params["transaction_id"]) == (345.0, "EUR", "o-1")
    # Google's rule, as the fake enforces it: the built request is kept whole
    with FakeServer(fake_ga4.make_app()) as fake:
        req = build(order, endpoint=fake.url).requests[0]
        assert _post(req.url, req.body)[0] == 204
        assert fake.app["dropped"] == [] and len(fake.app["accepted"]) == 1
        # ...while the untruncated event would have been cut by Google without a word
        untruncated = orjson.loads(req.body)
        untruncated["events"][0]["params"]["items"] = [{"item_id": f"p{n}"} for n in range(230)]
        assert _post(req.url, orjson.dumps(untruncated))[0] == 204
        assert len(fake.app["dropped"]) == 1


def test_200_items_exactly_is_sent_without_a_note() -> None:
    products = [{"product_id": f"p{n}"} for n in range(200)]
    built = build(minimal("track", event="Product List Viewed", properties={"products": products}))
    assert built.notes == [] and len(orjson.loads(built.requests[0].body)["events"][0]["params"]["items"]) == 200
