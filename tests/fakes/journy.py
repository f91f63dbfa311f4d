"""A contract fake of the journy.io REST API (users/upsert, accounts/upsert, accounts/users/add,
track).

Enforces journy.io's documented rules (api.journy.io/spec.json, journy-io/js-sdk and python-sdk):
- ``X-Api-Key`` must be the configured key: missing or wrong -> 401
  ``{"meta": {"requestId", "status": 401}, "message": ...}``;
- request bodies are validated against the spec: user identification needs ``userId`` and/or a
  valid ``email``; account identification ``accountId`` and/or a ``domain``; properties values are
  string, number, boolean, date-time, null or a list of non-empty strings; event ``name`` is a
  non-empty string, ``triggeredAt`` an ISO 8601 date-time, ``metadata`` scalars only (no null, no
  lists, no objects); invalid bodies -> 400 with ``errors.fields`` naming each field;
- the sliding-window rate limit: ``app["limits"]["rate_limit"]`` requests (default 5000) then 429; every
  answer carries ``X-RateLimit-Limit`` and ``X-RateLimit-Remaining``;
- success is 201 ``{"meta": {"requestId", "status": 201}, "message": ...}``.

``app["accepted"]`` records (path, body) of every accepted call; ``app["users"]``,
``app["accounts"]``, ``app["members"]`` and ``app["events"]`` hold the resulting state.
"""

from __future__ import annotations

import re
from typing import Any

import orjson
from aiohttp import web

from tests.fakes.base import json_error

EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
DOMAIN = re.compile(r"^([a-z0-9]([a-z0-9-]*[a-z0-9])?\.)+[a-z]{2,}$", re.IGNORECASE)
DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})?$")


