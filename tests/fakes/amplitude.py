"""Contract fake of Amplitude's ingestion APIs: HTTP V2 (/2/httpapi), Batch (/batch), User Mapping
(/usermap).

Enforces what amplitude.com/docs/apis/analytics (http-v2, batch-event-upload, user-mapping)
documents, with its error bodies:
- Content-Type application/json; a JSON object with ``api_key`` (right key, else
  ``{"code":400,"error":"Invalid API key"}``) and ``events``; missing pieces answer
  ``Request missing required field`` with ``missing_field``; bad JSON ``Invalid JSON request body``.
- /2/httpapi: < 1 MB and < 2000 events per request, /batch: 20 MB and 2000 events, else 413
  ``{"code":413,"error":"Payload too large"}``.
- each event: ``event_type``; ``time`` an integer of ms; user_id/device_id shorter than 5 chars
  (or ``options.min_id_length``) are removed, and an event left without either is refused; IDs
  from Amplitude's refused list (``null``, ``anonymous``...) are invalid; revenue fields numeric;
  no string anywhere in the event (ids, event_type, property values, nested ones and list items)
  over 1024 characters (http-v2 "String character limit"; what Amplitude does past it is not
  documented, so this fake refuses it as an invalid field, under the top-level key holding it);
  ``event_properties`` / ``user_properties`` / ``group_properties`` at most 40 objects deep
  ("Object depth may not exceed 40 layers"), else an invalid field.
  A request with any bad event gets 400 ``Invalid field values on some events`` /
  ``Request missing required field`` whose ``events_with_invalid_fields`` /
  ``events_with_missing_fields`` map each field to the index of the first event with that error,
  and nothing of the request is ingested.
- throttling: with ``app["eps_threshold"]`` set, a request holding more events than that for one
  user or device gets the documented 429 body (``throttled_users``/``throttled_devices``/
  ``throttled_events``); nothing is ingested.
- /usermap: form (or query) ``api_key`` and ``mapping`` (a JSON object or array; each needs
  ``user_id`` and ``global_user_id`` unless ``unmap``), at most 2000 mappings and 1 MB. Its error
  and success bodies are not documented: this fake answers 400 with a text reason, 200 ``success``.

Accepted: ``app["events"]`` (as ingested, short ids removed), ``app["mappings"]``.
``app["script"]``: list of (status, json body) answered before any validation.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import parse_qs

import orjson
from aiohttp import web

from tests.fakes.base import json_error

INVALID_IDS = {"anonymous", "nil", "none", "null", "n/a", "na", "undefined", "unknown", '""',
               "00000000-0000-0000-0000-000000000000", "{}", "lmy47d", "0", "-1"}
LIMITS = {"/2/httpapi": 1_000_000, "/batch": 20_000_000}
MAX_STRING = 1024
NUMERIC_FIELDS = ("price", "revenue", "location_lat", "location_lng")


def _long_string(value: Any) -> bool:
    if isinstance(value, str):
        return len(value) > MAX_STRING
    if isinstance(value, dict):
        return any(_long_string(k) or _long_string(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_long_string(v) for v in value)
    return False


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return max((_depth(v) for v in value), default=0)
    return 0


def _first(errors: dict[str, list[int]], field: str, index: int) -> None:
    errors.setdefault(field, [index])  # Amplitude reports the first event with each error


def make_app(api_key: str = "amp-key") -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app["api_key"] = api_key
    app["events"] = []
    app["mappings"] = []
    app["script"] = []
    app["eps_threshold"] = None

    def scripted() -> web.Response | None:
        if app["script"]:
            status, body = app["script"].pop(0)
            return json_error(status, body)
        return None

    async def events(request: web.Request) -> web.Response:
        if (answer := scripted()) is not None:
            return answer
        body = await request.read()
        if len(body) >= LIMITS[request.path]:
            return json_error(413, {"code": 413, "error": "Payload too large"})
        if not body:
            return json_error(400, {"code": 400, "error": "Missing request body"})
        if request.content_type != "application/json":
            return json_error(400, {"code": 400, "error": "Invalid JSON request body"})
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            return json_error(400, {"code": 400, "error": "Invalid JSON request body"})
        if not isinstance(payload, dict):
            return json_error(400, {"code": 400, "error": "Invalid JSON request body"})
        for field in ("api_key", "events"):
            if field not in payload:
                return json_error(400, {"code": 400, "error": "Request missing required field", "missing_field": field})
        if payload["api_key"] != app["api_key"]:
            return json_error(400, {"code": 400, "error": "Invalid API key"})
        items = payload["events"]
        if not isinstance(items, list):
            return json_error(400, {"code": 400, "error": "Invalid event JSON"})
        if len(items) >= 2000 + (1 if request.path == "/batch" else 0):
            return json_error(413, {"code": 413, "error": "Payload too large"})
        options = payload.get("options") or {}
        min_len = options.get("min_id_length", 5) if isinstance(options, dict) else 5
        invalid: dict[str, list[int]] = {}
        missing: dict[str, list[int]] = {}
        ingested = []
        for index, ev in enumerate(items):
            if not isinstance(ev, dict):
                return json_error(400, {"code": 400, "error": "Invalid event JSON"})
            ev = dict(ev)
            for field, value in ev.items():
                if _long_string(value):
                    _first(invalid, field, index)
                if field in ("event_properties", "user_properties", "group_properties") and _depth(value) > 40:
                    _first(invalid, field, index)
            if not isinstance(ev.get("event_type"), str) or not ev["event_type"]:
                _first(missing, "event_type", index)
            t = ev.get("time")
            if "time" in ev and (isinstance(t, bool) or not isinstance(t, int)):
                _first(invalid, "time", index)
            for id_field in ("user_id", "device_id"):
                value = ev.get(id_field)
                if value is None:
                    continue
                if not isinstance(value, str) or value.strip().lower() in INVALID_IDS:
                    _first(invalid, id_field, index)
                elif len(value) < min_len:
                    del ev[id_field]  # too short: Amplitude removes the id
            if ev.get("user_id") is None and ev.get("device_id") is None and not (
                    "user_id" in invalid and invalid["user_id"][0] == index
                    or "device_id" in invalid and invalid["device_id"][0] == index):
                _first(missing, "user_id", index)
            for field in NUMERIC_FIELDS:
                if field in ev and (isinstance(ev[field], bool) or not isinstance(ev[field], (int, float))):
                    _first(invalid, field, index)
            if "quantity" in ev and (isinstance(ev["quantity"], bool) or not isinstance(ev["quantity"], int)):
                _first(invalid, "quantity", index)
            for field in ("productId", "revenueType"):
                if field in ev and not ("price" in ev or "revenue" in ev):
                    _first(invalid, field, index)
            if "currency" in ev and not (isinstance(ev["currency"],
                                                    str) and len(ev["currency"]) == 3 and ev["currency"].isupper()):
                _first(invalid, "currency", index)
            ingested.append(ev)
        if invalid or missing:
            answer: dict[str, Any] = {"code": 400}
            answer["error"] = ("Request missing required field" if missing and not invalid
                               else "Invalid field values on some events")
            if invalid:
                answer["events_with_invalid_fields"] = invalid
            if missing:
                answer["events_with_missing_fields"] = missing
            return json_error(400, answer)
        threshold = app["eps_threshold"]
        if threshold is not None:
            per_user: dict[str, int] = {}
            per_device: dict[str, int] = {}
            for ev in ingested:
                if ev.get("user_id"):
                    per_user[ev["user_id"]] = per_user.get(ev["user_id"], 0) + 1
                if ev.get("device_id"):
                    per_device[ev["device_id"]] = per_device.get(ev["device_id"], 0) + 1
            users = {k: v for k, v in per_user.items() if v > threshold}
            devices = {k: v for k, v in per_device.items() if v > threshold}
            if users or devices:
                throttled = [i for i, ev in enumerate(ingested)
                             if ev.get("user_id") in users or ev.get("device_id") in devices]
                return json_error(429, {"code": 429, "error": "Too many requests for some devices and users",
                                        "eps_threshold": threshold, "throttled_devices": devices,
                                        "throttled_users": users, "throttled_events": throttled})
        app["events"].extend(ingested)
        return json_error(200, {"code": 200, "events_ingested": len(ingested), "payload_size_bytes": len(body),
                                "server_upload_time": int(time.time() * 1000)})

    async def usermap(request: web.Request) -> web.Response:
        if (answer := scripted()) is not None:
            return answer
        body = await request.read()
        if len(body) > 1_000_000:
            return web.Response(status=413, text="Payload too large")
        fields = dict(request.query)
        if request.content_type == "application/x-www-form-urlencoded":
            fields.update({k: v[0] for k, v in parse_qs(body.decode()).items()})
        if fields.get("api_key") != app["api_key"]:
            return web.Response(status=400, text="invalid api_key")
        try:
            mapping = orjson.loads(fields.get("mapping", ""))
        except orjson.JSONDecodeError:
            return web.Response(status=400, text="mapping must be JSON")
        if isinstance(mapping, dict):
            mapping = [mapping]
        if not isinstance(mapping, list) or not mapping or len(mapping) > 2000:
            return web.Response(status=400, text="mapping must hold 1 to 2000 objects")
        for m in mapping:
            if not isinstance(m, dict) or not isinstance(m.get("user_id"), str) or not m["user_id"]:
                return web.Response(status=400, text="each mapping needs a user_id")
            if m.get("unmap") is not True and not (isinstance(m.get("global_user_id"), str) and m["global_user_id"]):
                return web.Response(status=400, text="each mapping needs a global_user_id unless unmap is true")
        app["mappings"].extend(mapping)
        return web.Response(status=200, text="success")

    app.router.add_post("/2/httpapi", events)
    app.router.add_post("/batch", events)
    app.router.add_post("/usermap", usermap)
    return app
