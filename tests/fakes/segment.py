"""Contract fake of Segment's Tracking API batch endpoint (what trackrelay's `segment` destination
talks to): Basic auth with a known write key, JSON body {"batch": [...]}, each item with a type,
messageId and userId/anonymousId, 32 KB per event, 500 KB and 2,500 events per request. Errors are
Segment's JSON {"success": false, "code", "message"}; success is 200 {"success": true}.

Event time as Segment computes it (segment-docs common fields): ``timestamp = receivedAt - (sentAt -
originalTimestamp)``, an item's own sentAt winning over the batch's; a sentAt that is present must be an
ISO 8601 time. TIMESTAMPS records the resulting time per messageId (``now`` is the fake's clock, which a
test may move to play a late delivery)."""

from __future__ import annotations

import base64
import binascii
import time
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from tests.fakes.base import json_error

ACCEPTED: web.AppKey = web.AppKey("accepted", list)
TIMESTAMPS: web.AppKey = web.AppKey("timestamps", dict)  # messageId -> Segment's computed timestamp (epoch s)
CLOCK_OFFSET: web.AppKey = web.AppKey("clock_offset", list)  # [seconds] added to the fake's receivedAt


def _time(value: Any) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
TYPES = {"track", "identify", "page", "screen", "group", "alias"}


def make_app(write_keys: set[str]) -> web.Application:
    app = web.Application(client_max_size=10 * 1024 * 1024)
    app[ACCEPTED] = []  # (write key, event) in arrival order
    app[TIMESTAMPS] = {}
    app[CLOCK_OFFSET] = [0.0]

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
            return json_error(400,
                              {"success": False, "code": "invalid_request",
                               "message": "An invalid write key was provided"})
        if key not in write_keys:
            return json_error(401, {"success": False, "code": "invalid_write_key", "message": "unknown write key"})
        items = payload.get("batch") if isinstance(payload, dict) else None
        if not isinstance(items, list) or len(items) > 2500:
            return json_error(400,
                              {"success": False, "code": "invalid_request",
                               "message": "batch must be a list of at most 2500 events"})
        for item in items:
            if (not isinstance(item, dict) or item.get("type") not in TYPES or not item.get("messageId")
                    or not (item.get("userId") or item.get("anonymousId"))
                    or len(orjson.dumps(item)) > 32 * 1024):
                return json_error(400, {"success": False, "code": "invalid_request", "message": "invalid event"})
        received = time.time() + app[CLOCK_OFFSET][0]
        batch_sent = payload.get("sentAt")
        if batch_sent is not None and _time(batch_sent) is None:
            return json_error(400, {"success": False, "code": "invalid_request", "message": "sentAt is not a time"})
        for item in items:
            if item.get("sentAt") is not None and _time(item["sentAt"]) is None:
                return json_error(400, {"success": False, "code": "invalid_request", "message": "sentAt is not a time"})
        for item in items:
            sent = _time(item.get("sentAt") or batch_sent)
            original = _time(item.get("originalTimestamp") or item.get("timestamp"))
            app[TIMESTAMPS][item["messageId"]] = (
                received - (sent - original) if sent is not None and original is not None else original or received)
        app[ACCEPTED].extend((key, item) for item in items)
        return web.json_response({"success": True})

    app.router.add_post("/v1/batch", batch)
    return app
