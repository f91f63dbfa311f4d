"""Contract fake of PostHog's capture ``/batch/`` endpoint.

Rules and answers follow PostHog/posthog rust/capture (api.rs CaptureError + IntoResponse,
v0_request.rs RawRequest/BatchedRequest, token.rs validate_token) and posthog.com docs/api/capture:
- body: JSON, gzip accepted (capture sniffs the gzip magic bytes), < 20 MB; a batch request is
  ``{"api_key"|"token": ..., "batch": [...], "historical_migration"?: bool}``.
- 400 text/plain ``failed to parse request: ...`` for bodies that do not decode (including a
  ``uuid`` that is not a UUID, a missing ``event`` field); ``request holds no event`` for an
  empty batch; ``event submitted with an empty event name``; ``event submitted without a
  distinct_id`` (missing, null or empty; top level or properties.distinct_id);
  ``maximum event size exceeded`` for an event over 1 MB or a body over 20 MB.
- 401 ``event submitted without an api_key``; ``API key is not valid: empty|too_long|not_ascii|
  personal_api_key|null_byte``.
- a distinct_id longer than 200 characters is silently cut to 200 on ingestion (rust/capture
  v0_request.rs test ``extract_distinct_id_trims_to_200_chars``): stored events carry the cut id,
  and ``app["truncated"]`` lists the original ids so tests can prove none was sent.
- 200 ``{"status":"Ok"}`` otherwise. Capture does not check the key against projects at the
  edge: events with an unknown project key are answered 200 and dropped later — they land in
  ``app["dropped"]``, the project's in ``app["accepted"]`` (one dict per event).
- ``app["fail_next"]``: list of (status, body) answers to give before normal processing (to
  exercise 429/503 handling); ``app["quota_limited"]``: answer 200 with quota_limited=["events"]
  and drop the events (billing limit).
"""

from __future__ import annotations

import gzip
import uuid
from typing import Any

import orjson
from aiohttp import web

MAX_BODY = 20 * 1024 * 1024
MAX_EVENT = 1024 * 1024
MAX_DISTINCT_ID = 200


def _text(status: int, message: str) -> web.Response:
    return web.Response(status=status, text=message, content_type="text/plain")


def _token_problem(token: Any) -> str | None:
    if not isinstance(token, str):
        return "empty"
    token = token.strip()
    if not token:
        return "empty"
    if len(token) > 64:
        return "too_long"
    if not token.isascii():
        return "not_ascii"
    if token.startswith("phx_"):
        return "personal_api_key"
    if "\0" in token:
        return "null_byte"
    return None


def _distinct_id(event: dict[str, Any]) -> Any:
    for value in (event.get("distinct_id"), event.get("$distinct_id")):
        if value is not None:
            return value
    props = event.get("properties")
    return props.get("distinct_id") if isinstance(props, dict) else None


def make_app(api_key: str = "phc_example_project_key_123") -> web.Application:
    app = web.Application(client_max_size=MAX_BODY + 1024)
    app["accepted"] = []
    app["dropped"] = []
    app["fail_next"] = []
    app["quota_limited"] = False
    app["truncated"] = []

    async def batch(request: web.Request) -> web.Response:
        if app["fail_next"]:
            status, body = app["fail_next"].pop(0)
            return _text(status, body)
        raw = await request.read()
        if raw[:3] == b"\x1f\x8b\x08":
            try:
                raw = gzip.decompress(raw)
            except OSError:
                return _text(400, "failed to decode request: invalid gzip data")
        if len(raw) > MAX_BODY:
            return _text(400, "maximum event size exceeded")
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return _text(400, f"failed to parse request: {exc}")
        if not isinstance(data, dict) or not isinstance(data.get("batch"), list):
            return _text(400, "failed to parse request: data did not match any variant of untagged enum RawRequest")
        events = data["batch"]
        for event in events:
            if not isinstance(event, dict) or not isinstance(event.get("event"), str):
                return _text(400, "failed to parse request: missing field `event`")
            if "uuid" in event and event["uuid"] not in (None, ""):
                try:
                    uuid.UUID(str(event["uuid"]))
                except ValueError:
                    return _text(400, "failed to parse request: UUID parsing failed")
        token = data.get("api_key", data.get("token"))
        if token is None:
            return _text(401, "event submitted without an api_key")
        problem = _token_problem(token)
        if problem:
            return _text(401, f"API key is not valid: {problem}")
        if not events:
            return _text(400, "request holds no event")
        for event in events:
            if not event["event"]:
                return _text(400, "event submitted with an empty event name")
            if _distinct_id(event) in (None, ""):
                return _text(400, "event submitted without a distinct_id")
            if len(orjson.dumps(event)) > MAX_EVENT:
                return _text(400, "maximum event size exceeded")
        if app["quota_limited"]:
            app["dropped"].extend(events)
            return web.json_response({"status": "Ok", "quota_limited": ["events"]})
        target = app["accepted"] if token.strip() == api_key else app["dropped"]
        for event in events:
            stored = {**event, "_historical_migration": bool(data.get("historical_migration"))}
            distinct = _distinct_id(event)
            if isinstance(distinct, str) and len(distinct) > MAX_DISTINCT_ID:
                app["truncated"].append(distinct)
                stored["distinct_id"] = distinct[:MAX_DISTINCT_ID]
            target.append(stored)
        return web.json_response({"status": "Ok"})

    app.router.add_post("/batch/", batch)
    app.router.add_post("/batch", batch)
    return app
