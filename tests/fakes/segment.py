"""Contract fake of Segment's Tracking API batch endpoint (what trackrelay's `segment` destination
talks to): Basic auth with a known write key, JSON body {"batch": [...]}, each item with a type,
messageId and userId/anonymousId, 32 KB per event, 500 KB and 2,500 events per request. Errors are
Segment's JSON {"success": false, "code", "message"}; success is 200 {"success": true}."""

from __future__ import annotations

import base64
import binascii
from typing import Any

import orjson
from aiohttp import web

from tests.fakes.base import json_error

ACCEPTED: web.AppKey = web.AppKey("accepted", list)
TYPES = {"track", "identify", "page", "screen", "group", "alias"}


def make_app(write_keys: set[str]) -> web.Application:
    app = web.Application(client_max_size=10 * 1024 * 1024)
    app[ACCEPTED] = []  # (write key, event) in arrival order

    async def batch(request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        key = None
        if auth.startswith("Basic "):
            try:
                key = base64.b64decode(auth[6:], validate=True).decode().split(":", 1)[0]
            except (binascii.Error, UnicodeDecodeError):
                key = None
        body = await request.read()
        if len(body) > 500 * 1024:
            return json_error(400, {"success": False, "code": "invalid_request", "message": "Exceed payload limit"})
        try:
            payload: Any = orjson.loads(body)
        except orjson.JSONDecodeError:
            return json_error(400, {"success": False, "code": "invalid_request", "message": "malformed JSON"})
        if key is None and isinstance(payload, dict):
            key = payload.get("writeKey")
        if not key:
            return json_error(400, {"success": False, "code": "invalid_request", "message": "An invalid write key was provided"})
        if key not in write_keys:
            return json_error(401, {"success": False, "code": "invalid_write_key", "message": "unknown write key"})
        items = payload.get("batch") if isinstance(payload, dict) else None
        if not isinstance(items, list) or len(items) > 2500:
            return json_error(400, {"success": False, "code": "invalid_request", "message": "batch must be a list of at most 2500 events"})
        for item in items:
            if (not isinstance(item, dict) or item.get("type") not in TYPES or not item.get("messageId")
                    or not (item.get("userId") or item.get("anonymousId"))
                    or len(orjson.dumps(item)) > 32 * 1024):
                return json_error(400, {"success": False, "code": "invalid_request", "message": "invalid event"})
        app[ACCEPTED].extend((key, item) for item in items)
        return web.json_response({"success": True})

    app.router.add_post("/v1/batch", batch)
    return app
