"""Contract fake of Userpilot's real-time HTTP API (shared/reference/destinations.md section 6,
docs.userpilot.com/api-references): ``Authorization: Token <key>`` (401 otherwise),
``X-API-Version: 2020-09-22``, JSON bodies; ``/v1/identify`` needs ``user_id`` (a ``company``
object needs an ``id``), ``/v1/track`` needs ``user_id`` and ``event_name``,
``/v1/companies/identify`` needs ``company_id``; metadata values must be strings or numbers
(Userpilot's String, Numeric and ISO-date types). Success is 202; errors are
``{"errors": [{"error_code", "error", "message", "details"}]}``. A sliding one-minute window
enforces ``requests_per_minute`` (600 by default) with 429.

``app["accepted"]`` collects ``(path, body)`` per accepted request; ``app["script"]`` holds
``(status, json_body, headers)`` answers to give before normal handling.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import orjson
from aiohttp import web

from tests.fakes.base import json_error

API_VERSION = "2020-09-22"


def error_body(code: str, error: str, message: str, details: str = "") -> dict[str, Any]:
    return {"errors": [{"error_code": code, "error": error, "message": message, "details": details}]}


class Invalid(Exception):
    pass


def _metadata(value: Any, field: str) -> None:
    if value is None:
        return
    if not isinstance(value, dict):
        raise Invalid(f"{field} must be an object")
    for key, val in value.items():
        if isinstance(val, bool) or not isinstance(val, (str, int, float)):
            raise Invalid(f"{field}.{key} must be a string, a number or an ISO 8601 date")


def _required_string(body: dict[str, Any], key: str) -> None:
    if not isinstance(body.get(key), str) or not body[key].strip():
        raise Invalid(f"{key} is required")


def validate(path: str, body: Any) -> None:
    if not isinstance(body, dict):
        raise Invalid("body must be a JSON object")
    if path == "/v1/identify":
        _required_string(body, "user_id")
        _metadata(body.get("metadata"), "metadata")
        company = body.get("company")
        if company is not None:
            if not isinstance(company, dict) or not isinstance(company.get("id"), str) or not company["id"]:
                raise Invalid("company must have at least an id field")
            _metadata({k: v for k, v in company.items() if k != "id"}, "company")
    elif path == "/v1/track":
        _required_string(body, "user_id")
        _required_string(body, "event_name")
        _metadata(body.get("metadata"), "metadata")
    elif path == "/v1/companies/identify":
        _required_string(body, "company_id")
        _metadata(body.get("metadata"), "metadata")


def make_app(api_key: str = "up-key-123", requests_per_minute: int = 600) -> web.Application:
    app = web.Application()
    app["accepted"] = []
    app["script"] = []
    window: deque[float] = deque()

    async def handle(request: web.Request) -> web.Response:
        if app["script"]:
            status, payload, headers = app["script"].pop(0)
            return json_error(status, payload, headers)
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "token" or token != api_key:
            return json_error(401, error_body("unauthorized", "Unauthorized", "Invalid API key"))
        now = time.monotonic()
        while window and now - window[0] >= 60:
            window.popleft()
        if len(window) >= requests_per_minute:
            return json_error(429,
                              error_body("rate_limited", "Too Many Requests",
                                         f"more than {requests_per_minute} requests per minute"))
        window.append(now)
        if request.headers.get("X-API-Version") != API_VERSION:
            return json_error(400,
                              error_body("invalid_api_version", "Bad Request", f"X-API-Version must be {API_VERSION}"))
        if not request.headers.get("Content-Type", "").startswith("application/json"):
            return json_error(400,
                              error_body("invalid_content_type", "Bad Request",
                                         "Content-Type must be application/json"))
        try:
            body = orjson.loads(await request.read())
            validate(request.path, body)
        except orjson.JSONDecodeError:
            return json_error(400, error_body("invalid_json", "Bad Request", "malformed JSON"))
        except Invalid as exc:
            return json_error(400, error_body("invalid_input", "Bad Request", str(exc)))
        app["accepted"].append((request.path, body))
        return web.json_response({}, status=202)

    for path in ("/v1/identify", "/v1/track", "/v1/companies/identify"):
        app.router.add_post(path, handle)
    return app
