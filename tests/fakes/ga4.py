"""Contract fake of the GA4 Measurement Protocol (collection + validation server).

Rules enforced (developers.google.com/analytics/devguides/collection/protocol/ga4: reference,
sending-events "Limitations", validating-events):
- POST only; ``measurement_id`` query parameter required; ``api_secret`` must be the stream's.
- Body: JSON object < 130 kB; ``client_id`` required; ``events`` 1..25; event name
  ``[A-Za-z][A-Za-z0-9_]*``, <= 40 characters, not reserved; <= 25 params per event; param names
  <= 40 characters of the same alphabet without reserved prefixes (google_, ga_, firebase_);
  param values scalars (items: list of objects with item_id or item_name, numeric price and
  quantity), strings <= 100 characters (page_location 1000, page_referrer 420, page_title 300);
  value needs currency, currency is 3 letters; <= 25 user_properties, names <= 24 characters,
  not reserved, ``{"value": scalar}`` with strings <= 36 characters; user_id <= 256 characters;
  timestamp_micros a positive integer; at most 200 ``items`` per event (Google keeps the first 200
  and drops the rest without an error: here the event lands in ``dropped``).

Answers, as Google's:
- ``/mp/collect`` answers 204 to everything, valid or not. Valid requests (right secret, no
  validation message) land in ``app["accepted"]`` (one dict per event, with the request's
  identities); the rest land in ``app["dropped"]`` with their messages — what Google silently does.
- ``/debug/mp/collect`` answers 200 ``{"validationMessages": [...]}`` and records nothing. Like
  Google's validation server it does not check api_secret. Message shape and the NAME_INVALID
  text follow the documented example; the other descriptions are modelled on it (Google's exact
  wording for them is not published).
"""

from __future__ import annotations

import re
from typing import Any

import orjson
from aiohttp import web

NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
MAX_ITEMS = 200
CURRENCY = re.compile(r"^[A-Z]{3}$")
RESERVED_EVENTS = {
    "ad_activeview", "ad_click", "ad_exposure", "ad_impression", "ad_query", "adunit_exposure",
    "app_clear_data", "app_install", "app_update", "app_remove", "error", "first_open",
    "first_visit", "in_app_purchase", "notification_dismiss", "notification_foreground",
    "notification_open", "notification_receive", "os_update", "screen_view", "session_start",
    "user_engagement",
}
RESERVED_PREFIXES = ("google_", "ga_", "firebase_")
RESERVED_USER_PROPERTIES = {"first_open_time", "first_visit_time", "last_deep_link_referrer", "user_id",
                            "first_open_after_install"}
LONG_VALUES = {"page_location": 1000, "page_referrer": 420, "page_title": 300}
MAX_BODY = 130_000


def _msg(field: str, description: str, code: str) -> dict[str, str]:
    return {"fieldPath": field, "description": description, "validationCode": code}


def _scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool)) and value is not None


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def validate(body: bytes) -> list[dict[str, str]]:
    """The validation server's messages for one request body ([] = valid)."""
    if len(body) >= MAX_BODY:
        return [_msg("", f"Payload is {len(body)} bytes; it must be smaller than 130kB.", "VALUE_OUT_OF_BOUNDS")]
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return [_msg("", "Unable to parse the request body as JSON.", "VALUE_INVALID")]
    if not isinstance(data, dict):
        return [_msg("", "The request body must be a JSON object.", "VALUE_INVALID")]
    out: list[dict[str, str]] = []
    client_id = data.get("client_id")
    if not isinstance(client_id, str) or not client_id:
        out.append(_msg("client_id", "client_id is required for web streams.", "VALUE_REQUIRED"))
    user_id = data.get("user_id")
    if user_id is not None and (not isinstance(user_id, str) or len(user_id) > 256):
        out.append(_msg("user_id", "user_id must be a string of at most 256 characters.", "VALUE_OUT_OF_BOUNDS"))
    ts = data.get("timestamp_micros")
    if ts is not None and (not isinstance(ts, int) or isinstance(ts, bool) or ts <= 0):
        out.append(_msg("timestamp_micros", "timestamp_micros must be a positive integer.", "VALUE_INVALID"))
    out += _user_properties(data.get("user_properties"))
    events = data.get("events")
    if not isinstance(events, list) or not events:
        out.append(_msg("events", "At least one event is required.", "VALUE_REQUIRED"))
        return out
    if len(events) > 25:
        out.append(_msg("events", f"A request can have at most 25 events; it has {len(events)}.",
                        "EXCEEDED_MAX_ENTITIES"))
    for index, event in enumerate(events):
        out += _event(index, event)
    return out


