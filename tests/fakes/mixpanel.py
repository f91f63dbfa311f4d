"""Contract fake of Mixpanel's ingestion API: /import, /engage, /groups.

Enforces what docs.mixpanel.com (reference/import-events, profile-set, group-set) documents:
- /import: HTTP Basic with the project token (``token:``) or a service account
  (``user:secret`` plus ``?project_id=``), else 401 ``{"code":401,"error":"Invalid credentials",...}``;
  a JSON array body of at most 2000 records; a body over 2 MiB gets the documented 413 answer.
  With ``strict=1`` every record is validated: event name, ``properties.time`` (seconds or ms, not
  before 1971 nor more than 1 hour ahead of the fake's clock), ``distinct_id`` and ``$insert_id``
  present and not a refused value, ``$insert_id`` <= 36 chars of [A-Za-z0-9-], < 1 MB, < 255
  properties, nested objects < 255 keys and <= 3 levels, arrays < 255 elements. Failing records come
  back in ``failed_records`` of a 400 while valid ones are ingested (partial success), exactly as
  Mixpanel answers. Ingested records have every string (event name, property values, nested ones
  and list items) cut to 255 characters without a word in the answer, as Mixpanel documents ("We
  truncate all strings down to 255 characters", import-events "Common Issues"); what it cut is
  listed in ``app["truncated"]`` ((insert id, path) pairs) so tests can prove nothing was lost.
- /engage and /groups: a JSON array (or form ``data=``) of updates, each with ``$token``, the
  identity (``$distinct_id`` / ``$group_key`` + ``$group_id``) and one operation; answers ``1``/``0``
  or, with ``verbose=1``, ``{"status":1,"error":null}`` / ``{"status":0,"error":"..."}``. Like the
  real API it does not refuse a wrong ``$token``: such updates are answered 1 but not stored (they
  would land in another project); ``app["dropped"]`` keeps them.

Accepted records: ``app["events"]``, ``app["profiles"]``, ``app["groups"]``. ``app["script"]``: a
list of (status, json body) answered, one per request, before any validation (to inject 429/5xx).
"""

from __future__ import annotations

import base64
import re
import time as time_module
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

import orjson
from aiohttp import web

from tests.fakes.base import json_error

INVALID_IDS = {
    "00000000-0000-0000-0000-000000000000", "anon", "anonymous", "nil", "none", "null", "n/a", "na",
    "undefined", "unknown", "<nil>", "0", "-1", "true", "false", "[]", "{}",
}
INSERT_ID = re.compile(r"^[A-Za-z0-9-]{1,36}$")
MAX_BODY = 2_097_152
PROFILE_OPS = ("$set", "$set_once", "$add", "$union", "$append", "$remove", "$unset", "$delete")
GROUP_OPS = ("$set", "$set_once", "$union", "$remove", "$unset", "$delete")


def _error(status: int, error: str, status_text: str) -> web.Response:
    return json_error(status, {"code": status, "error": error, "status": status_text})


def _nesting_error(value: Any, depth: int, path: str) -> str | None:
    if isinstance(value, dict):
        if len(value) >= 255:
            return f"'{path}' is invalid: nested objects must have fewer than 255 keys"
        children = value.items()
    elif isinstance(value, list):
        if len(value) >= 255:
            return f"'{path}' is invalid: arrays must have fewer than 255 elements"
        children = ((str(i), v) for i, v in enumerate(value))
    else:
        return None
    if depth > 3:
        return f"'{path}' is invalid: max nesting depth is 3"
    for key, child in children:
        problem = _nesting_error(child, depth + 1, f"{path}.{key}")
        if problem:
            return problem
    return None


def truncate(value: Any, path: str, cut: list[str]) -> Any:
    """What Mixpanel stores: strings over 255 characters cut to 255 (paths of the cuts -> ``cut``)."""
    if isinstance(value, str):
        if len(value) > 255:
            cut.append(path)
        return value[:255]
    if isinstance(value, dict):
        return {k: truncate(v, f"{path}.{k}" if path else k, cut) for k, v in value.items()}
    if isinstance(value, list):
        return [truncate(v, f"{path}[{i}]", cut) for i, v in enumerate(value)]
    return value


def validate_record(record: Any, now: float | None = None) -> tuple[str, str] | None:
    """(field, message) of the first problem of an /import record, None if valid."""
    if not isinstance(record, dict):
        return "event", "'event' is invalid: must be an object"
    if len(orjson.dumps(record)) >= 1_000_000:
        return "event", "event is too large: must be smaller than 1MB"
    name = record.get("event")
    if not isinstance(name, str) or not name:
        return "event", "'event' must be a non-empty string"
    props = record.get("properties")
    if not isinstance(props, dict):
        return "properties", "'properties' must be an object"
    time = props.get("time")
    if isinstance(time, bool) or not isinstance(time, (int, float)):
        return "properties.time", "'properties.time' is invalid: must be specified as seconds since epoch"
    seconds = time / 1000 if time > 1e11 else time
    if seconds < 31_536_000:
        return "properties.time", "'properties.time' is invalid: must be after 1971-01-01"
    if seconds > (time_module.time() if now is None else now) + 3600:
        return "properties.time", "'properties.time' is invalid: must not be more than 1 hour in the future"
    distinct = props.get("distinct_id")
    if not isinstance(distinct, str) or distinct.strip().lower() in INVALID_IDS:
        return ("properties.distinct_id",
                "'properties.distinct_id' is invalid: must be a string and not a placeholder value")
    iid = props.get("$insert_id")
    if not isinstance(iid, str) or not INSERT_ID.match(iid) or iid.lower() in INVALID_IDS:
        return "properties.$insert_id", "'properties.$insert_id' is invalid: must be <= 36 characters of [A-Za-z0-9-]"
    if len(props) >= 255:
        return "properties", "event must have fewer than 255 properties"
    for key, value in props.items():
        problem = _nesting_error(value, 1, f"properties.{key}")
        if problem:
            return f"properties.{key}", problem
    return None


