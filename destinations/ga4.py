"""Google Analytics 4 through the Measurement Protocol (web data streams).

API: POST {endpoint}/mp/collect?measurement_id=G-XXXX&api_secret=... with a JSON body
``{"client_id", "user_id", "ip_override", "non_personalized_ads", "user_properties", "events": [...]}``.
Docs: https://developers.google.com/analytics/devguides/collection/protocol/ga4/reference ,
…/ga4/sending-events, …/ga4/validating-events. Hosts: https://www.google-analytics.com (global),
https://region1.google-analytics.com (EU data collection).

Auth: ``api_secret`` and ``measurement_id`` are query parameters; there is no header form. The
secret therefore has to be in the URL (the vendor requires it); ``Request.__repr__`` redacts
``api_secret`` so it never reaches logs, and nothing else here prints URLs.

Limits (…/ga4/sending-events "Limitations"), enforced before sending: 25 events per request,
25 parameters per event, parameter names 40 characters ``[A-Za-z][A-Za-z0-9_]*``, parameter values
100 characters (page_location 1000, page_referrer 420, page_title 300), event names 40 characters
of the same alphabet and not reserved, 25 user properties (names 24, values 36 characters),
user_id 256 characters, body < 130 kB, timestamps at most 72 hours in the past.

The collect endpoint answers 2xx to everything, even to payloads it drops, so every payload is
validated and repaired here (names sanitised, long values truncated, extra parameters dropped),
and what cannot be repaired is rejected with a reason instead of vanishing at Google.
``debug_validation: true`` sends to the validation server ``/debug/mp/collect`` instead: nothing
is recorded and every event Google reports in ``validationMessages`` fails with that message —
for checking a configuration, never for production.

Call mapping:
    track     ecommerce v2 (and v1 aliases) -> GA4 recommended events (ECOMMERCE_TO_GA4) with
              items[], value, currency, transaction_id...; other names -> a custom event with
              the name sanitised to GA4's rules; properties -> event parameters
    page      page_view (page_location, page_title, page_referrer, campaign fields)
    group     join_group (group_id)
    screen    skipped (screen_view is reserved for the Firebase SDK) unless ``screen_event_name``
    identify  skipped: GA4 has no profile-only call, user properties only ride on events, and a
              stateless relay cannot hold traits for a later event
    alias     skipped: GA4 has no alias/merge call
client_id: ``integrations["Google Analytics 4"].clientId``, else anonymousId, else userId.
user_id: userId. Dedup: the Measurement Protocol has no event id, so a retried request can
double-count (only ``purchase`` is deduplicated by Google, on transaction_id).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any, Literal
from urllib.parse import quote

from pydantic import AnyHttpUrl, Field, SecretStr, field_validator

from destinations import semantic
from destinations.base import (
    Adapter,
    BatchLimits,
    Built,
    DestinationSettings,
    Message,
    MessageOutcome,
    Outcome,
    Reject,
    Request,
    Response,
    Skip,
    Verdict,
    chunk_by_limits,
    default_classify,
    json_body,
)

HOSTS = {"global": "https://www.google-analytics.com", "eu": "https://region1.google-analytics.com"}
INTEGRATION_NAMES = ("Google Analytics 4", "Google Analytics 4 Cloud", "Google Analytics 4 Web")

MAX_EVENTS_PER_REQUEST = 25
MAX_BODY_BYTES = 130_000  # "must be less than 130kB"
MAX_PARAMS = 25
MAX_ITEMS = 200  # "Each event can have up to 200 items"; Google drops the rest silently
MAX_NAME = 40
MAX_VALUE = 100
LONG_VALUES = {"page_location": 1000, "page_referrer": 420, "page_title": 300}
MAX_USER_PROPERTIES = 25
MAX_USER_PROPERTY_NAME = 24
MAX_USER_PROPERTY_VALUE = 36
MAX_USER_ID = 256
MAX_BACKDATE_MICROS = 72 * 3600 * 1_000_000

# Names the Measurement Protocol refuses (…/ga4/reference#reserved_names).
RESERVED_EVENT_NAMES = frozenset({
    "ad_activeview", "ad_click", "ad_exposure", "ad_impression", "ad_query", "adunit_exposure",
    "app_clear_data", "app_install", "app_update", "app_remove", "error", "first_open",
    "first_visit", "in_app_purchase", "notification_dismiss", "notification_foreground",
    "notification_open", "notification_receive", "os_update", "screen_view", "session_start",
    "user_engagement",
})
RESERVED_PREFIXES = ("google_", "ga_", "firebase_")
RESERVED_USER_PROPERTIES = frozenset({
    "first_open_time", "first_visit_time", "last_deep_link_referrer", "user_id",
    "first_open_after_install",
})
NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_INVALID_RUN = re.compile(r"[^A-Za-z0-9_]+")

# Segment ecommerce v2 (canonical names, v1 aliases resolved by semantic.canonical_event) -> GA4
# recommended events. "Checkout Step Completed" is resolved per event (see _ga4_name).
ECOMMERCE_TO_GA4: dict[str, str] = {
    "Products Searched": "search",
    "Product List Viewed": "view_item_list",
    "Promotion Viewed": "view_promotion",
    "Promotion Clicked": "select_promotion",
    "Product Clicked": "select_item",
    "Product Viewed": "view_item",
    "Product Added": "add_to_cart",
    "Product Removed": "remove_from_cart",
    "Cart Viewed": "view_cart",
    "Checkout Started": "begin_checkout",
    "Payment Info Entered": "add_payment_info",
    "Order Completed": "purchase",
    "Order Refunded": "refund",
    "Product Added to Wishlist": "add_to_wishlist",
    "Product Shared": "share",
    "Cart Shared": "share",
}
# Segment B2B SaaS spec names (and the plain forms RudderStack accepts), case-insensitive.
OTHER_TO_GA4: dict[str, str] = {
    "signed in": "login", "login": "login",
    "signed up": "sign_up", "sign up": "sign_up",
    "generate lead": "generate_lead",
}

# properties key -> GA4 parameter, per GA4 event.
EVENT_PARAMS: dict[str, tuple[tuple[str, str], ...]] = {
    "purchase": (("order_id", "transaction_id"), ("affiliation", "affiliation"), ("coupon", "coupon"),
                 ("shipping", "shipping"), ("tax", "tax")),
    "refund": (("order_id", "transaction_id"), ("affiliation", "affiliation"), ("coupon", "coupon"),
               ("shipping", "shipping"), ("tax", "tax")),
    "view_item_list": (("list_id", "item_list_id"), ("category", "item_list_name")),
    "select_item": (("list_id", "item_list_id"),),
    "search": (("query", "search_term"),),
    "view_promotion": (("promotion_id", "promotion_id"), ("name", "promotion_name"),
                       ("creative", "creative_name"), ("position", "creative_slot")),
    "select_promotion": (("promotion_id", "promotion_id"), ("name", "promotion_name"),
                         ("creative", "creative_name"), ("position", "creative_slot")),
    "begin_checkout": (("coupon", "coupon"),),
    "view_cart": (("coupon", "coupon"),),
    "add_payment_info": (("coupon", "coupon"), ("payment_method", "payment_type")),
    "add_shipping_info": (("coupon", "coupon"), ("shipping_method", "shipping_tier")),
    "share": (("share_via", "method"),),
    "login": (("method", "method"),),
    "sign_up": (("method", "method"),),
}
NUMERIC_PARAMS = frozenset({"shipping", "tax"})
# Single-product events build items[0] from the properties themselves.
SINGLE_PRODUCT = frozenset({"select_item", "view_item", "add_to_cart", "remove_from_cart", "add_to_wishlist"})
ITEM_FIELDS = (("name", "item_name"), ("affiliation", "affiliation"), ("coupon", "coupon"),
               ("discount", "discount"), ("position", "index"), ("brand", "item_brand"),
               ("category", "item_category"), ("variant", "item_variant"))
PAGE_KEYS = ("url", "title", "referrer", "path", "search")
CAMPAIGN_PARAMS = {"name": "campaign", "source": "source", "medium": "medium", "term": "term",
                   "content": "content", "id": "campaign_id"}


def sanitize_name(raw: Any, max_length: int = MAX_NAME) -> str | None:
    """A name made valid for GA4: accents dropped, runs of characters outside ``[A-Za-z0-9_]`` become ``_``,
    leading non-letters and trailing ``_`` go, cut to ``max_length``. None when nothing is left."""
    if not isinstance(raw, str):
        return None
    # Accented letters keep their base letter (é -> e) rather than becoming "_".
    text = "".join(c for c in unicodedata.normalize("NFKD", raw.strip()) if not unicodedata.combining(c))
    text = _INVALID_RUN.sub("_", text)
    text = re.sub(r"^[^A-Za-z]+", "", text)
    text = text[:max_length].rstrip("_")
    return text or None


def _reserved_name(name: str) -> str | None:
    lowered = name.lower()
    if lowered in RESERVED_EVENT_NAMES:
        return f"{name!r} is a reserved GA4 event name"
    for prefix in RESERVED_PREFIXES:
        if lowered.startswith(prefix):
            return f"{name!r} starts with the reserved prefix {prefix!r}"
    return None


class Settings(DestinationSettings):
    type: Literal["ga4"] = Field("ga4", description="Adapter type.")
    measurement_id: str = Field(
        pattern=r"^G-[A-Z0-9]+$",
        description="Measurement ID of the GA4 web data stream (Admin > Data streams > stream > Measurement ID, "
                    "`G-XXXXXXX`).",
    )
    api_secret: SecretStr = Field(
        description="Measurement Protocol API secret of that stream (Admin > Data streams > stream > Measurement "
                    "Protocol API secrets). GA4 only takes it as a URL query parameter; trackrelay redacts it from "
                    "logs.",
    )
    region: Literal["global", "eu"] = Field(
        "global", description="`eu` collects through region1.google-analytics.com (EU data collection); used when "
                              "`endpoint` is not set."
    )
    endpoint: AnyHttpUrl | None = Field(
        None, description="Base URL of the Measurement Protocol host (default: the region's Google host); /mp/collect "
                          "is appended."
    )
    debug_validation: bool = Field(
        False,
        description="Send to the validation server (/debug/mp/collect) instead of /mp/collect: nothing is recorded in "
                    "GA4, and every event Google reports in validationMessages fails with that message. For checking a "
                    "setup, not for production.",
    )
    engagement_time_msec: int | None = Field(
        1, ge=1,
        description="engagement_time_msec put on events that carry none (GA4 needs it to count the user as active, "
                    "e.g. in Realtime); null to leave it out.",
    )
    ip_override: bool = Field(
        True, description="Send context.ip as ip_override so GA4 derives geolocation from the visitor's address rather "
                          "than trackrelay's."
    )
    user_property_traits: list[str] = Field(
        default_factory=list,
        description="Trait names copied from context.traits into user_properties on each event (an allow-list: Google "
                    "forbids personal data such as emails in GA4). properties.user_properties is always sent.",
    )
    screen_event_name: str | None = Field(
        None,
        description="Send screen calls as this custom event (with screen_name); by default screen calls are skipped "
                    "because GA4 reserves screen_view.",
    )

    example = {"type": "ga4", "measurement_id": "G-ABC123XYZ", "api_secret": "mp-secret-value-1"}

    @field_validator("screen_event_name")
    @classmethod
    def _valid_event_name(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if not NAME_RE.match(value) or len(value) > MAX_NAME:
            raise ValueError("must start with a letter, use only letters, digits and _ and be at most 40 characters")
        reason = _reserved_name(value)
        if reason:
            raise ValueError(reason)
        return value

    @property
    def base_url(self) -> str:
        return str(self.endpoint).rstrip("/") if self.endpoint else HOSTS[self.region]

    @property
    def url(self) -> str:
        path = "/debug/mp/collect" if self.debug_validation else "/mp/collect"
        return (f"{self.base_url}{path}?measurement_id={quote(self.measurement_id, safe='')}"
                f"&api_secret={quote(self.api_secret.get_secret_value(), safe='')}")


# ---------------------------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------------------------


def _param_value(name: str, value: Any) -> Any:
    """A parameter value GA4 takes (string cut to its limit, finite number, boolean), or None."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return semantic.to_number(value) if isinstance(value, float) else value
    if isinstance(value, str):
        return value[: LONG_VALUES.get(name, MAX_VALUE)] if value else None
    return None