def _user_properties(props: Any) -> list[dict[str, str]]:
    if props is None:
        return []
    if not isinstance(props, dict):
        return [_msg("user_properties", "user_properties must be an object.", "VALUE_INVALID")]
    out = []
    if len(props) > 25:
        out.append(_msg("user_properties", "At most 25 user properties are allowed.", "EXCEEDED_MAX_ENTITIES"))
    for name, entry in props.items():
        path = f"user_properties.{name}"
        if not NAME.match(name) or len(name) > 24:
            out.append(_msg(path, f"User property [{name}] has an invalid name.", "NAME_INVALID"))
        elif name in RESERVED_USER_PROPERTIES or name.lower().startswith(RESERVED_PREFIXES):
            out.append(_msg(path, f"User property [{name}] has a reserved name.", "NAME_RESERVED"))
        value = entry.get("value") if isinstance(entry, dict) else None
        if not _scalar(value):
            out.append(_msg(path, f"User property [{name}] needs a scalar value.", "VALUE_INVALID"))
        elif isinstance(value, str) and len(value) > 36:
            out.append(_msg(path, f"User property [{name}] value is longer than 36 characters.", "VALUE_OUT_OF_BOUNDS"))
    return out


def _event(index: int, event: Any) -> list[dict[str, str]]:
    at = f"events[{index}]"
    if not isinstance(event, dict):
        return [_msg(at, f"Event at index: [{index}] must be an object.", "VALUE_INVALID")]
    out = []
    name = event.get("name")
    if not isinstance(name, str) or not name:
        out.append(_msg(f"{at}.name", f"Event at index: [{index}] has no name.", "VALUE_REQUIRED"))
    elif not NAME.match(name):
        out.append(_msg("events",
                        f"Event at index: [{index}] has invalid name [{name}]. "
                        "Names must start with an alphabetic character.", "NAME_INVALID"))
    elif len(name) > 40:
        out.append(_msg(f"{at}.name", f"Event at index: [{index}] has a name longer than 40 characters.",
                        "VALUE_OUT_OF_BOUNDS"))
    elif name in RESERVED_EVENTS:
        out.append(_msg(f"{at}.name", f"Event at index: [{index}] has reserved name [{name}].", "NAME_RESERVED"))
    ts = event.get("timestamp_micros")
    if ts is not None and (not isinstance(ts, int) or isinstance(ts, bool) or ts <= 0):
        out.append(_msg(f"{at}.timestamp_micros", "timestamp_micros must be a positive integer.", "VALUE_INVALID"))
    params = event.get("params", {})
    if not isinstance(params, dict):
        return out + [_msg(f"{at}.params", f"Event at index: [{index}] params must be an object.", "VALUE_INVALID")]
    if len(params) > 25:
        out.append(_msg(f"{at}.params", f"Event at index: [{index}] has more than 25 parameters.",
                        "EXCEEDED_MAX_ENTITIES"))
    for key, value in params.items():
        path = f"{at}.params.{key}"
        if not NAME.match(key) or len(key) > 40:
            out.append(_msg(path, f"Event at index: [{index}] has invalid parameter name [{key}].", "NAME_INVALID"))
            continue
        if key.lower().startswith(RESERVED_PREFIXES):
            out.append(_msg(path, f"Event at index: [{index}] has reserved parameter name [{key}].", "NAME_RESERVED"))
            continue
        if key == "items":
            out += _items(index, value)
        elif not _scalar(value):
            out.append(_msg(path, f"Event at index: [{index}] parameter [{key}] must be a string, number or boolean.",
                            "VALUE_INVALID"))
        elif isinstance(value, str) and len(value) > LONG_VALUES.get(key, 100):
            out.append(_msg(path, f"Event at index: [{index}] parameter [{key}] value is too long.",
                            "VALUE_OUT_OF_BOUNDS"))
    if "value" in params and not _number(params["value"]):
        out.append(_msg(f"{at}.params.value", f"Event at index: [{index}] value must be a number.", "VALUE_INVALID"))
    if "value" in params and "currency" not in params:
        out.append(_msg(f"{at}.params.currency", f"Event at index: [{index}] needs currency when value is set.",
                        "VALUE_REQUIRED"))
    if "currency" in params and not (isinstance(params["currency"], str) and CURRENCY.match(params["currency"])):
        out.append(_msg(f"{at}.params.currency", f"Event at index: [{index}] has an invalid ISO 4217 currency.",
                        "VALUE_INVALID"))
    return out


