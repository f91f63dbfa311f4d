"""Amplitude: events, identifies and group identifies through the HTTP V2 or Batch API; aliases
through the User Mapping API.

API: https://amplitude.com/docs/apis/analytics/http-v2 (``POST /2/httpapi``),
https://amplitude.com/docs/apis/analytics/batch-event-upload (``POST /batch``, same body),
https://amplitude.com/docs/apis/analytics/user-mapping (``POST /usermap``, form fields).
Hosts: US https://api2.amplitude.com (user mapping: https://api.amplitude.com), EU
https://api.eu.amplitude.com (``region``); ``endpoint`` overrides the host for every path.

Auth: the project API key inside the body (``api_key`` JSON field; form field for /usermap), as
Amplitude requires; no auth header.

Limits (Amplitude's): HTTP V2 < 1 MB and < 2000 events per request; Batch 20 MB and 2000 events;
/usermap 2000 mappings and 1 MB. Starter plans should lower ``max_events_per_request`` (Amplitude
recommends 10). user_id/device_id shorter than 5 characters (or ``min_id_length``) are removed by
Amplitude, so they are dropped here as well; an event left without either id, or whose ids are
values Amplitude refuses (``null``, ``anonymous``, ``0``...), is dead-lettered (Reject).
"All string values, like user_id, event, or user property values, have a character limit of 1024
characters" (http-v2 "String character limit"): property values (event, user and group properties,
nested ones and list items included) and other descriptive strings over 1024 characters are cut to
1024 here and the message is noted (``Built.note``: counted and logged as modified); an
identifying string over it (``user_id``, ``device_id``, ``event_type``, ``insert_id``, a group
value, an alias's ids) is dead-lettered instead, as a cut one would merge different users/events.
``event_properties`` / ``user_properties`` / ``group_properties`` nested more than 40 objects deep
("Object depth may not exceed 40 layers", http-v2 "Event array keys") are dead-lettered. Groups:
Amplitude tracks at most 5 group types and 10 group values per event and silently ignores the rest;
every event here carries at most one (``group_type``: groupId), so that limit cannot be reached.

Call mapping (one JSON body ``{"api_key", "events": [...], "options"?}``):
- track -> ``event_type`` = event, ``event_properties`` = properties, ``user_id`` = userId,
  ``device_id`` = context.device.id or anonymousId, ``time`` (ms), ``insert_id`` = messageId,
  context -> ip, language, os/device/app/carrier/location fields; campaign -> ``user_properties``
  ``utm_*``; context.groupId -> ``groups``. Revenue goes in the top-level fields ``revenue``,
  ``price``, ``quantity``, ``productId``, ``revenueType``, ``currency`` (ISO 4217, USD default):
  ``properties.revenue`` on any event; ``Order Refunded`` sends minus its revenue/total/value
  with revenueType ``Refund``. ``Order Completed`` also sends one ``Product Purchased`` event per
  product (``event_properties`` = the product plus order_id) with insert_id ``<messageId>-<n>``;
  with ``revenue_per_product`` (default) each carries price x quantity as revenue and the order
  event carries none, so revenue is never counted twice.
- page / screen -> ``Viewed <name> Page`` / ``Viewed <name> Screen`` (``Loaded a Page`` /
  ``Loaded a Screen`` without a name), properties plus name and category.
- identify -> ``$identify`` event with ``user_properties: {"$set": traits}``.
- group -> ``$identify`` event setting ``groups`` and the user property ``<group_type>`` to the
  groupId, and a ``$groupidentify`` event with ``group_properties: {"$set": traits}`` (Accounts add-on).
- alias -> /usermap ``mapping=[{"user_id": previousId, "global_user_id": userId}]`` when
  ``user_mapping`` is on (Portfolio add-on); skipped otherwise.

Responses: 200 ok. 400 naming events (``events_with_invalid_fields``, ``events_with_missing_fields``,
``silenced_events``): those events' messages are dead-lettered and the others retried (Amplitude
did not take the request; insert_id keeps the resend from duplicating); a 400 naming no event is
permanent. 429 (a user/device over 30 events/s): retried after Retry-After if sent, else 30 s
(HTTP V2) / 15 s (Batch) as Amplitude advises. 413 permanent, 5xx retried (shared default).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any, Literal
from urllib.parse import urlencode

import orjson
from pydantic import AnyHttpUrl, Field, SecretStr

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
    body_excerpt,
    default_classify,
    json_body,
    parse_retry_after,
)
from destinations.semantic import (
    anonymous_id,
    canonical_event,
    context,
    currency,
    epoch_ms,
    group_id,
    normalized_traits,
    order_value,
    product_id,
    products,
    properties_of,
    quantity,
    revenue,
    to_number,
    traits_of,
    user_id,
    utm_params,
)

REGIONS = {"us": "https://api2.amplitude.com", "eu": "https://api.eu.amplitude.com"}
USERMAP_US = "https://api.amplitude.com/usermap"
MAX_EVENTS = 2000
MAX_BYTES = {"http_v2": 1_000_000, "batch": 20_000_000}
MAX_USERMAP_BYTES = 1_000_000
THROTTLE_PAUSE = {"http_v2": 30.0, "batch": 15.0}  # Amplitude's advice on 429
DEFAULT_MIN_ID_LENGTH = 5
MAX_STRING = 1024  # http-v2 "String character limit"
IDENTIFYING = ("user_id", "device_id", "event_type", "insert_id")
MAX_DEPTH = 40  # http-v2 "Event array keys": "Object depth may not exceed 40 layers"
PROPERTY_OBJECTS = ("event_properties", "user_properties", "group_properties")
ENVELOPE_MARGIN = 200
EXTRA_EVENT_TYPES = frozenset({"Product Purchased", "$groupidentify"})

# IDs Amplitude answers 400 for (http-v2 "Invalid IDs that result in a 400 error").
INVALID_IDS = frozenset({
    "anonymous", "nil", "none", "null", "n/a", "na", "undefined", "unknown", '""',
    "00000000-0000-0000-0000-000000000000", "{}", "lmy47d", "0", "-1",
})

# context path -> Amplitude event field
CONTEXT_FIELDS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("ip",), "ip"),
    (("locale",), "language"),
    (("os", "name"), "os_name"),
    (("os", "version"), "os_version"),
    (("device", "model"), "device_model"),
    (("device", "manufacturer"), "device_manufacturer"),
    (("device", "brand"), "device_brand"),
    (("device", "type"), "platform"),
    (("network", "carrier"), "carrier"),
    (("app", "version"), "app_version"),
    (("location", "country"), "country"),
    (("location", "region"), "region"),
    (("location", "city"), "city"),
    (("location", "latitude"), "location_lat"),
    (("location", "longitude"), "location_lng"),
)


class Settings(DestinationSettings):
    type: Literal["amplitude"] = Field("amplitude", description="Adapter type.")
    api_key: SecretStr = Field(description="Amplitude project API key (sent in the request body, as Amplitude "
                                           "requires).")
    region: Literal["us", "eu"] = Field(
        "us", description="Data center of the project: us (api2.amplitude.com) or eu (api.eu.amplitude.com). Used when "
                          "`endpoint` is not set."
    )
    endpoint: AnyHttpUrl | None = Field(
        None, description="Base URL for every Amplitude path (/2/httpapi, /batch, /usermap); default: the region's "
                          "host."
    )
    api: Literal["http_v2", "batch"] = Field(
        "http_v2", description="`http_v2` (POST /2/httpapi, 1 MB per request) or `batch` (POST /batch, 20 MB, for high "
                               "volume)."
    )
    max_events_per_request: int = Field(
        MAX_EVENTS, ge=1, le=MAX_EVENTS, description="Events per request (at most 2000; Amplitude asks Starter plans "
                                                     "for 10)."
    )
    min_id_length: int | None = Field(
        None, ge=1, description="Minimum user_id/device_id length (Amplitude's default is 5); sent as "
                                "options.min_id_length when set."
    )
    group_type: str = Field(
        "company", min_length=1, description="Amplitude group type that Segment groupIds are recorded under (Accounts "
                                             "add-on)."
    )
    product_purchased_events: bool = Field(
        True, description="Also send one `Product Purchased` event per product of an Order Completed event."
    )
    revenue_per_product: bool = Field(
        True, description="Put Order Completed revenue on the Product Purchased events (price x quantity each) instead "
                          "of on "
        "the order event. Applies when every product has a price and product events are on."
    )
    user_mapping: bool = Field(
        False, description="Send alias calls to the User Mapping API (/usermap; needs the Portfolio add-on). Off: "
                           "alias is skipped."
    )

    example = {"type": "amplitude", "api_key": "0123456789abcdef0123456789abcdef", "region": "eu", "user_mapping": True}

    @property
    def base_url(self) -> str:
        return str(self.endpoint).rstrip("/") if self.endpoint else REGIONS[self.region]

    @property
    def events_url(self) -> str:
        return self.base_url + ("/2/httpapi" if self.api == "http_v2" else "/batch")

    @property
    def usermap_url(self) -> str:
        if self.endpoint is None and self.region == "us":
            return USERMAP_US
        return self.base_url + "/usermap"

    @property
    def effective_min_id_length(self) -> int:
        return self.min_id_length if self.min_id_length is not None else DEFAULT_MIN_ID_LENGTH


# ---------------------------------------------------------------------------------------------
# events
# ---------------------------------------------------------------------------------------------


def _dig(obj: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = obj
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def _usable_id(value: Any, min_length: int) -> str | None:
    if value in (None, ""):
        return None
    text = str(value)
    if text.strip().lower() in INVALID_IDS or len(text) < min_length:
        return None
    return text


def main_insert_id(event: Mapping[str, Any]) -> str:
    mid = event.get("messageId")
    if isinstance(mid, str) and mid:
        return mid
    return hashlib.sha256(orjson.dumps(event, option=orjson.OPT_SORT_KEYS)).hexdigest()[:36]


def extra_insert_id(main: str, n: int) -> str:
    """insert_id of the n-th (1-based) extra event of a message."""
    return f"{main}-{n}"


def _base_event(event_type: str, event: Mapping[str, Any], ids: tuple[str | None, str | None],
                time_ms: int, iid: str) -> dict[str, Any]:
    out: dict[str, Any] = {"event_type": event_type}
    if ids[0] is not None:
        out["user_id"] = ids[0]
    if ids[1] is not None:
        out["device_id"] = ids[1]
    out["time"] = time_ms
    out["insert_id"] = iid
    ctx = context(event)
    for path, name in CONTEXT_FIELDS:
        value = _dig(ctx, path)
        if value not in (None, ""):
            out[name] = value
    session = _session_id(event)
    if session is not None:
        out["session_id"] = session
    return out


def _session_id(event: Mapping[str, Any]) -> int | None:
    integrations = event.get("integrations")
    options = integrations.get("Amplitude") if isinstance(integrations, Mapping) else None
    for value in ((options or {}).get("session_id") if isinstance(options, Mapping) else None,
                  context(event).get("sessionId")):
        number = to_number(value)
        if number is not None:
            return int(number)
    return None


def _revenue_fields(amount: float, props: Mapping[str, Any], revenue_type: str,
                    product: Mapping[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    source = product if product is not None else props
    if product is not None:
        out["price"] = to_number(product.get("price"))
        out["quantity"] = quantity(product)
    out["revenue"] = amount
    pid = product_id(source) if product is not None else (
        str(props["product_id"]) if props.get("product_id") not in (None, "") else None)
    if pid is not None:
        out["productId"] = pid
    out["revenueType"] = revenue_type
    out["currency"] = currency(props)
    return out


def _declared_revenue_type(props: Mapping[str, Any], default: str) -> str:
    for key in ("revenueType", "revenue_type"):
        value = props.get(key)
        if isinstance(value, str) and value:
            return value
    return default


def _track_events(event: Mapping[str, Any], name: str, ids: tuple[str | None, str | None], time_ms: int,
                  iid: str, settings: Settings) -> list[dict[str, Any]]:
    props = properties_of(event)
    main = _base_event(name, event, ids, time_ms, iid)
    main["event_properties"] = props
    canon = canonical_event(name)
    extras: list[dict[str, Any]] = []
    items = products(props) if canon == "Order Completed" and settings.product_purchased_events else []
    per_product = (settings.revenue_per_product and bool(items)
                   and all(to_number(p.get("price")) is not None for p in items))
    if canon == "Order Refunded":
        value = order_value(props)
        if value:
            main.update(_revenue_fields(-abs(value), props, _declared_revenue_type(props, "Refund")))
    elif canon == "Order Completed" and not per_product:
        value = order_value(props)
        if value is not None:
            main.update(_revenue_fields(value, props, _declared_revenue_type(props, "Purchase")))
    else:
        value = revenue(props)
        if value is not None and canon != "Order Completed":
            main.update(_revenue_fields(value, props, _declared_revenue_type(props, "Purchase")))
    for n, product in enumerate(items, start=1):
        extra = _base_event("Product Purchased", event, ids, time_ms, extra_insert_id(iid, n))
        product_props = dict(product)
        if props.get("order_id") not in (None, "") and "order_id" not in product_props:
            product_props["order_id"] = props["order_id"]
        extra["event_properties"] = product_props
        if per_product:
            price = to_number(product.get("price")) or 0.0
            extra.update(_revenue_fields(round(price * quantity(product), 10), props,
                                         _declared_revenue_type(props, "Purchase"), product))
        extras.append(extra)
    utm = utm_params(event)
    gid = group_id(event)
    for ev in [main, *extras]:
        if utm:
            ev["user_properties"] = dict(utm)
        if gid is not None:
            ev["groups"] = {settings.group_type: gid}
    return [main, *extras]


def _plan(event: Mapping[str, Any], settings: Settings) -> list[dict[str, Any]] | Skip | str:
    kind = event.get("type")
    if kind not in ("track", "page", "screen", "identify", "group"):
        return Skip(-1, f"Amplitude has no event mapping for call type {kind!r}")
    min_len = settings.effective_min_id_length
    uid = _usable_id(user_id(event), min_len)
    device = _dig(context(event), ("device", "id")) or anonymous_id(event)
    did = _usable_id(device, min_len)
    if uid is None and did is None:
        return (f"no usable user_id or device_id: Amplitude needs one of at least {min_len} characters that is not "
                "a placeholder such as 'null' or 'anonymous' (lower `min_id_length` to accept shorter ids)")
    ids = (uid, did)
    time_ms = epoch_ms(event)
    if time_ms is None:
        return "no timestamp: Amplitude requires time in ms"
    iid = main_insert_id(event)
    if kind == "track":
        name = event.get("event")
        if not isinstance(name, str) or not name.strip():
            return "track call without an event name (Amplitude requires event_type)"
        return _track_events(event, name, ids, time_ms, iid, settings)
    if kind in ("page", "screen"):
        label = event.get("name") or event.get("category")
        suffix = "Page" if kind == "page" else "Screen"
        name = f"Viewed {label} {suffix}" if label else f"Loaded a {suffix}"
        ev = _base_event(name, event, ids, time_ms, iid)
        props: dict[str, Any] = {}
        for key in ("name", "category"):
            if event.get(key) not in (None, ""):
                props[key] = event[key]
        props.update(properties_of(event))
        ev["event_properties"] = props
        utm = utm_params(event)
        if utm:
            ev["user_properties"] = dict(utm)
        gid = group_id(event)
        if gid is not None:
            ev["groups"] = {settings.group_type: gid}
        return [ev]
    if kind == "identify":
        traits = normalized_traits(traits_of(event))
        if not traits:
            return Skip(-1, "identify without traits: nothing to set in Amplitude")
        ev = _base_event("$identify", event, ids, time_ms, iid)
        ev["user_properties"] = {"$set": traits}
        return [ev]
    gid = group_id(event)  # group
    if gid is None:
        return "group call without a groupId"
    user_ev = _base_event("$identify", event, ids, time_ms, iid)
    user_ev["groups"] = {settings.group_type: gid}
    user_ev["user_properties"] = {"$set": {settings.group_type: gid}}
    out = [user_ev]
    traits = normalized_traits(traits_of(event))
    if traits:
        group_ev = _base_event("$groupidentify", event, ids, time_ms, extra_insert_id(iid, 1))
        group_ev["groups"] = {settings.group_type: gid}
        group_ev["group_properties"] = {"$set": traits}
        out.append(group_ev)
    return out


def _alias(event: Mapping[str, Any], settings: Settings) -> dict[str, Any] | Skip | str:
    if not settings.user_mapping:
        return Skip(-1, "alias needs Amplitude's User Mapping API (Portfolio add-on); enable `user_mapping` to send it")
    uid = user_id(event)
    previous = event.get("previousId")
    previous = str(previous) if previous not in (None, "") else anonymous_id(event)
    if uid is None:
        return "alias call without a userId"
    if previous is None:
        return "alias call without a previousId or anonymousId"
    if previous == uid:
        return "alias previousId equals userId"
    return {"user_id": previous, "global_user_id": uid}


def _cut_strings(value: Any, path: str, cut: list[str], depth: int = 0) -> Any:
    """``value`` with every string over MAX_STRING characters cut to it; cut paths go to ``cut``.
    Called once the nesting is known to be within MAX_DEPTH; ``depth`` bounds it regardless."""
    if depth > MAX_DEPTH + 1:
        return value
    if isinstance(value, str):
        if len(value) > MAX_STRING:
            if path not in cut:
                cut.append(path)
            return value[:MAX_STRING]
        return value
    if isinstance(value, Mapping):
        return {k: _cut_strings(v, f"{path}.{k}" if path else k, cut, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_cut_strings(v, f"{path}[{i}]", cut, depth + 1) for i, v in enumerate(value)]
    return value


def object_depth(value: Any, stop: int = MAX_DEPTH + 1) -> int:
    """How many objects deep ``value`` nests (lists are not layers): ``{}`` is 1, ``{"a": {}}`` 2;
    counting stops at ``stop`` (so a hostile nesting cannot exhaust the stack)."""
    if stop <= 0:
        return 0
    if isinstance(value, Mapping):
        return 1 + max((object_depth(v, stop - 1) for v in value.values()), default=0)
    if isinstance(value, list):
        return max((object_depth(v, stop) for v in value), default=0)
    return 0


def _too_long(value: Any) -> bool:
    return isinstance(value, str) and len(value) > MAX_STRING


def _fit_strings(events: list[dict[str, Any]], cut: list[str]) -> str | None:
    """Cut long strings of a message's events in place (paths -> ``cut``); a reject reason when an
    identifying string is over the limit."""
    for ev in events:
        for key in PROPERTY_OBJECTS:
            if object_depth(ev.get(key)) > MAX_DEPTH:
                return (f"{key} are nested more than {MAX_DEPTH} objects deep; Amplitude accepts at most "
                        f"{MAX_DEPTH} layers")
        for key in IDENTIFYING:
            if _too_long(ev.get(key)):
                return (f"{key} is {len(ev[key])} characters; Amplitude takes at most {MAX_STRING}, and a cut "
                        "one would merge different users or events")
        for name, value in (ev.get("groups") or {}).items():
            if _too_long(value) or _too_long(name):
                return f"group {name[:40]!r} is over {MAX_STRING} characters; Amplitude takes at most {MAX_STRING}"
        for key, value in list(ev.items()):
            if key not in IDENTIFYING and key != "groups":
                ev[key] = _cut_strings(value, key, cut)
    return None


# ---------------------------------------------------------------------------------------------
# build
# ---------------------------------------------------------------------------------------------


def _events_body(key: str, encoded: Sequence[bytes], options: bytes | None) -> bytes:
    body = b'{"api_key":' + json_body(key) + b',"events":[' + b",".join(encoded) + b"]"
    if options is not None:
        body += b',"options":' + options
    return body + b"}"


def build_requests(messages: Sequence[Message], settings: Settings) -> Built:
    built = Built()
    key = settings.api_key.get_secret_value()
    max_bytes = MAX_BYTES[settings.api] - ENVELOPE_MARGIN - len(key)
    options = json_body({"min_id_length": settings.min_id_length}) if settings.min_id_length is not None else None
    groups: list[tuple[int, list[bytes]]] = []
    mappings: list[tuple[int, bytes]] = []
    for index, message in enumerate(messages):
        event = message.event
        if event.get("type") == "alias":
            alias = _alias(event, settings)
            if isinstance(alias, Skip):
                built.skips.append(Skip(index, alias.reason))
            elif isinstance(alias, str):
                built.rejects.append(Reject(index, alias))
            elif any(_too_long(v) for v in alias.values()):
                built.rejects.append(Reject(index, f"an alias id is over {MAX_STRING} characters; Amplitude takes "
                                                   f"at most {MAX_STRING}"))
            else:
                mappings.append((index, json_body(alias)))
            continue
        plan = _plan(event, settings)
        if isinstance(plan, Skip):
            built.skips.append(Skip(index, plan.reason))
            continue
        if isinstance(plan, str):
            built.rejects.append(Reject(index, plan))
            continue
        cut: list[str] = []
        too_long = _fit_strings(plan, cut)
        if too_long:
            built.rejects.append(Reject(index, too_long))
            continue
        encoded = [json_body(ev) for ev in plan]
        size = sum(len(e) + 1 for e in encoded)
        if size > max_bytes:
            built.rejects.append(Reject(index, f"event is {size} bytes; an Amplitude {settings.api} request takes "
                                               f"at most {MAX_BYTES[settings.api]}"))
            continue
        groups.append((index, encoded))
        if cut:
            shown = ", ".join(cut[:5]) + (f" and {len(cut) - 5} more" if len(cut) > 5 else "")
            built.note(index, f"strings over {MAX_STRING} characters cut to {MAX_STRING} (Amplitude's limit): {shown}")

    headers = {"Content-Type": "application/json"}
    current: list[tuple[int, list[bytes]]] = []
    count = size = 0

    def flush() -> None:
        if current:
            body = _events_body(key, [e for _, evs in current for e in evs], options)
            built.requests.append(Request("POST", settings.events_url, dict(headers), body,
                                          tuple(i for i, _ in current)))

    for index, encoded in groups:
        extra = sum(len(e) + 1 for e in encoded)
        if current and (count + len(encoded) > settings.max_events_per_request or size + extra > max_bytes):
            flush()
            current, count, size = [], 0, 0
        current.append((index, encoded))
        count += len(encoded)
        size += extra
    flush()

    chunk: list[tuple[int, bytes]] = []
    size = 0
    form_headers = {"Content-Type": "application/x-www-form-urlencoded"}

    def flush_mappings() -> None:
        if chunk:
            mapping = "[" + ",".join(m.decode() for _, m in chunk) + "]"
            body = urlencode({"api_key": key, "mapping": mapping}).encode()
            built.requests.append(Request("POST", settings.usermap_url, dict(form_headers), body,
                                          tuple(i for i, _ in chunk)))

    for index, mapping in mappings:
        # form encoding can triple a byte; budget on the encoded size
        extra = len(urlencode({"m": mapping.decode()})) + 3
        if chunk and (len(chunk) >= MAX_EVENTS or size + extra > MAX_USERMAP_BYTES - ENVELOPE_MARGIN - 3 * len(key)):
            flush_mappings()
            chunk, size = [], 0
        chunk.append((index, mapping))
        size += extra
    flush_mappings()
    return built


# ---------------------------------------------------------------------------------------------
# classify
# ---------------------------------------------------------------------------------------------


def event_positions(request: Request) -> list[int] | None:
    """Message index of every event in a /2/httpapi or /batch body, in body order (a message's
    extra events, Product Purchased and $groupidentify, follow it with insert_id ``<main>-<n>``).
    None if the body does not match ``request.messages``."""
    try:
        body = orjson.loads(request.body or b"{}")
    except orjson.JSONDecodeError:
        return None
    events = body.get("events") if isinstance(body, Mapping) else None
    if not isinstance(events, list):
        return None
    out: list[int] = []
    position, main, n = -1, None, 1
    for ev in events:
        iid = ev.get("insert_id") if isinstance(ev, Mapping) else None
        kind = ev.get("event_type") if isinstance(ev, Mapping) else None
        if main is not None and kind in EXTRA_EVENT_TYPES and iid == extra_insert_id(main, n):
            n += 1
        else:
            position, main, n = position + 1, iid, 1
        if position >= len(request.messages):
            return None
        out.append(request.messages[position])
    if position != len(request.messages) - 1:
        return None
    return out


def _indexes(value: Any) -> list[int]:
    """Event indexes from an Amplitude error field: a list, or a map field -> list."""
    found: list[int] = []
    if isinstance(value, Mapping):
        for item in value.values():
            found.extend(_indexes(item))
    elif isinstance(value, list):
        found.extend(i for i in value if isinstance(i, int) and not isinstance(i, bool))
    return found


def _classify_events(request: Request, response: Response) -> Outcome:
    api = "batch" if request.url.split("?", 1)[0].endswith("/batch") else "http_v2"
    body = response.json()
    body = body if isinstance(body, Mapping) else {}
    if response.status == 429:
        retry_after = parse_retry_after(response.header("Retry-After"))
        if retry_after is None:
            retry_after = THROTTLE_PAUSE[api]
        over = len(body.get("throttled_users") or {}) + len(body.get("throttled_devices") or {})
        reason = (f"HTTP 429: {body.get('error') or 'throttled'} ({over} users/devices over "
                  f"{body.get('eps_threshold', 30)} events/s)")
        return Outcome(Verdict.RETRY, reason, retry_after)
    if response.status != 400:
        return default_classify(request, response)
    invalid = _indexes(body.get("events_with_invalid_fields")) + _indexes(body.get("events_with_missing_fields"))
    invalid += _indexes(body.get("silenced_events"))
    throttled = _indexes(body.get("throttled_events"))
    positions = event_positions(request)
    if not invalid or positions is None:
        return Outcome(Verdict.PERMANENT, f"HTTP 400: {body_excerpt(response.body)}")
    per_message: dict[int, MessageOutcome] = {}
    error = body.get("error") or "invalid event"
    fields: dict[int, list[str]] = {}
    for key in ("events_with_invalid_fields", "events_with_missing_fields"):
        value = body.get(key)
        if isinstance(value, Mapping):
            for field, idxs in value.items():
                for i in _indexes(idxs):
                    fields.setdefault(i, []).append(f"{key.split('_')[2]} field {field}")
    for i in invalid:
        if 0 <= i < len(positions):
            detail = ", ".join(fields.get(i, [])) or "device silenced"
            per_message[positions[i]] = MessageOutcome(Verdict.PERMANENT,
                                                       f"Amplitude refused the event: {error} ({detail})")
    for i in throttled:
        if 0 <= i < len(positions) and positions[i] not in per_message:
            per_message[positions[i]] = MessageOutcome(Verdict.RETRY, "Amplitude throttled the event's user/device")
    if not per_message:
        return Outcome(Verdict.PERMANENT, f"HTTP 400: {body_excerpt(response.body)}")
    return Outcome(Verdict.RETRY, "resent: Amplitude refused the request because of other events in it",
                   None, per_message)


def classify(request: Request, response: Response) -> Outcome:
    path = request.url.split("?", 1)[0]
    if path.endswith(("/2/httpapi", "/batch")):
        return _classify_events(request, response)
    return default_classify(request, response)


ADAPTER = Adapter(
    type="amplitude",
    settings=Settings,
    build_requests=build_requests,
    integration_names=("Amplitude", "Actions Amplitude", "Amplitude (Actions)"),
    limits=BatchLimits(max_events=MAX_EVENTS, max_bytes=5_000_000),
    classify=classify,
    description="Amplitude: events, identifies and group identifies through HTTP V2 or Batch; aliases through User "
                "Mapping.",
)