class _Params:
    """Event parameters in priority order, capped at GA4's 25."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    def put(self, name: str, value: Any) -> None:
        if name in self.values or len(self.values) >= MAX_PARAMS:
            return
        if name == "items":
            if value:
                self.values[name] = value
            return
        value = _param_value(name, value)
        if value is not None:
            self.values[name] = value

    def custom(self, props: Mapping[str, Any], exclude: set[str]) -> None:
        for key, value in semantic.flatten({k: v for k, v in props.items() if k not in exclude}, sep="_"):
            name = sanitize_name(key)
            if name is None or _reserved_param(name):
                continue
            self.put(name, value)


def _reserved_param(name: str) -> bool:
    lowered = name.lower()
    return lowered.startswith(RESERVED_PREFIXES)


def _item(product: Mapping[str, Any], index_default: int | None = None) -> dict[str, Any] | None:
    item: dict[str, Any] = {}
    pid = semantic.product_id(product)
    if pid is not None:
        item["item_id"] = pid[:MAX_VALUE]
    for src, dst in ITEM_FIELDS:
        if dst == "index":
            number = semantic.to_number(product.get(src))
            if number is not None:
                item[dst] = int(number)
            continue
        value = _param_value(dst, product.get(src))
        if value is not None and not isinstance(value, bool):
            item[dst] = value
    if "item_id" not in item and "item_name" not in item:
        return None  # GA4: "one of item_id or item_name is required"
    price = semantic.to_number(product.get("price"))
    if price is not None:
        item["price"] = price
    if "quantity" in product:
        item["quantity"] = semantic.quantity(product)
    return item


def _items(props: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [item for item in (_item(p) for p in semantic.products(props)) if item is not None]


def _money(params: _Params, props: Mapping[str, Any], items: list[dict[str, Any]]) -> set[str]:
    """value + currency (revenue, then total, value, sum of products; currency ISO 4217, USD by
    default); returns the property keys consumed."""
    used = {"currency", "products"}
    value = semantic.order_value(props)
    if value is not None:
        params.put("value", value)
        used |= {"revenue", "total", "value"}
    if value is not None or any("price" in item for item in items):
        params.put("currency", semantic.currency(props))
    return used


# ---------------------------------------------------------------------------------------------
# Event mapping
# ---------------------------------------------------------------------------------------------


def _ga4_name(event_name: Any, props: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(GA4 event name, reason it cannot be sent)."""
    canonical = semantic.canonical_event(event_name)
    if canonical in ECOMMERCE_TO_GA4:
        return ECOMMERCE_TO_GA4[canonical], None
    if canonical == "Checkout Step Completed":
        # GA4 splits checkout steps by what was entered; a step with neither stays custom.
        if props.get("shipping_method") not in (None, ""):
            return "add_shipping_info", None
        if props.get("payment_method") not in (None, ""):
            return "add_payment_info", None
    if isinstance(event_name, str) and event_name.strip().lower() in OTHER_TO_GA4:
        return OTHER_TO_GA4[event_name.strip().lower()], None
    if not isinstance(event_name, str) or not event_name.strip():
        return None, "track call without an event name"
    name = sanitize_name(event_name)
    if name is None:
        return None, f"event name {event_name!r} has no letters or digits GA4 could use"
    reason = _reserved_name(name)
    if reason:
        return None, reason
    return name, None


