"""journy.io: users, accounts, user-account links and events over the journy.io REST API.

API: https://developers.journy.io (spec: https://api.journy.io/spec.json; clients
journy-io/js-sdk lib/Client.ts and journy-io/python-sdk, whose tests fix the exact requests).
Base URL https://api.journy.io (the only host; journy.io has no regional endpoints). Auth: header
``X-Api-Key: <key>``; a key without the permission an endpoint needs (e.g. TrackData) gets 401.

Responses: 201 ``{"meta": {"requestId": "..", "status": 201}, "message": ".."}``; 400 with
``{"meta": .., "message": .., "errors": {"fields": {"name": "..."}, "parameters": {...}}}``;
401 missing or unauthorised key; 403; 404; 422; 429 too many requests; 500. Every answer carries
``X-RateLimit-Limit`` / ``X-RateLimit-Remaining``; no Retry-After is documented. Shared
classification: 2xx ok, 429 and 5xx retried, other 4xx permanent.

Limits: a sliding window of 5,000 requests an hour per business (spec "Rate limiting"), which the
engine enforces as 1.38 requests/second for this destination. No batch endpoint: one request per
call (two for group). Identification needs a userId or an email (users) and an accountId or a
domain (accounts). Property values: string, number, boolean, ISO 8601 date-time, null (deletes the
property) or a list of non-empty strings; event metadata: string, number, boolean or date-time
only.

Mapping (what each Segment call becomes):
- identify -> ``POST /users/upsert`` ``{"identification": {"userId", "email"}, "properties": traits}``:
  ``email`` from ``traits.email`` when it is a valid address (it goes in the identification, not in
  the properties); traits flattened to the accepted types (nested keys joined with ``.``, lists
  of scalars as lists of strings, other lists and objects as JSON text; null kept: it removes the
  property). Skipped with neither a userId nor a valid email.
- group -> ``POST /accounts/upsert`` ``{"identification": {"accountId": groupId, "domain"},
  "properties": traits}`` (``domain`` from ``traits.domain`` or the host of ``traits.website``),
  then, with a userId, ``POST /accounts/users/add`` ``{"account": {"accountId": groupId},
  "users": [{"identification": {"userId"}}]}``. A group call without a groupId is rejected.
- track -> ``POST /track`` ``{"identification": {"user": {"userId"}, "account": {"accountId"}},
  "name": event, "triggeredAt": timestamp (ISO 8601 UTC, ms), "metadata": properties}``: the
  account is ``context.groupId`` unless ``integrations["Journy.io"].userOnly`` is true (the event is
  then recorded for the user only); without a userId the event is recorded for the account alone;
  with neither it is skipped. Metadata is flattened to scalars: lists and objects become JSON text,
  nulls are left out. journy.io has no dedup key, so a retried request can record an event twice.
- page / screen -> skipped unless ``page_events: true`` (page views spend the hourly request budget;
  journy.io's own web snippet records them); then events ``Page Viewed`` / ``Screen Viewed`` with
  the page properties plus ``name`` / ``category``, mapped like track.
- alias -> skipped: journy.io has no API to merge users (``/link`` links a journy.io web device id,
  which a Segment anonymousId is not).
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
    RejectMessage,
    Request,
    SkipMessage,
    json_body,
)
from destinations.semantic import (
    domain_of,
    event_time,
    group_id,
    integration_options,
    is_email,
    iso_utc,
    normalized_traits,
    page_properties,
    properties_of,
    scalar_leaves,
    traits_of,
    user_id,
)

DEFAULT_ENDPOINT = "https://api.journy.io"
INTEGRATION_NAMES = ("Journy.io", "journy.io", "Journy")
REQUESTS_PER_HOUR = 5000


class Settings(DestinationSettings):
    type: Literal["journy"] = Field("journy", description="Adapter type.")
    api_key: SecretStr = Field(
        description="journy.io API key (connections screen) with the TrackData permission; sent as `X-Api-Key`."
    )
    endpoint: AnyHttpUrl | None = Field(
        None, description="Base URL of the journy.io API: https://api.journy.io (the only host) unless set."
    )
    page_events: bool = Field(
        False,
        description="Send page and screen calls as `Page Viewed` / `Screen Viewed` events (off by "
        "default: they spend the 5,000 requests/hour budget).",
    )

    example = {"type": "journy", "api_key": "jy_example_key"}

    @property
    def base_url(self) -> str:
        return str(self.endpoint).rstrip("/") if self.endpoint else DEFAULT_ENDPOINT


def _post(settings: Settings, path: str, body: Mapping[str, Any], index: int) -> Request:
    headers = {"X-Api-Key": settings.api_key.get_secret_value(), "Content-Type": "application/json"}
    return Request("POST", settings.base_url + path, headers, json_body(body), (index,))


def _properties(traits: Mapping[str, Any]) -> dict[str, Any]:
    return scalar_leaves(traits, ".", lists="strings")


def _identify(event: Mapping[str, Any], index: int, settings: Settings) -> list[Request]:
    traits = normalized_traits(traits_of(event))
    traits.pop("id", None)
    email = traits.pop("email", None)
    if isinstance(email, str):
        email = email.strip()
    identification: dict[str, str] = {}
    uid = user_id(event)
    if uid is not None:
        identification["userId"] = uid
    if is_email(email):
        identification["email"] = email
    elif email is not None and uid is not None:
        traits["email"] = email  # not an address journy.io would accept as identity: keep it as a property
    if not identification:
        raise SkipMessage("no userId and no valid traits.email: journy.io identifies users by one of them")
    body = {"identification": identification, "properties": _properties(traits)}
    return [_post(settings, "/users/upsert", body, index)]


def _group(event: Mapping[str, Any], index: int, settings: Settings) -> list[Request]:
    gid = group_id(event)
    if gid is None:
        raise RejectMessage("group call without a groupId: journy.io accounts are identified by it")
    traits = normalized_traits(traits_of(event))
    traits.pop("id", None)
    account: dict[str, str] = {"accountId": gid}
    domain = domain_of(traits.get("domain")) or domain_of(traits.get("website"))
    if domain is not None:
        account["domain"] = domain
    body = {"identification": account, "properties": _properties(traits)}
    requests = [_post(settings, "/accounts/upsert", body, index)]
    uid = user_id(event)
    if uid is not None:
        link = {"account": {"accountId": gid}, "users": [{"identification": {"userId": uid}}]}
        requests.append(_post(settings, "/accounts/users/add", link, index))
    return requests


def _event(
    event: Mapping[str, Any], index: int, settings: Settings, name: Any, props: Mapping[str, Any]
) -> list[Request]:
    if not isinstance(name, str) or not name.strip():
        raise RejectMessage("track call without an event name")
    identification: dict[str, Any] = {}
    uid = user_id(event)
    if uid is not None:
        identification["user"] = {"userId": uid}
    options = integration_options(event, INTEGRATION_NAMES)
    gid = None if options.get("userOnly") is True else group_id(event)
    if gid is not None:
        identification["account"] = {"accountId": gid}
    if not identification:
        raise SkipMessage("no userId and no context.groupId: journy.io events belong to a user, an account or both")
    body: dict[str, Any] = {"identification": identification, "name": name}
    when = event_time(event)
    if when is not None:
        body["triggeredAt"] = iso_utc(when)
    body["metadata"] = scalar_leaves(props, ".", lists="json", drop_none=True)
    return [_post(settings, "/track", body, index)]


SKIP_ALIAS = "journy.io has no API to merge users"
SKIP_PAGE = "page/screen calls are not sent to journy.io unless page_events: true"


def _requests(event: Mapping[str, Any], kind: str | None, index: int, settings: Settings) -> list[Request]:
    if kind == "identify":
        return _identify(event, index, settings)
    if kind == "group":
        return _group(event, index, settings)
    if kind == "track":
        return _event(event, index, settings, event.get("event"), properties_of(event))
    if kind in ("page", "screen"):
        if not settings.page_events:
            raise SkipMessage(SKIP_PAGE)
        name = "Page Viewed" if kind == "page" else "Screen Viewed"
        return _event(event, index, settings, name, page_properties(event))
    if kind == "alias":
        raise SkipMessage(SKIP_ALIAS)
    raise SkipMessage(f"unknown call type {kind!r}")


def build_requests(messages: Sequence[Message], settings: Settings) -> Built:
    built = Built()
    for index, message in enumerate(messages):
        requests = built.attempt(index, _requests, message.event, message.type, index, settings)
        if requests is not None:
            built.requests.extend(requests)
    return built


ADAPTER = Adapter(
    type="journy",
    settings=Settings,
    build_requests=build_requests,
    integration_names=INTEGRATION_NAMES,
    limits=BatchLimits(max_events=100, max_bytes=5 * 1024 * 1024),
    description="journy.io: users, accounts, memberships and events.",
    max_requests_per_second=round(REQUESTS_PER_HOUR / 3600, 2),
)