def make_app(api_key: str = "jy_test_key", rate_limit: int = 5000) -> web.Application:
    app = web.Application()
    app["accepted"] = []
    app["users"] = {}
    app["accounts"] = {}
    app["members"] = set()
    app["events"] = []
    app["limits"] = limits = {"rate_limit": rate_limit, "served": 0}  # mutable while running

    def headers() -> dict[str, str]:
        return {"X-RateLimit-Limit": str(limits["rate_limit"]),
                "X-RateLimit-Remaining": str(max(0, limits["rate_limit"] - limits["served"]))}

    def meta(status: int) -> dict[str, Any]:
        return {"requestId": f"req-{limits['served']}", "status": status}

    def answer(status: int, message: str, errors: dict[str, str] | None = None) -> web.Response:
        body: dict[str, Any] = {"meta": meta(status), "message": message}
        if errors is not None:
            body["errors"] = {"fields": errors, "parameters": {"header": {}, "query": {}, "path": {}}}
        return json_error(status, body, headers())

    async def guard(request: web.Request) -> tuple[web.Response | None, Any]:
        limits["served"] += 1
        if limits["served"] > limits["rate_limit"]:
            return answer(429, "Too many requests"), None
        key = request.headers.get("X-Api-Key")  # header names are case-insensitive
        if not key:
            return answer(401, "No API key provided"), None
        if key != api_key:
            return answer(401, "The API key is not valid or is not authorised to perform this action"), None
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return answer(400, "Invalid JSON", {"body": "is not valid JSON"}), None
        if not isinstance(body, dict):
            return answer(400, "Bad request", {"body": "should be an object"}), None
        return None, body

    def user_identification(value: Any, path: str, errors: dict[str, str]) -> None:
        if not isinstance(value, dict) or not value:
            errors[path] = "User identification requires a userId, email or both"
            return
        for key in value:
            if key not in ("userId", "email"):
                errors[f"{path}.{key}"] = "is not allowed"
        if "userId" in value and (not isinstance(value["userId"], str) or not value["userId"]):
            errors[f"{path}.userId"] = "should be a non-empty string"
        if "email" in value and (not isinstance(value["email"], str) or not EMAIL.match(value["email"])):
            errors[f"{path}.email"] = "should be a valid email"

    def account_identification(value: Any, path: str, errors: dict[str, str]) -> None:
        if not isinstance(value, dict) or not value:
            errors[path] = "Account identification requires an accountId, domain or both"
            return
        for key in value:
            if key not in ("accountId", "domain"):
                errors[f"{path}.{key}"] = "is not allowed"
        if "accountId" in value and (not isinstance(value["accountId"], str) or not value["accountId"]):
            errors[f"{path}.accountId"] = "should be a non-empty string"
        if "domain" in value and (not isinstance(value["domain"], str) or not DOMAIN.match(value["domain"])):
            errors[f"{path}.domain"] = "should be a top-level domain"

    def properties(value: Any, path: str, errors: dict[str, str]) -> None:
        if value is None:
            return
        if not isinstance(value, dict):
            errors[path] = "should be an object"
            return
        for key, item in value.items():
            ok = item is None or isinstance(item, (str, bool, int, float)) or (
                isinstance(item, list) and all(isinstance(v, str) and v for v in item))
            if not ok:
                errors[f"{path}.{key}"] = "should be a string, boolean, number, datetime or list of strings"

    def identity(ident: dict[str, Any]) -> str:
        return ident.get("userId") or ident.get("email") or ident.get("accountId") or ident.get("domain")

    def upsert(validate, store: str, done: str):
        """POST /users/upsert and /accounts/upsert: the same contract, each with its identification."""
        async def handler(request: web.Request) -> web.Response:
            error, body = await guard(request)
            if error:
                return error
            errors: dict[str, str] = {}
            if "identification" not in body:
                errors["identification"] = "is required"
            else:
                validate(body["identification"], "identification", errors)
            properties(body.get("properties"), "properties", errors)
            if errors:
                return answer(400, "Bad request", errors)
            key = identity(body["identification"])
            app[store].setdefault(key, {}).update(body.get("properties") or {})
            app["accepted"].append((request.path, body))
            return answer(201, done)
        return handler

    async def add_users(request: web.Request) -> web.Response:
        error, body = await guard(request)
        if error:
            return error
        errors: dict[str, str] = {}
        account_identification(body.get("account"), "account", errors)
        users = body.get("users")
        if not isinstance(users, list) or not users:
            errors["users"] = "should be a non-empty array"
        else:
            for n, user in enumerate(users):
                if not isinstance(user, dict) or "identification" not in user:
                    errors[f"users.{n}.identification"] = "is required"
                else:
                    user_identification(user["identification"], f"users.{n}.identification", errors)
        if errors:
            return answer(400, "Bad request", errors)
        aid = identity(body["account"])
        for user in users:
            app["members"].add((aid, identity(user["identification"])))
        app["accepted"].append((request.path, body))
        return answer(201, "Users added to account")

    async def track(request: web.Request) -> web.Response:
        error, body = await guard(request)
        if error:
            return error
        errors: dict[str, str] = {}
        ident = body.get("identification")
        if not isinstance(ident, dict) or not ({"user", "account"} & set(ident)):
            errors["identification"] = "requires a user, an account or both"
        else:
            if "user" in ident:
                user_identification(ident["user"], "identification.user", errors)
            if "account" in ident:
                account_identification(ident["account"], "identification.account", errors)
        name = body.get("name")
        if not isinstance(name, str) or not name.strip():
            errors["name"] = "should be a non-empty string"
        if "triggeredAt" in body and (not isinstance(body["triggeredAt"],
                                                     str) or not DATETIME.match(body["triggeredAt"])):
            errors["triggeredAt"] = "should be a datetime (ISO 8601)"
        metadata = body.get("metadata")
        if metadata is not None:
            if not isinstance(metadata, dict):
                errors["metadata"] = "should be an object"
            else:
                for key, item in metadata.items():
                    if not isinstance(item, (str, bool, int, float)):
                        errors[f"metadata.{key}"] = "should be a string, boolean, number or datetime"
        if errors:
            return answer(400, "Bad request", errors)
        app["events"].append(body)
        app["accepted"].append((request.path, body))
        return answer(201, "Event tracked")

    async def unknown(request: web.Request) -> web.Response:
        limits["served"] += 1
        return answer(404, "Not found")

    app.router.add_post("/users/upsert", upsert(user_identification, "users", "User upserted"))
    app.router.add_post("/accounts/upsert", upsert(account_identification, "accounts", "Account upserted"))
    app.router.add_post("/accounts/users/add", add_users)
    app.router.add_post("/track", track)
    app.router.add_route("*", "/{tail:.*}", unknown)
    return app