def _track_params(ga4_name: str, props: dict[str, Any], canonical: str | None) -> _Params:
    params = _Params()
    used: set[str] = {"user_properties", "session_id", "engagement_time_msec"}
    for src, dst in EVENT_PARAMS.get(ga4_name, ()):
        if src in props:
            value = semantic.to_number(props[src]) if dst in NUMERIC_PARAMS else props[src]
            if dst == "transaction_id" and value is not None:
                value = str(value)
            params.put(dst, value)
            used.add(src)
    if ga4_name == "share":
        kind = "cart" if canonical == "Cart Shared" else "product"
        params.put("content_type", kind)
        ident = props.get("cart_id") if kind == "cart" else semantic.product_id(props)
        if ident not in (None, ""):
            params.put("item_id", str(ident))
        used |= {"cart_id", "product_id", "sku"}
        return _finish(params, props, used)
    if ga4_name in ("search", "view_promotion", "select_promotion", "login", "sign_up"):
        return _finish(params, props, used)
    items = _items(props)
    used |= _money(params, props, items)
    params.put("items", items)
    if ga4_name in SINGLE_PRODUCT and "products" not in props:
        used |= set(semantic.PRODUCT_FIELDS)
    return _finish(params, props, used)


def _finish(params: _Params, props: dict[str, Any], used: set[str]) -> _Params:
    params.custom(props, used)
    return params


