"""Contract fake of Customer.io's Track API (v2 batch, v1 anonymous events) and Data Pipelines
batch endpoint, enforcing the rules in shared/reference/destinations.md section 5:

- Track: HTTP Basic ``site_id:api_key`` (401 otherwise); JSON bodies; ``/api/v2/batch`` at most
  500,000 bytes (400 for the whole request), each item at most 32,000 bytes; per item: person
  identifiers = exactly one of id/email/phone/cio_id (id at most 150 bytes), object identifiers =
  string-integer object_type_id + object_id, merge needs primary and secondary, event names not
  blank (custom events at most 100 bytes, page/screen names under 500 characters), an event ``id``
  must be a ULID, ``timestamp`` an integer (unix seconds), attributes an object with at most 300
  keys, names at most 150 bytes and values at most 1,000 bytes, event data at most 100,000 bytes.
  A merge needs its ``primary`` person to exist (Customer.io: "primary must already exist"): the
  fake remembers the people identified through it. Invalid items get 207
  ``{"errors": [{"batch_index", "reason", "field", "message"}]}`` while the others are accepted.
  ``/api/v1/events`` answers 400 ``{"meta": {"error": "..."}}``.
- Pipelines: HTTP Basic ``<api key>:``; ``/v1/batch`` of Segment messages; with ``X-Strict-Mode: 1``
  invalid payloads get 400 ``{"code", "message"}``, without it they get 200 and are dropped
  (recorded in ``app["dropped"]``), as Customer.io documents.

``app["accepted"]`` collects ``(api, item)`` for every accepted item (api = "v2", "v1" or
"pipelines"). ``app["script"]`` is a list of ``(status, json_body, headers)`` answers to give
before normal handling (outage/throttle simulation).
"""

from __future__ import annotations

import base64
import re
from typing import Any

import orjson
from aiohttp import web

from tests.fakes.base import json_error

MAX_BATCH_BYTES = 500_000
MAX_ITEM_BYTES = 32_000
ULID = re.compile(r"^[0-7][0-9A-HJKMNP-TV-Z]{25}$", re.I)
PERSON_ACTIONS = {"identify", "delete", "event", "screen", "page", "add_relationships", "delete_relationships",
                  "add_device", "delete_device", "merge", "suppress", "unsuppress"}
OBJECT_ACTIONS = {"identify", "identify_anonymous", "delete", "add_relationships", "delete_relationships"}