def make_app(token: str = "mp-token", service_account: tuple[str, str, int] | None = None,
             clock: Callable[[], float] = time_module.time) -> web.Application:
    """``clock``: the fake's "server time" for the 1-hour-ahead rule (tests with fixed fixture
    timestamps pin it)."""
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app["token"] = token
    app["events"] = []
    app["profiles"] = []
    app["groups"] = []
    app["dropped"] = []
    app["truncated"] = []
    app["script"] = []

    def scripted() -> web.Response | None:
        if app["script"]:
            status, body = app["script"].pop(0)
            return json_error(status, body)
        return None

    def authorized(request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        project_id = request.query.get("project_id")
        if project_id is not None:
            return (service_account is not None and (user, password) == service_account[:2]
                    and project_id == str(service_account[2]))
        return user == app["token"] and password == ""

    async def import_(request: web.Request) -> web.Response:
        if (answer := scripted()) is not None:
            return answer
        if not authorized(request):
            return _error(401, "Invalid credentials", "Unauthorized")
        body = await request.read()
        if len(body) > MAX_BODY:
            return _error(413, f"request exceeds max limit of {MAX_BODY} bytes", "Request Entity Too Large")
        if request.content_type not in ("application/json", "application/x-ndjson"):
            return _error(400, "unsupported Content-Type", "Bad Request")
        try:
            records = orjson.loads(body)
        except orjson.JSONDecodeError:
            return _error(400, "unable to parse request body as JSON", "Bad Request")
        if not isinstance(records, list):
            return _error(400, "request body must be a JSON array of events", "Bad Request")
        if len(records) > 2000:
            return _error(400, "request exceeds max limit of 2000 events", "Bad Request")
        strict = request.query.get("strict") == "1"
        failed = []
        imported = 0
        for index, record in enumerate(records):
            problem = validate_record(record, clock()) if strict else None
            if problem:
                iid = record.get("properties", {}).get("$insert_id") if isinstance(record, dict) else None
                failed.append({"index": index, "$insert_id": iid, "field": problem[0], "message": problem[1]})
                continue
            cut: list[str] = []
            stored = truncate(record, "", cut)
            app["truncated"].extend((stored["properties"].get("$insert_id"), p) for p in cut)
            app["events"].append(stored)
            imported += 1
        if failed:
            return json_error(400, {"code": 400, "error": "some data points in the request failed validation",
                                    "failed_records": failed, "num_records_imported": imported,
                                    "status": "Bad Request"})
        return json_error(200, {"code": 200, "num_records_imported": imported, "status": "OK"})

    async def updates(request: web.Request, kind: str) -> web.Response:
        if (answer := scripted()) is not None:
            return answer
        verbose = request.query.get("verbose") == "1"
        body = await request.read()

        def answer(ok: bool, error: str | None = None) -> web.Response:
            if verbose:
                return json_error(200, {"status": 1 if ok else 0, "error": error})
            return web.Response(status=200, text="1" if ok else "0", content_type="text/plain")

        try:
            if request.content_type == "application/x-www-form-urlencoded":
                records = orjson.loads(parse_qs(body.decode()).get("data", [""])[0])
            else:
                records = orjson.loads(body)
        except (orjson.JSONDecodeError, UnicodeDecodeError):
            return answer(False, "data, missing or empty")
        if isinstance(records, dict):
            records = [records]
        limit = 2000 if kind == "profiles" else 200
        if not isinstance(records, list) or not records or len(records) > limit:
            return answer(False, f"request must hold 1 to {limit} updates")
        for record in records:
            if not isinstance(record, dict) or not record.get("$token"):
                return answer(False, "$token, missing or empty")
            if kind == "profiles" and not isinstance(record.get("$distinct_id"), str):
                return answer(False, "$distinct_id, missing or empty")
            if kind == "groups" and (not record.get("$group_key") or record.get("$group_id") in (None, "")):
                return answer(False, "$group_key and $group_id are required")
            ops = [op for op in (PROFILE_OPS if kind == "profiles" else GROUP_OPS) if op in record]
            if len(ops) != 1:
                return answer(False, "each update must contain exactly one operation")
            if not isinstance(record[ops[0]], (dict, list)):
                return answer(False, f"{ops[0]} must be an object")
        for record in records:
            if record["$token"] == app["token"]:
                app[kind].append(record)
            else:
                app["dropped"].append(record)
        return answer(True)

    async def engage(request: web.Request) -> web.Response:
        return await updates(request, "profiles")

    async def groups(request: web.Request) -> web.Response:
        return await updates(request, "groups")

    app.router.add_post("/import", import_)
    app.router.add_post("/engage", engage)
    app.router.add_post("/groups", groups)
    return app