def _page_params(event: Mapping[str, Any], props: dict[str, Any]) -> _Params:
    page = semantic.context(event).get("page")
    page = page if isinstance(page, Mapping) else {}
    params = _Params()
    params.put("page_location", props.get("url") or page.get("url"))
    params.put("page_title", props.get("title") or page.get("title"))
    params.put("page_referrer", props.get("referrer") or page.get("referrer"))
    campaign = semantic.context(event).get("campaign")
    if isinstance(campaign, Mapping):
        for key, name in CAMPAIGN_PARAMS.items():
            params.put(name, campaign.get(key))
    params.custom(props, set(PAGE_KEYS) | {"user_properties", "session_id", "engagement_time_msec"})
    return params


def _user_properties(event: Mapping[str, Any], props: Mapping[str, Any], allow: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    candidates: list[tuple[str, Any]] = []
    ctx_traits = semantic.context(event).get("traits")
    if allow and isinstance(ctx_traits, Mapping):
        candidates += [(k, ctx_traits[k]) for k in allow if k in ctx_traits]
    explicit = props.get("user_properties")
    if isinstance(explicit, Mapping):
        candidates += list(explicit.items())
    for key, value in candidates:
        if len(out) >= MAX_USER_PROPERTIES:
            break
        if not isinstance(key, str) or not NAME_RE.match(key) or len(key) > MAX_USER_PROPERTY_NAME:
            continue
        if key in RESERVED_USER_PROPERTIES or _reserved_param(key) or key in out:
            continue
        if isinstance(value, Mapping):  # already in GA4's {"value": ...} form
            value = value.get("value")
        if isinstance(value, bool) or (isinstance(value, (int, float)) and semantic.to_number(value) is not None):
            if len(str(value)) <= MAX_USER_PROPERTY_VALUE:
                out[key] = {"value": value}
        elif isinstance(value, str) and value.strip() and len(value) <= MAX_USER_PROPERTY_VALUE:
            out[key] = {"value": value}
    return out


def _client_id(event: Mapping[str, Any]) -> str | None:
    options = semantic.integration_options(event, INTEGRATION_NAMES)
    for value in (options.get("clientId"), options.get("client_id")):
        if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value):
            return str(value)
    return semantic.anonymous_id(event) or semantic.user_id(event)


