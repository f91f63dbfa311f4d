"""Segment semantics shared by every adapter: ecommerce v2 event names (with the v1 aliases),
products, revenue/currency/value, reserved traits, campaign -> UTM, timestamps and identities.

Sources: segment-docs connections/spec/{track,identify,group,common}.md and spec/ecommerce/v2.md.
Adapters import from here instead of copying these rules; nothing here does I/O.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

# ---------------------------------------------------------------------------------------------
# Ecommerce v2
# ---------------------------------------------------------------------------------------------

ECOMMERCE_V2_EVENTS: tuple[str, ...] = (
    "Products Searched", "Product List Viewed", "Product List Filtered",
    "Promotion Viewed", "Promotion Clicked",
    "Product Clicked", "Product Viewed", "Product Added", "Product Removed",
    "Cart Viewed", "Checkout Started", "Checkout Step Viewed", "Checkout Step Completed",
    "Payment Info Entered", "Order Updated", "Order Completed", "Order Refunded", "Order Cancelled",
    "Coupon Entered", "Coupon Applied", "Coupon Denied", "Coupon Removed",
    "Product Added to Wishlist", "Product Removed from Wishlist", "Wishlist Product Added to Cart",
    "Product Shared", "Cart Shared", "Product Reviewed",
)

# Ecommerce v1 names that mean the same v2 event.
ECOMMERCE_V1_ALIASES: dict[str, str] = {
    "Viewed Product Category": "Product List Viewed",
    "Clicked Product": "Product Clicked",
    "Viewed Product": "Product Viewed",
    "Added Product": "Product Added",
    "Removed Product": "Product Removed",
    "Started Order": "Checkout Started",
    "Viewed Checkout Step": "Checkout Step Viewed",
    "Completed Checkout Step": "Checkout Step Completed",
    "Updated Order": "Order Updated",
    "Completed Order": "Order Completed",
}

_V2_BY_LOWER = {name.lower(): name for name in ECOMMERCE_V2_EVENTS}
_V1_BY_LOWER = {k.lower(): v for k, v in ECOMMERCE_V1_ALIASES.items()}

PRODUCT_FIELDS: tuple[str, ...] = (
    "product_id", "sku", "category", "name", "brand", "variant", "price", "quantity",
    "coupon", "position", "url", "image_url",
)

# Order-level properties (not per product).
ORDER_FIELDS: tuple[str, ...] = (
    "checkout_id", "order_id", "affiliation", "subtotal", "total", "revenue", "shipping", "tax",
    "discount", "coupon", "currency", "products", "value",
)


def canonical_event(name: Any) -> str | None:
    """The ecommerce v2 name for a track event name (v2 or v1 alias, any case), else None."""
    if not isinstance(name, str):
        return None
    key = name.strip().lower()
    return _V2_BY_LOWER.get(key) or _V1_BY_LOWER.get(key)


def to_number(value: Any) -> float | None:
    """A finite number from a number or numeric string; None otherwise (bools are not numbers)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