class Invalid(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def _basic_ok(request: web.Request, user: str, password: str) -> bool:
    expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    return request.headers.get("Authorization") == expected


def _nbytes(text: str) -> int:
    return len(text.encode("utf-8"))


def _person_identifiers(value: Any, field: str) -> None:
    if not isinstance(value, dict) or len(value) != 1:
        raise Invalid(field, "exactly one of id, email, phone or cio_id is required")
    (key, ident), = value.items()
    if key not in ("id", "email", "phone", "cio_id"):
        raise Invalid(field, f"unknown identifier {key}")
    if not isinstance(ident, str) or not ident:
        raise Invalid(f"{field}.{key}", "id attribute must be a non-empty string")
    if _nbytes(ident) > 150:
        raise Invalid(f"{field}.{key}", "identifier cannot be longer than 150 bytes")


def _object_identifiers(value: Any, field: str) -> None:
    if not isinstance(value, dict):
        raise Invalid(field, "identifiers are required")
    if "cio_object_id" in value:
        return
    type_id, object_id = value.get("object_type_id"), value.get("object_id")
    if not isinstance(type_id, str) or not type_id.isdigit():
        raise Invalid(f"{field}.object_type_id", "object_type_id must be a string-formatted integer")
    if not isinstance(object_id, str) or not object_id:
        raise Invalid(f"{field}.object_id", "object_id must be a non-empty string")


def _attributes(value: Any, field: str, *, identify: bool) -> None:
    if value is None:
        return
    if not isinstance(value, dict):
        raise Invalid(field, "must be an object")
    if identify:
        if len(value) > 300:
            raise Invalid(field, "cannot identify more than 300 attributes in one request")
        for key, val in value.items():
            if _nbytes(key) > 150:
                raise Invalid(f"{field}.{key[:20]}", "attribute name cannot be longer than 150 bytes")
            size = _nbytes(val) if isinstance(val, str) else len(orjson.dumps(val))
            if size > 1000:
                raise Invalid(f"{field}.{key}", "property value cannot be longer than 1000 bytes")
    elif len(orjson.dumps(value)) > 100_000:
        raise Invalid(field, "event data cannot be longer than 100000 bytes")


def _event_fields(item: dict[str, Any], kind: str, name_field: str = "name") -> None:
    name = item.get(name_field)
    if not isinstance(name, str) or not name.strip():
        raise Invalid(name_field, "event name must not be blank")
    if kind == "event" and _nbytes(name) > 100:
        raise Invalid(name_field, "event name cannot be longer than 100 bytes")
    if len(name) >= 500:
        raise Invalid(name_field, "event name must be less than 500 characters")
    if "id" in item and not (isinstance(item["id"], str) and ULID.match(item["id"])):
        raise Invalid("id", "id must be a valid ULID")
    if "timestamp" in item and (not isinstance(item["timestamp"], int) or isinstance(item["timestamp"], bool)):
        raise Invalid("timestamp", "timestamp must be an integer unix timestamp")


def validate_entity(item: Any) -> None:
    if not isinstance(item, dict):
        raise Invalid("", "batch item must be an object")
    kind, action = item.get("type"), item.get("action")
    if kind == "person":
        if action not in PERSON_ACTIONS:
            raise Invalid("action", f"unknown person action {action!r}")
        if action == "merge":
            _person_identifiers(item.get("primary"), "primary")
            _person_identifiers(item.get("secondary"), "secondary")
            return
        _person_identifiers(item.get("identifiers"), "identifiers")
        if action in ("event", "page", "screen"):
            _event_fields(item, action)
            _attributes(item.get("attributes"), "attributes", identify=False)
        elif action == "identify":
            _attributes(item.get("attributes"), "attributes", identify=True)
            if "timestamp" in item and not isinstance(item["timestamp"], int):
                raise Invalid("timestamp", "timestamp must be an integer unix timestamp")
            for n, rel in enumerate(item.get("cio_relationships") or []):
                _object_identifiers((rel or {}).get("identifiers"), f"cio_relationships.{n}.identifiers")
    elif kind == "object":
        if action not in OBJECT_ACTIONS:
            raise Invalid("action", f"unknown object action {action!r}")
        _object_identifiers(item.get("identifiers"), "identifiers")
        _attributes(item.get("attributes"), "attributes", identify=True)
        for n, rel in enumerate(item.get("cio_relationships") or []):
            ids = (rel or {}).get("identifiers")
            if action == "identify_anonymous":
                if not isinstance(ids, dict) or not isinstance(ids.get("anonymous_id"), str) or not ids["anonymous_id"]:
                    raise Invalid(f"cio_relationships.{n}.identifiers", "anonymous_id is required")
            else:
                _person_identifiers(ids, f"cio_relationships.{n}.identifiers")
    else:
        raise Invalid("type", f"unknown type {kind!r}")


def validate_anonymous_event(body: Any) -> None:
    if not isinstance(body, dict):
        raise Invalid("", "body must be an object")
    kind = body.get("type", "event")
    if kind not in ("event", "page", "screen"):
        raise Invalid("type", "type must be event, page or screen")
    _event_fields(body, kind)
    if "anonymous_id" in body and not isinstance(body["anonymous_id"], str):
        raise Invalid("anonymous_id", "anonymous_id must be a string")
    if "data" in body and not isinstance(body["data"], dict):
        raise Invalid("data", 'event data must be a hash (e.g., send "data":{} instead of "data":"")')
    _attributes(body.get("data"), "data", identify=False)


SEGMENT_TYPES = ("identify", "track", "page", "screen", "group", "alias")


def validate_segment(msg: Any) -> str | None:
    if not isinstance(msg, dict):
        return "message must be an object"
    kind = msg.get("type")
    if kind not in SEGMENT_TYPES:
        return f"unknown type {kind!r}"
    traits = msg.get("traits") or {}
    if not (msg.get("userId") or msg.get("anonymousId")) and not (kind == "identify" and traits.get("email")):
        return "userId or anonymousId is required"
    if kind == "track" and not msg.get("event"):
        return "event is required"
    if kind == "group" and not msg.get("groupId"):
        return "groupId is required"
    if kind == "alias" and not (msg.get("previousId") and msg.get("userId")):
        return "previousId and userId are required"
    if len(orjson.dumps(msg)) > MAX_ITEM_BYTES:
        return "call exceeds 32KB"
    return None


def make_app(site_id: str = "site-123", api_key: str = "track-key-456",
             pipelines_key: str = "cdp-key-789") -> web.Application:
    app = web.Application(client_max_size=4 * 1024 * 1024)
    app["accepted"] = []
    app["dropped"] = []
    app["script"] = []
    app["people"] = set()  # (identifier kind, value) of every person identified through the fake

    def scripted() -> web.Response | None:
        if app["script"]:
            status, payload, headers = app["script"].pop(0)
            return json_error(status, payload, headers)
        return None

    async def v2_batch(request: web.Request) -> web.Response:
        if (answer := scripted()) is not None:
            return answer
        if not _basic_ok(request, site_id, api_key):
            return json_error(401, {"meta": {"error": "Unauthorized request"}})
        raw = await request.read()
        if len(raw) > MAX_BATCH_BYTES:
            return json_error(400,
                              {"errors": [{"reason": "invalid", "field": "batch",
                                           "message": "request must be smaller than 500kb"}]})
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return json_error(400, {"errors": [{"reason": "invalid", "field": "", "message": "malformed JSON"}]})
        batch = body.get("batch") if isinstance(body, dict) else None
        if not isinstance(batch, list) or not batch:
            return json_error(400,
                              {"errors": [{"reason": "required", "field": "batch",
                                           "message": "batch must be a non-empty array"}]})
        errors = []
        for index, item in enumerate(batch):
            try:
                if len(orjson.dumps(item)) > MAX_ITEM_BYTES:
                    raise Invalid("", "each request in a batch must be 32kb or smaller")
                validate_entity(item)
                if item.get("type") == "person" and item.get("action") == "merge":
                    (primary,) = item["primary"].items()
                    if primary not in app["people"]:
                        raise Invalid("primary", "primary person does not exist")
            except Invalid as exc:
                errors.append({"batch_index": index, "reason": "invalid", "field": exc.field, "message": exc.message})
                continue
            if item.get("type") == "person" and item.get("action") in ("identify", "event", "page", "screen"):
                app["people"].update(item["identifiers"].items())
            app["accepted"].append(("v2", item))
        if errors:
            return json_error(207, {"errors": errors})
        return web.json_response({})

    async def v1_events(request: web.Request) -> web.Response:
        if (answer := scripted()) is not None:
            return answer
        if not _basic_ok(request, site_id, api_key):
            return json_error(401, {"meta": {"error": "Unauthorized request"}})
        try:
            body = orjson.loads(await request.read())
            validate_anonymous_event(body)
        except orjson.JSONDecodeError:
            return json_error(400, {"meta": {"error": "malformed JSON"}})
        except Invalid as exc:
            return json_error(400, {"meta": {"error": exc.message}})
        app["accepted"].append(("v1", body))
        return web.json_response({})

    async def pipelines_batch(request: web.Request) -> web.Response:
        if (answer := scripted()) is not None:
            return answer
        strict = request.headers.get("X-Strict-Mode") == "1"
        if not _basic_ok(request, pipelines_key, ""):
            return json_error(401,
                              {"code": "unauthorized",
                               "message": "invalid API key"}) if strict else web.json_response({})
        raw = await request.read()
        problem = None
        batch: list[Any] = []
        if len(raw) > MAX_BATCH_BYTES:
            problem = "batch exceeds 500KB"
        else:
            try:
                body = orjson.loads(raw)
                batch = body.get("batch") if isinstance(body, dict) else None
                if not isinstance(batch, list):
                    problem = "batch must be an array"
            except orjson.JSONDecodeError:
                problem = "malformed JSON"
        if problem is None:
            for n, msg in enumerate(batch):
                if (err := validate_segment(msg)) is not None:
                    problem = f"batch[{n}]: {err}"
                    break
        if problem is not None:
            if strict:
                return json_error(400, {"code": "invalid_request", "message": problem})
            app["dropped"].append(problem)
            return web.json_response({})
        app["accepted"].extend(("pipelines", msg) for msg in batch)
        return web.json_response({})

    app.router.add_post("/api/v2/batch", v2_batch)
    app.router.add_post("/api/v1/events", v1_events)
    app.router.add_post("/v1/batch", pipelines_batch)
    return app