def _session_id(event: Mapping[str, Any], props: Mapping[str, Any]) -> Any:
    options = semantic.integration_options(event, INTEGRATION_NAMES)
    for value in (options.get("sessionId"), options.get("session_id"), props.get("session_id")):
        if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value):
            return value
    return None


def map_event(event: Mapping[str, Any], settings: Settings) -> tuple[dict[str, Any] | None, str | None, bool]:
    """(GA4 event, reason, is_skip): the event object for events[], or why it is skipped/rejected."""
    kind = event.get("type")
    props = semantic.properties_of(event)
    if kind == "identify":
        return None, ("GA4 has no user-profile call: user properties only travel with an event, "
                      "and a stateless relay cannot hold traits for a later one"), True
    if kind == "alias":
        return None, "GA4 has no alias/merge call (client_id and user_id are linked on events)", True
    if kind == "screen" and settings.screen_event_name is None:
        return None, "GA4 reserves screen_view for the Firebase SDK; set screen_event_name to send screen calls", True
    if kind == "track":
        name, reason = _ga4_name(event.get("event"), props)
        if name is None:
            return None, reason, False
        canonical = semantic.canonical_event(event.get("event"))
        if name in ("purchase", "refund") and props.get("order_id") in (None, ""):
            return None, f"GA4 {name} needs transaction_id: properties.order_id is missing", False
        params = _track_params(name, props, canonical)
    elif kind == "page":
        name, params = "page_view", _page_params(event, props)
    elif kind == "screen":
        name, params = settings.screen_event_name, _Params()
        params.put("screen_name", event.get("name") or props.get("name"))
        params.custom(props, {"name", "user_properties", "session_id", "engagement_time_msec"})
    elif kind == "group":
        group = semantic.group_id(event)
        if group is None:
            return None, "group call without a groupId", False
        name, params = "join_group", _Params()
        params.put("group_id", group)
    else:
        return None, f"unknown call type {kind!r}", False
    # Session and engagement are kept even when the 25-parameter cap drops custom ones.
    extra = _Params()
    extra.put("session_id", _session_id(event, props))
    extra.put("engagement_time_msec", props.get("engagement_time_msec", settings.engagement_time_msec))
    kept = [(k, v) for k, v in params.values.items() if k not in extra.values]
    merged = dict(kept[: MAX_PARAMS - len(extra.values)])
    merged.update(extra.values)
    out: dict[str, Any] = {"name": name, "params": merged}
    when = semantic.event_time(event)
    if when is not None:
        out["timestamp_micros"] = int(round(when.timestamp() * 1_000_000))
    return out, None, False