def _items(index: int, items: Any) -> list[dict[str, str]]:
    at = f"events[{index}].params.items"
    if not isinstance(items, list):
        return [_msg(at, f"Event at index: [{index}] items must be an array.", "VALUE_INVALID")]
    out = []
    if len(items) > MAX_ITEMS:
        out.append(_msg(at, f"Event at index: [{index}] has {len(items)} items; at most {MAX_ITEMS} are kept.",
                        "EXCEEDED_MAX_ENTITIES"))
    for n, item in enumerate(items):
        path = f"{at}[{n}]"
        if not isinstance(item, dict):
            out.append(_msg(path, "An item must be an object.", "VALUE_INVALID"))
            continue
        if item.get("item_id") in (None, "") and item.get("item_name") in (None, ""):
            out.append(_msg(path, "One of item_id or item_name is required.", "VALUE_REQUIRED"))
        for key in ("price", "quantity", "index", "discount"):
            if key in item and not _number(item[key]):
                out.append(_msg(f"{path}.{key}",
                                f"Validation of item.{key} should prevent conversion from unsupported value "
                                f"[{item[key]!r}]", "VALUE_INVALID"))
        for key, value in item.items():
            if not _scalar(value):
                out.append(_msg(f"{path}.{key}", f"Item parameter [{key}] must be a string, number or boolean.",
                                "VALUE_INVALID"))
    return out


def make_app(measurement_id: str = "G-ABC123XYZ", api_secret: str = "mp-secret-value-1") -> web.Application:
    app = web.Application(client_max_size=4 * 1024 * 1024)
    app["accepted"] = []
    app["dropped"] = []

    async def collect(request: web.Request) -> web.Response:
        body = await request.read()
        problems = validate(body)
        if request.query.get("measurement_id") != measurement_id:
            problems.append(_msg("measurement_id", "Unknown measurement_id.", "VALUE_INVALID"))
        if request.query.get("api_secret") != api_secret:
            problems.append(_msg("api_secret", "api_secret does not belong to this stream.", "VALUE_INVALID"))
        if problems:
            app["dropped"].append({"body": body, "validationMessages": problems})
        else:
            data = orjson.loads(body)
            head = {k: v for k, v in data.items() if k != "events"}
            for event in data["events"]:
                app["accepted"].append({**head, **event})
        return web.Response(status=204)  # Google: 2xx whatever the payload

    async def debug(request: web.Request) -> web.Response:
        body = await request.read()
        problems = validate(body)
        if request.query.get("measurement_id") in (None, ""):
            problems.append(_msg("measurement_id", "measurement_id is required.", "VALUE_REQUIRED"))
        return web.json_response({"validationMessages": problems})

    app.router.add_post("/mp/collect", collect)
    app.router.add_post("/debug/mp/collect", debug)
    return app
