"""Userpilot: users, their companies and custom events through Userpilot's real-time HTTP API.

API: https://docs.userpilot.com/api-references/http-api (real-time identify / track / company
identify). Hosts: US https://analytex.userpilot.io, EU https://analytex-eu.userpilot.io
(``region``); enterprise accounts have their own host on Userpilot's Environment page
(``endpoint``). Auth: ``Authorization: Token <API key>`` plus ``X-API-Version: 2020-09-22`` and
``Content-Type: application/json`` on every request.

Limits: 600 requests per minute per application token (429 beyond it): the engine paces this
destination at 10 requests/s and the shared classification retries 429 and 5xx with backoff,
honouring Retry-After. The real-time endpoints take one user, event or company per request (the
bulk endpoints are asynchronous import jobs, not used here). Success is 202 Accepted; errors are
``{"errors": [{"error_code", "error", "message", "details"}]}`` with 400 (invalid input) or 401
(bad API key).

Mapping (Segment call -> Userpilot)
- identify -> ``POST /v1/identify`` ``{"user_id": userId, "metadata": traits, "company": {...}}``.
  Traits come from ``traits`` (context.traits when empty); createdAt/created_at ->
  ``created_at``; a ``company`` trait object with an ``id`` becomes the ``company`` object
  (``{"id": ..., other company traits}``; without an id it stays user metadata), otherwise context.groupId becomes
  ``{"id": groupId}`` (the user joins that company) unless ``integrations.Userpilot.userOnly`` is
  true. No userId -> skipped (Userpilot needs an identified user_id; anonymous users exist only in
  its browser SDK).
- track -> ``POST /v1/track`` ``{"user_id": userId, "event_name": event, "metadata": properties}``.
  The user must exist in Userpilot. Userpilot's track API has no company or timestamp field:
  the event is recorded for the user at the time Userpilot receives it, and context.groupId cannot
  be attached (``userOnly`` changes nothing for track). No userId -> skipped; blank event name ->
  dead-lettered.
- group -> ``POST /v1/companies/identify`` ``{"company_id": groupId, "metadata": traits}`` and, when
  the call has a userId, ``POST /v1/identify`` ``{"user_id": userId, "company": {"id": groupId}}``
  to put the user in that company. The message counts as delivered when both succeed.
- page, screen -> skipped: the HTTP API has no page/screen endpoint (Userpilot's browser SDK
  records page views itself).
- alias -> skipped: Userpilot has no API to merge or rename users.
- metadata values: Userpilot takes strings, numbers and ISO 8601 dates. Nested objects are
  flattened with ``_`` (``address.city`` -> ``address_city``, as Userpilot's own examples name
  them), lists of scalars become a comma-separated string, lists holding objects (ecommerce
  ``products``) a JSON string, booleans "true"/"false"; nulls are dropped.
- messageId: Userpilot has no dedup key; an event resent after a lost answer may be counted twice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import AnyHttpUrl, Field, SecretStr

from destinations.base import (
    Adapter,
    BatchLimits,
    Built,
    DestinationSettings,
    Message,
    Reject,
    Request,
    Skip,
    json_body,
)
from destinations.semantic import (
    context,
    integration_options,
    properties_of,
    reserved_trait_name,
    traits_of,
    user_id,
)

HOSTS = {"us": "https://analytex.userpilot.io", "eu": "https://analytex-eu.userpilot.io"}
API_VERSION = "2020-09-22"
REQUESTS_PER_MINUTE = 600
INTEGRATION_NAMES = ("Userpilot", "Userpilot Cloud (Actions)", "Actions Userpilot Cloud", "Userpilot (Actions)")


class Settings(DestinationSettings):
    type: Literal["userpilot"] = Field("userpilot", description="Adapter type.")
    api_key: SecretStr = Field(description="Userpilot API key (Settings > Environment), sent as `Authorization: Token "
                                           "<key>`.")
    region: Literal["us", "eu"] = Field("us", description="Data residency: `us` (analytex) or `eu` (analytex-eu); "
                                                          "picks the host when `endpoint` is not set.")
    endpoint: AnyHttpUrl | None = Field(
        None, description="Base URL overriding the region's host, e.g. an enterprise endpoint from the Environment "
                          "page, a proxy or a test server."
    )

    example = {"type": "userpilot", "api_key": "up_key_0123456789abcdef", "region": "us"}

    @property
    def base_url(self) -> str:
        return str(self.endpoint).rstrip("/") if self.endpoint else HOSTS[self.region]


def _scalar(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def metadata(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Userpilot metadata: strings, numbers and date strings only (see the module docstring)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}_{key}" if prefix else str(key)
        if value is None:
            continue
        if isinstance(value, Mapping):
            out.update(metadata(value, name))
        elif isinstance(value, (list, tuple)):
            if all(not isinstance(v, (Mapping, list, tuple)) for v in value):
                out[name] = ", ".join(str(_scalar(v)) for v in value if v is not None)
            else:  # e.g. ecommerce products: kept whole, as a JSON string
                out[name] = json_body(value).decode()
        else:
            out[name] = _scalar(value)
    return out


def _profile(traits: Mapping[str, Any], drop: tuple[str, ...] = ()) -> dict[str, Any]:
    """Traits with createdAt/created_at as ``created_at`` (createdAt wins when both are set)."""
    out: dict[str, Any] = {}
    created: tuple[str, Any] | None = None
    for key, value in traits.items():
        if key in drop:
            continue
        if isinstance(key, str) and reserved_trait_name(key) == "createdAt":
            if created is None or key == "createdAt":
                created = (key, value)
            continue
        out[key] = value
    if created is not None:
        out["created_at"] = created[1]
    return metadata(out)


def _headers(settings: Settings) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "Authorization": f"Token {settings.api_key.get_secret_value()}",
        "X-API-Version": API_VERSION,
    }


def build_requests(messages: Sequence[Message], settings: Settings) -> Built:
    built = Built()
    base = settings.base_url
    headers = _headers(settings)

    def post(path: str, payload: dict[str, Any], index: int) -> None:
        built.requests.append(Request("POST", base + path, headers, json_body(payload), (index,)))

    for i, msg in enumerate(messages):
        event = msg.event
        kind = msg.type
        uid = user_id(event)
        if kind == "identify":
            if not uid:
                built.skips.append(Skip(i, "identify without userId: Userpilot's API needs an identified user_id"))
                continue
            traits = traits_of(event)
            raw_company = traits.get("company")
            company: Mapping[str, Any] = raw_company if isinstance(raw_company, Mapping) else {}
            has_company = company.get("id") not in (None, "")
            payload: dict[str, Any] = {"user_id": uid,
                                       "metadata": _profile(traits, drop=("company",) if has_company else ())}
            if has_company:
                rest = {k: v for k, v in company.items() if k != "id"}
                payload["company"] = {"id": str(company["id"]), **_profile(rest)}
            else:
                account = context(event).get("groupId")
                if (account not in (None, "")
                        and integration_options(event, INTEGRATION_NAMES).get("userOnly") is not True):
                    payload["company"] = {"id": str(account)}
            post("/v1/identify", payload, i)
        elif kind == "track":
            if not uid:
                built.skips.append(Skip(i, "track without userId: Userpilot records events for identified users only"))
                continue
            name = event.get("event")
            if not isinstance(name, str) or not name.strip():
                built.rejects.append(Reject(i, "track call without an event name: Userpilot requires event_name"))
                continue
            post("/v1/track", {"user_id": uid, "event_name": name.strip(), "metadata": metadata(properties_of(event))},
                 i)
        elif kind == "group":
            group = event.get("groupId")
            if group in (None, ""):
                built.rejects.append(Reject(i, "group call without groupId: Userpilot requires company_id"))
                continue
            raw_traits = event.get("traits")
            group_traits: Mapping[str, Any] = raw_traits if isinstance(raw_traits, Mapping) else {}
            post("/v1/companies/identify", {"company_id": str(group), "metadata": _profile(group_traits)}, i)
            if uid:
                post("/v1/identify", {"user_id": uid, "company": {"id": str(group)}}, i)
        elif kind in ("page", "screen"):
            built.skips.append(Skip(i, f"{kind} calls: Userpilot's HTTP API has no page or screen endpoint"))
        elif kind == "alias":
            built.skips.append(Skip(i, "alias calls: Userpilot has no API to merge or rename users"))
        else:
            built.skips.append(Skip(i, f"call type {kind!r} is not a Segment call Userpilot takes"))
    return built


ADAPTER = Adapter(
    type="userpilot",
    settings=Settings,
    build_requests=build_requests,
    integration_names=INTEGRATION_NAMES,
    # one user, event or company per request; the batch size only bounds one build call
    limits=BatchLimits(max_events=100, max_bytes=1_000_000),
    max_requests_per_second=REQUESTS_PER_MINUTE / 60,
    description="Userpilot users, companies and custom events via its real-time HTTP API (600 requests/minute).",
)