def _backdated(event: Mapping[str, Any], mapped: Mapping[str, Any]) -> bool:
    """True when the event happened more than 72 h before trackrelay received it: GA4 would
    drop it whatever is sent (the relay has no clock of its own to judge later delays)."""
    received = semantic.parse_time(event.get("receivedAt"))
    micros = mapped.get("timestamp_micros")
    if received is None or micros is None:
        return False
    return bool(received.timestamp() * 1_000_000 - micros > MAX_BACKDATE_MICROS)


def build_requests(messages: Sequence[Message], settings: Settings) -> Built:
    built = Built()
    groups: dict[bytes, list[tuple[int, bytes]]] = {}
    for i, msg in enumerate(messages):
        event = msg.event
        client_id = _client_id(event)
        if client_id is None:
            built.rejects.append(Reject(i, "GA4 needs a client_id: the event has no anonymousId, userId or clientId "
                                           "option"))
            continue
        user = semantic.user_id(event)
        if user is not None and len(user) > MAX_USER_ID:
            built.rejects.append(Reject(i, f"userId is {len(user)} characters; GA4 takes at most {MAX_USER_ID}"))
            continue
        mapped, reason, skip = map_event(event, settings)
        if mapped is None:
            if skip:
                built.skips.append(Skip(i, reason or "unsupported"))
            else:
                built.rejects.append(Reject(i, reason or "unsupported"))
            continue
        items = mapped["params"].get("items")
        if isinstance(items, list) and len(items) > MAX_ITEMS:
            mapped["params"]["items"] = items[:MAX_ITEMS]
            built.note(i, f"items truncated: {len(items)} products, GA4 keeps {MAX_ITEMS} per event; sent the "
                          f"first {MAX_ITEMS} (value and currency are the whole order's)")
        if _backdated(event, mapped):
            built.rejects.append(Reject(i, "event time is more than 72 hours before it was received; GA4 drops events "
                                           "backdated past 72 hours"))
            continue
        head: dict[str, Any] = {"client_id": client_id}
        if user is not None:
            head["user_id"] = user
        ip = semantic.context(event).get("ip")
        if settings.ip_override and isinstance(ip, str) and ip:
            head["ip_override"] = ip
        device = semantic.context(event).get("device")
        if isinstance(device, Mapping) and device.get("adTrackingEnabled") is False:
            head["non_personalized_ads"] = True
        user_props = _user_properties(event, semantic.properties_of(event), settings.user_property_traits)
        if user_props:
            head["user_properties"] = user_props
        encoded = json_body(mapped)
        prefix = json_body(head)[:-1] + b',"events":['
        if len(prefix) + len(encoded) + 2 >= MAX_BODY_BYTES:
            built.rejects.append(Reject(i, f"event is {len(encoded)} bytes; a GA4 request body must stay under "
                                           f"{MAX_BODY_BYTES} bytes"))
            continue
        groups.setdefault(prefix, []).append((i, encoded))
    url = settings.url
    for prefix, items in groups.items():
        for chunk in chunk_by_limits(items, MAX_EVENTS_PER_REQUEST, MAX_BODY_BYTES - 1, overhead=len(prefix) + 2):
            body = prefix + b",".join(b for _, b in chunk) + b"]}"
            built.requests.append(Request("POST", url, {"Content-Type": "application/json"}, body,
                                          tuple(i for i, _ in chunk)))
    return built


