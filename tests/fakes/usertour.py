"""A contract fake of Usertour's REST API v2 (users, companies, memberships, events).

Enforces what usertour/usertour's server enforces on these routes (apps/server/src/api/...):
- auth: ``Authorization: Bearer <token>``; none -> 401 E1010, unknown token -> 403 E1000, a project
  or environment other than the token's -> 403 E1011 / E1029;
- bodies are strict zod objects: ``{"attributes": {...}}`` only for users/companies/memberships;
  events ``{userId (1-200), name (codeName), companyId? (1-200), attributes?, occurredAt? (ISO 8601
  with offset)}``; attribute keys must be codeNames (``^[a-zA-Z][a-zA-Z0-9_]*$``, 2-100 chars);
  attribute values literal (string/number/boolean/list of those), null or one operation object;
  built-in event names are refused; malformed JSON -> 400 E1017 "Invalid JSON body";
- a membership needs the company (404 E1002) and the user (404 E1001); events create unseen users
  and link the company only when it exists (else ``companyId: null``);
- bodies over 100 kb -> 413 (Express body-parser);
- optional rate limit: ``app["limits"]["rate_limit"] = n`` answers 429 E1013 with Retry-After after n requests;
- every error uses the v2 envelope ``{"error": {"code", "message", "issues"?, "doc_url"}}``.

``app["accepted"]`` records (method, path, body) of each accepted write; ``app["users"]``,
``app["companies"]``, ``app["memberships"]`` and ``app["events"]`` hold the resulting state.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

import orjson
from aiohttp import web

from tests.fakes.base import json_error

DOC_URL = "https://docs.usertour.io/api-reference"
CODE_NAME = re.compile(r"^[a-zA-Z][a-zA-Z0-9_]*$")
ISO_OFFSET = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})$")
BUILT_IN_EVENTS = {"page_viewed", "flow_started", "flow_ended", "flow_completed", "flow_step_seen", "question_answered",
                   "checklist_seen", "checklist_dismissed", "checklist_completed", "launcher_seen"}
MAX_BODY = 100 * 1024
NOW = "2026-11-22T21:00:00.000Z"


def _error(status: int, code: str, message: str, issues: list[dict[str, str]] | None = None,
           headers: dict[str, str] | None = None) -> web.Response:
    error: dict[str, Any] = {"code": code, "message": message}
    if issues:
        error["issues"] = issues
    error["doc_url"] = DOC_URL
    return json_error(status, {"error": error}, headers)


def _validation(issues: list[dict[str, str]]) -> web.Response:
    message = " | ".join(f"{i['path']}: {i['message']}" if i.get("path") else i["message"] for i in issues)
    return _error(400, "E1017", message, issues)


def _issue(path: str, message: str) -> dict[str, str]:
    return {"rule": "schema", "message": message, "path": path}


def _code_name_issues(value: Any, path: str) -> list[dict[str, str]]:
    if not isinstance(value, str):
        return [_issue(path, "Expected string")]
    if len(value) < 2:
        return [_issue(path, "String must contain at least 2 character(s)")]
    if len(value) > 100:
        return [_issue(path, "String must contain at most 100 character(s)")]
    if not CODE_NAME.match(value):
        return [_issue(path, "codeName must start with a letter and contain only letters, digits, and underscores")]
    return []


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (str, bool, int, float))


def _value_ok(value: Any) -> bool:
    if value is None or _is_scalar(value):
        return True
    if isinstance(value, list):
        return all(_is_scalar(v) for v in value)
    if isinstance(value, dict) and len(value) >= 1:
        ops = set(value)
        literal_ok = lambda v: _is_scalar(v) or (isinstance(v, list) and all(_is_scalar(x) for x in v))  # noqa: E731
        if ops <= {"set", "data_type"} and "set" in ops:
            return literal_ok(value["set"])
        if ops <= {"set_once", "data_type"} and "set_once" in ops:
            return literal_ok(value["set_once"])
        if ops == {"add"}:
            return isinstance(value["add"], (int, float)) and not isinstance(value["add"], bool)
        if ops in ({"union"}, {"remove"}):
            return literal_ok(next(iter(value.values())))
    return False


def _attribute_issues(attrs: Any, path: str = "attributes") -> list[dict[str, str]]:
    if attrs is None:
        return []
    if not isinstance(attrs, dict):
        return [_issue(path, "Expected object")]
    issues: list[dict[str, str]] = []
    for key, value in attrs.items():
        issues += _code_name_issues(key, f"{path}.{key}")
        if not _value_ok(value):
            issues.append(_issue(f"{path}.{key}", "Invalid input: expected a literal, null or one operation"))
    return issues


def make_app(token: str = "utp_test_token", project_id: str = "proj1", environment_id: str = "env1") -> web.Application:
    app = web.Application(client_max_size=10 * 1024 * 1024)
    app["accepted"] = []
    app["users"] = {}
    app["companies"] = {}
    app["memberships"] = {}
    app["events"] = []
    app["limits"] = limits = {"rate_limit": None, "served": 0}  # mutable: tests may change it while running

    async def guard(request: web.Request) -> tuple[web.Response | None, Any]:
        limits["served"] += 1
        limit = limits["rate_limit"]
        if limit is not None and limits["served"] > limit:
            return _error(429, "E1013", "Too many requests", headers={
                "Retry-After": "7", "X-RateLimit-Limit": str(limit), "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset": "7"}), None
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or not auth[7:].strip():
            return _error(401, "E1010", "Missing API key"), None
        if auth[7:].strip() != token:
            return _error(403, "E1000", "Invalid API key provided"), None
        if request.match_info["project"] != project_id:
            return _error(403, "E1011", "API key is not scoped to the requested project"), None
        if request.match_info["environment"] != environment_id:
            return _error(403, "E1029", "API key is not scoped to the requested environment"), None
        raw = await request.read()
        if len(raw) > MAX_BODY:
            return _error(413, "E1017", "request entity too large"), None
        try:
            body = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            return _error(400, "E1017", "Invalid JSON body"), None
        if not isinstance(body, dict):
            return _validation([_issue("", "Expected object, received " + type(body).__name__)]), None
        return None, body

    def strict_attributes_body(body: dict[str, Any]) -> list[dict[str, str]]:
        issues = [_issue(k, f"Unrecognized key(s) in object: '{k}'") for k in body if k != "attributes"]
        return issues + _attribute_issues(body.get("attributes"))

    def merged(old: dict[str, Any] | None, attrs: dict[str, Any] | None) -> dict[str, Any]:
        out = dict(old or {})
        for key, value in (attrs or {}).items():
            if value is None:
                out.pop(key, None)
            else:
                out[key] = value
        return out

    def put_entity(store: str, kind: str, extra: dict[str, Any]):
        """PUT /users/{id} and /companies/{id}: merge the attributes, answer the stored entity."""
        async def handler(request: web.Request) -> web.Response:
            error, body = await guard(request)
            if error:
                return error
            issues = strict_attributes_body(body)
            if issues:
                return _validation(issues)
            eid = request.match_info["id"]
            app[store][eid] = merged(app[store].get(eid), body.get("attributes"))
            app["accepted"].append(("PUT", request.path, body))
            return web.json_response({"id": eid, "object": kind, "attributes": app[store][eid],
                                      "createdAt": NOW, **extra})
        return handler

    async def put_membership(request: web.Request) -> web.Response:
        error, body = await guard(request)
        if error:
            return error
        issues = strict_attributes_body(body)
        if issues:
            return _validation(issues)
        cid, uid = request.match_info["id"], request.match_info["user"]
        if cid not in app["companies"]:
            return _error(404, "E1002", "Company not found")
        if uid not in app["users"]:
            return _error(404, "E1001", "User not found")
        key = (cid, uid)
        app["memberships"][key] = merged(app["memberships"].get(key), body.get("attributes"))
        app["accepted"].append(("PUT", request.path, body))
        return web.json_response({"id": f"m-{cid}-{uid}", "object": "companyMembership",
                                  "attributes": app["memberships"][key], "createdAt": NOW,
                                  "companyId": cid, "userId": uid})

    async def post_event(request: web.Request) -> web.Response:
        error, body = await guard(request)
        if error:
            return error
        allowed = {"userId", "companyId", "name", "attributes", "occurredAt"}
        issues = [_issue(k, f"Unrecognized key(s) in object: '{k}'") for k in body if k not in allowed]
        for key in ("userId", "companyId"):
            if key not in body and key == "companyId":
                continue
            value = body.get(key)
            if not isinstance(value, str):
                issues.append(_issue(key, "Required" if value is None else "Expected string"))
            elif not 1 <= len(value) <= 200:
                issues.append(_issue(key, "String must contain between 1 and 200 character(s)"))
        issues += _code_name_issues(body.get("name"), "name")
        attrs = body.get("attributes")
        issues += _attribute_issues(attrs)
        if isinstance(attrs,
                      dict) and any(isinstance(v, dict) and set(v) - {"set", "data_type"} for v in attrs.values()):
            issues.append(_issue("attributes", "Events take a literal, null or {set, data_type} only"))
        if "occurredAt" in body:
            when = body["occurredAt"]
            valid = isinstance(when, str) and bool(ISO_OFFSET.match(when))
            if valid:
                try:
                    datetime.fromisoformat(when.replace("Z", "+00:00"))
                except ValueError:
                    valid = False
            if not valid:
                issues.append(_issue("occurredAt", "Invalid datetime"))
        if issues:
            return _validation(issues)
        if body["name"] in BUILT_IN_EVENTS:
            return _validation([_issue("name", f"'{body['name']}' is a built-in Usertour event name")])
        uid = body["userId"]
        app["users"].setdefault(uid, {})
        company = body.get("companyId") if body.get("companyId") in app["companies"] else None
        record = {"id": f"ev-{len(app['events']) + 1}", "object": "event", "codeName": body["name"],
                  "eventDefinitionId": f"def-{body['name']}", "createdAt": body.get("occurredAt", NOW),
                  "userId": uid, "companyId": company, "sessionId": None, "contentId": None,
                  "versionId": None, "attributes": body.get("attributes") or {}}
        app["events"].append(record)
        app["accepted"].append(("POST", request.path, body))
        return web.json_response(record, status=201)

    async def unknown(request: web.Request) -> web.Response:
        return _error(404, "E1033", "Unknown API route")

    scope = "/v2/projects/{project}/environments/{environment}"
    app.router.add_put(scope + "/users/{id}", put_entity("users", "user", {"companies": None, "memberships": None}))
    app.router.add_put(scope + "/companies/{id}", put_entity("companies", "company", {}))
    app.router.add_put(scope + "/companies/{id}/memberships/{user}", put_membership)
    app.router.add_post(scope + "/events", post_event)
    app.router.add_route("*", "/{tail:.*}", unknown)
    return app