def products(properties: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The products of an event: ``properties.products`` (objects only), or, for single-product
    events (Product Viewed/Added/...), the product fields of the properties themselves."""
    items = properties.get("products")
    if isinstance(items, list):
        return [dict(p) for p in items if isinstance(p, Mapping)]
    if any(k in properties for k in ("product_id", "sku")):
        return [{k: properties[k] for k in PRODUCT_FIELDS if k in properties}]
    return []


def product_id(product: Mapping[str, Any]) -> str | None:
    for key in ("product_id", "sku", "id"):
        value = product.get(key)
        if value not in (None, ""):
            return str(value)
    return None


def quantity(product: Mapping[str, Any]) -> int:
    q = to_number(product.get("quantity"))
    return int(q) if q is not None and q > 0 else 1


# ---------------------------------------------------------------------------------------------
# Revenue, currency, value
# ---------------------------------------------------------------------------------------------

_CURRENCY = re.compile(r"^[A-Za-z]{3}$")
DEFAULT_CURRENCY = "USD"


def currency(properties: Mapping[str, Any]) -> str:
    """ISO 4217 code, upper-cased; USD when unset or not a 3-letter code (Segment's default)."""
    value = properties.get("currency")
    if isinstance(value, str) and _CURRENCY.match(value.strip()):
        return value.strip().upper()
    return DEFAULT_CURRENCY


def revenue(properties: Mapping[str, Any]) -> float | None:
    """``properties.revenue`` in decimal units (dollars, not cents), if it is a number."""
    return to_number(properties.get("revenue"))


def order_value(properties: Mapping[str, Any]) -> float | None:
    """The monetary value of an order-like event: revenue, then total, then value; then the sum
    of price x quantity of its products."""
    for key in ("revenue", "total", "value"):
        number = to_number(properties.get(key))
        if number is not None:
            return number
    items = products(properties)
    prices = [(to_number(p.get("price")), quantity(p)) for p in items]
    known = [(price, q) for price, q in prices if price is not None]
    if items and len(known) == len(prices):
        return round(sum(price * q for price, q in known), 10)
    return None


# ---------------------------------------------------------------------------------------------
# Traits
# ---------------------------------------------------------------------------------------------

RESERVED_TRAITS: tuple[str, ...] = (
    "address", "age", "avatar", "birthday", "company", "createdAt", "description", "email",
    "firstName", "gender", "id", "lastName", "name", "phone", "title", "username", "website",
)
GROUP_RESERVED_TRAITS: tuple[str, ...] = (
    "address", "avatar", "createdAt", "description", "email", "employees", "id", "industry",
    "name", "phone", "plan", "website",
)

# Traits are case-insensitive in Segment: created_at, createdat and createdAt are one trait.
_TRAIT_ALIASES = {
    re.sub(r"[_\s-]", "", name).lower(): name
    for name in set(RESERVED_TRAITS) | set(GROUP_RESERVED_TRAITS)
}


def reserved_trait_name(key: str) -> str | None:
    """The canonical reserved trait name for a key in any case/snake form, else None."""
    return _TRAIT_ALIASES.get(re.sub(r"[_\s-]", "", key).lower())


def normalized_traits(traits: Mapping[str, Any] | None) -> dict[str, Any]:
    """Traits with reserved keys in their canonical camelCase form (``created_at`` -> ``createdAt``),
    other keys unchanged, and ``name`` filled from firstName + lastName when absent."""
    out: dict[str, Any] = {}
    for key, value in (traits or {}).items():
        canonical = reserved_trait_name(key) if isinstance(key, str) else None
        if canonical and canonical != key and canonical in (traits or {}):
            continue  # the canonical spelling is present too: it wins
        out[canonical or key] = value
    if "name" not in out:
        first, last = out.get("firstName"), out.get("lastName")
        parts = [p for p in (first, last) if isinstance(p, str) and p.strip()]
        if parts:
            out["name"] = " ".join(p.strip() for p in parts)
    return out


def traits_of(event: Mapping[str, Any]) -> dict[str, Any]:
    """Identify/group traits, falling back to context.traits (what analytics.js puts there)."""
    traits = event.get("traits")
    if isinstance(traits, Mapping) and traits:
        return dict(traits)
    ctx_traits = context(event).get("traits")
    return dict(ctx_traits) if isinstance(ctx_traits, Mapping) else {}


# ---------------------------------------------------------------------------------------------
# Context, campaign, identity, time
# ---------------------------------------------------------------------------------------------


def context(event: Mapping[str, Any]) -> Mapping[str, Any]:
    ctx = event.get("context")
    return ctx if isinstance(ctx, Mapping) else {}


def properties_of(event: Mapping[str, Any]) -> dict[str, Any]:
    props = event.get("properties")
    return dict(props) if isinstance(props, Mapping) else {}


CAMPAIGN_TO_UTM: dict[str, str] = {
    "name": "utm_campaign",
    "source": "utm_source",
    "medium": "utm_medium",
    "term": "utm_term",
    "content": "utm_content",
}


def utm_params(event: Mapping[str, Any]) -> dict[str, Any]:
    """context.campaign.{name,source,medium,term,content} as utm_* fields (empty values dropped)."""
    campaign = context(event).get("campaign")
    if not isinstance(campaign, Mapping):
        return {}
    return {
        utm: campaign[key]
        for key, utm in CAMPAIGN_TO_UTM.items()
        if campaign.get(key) not in (None, "")
    }


def group_id(event: Mapping[str, Any]) -> str | None:
    """The account of an event: groupId on group calls, context.groupId on the others."""
    value = event.get("groupId") if event.get("type") == "group" else context(event).get("groupId")
    if value in (None, ""):
        return None
    return str(value)


def user_id(event: Mapping[str, Any]) -> str | None:
    value = event.get("userId")
    return None if value in (None, "") else str(value)


def anonymous_id(event: Mapping[str, Any]) -> str | None:
    value = event.get("anonymousId")
    return None if value in (None, "") else str(value)


def parse_time(value: Any) -> datetime | None:
    """An ISO 8601 timestamp (as the SDKs send: Z or +00:00 offsets, optional fraction)."""
    if not isinstance(value, str) or not value:
        return None
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


def event_time(event: Mapping[str, Any]) -> datetime | None:
    """When the event happened: timestamp (skew-corrected at ingest), else originalTimestamp,
    else receivedAt."""
    for key in ("timestamp", "originalTimestamp", "receivedAt"):
        parsed = parse_time(event.get(key))
        if parsed is not None:
            return parsed
    return None


def epoch_ms(event: Mapping[str, Any]) -> int | None:
    when = event_time(event)
    return None if when is None else int(round(when.timestamp() * 1000))


def epoch_seconds(event: Mapping[str, Any]) -> int | None:
    when = event_time(event)
    return None if when is None else int(when.timestamp())


def iso_utc(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def is_uuid(value: Any) -> bool:
    return isinstance(value, str) and bool(_UUID.match(value))


def flatten(obj: Mapping[str, Any], sep: str = ".", prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, leaf value) pairs of a nested mapping; lists are leaves."""
    for key, value in obj.items():
        full = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            yield from flatten(value, sep, full)
        else:
            yield full, value


def integration_options(event: Mapping[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    """The options object a payload gives this destination under ``integrations.<Name>``
    (e.g. ``{"userOnly": true}``); {} when absent or a plain boolean."""
    integrations = event.get("integrations")
    if not isinstance(integrations, Mapping):
        return {}
    for name in names:
        value = integrations.get(name)
        if isinstance(value, Mapping):
            return dict(value)
    return {}


# ---------------------------------------------------------------------------------------------
# ULIDs (dedup keys for APIs that want one), ISO dates as unix seconds, emails
# ---------------------------------------------------------------------------------------------

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_ULID = re.compile(r"^[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}$")


def is_ulid(value: Any) -> bool:
    """A 26-character Crockford base32 ULID (https://github.com/ulid/spec)."""
    return isinstance(value, str) and bool(_ULID.match(value))


def ulid_for(message_id: str, when_ms: int | None) -> str:
    """A ULID that stands for ``message_id``: the id itself when it already is a ULID, else one
    built deterministically from the event time (48-bit ms) and the first 80 bits of the
    SHA-256 of the messageId, so a resend of the same message yields the same ULID."""
    import hashlib

    if is_ulid(message_id):
        return message_id.upper()
    ms = max(0, min(int(when_ms or 0), (1 << 48) - 1))
    entropy = int.from_bytes(hashlib.sha256(message_id.encode("utf-8")).digest()[:10], "big")
    number = (ms << 80) | entropy
    return "".join(_CROCKFORD[(number >> shift) & 31] for shift in range(125, -1, -5))


_ISO_DATE = re.compile(
    r"^\d{4}-\d{2}-\d{2}((T\d{2}:\d{2}(:\d{2})?)(\.\d{1,9})?(Z|z|[+-]\d{2}:?\d{2})?)?$"
)


def iso_to_unix_seconds(value: Any) -> int | None:
    """Unix seconds for an ISO 8601 date or date-time string (``2026-01-02`` or
    ``2026-01-02T03:04:05.123Z``); None for anything else (numbers, free text)."""
    if not isinstance(value, str) or not _ISO_DATE.match(value.strip()):
        return None
    text = value.strip()
    if len(text) == 10:
        text += "T00:00:00+00:00"
    elif re.search(r"[+-]\d{4}$", text):
        text = text[:-2] + ":" + text[-2:]
    if "." in text:  # Python < 3.11 forms aside, fromisoformat wants at most 6 fraction digits
        head, _, tail = text.partition(".")
        digits = re.match(r"\d+", tail)
        frac = digits.group(0) if digits else ""
        text = head + "." + frac[:6].ljust(6, "0") + tail[len(frac):]
    parsed = parse_time(text)
    return None if parsed is None else int(parsed.timestamp())


def dates_to_unix_seconds(obj: Any) -> Any:
    """A copy of a JSON value with every ISO 8601 date string (at any depth) replaced by unix
    seconds: what APIs that only understand epoch dates (Customer.io) need for date attributes."""
    if isinstance(obj, Mapping):
        return {k: dates_to_unix_seconds(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [dates_to_unix_seconds(v) for v in obj]
    seconds = iso_to_unix_seconds(obj)
    return obj if seconds is None else seconds


_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def is_email(value: Any) -> bool:
    return isinstance(value, str) and bool(_EMAIL.match(value))


# ---------------------------------------------------------------------------------------------
# Flat scalar properties, identifier-safe keys, domains (APIs with strict attribute rules)
# ---------------------------------------------------------------------------------------------

_SCALAR_TYPES = (str, bool, int, float)


def _is_scalar(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, _SCALAR_TYPES)


def scalar_leaves(
    obj: Mapping[str, Any] | None, sep: str = ".", *, lists: str = "keep", drop_none: bool = False
) -> dict[str, Any]:
    """Properties/traits as one flat mapping of scalar values, for APIs that take no nested
    objects. Nested mappings become ``sep``-joined keys (``{"a": {"b": 1}}`` -> ``{"a.b": 1}``);
    empty mappings and non-finite numbers are dropped; ``None`` is kept unless ``drop_none``.
    Lists, by ``lists``: ``"keep"`` keeps a list whose items are all scalars, ``"strings"`` keeps
    it with every item as a non-empty string, ``"json"`` never keeps one; a list that is not
    kept becomes its JSON text. Other values (e.g. objects inside lists) become JSON text."""
    import orjson

    out: dict[str, Any] = {}
    for key, value in flatten(obj or {}, sep):
        if isinstance(value, Mapping):
            continue  # an empty mapping: nothing to set
        if value is None:
            if not drop_none:
                out[key] = None
        elif _is_scalar(value):
            out[key] = value
        elif isinstance(value, float):
            continue  # NaN / infinity: no JSON form
        elif isinstance(value, (list, tuple)):
            items = list(value)
            if lists != "json" and all(_is_scalar(v) for v in items):
                if lists == "strings":
                    strings = [v if isinstance(v, str) else orjson.dumps(v).decode() for v in items]
                    if all(strings):
                        out[key] = strings
                        continue
                else:
                    out[key] = items
                    continue
            out[key] = orjson.dumps(items, default=str).decode()
        else:
            out[key] = orjson.dumps(value, default=str).decode()
    return out


_NOT_IDENT = re.compile(r"[^A-Za-z0-9_]+")


def identifier_key(key: Any, *, prefix: str = "x", min_length: int = 2, max_length: int = 100) -> str | None:
    """``key`` made valid for APIs whose keys must match ``^[A-Za-z][A-Za-z0-9_]*$`` with a
    length range: every run of other characters becomes ``_``, leading/trailing ``_`` go, a key
    that does not start with a letter gets ``prefix + "_"`` in front, a key shorter than
    ``min_length`` is padded with ``_``. Valid keys come back unchanged. None when nothing is
    left (empty key) or the result is longer than ``max_length``."""
    text = _NOT_IDENT.sub("_", str(key)).strip("_")
    if not text:
        return None
    if not text[0].isascii() or not text[0].isalpha():
        text = f"{prefix}_{text}"
    if len(text) < min_length:
        text = text.ljust(min_length, "_")
    return text if len(text) <= max_length else None


_HOST = re.compile(r"^(?=.{4,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")


def domain_of(value: Any) -> str | None:
    """The host name of a website/domain trait (``https://www.acme.com/x`` -> ``www.acme.com``,
    ``acme.com`` -> ``acme.com``), lower-cased; None when it is not a plausible domain name."""
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip().lower()
    if "://" not in text:
        text = "//" + text
    from urllib.parse import urlsplit

    try:
        host = urlsplit(text).hostname
    except ValueError:
        return None
    return host if host and _HOST.match(host) else None


# ---------------------------------------------------------------------------------------------
# Event ids as UUIDs, page fields
# ---------------------------------------------------------------------------------------------

_MESSAGE_UUID_NAMESPACE = "6f1d3c3e-9a57-4c53-9f0e-7472616b7265"  # fixed: derived ids must never change


def message_uuid(message_id: Any) -> str | None:
    """A UUID that stands for a messageId, for APIs whose dedup key must be a UUID (PostHog
    ``uuid``): the messageId itself (lower-cased) when it already is one, else a UUIDv5 derived
    from it, so every resend of the same message carries the same UUID. None without an id."""
    import uuid

    if not isinstance(message_id, str) or not message_id:
        return None
    if is_uuid(message_id):
        return message_id.lower()
    return str(uuid.uuid5(uuid.UUID(_MESSAGE_UUID_NAMESPACE), message_id))


PAGE_FIELDS: tuple[str, ...] = ("url", "path", "referrer", "search", "title")


def page_fields(event: Mapping[str, Any]) -> dict[str, Any]:
    """url, path, referrer, search and title of the page an event happened on: a page call's
    own properties first, then context.page (analytics.js sets both); empty values dropped."""
    page = context(event).get("page")
    page = page if isinstance(page, Mapping) else {}
    props = properties_of(event) if event.get("type") == "page" else {}
    out: dict[str, Any] = {}
    for key in PAGE_FIELDS:
        for source in (props, page):
            value = source.get(key)
            if value not in (None, ""):
                out[key] = value
                break
    return out


def page_properties(event: Mapping[str, Any]) -> dict[str, Any]:
    """A page/screen call's properties with its top-level ``name`` and ``category`` added (when
    the properties do not carry them already)."""
    props = properties_of(event)
    for key in ("name", "category"):
        value = event.get(key)
        if value not in (None, "") and key not in props:
            props[key] = value
    return props