# ---------------------------------------------------------------------------------------------
# Responses
# ---------------------------------------------------------------------------------------------

_EVENT_INDEX = (re.compile(r"events\[(\d+)\]"), re.compile(r"[Ee]vent at index: \[(\d+)\]"))


def _message_event_index(message: Mapping[str, Any]) -> int | None:
    for pattern, field in ((_EVENT_INDEX[0], "fieldPath"), (_EVENT_INDEX[1], "description")):
        text = message.get(field)
        if isinstance(text, str):
            found = pattern.search(text)
            if found:
                return int(found.group(1))
    return None


def classify(request: Request, response: Response) -> Outcome:
    """/mp/collect answers 2xx to everything: the shared default applies. The validation server
    (debug_validation) answers 200 with ``validationMessages``; each message that names an
    event fails that event, any other message fails the whole request."""
    outcome = default_classify(request, response)
    if outcome.verdict is not Verdict.OK or "/debug/mp/collect" not in request.url.split("?", 1)[0]:
        return outcome
    body = response.json()
    found = body.get("validationMessages") if isinstance(body, Mapping) else None
    if not isinstance(found, list):
        return Outcome(Verdict.PERMANENT,
                       f"validation server answered without validationMessages: {response.body[:200]!r}")
    if not found:
        return Outcome(Verdict.OK)
    per: dict[int, list[str]] = {}
    general: list[str] = []
    for message in found:
        if not isinstance(message, Mapping):
            continue
        text = (f"{message.get('validationCode', '?')} at {message.get('fieldPath', '?')}: "
                f"{message.get('description', '')}")
        position = _message_event_index(message)
        if position is not None and position < len(request.messages):
            per.setdefault(request.messages[position], []).append(text)
        else:
            general.append(text)
    if general or not per:
        return Outcome(Verdict.PERMANENT,
                       "GA4 validation: " + "; ".join(general + [t for v in per.values() for t in v]))
    return Outcome(Verdict.OK, per_message={
        index: MessageOutcome(Verdict.PERMANENT, "GA4 validation: " + "; ".join(texts)) for index, texts in per.items()
    })


ADAPTER = Adapter(
    type="ga4",
    settings=Settings,
    build_requests=build_requests,
    integration_names=INTEGRATION_NAMES,
    limits=BatchLimits(max_events=500, max_bytes=2_000_000),
    classify=classify,
    description="Google Analytics 4 Measurement Protocol: ecommerce v2 as GA4 recommended events, pages as page_view.",
)
