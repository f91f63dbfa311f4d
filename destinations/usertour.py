"""Usertour (usertour.io, open source): users, companies, memberships and events over REST API v2.

API: Usertour REST API v2, https://docs.usertour.io/api-reference (source: usertour/usertour,
apps/server/src/api/{users,companies,events}). Base URL https://api.usertour.io (the only hosted
region; no EU/other host exists), or your self-hosted server; every path is scoped to one project
and environment: ``{endpoint}/v2/projects/{project_id}/environments/{environment_id}/...``.

Auth: ``Authorization: Bearer utp_...``, a personal API token created under Settings -> API, scoped
to the project and environment, with the user-write capability (users, events) and the
company-write capability (companies, memberships). Errors use the v2 envelope
``{"error": {"code": "E1017", "message": "...", "issues": [...], "doc_url": "..."}}``: 400 E1017
validation, 401 E1010 missing / E1020 expired key, 403 E1000 invalid key / E1011 project / E1029
environment not in the token's scope / E1012 missing capability, 404 E1001 user / E1002 company not
found, 429 E1013 with ``Retry-After`` (seconds) once the plan's budget (100/500/1,000/3,000 requests
a minute per token; self-hosted default 1,000) is spent. The budget depends on the plan, so the
adapter declares no rate of its own: set ``delivery.max_requests_per_second`` to match it.

Limits: no batch endpoint (one request per call). Attribute keys and event names must be
"codeNames": ``^[a-zA-Z][a-zA-Z0-9_]*$``, 2-100 characters (api/shared/codename.ts); attribute
values are literals (string, number, boolean, list of those) or null — objects are read as
operations, so they are never sent. Event ``userId`` / ``companyId`` are 1-200 characters. Request
bodies are parsed with Express's default 100 kb JSON limit (main.ts configures no other; an
inference from the code): a call whose body would be larger is a dead letter, not sent to fail.

Mapping (what each Segment call becomes):
- identify -> ``PUT .../users/{userId}`` ``{"attributes": traits}``: traits flattened (nested keys
  joined with ``_``, lists of non-scalars as JSON text), reserved traits in their canonical form
  (``created_at`` -> ``createdAt``), then ``createdAt`` -> ``signed_up_at`` (Usertour's sign-up
  attribute). Skipped without a userId (Usertour users are keyed by your user id; anonymous
  visitors only exist in the browser SDK).
- group -> ``PUT .../users/{userId}`` ``{"attributes": {}}`` (makes sure the user exists), then
  ``PUT .../companies/{groupId}`` ``{"attributes": traits}``, then
  ``PUT .../companies/{groupId}/memberships/{userId}`` ``{"attributes": membership}`` where
  ``membership`` is ``integrations.Usertour.membership`` (e.g. ``{"role": "admin"}``). Without a
  userId only the company is written. A group call without a groupId is rejected.
- track -> ``POST .../events`` ``{"userId", "name", "companyId", "attributes", "occurredAt"}``:
  name and property keys made valid codeNames; ``companyId`` = ``context.groupId`` unless
  ``integrations.Usertour.userOnly`` is true (then the event is recorded for the user only, as the
  SDK's ``track(name, attrs, {userOnly: true})``; Usertour links the event only to a company that
  already exists, e.g. from an earlier group call); ``occurredAt`` = the event timestamp (ISO 8601,
  UTC, milliseconds). Skipped without a userId. Usertour has no dedup key for events (each POST
  appends), so a retried request can record an event twice.
- page / screen -> skipped (Usertour has no page-view API; its browser SDK reads the page itself),
  unless ``page_events: true``: then an event ``segment_page_viewed`` / ``segment_screen_viewed``
  with the page properties and ``name`` / ``category``, mapped like track. (``page_viewed`` is one
  of Usertour's built-in event names, which the events API refuses; the ``segment_`` names cannot
  collide with a built-in one.)
- a track event whose codeName is a built-in Usertour event name (``page_viewed``,
  ``flow_started``...) is rejected with the reason: the API would refuse it.
- alias -> skipped: Usertour has no API that merges or re-keys users.

Key renaming (the codeName rule): every run of characters other than letters, digits and ``_``
becomes ``_`` and leading/trailing ``_`` are dropped (``Signed Up`` -> ``Signed_Up``,
``plan.tier`` -> ``plan_tier``); a key not starting with a letter gets ``attr_`` (event names:
``event_``) in front (``1st_seen`` -> ``attr_1st_seen``); a one-letter key gets a trailing ``_``.
Valid keys are sent unchanged. Keys longer than 100 characters after this, and two keys that map to
the same codeName, make the event a dead letter with the reason (nothing is silently dropped).

Track via the socket: the browser SDK sends ``track()`` over its Socket.IO gateway (namespace
``/v2``, event ``client-message`` with kind ``ClientMessageKind.TRACK_EVENT``), authenticated by
the environment's public token plus the external user id in the handshake. That path needs a
stateful connection (an Engine.IO handshake whose session id every later request carries, and an
ack to wait for), which a pure request builder cannot express, and under Usertour's identity
verification it needs a server-minted JWT per user. Since Usertour ships ``POST /v2/.../events``
for server-side events, the adapter uses that instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal
from urllib.parse import quote

from pydantic import AnyHttpUrl, Field, SecretStr

from destinations.base import (
    Adapter,
    BatchLimits,
    Built,
    DestinationSettings,
    Message,
    Outcome,
    RejectMessage,
    Request,
    Response,
    SkipMessage,
    Verdict,
    body_excerpt,
    default_classify,
    json_body,
)
from destinations.semantic import (
    event_time,
    group_id,
    identifier_key,
    integration_options,
    iso_utc,
    normalized_traits,
    page_properties,
    properties_of,
    scalar_leaves,
    traits_of,
    user_id,
)

DEFAULT_ENDPOINT = "https://api.usertour.io"
INTEGRATION_NAMES = ("Usertour",)
MAX_CODE_NAME = 100
MAX_EXTERNAL_ID = 200  # events body: userId / companyId 1-200 characters
# The server parses JSON with Express's default body-parser limit (100 kb; main.ts sets none).
MAX_BODY_BYTES = 100 * 1024

# Segment reserved traits that have their own Usertour attribute name.
TRAIT_RENAMES = {"createdAt": "signed_up_at"}


class Settings(DestinationSettings):
    type: Literal["usertour"] = Field("usertour", description="Adapter type.")
    api_token: SecretStr = Field(
        description="Usertour API v2 token (`utp_...`, Settings -> API) scoped to this project and "
        "environment with the user-write and company-write capabilities."
    )
    project_id: str = Field(min_length=1, description="Usertour project id (the `projectId` of the v2 API paths).")
    environment_id: str = Field(
        min_length=1, description="Usertour environment id (the `environmentId` of the v2 API paths)."
    )
    endpoint: AnyHttpUrl | None = Field(
        None,
        description="Base URL of the Usertour API: https://api.usertour.io (the only hosted region) "
        "unless set; set it for a self-hosted Usertour server.",
    )
    page_events: bool = Field(
        False,
        description="Send page and screen calls as `segment_page_viewed` / `segment_screen_viewed` events "
        "(Usertour has no page-view API; off by default so page views do not use up the rate limit).",
    )

    example = {
        "type": "usertour",
        "api_token": "utp_example_token",
        "project_id": "cm1projectid",
        "environment_id": "cm1environmentid",
    }

    @property
    def base_url(self) -> str:
        return str(self.endpoint).rstrip("/") if self.endpoint else DEFAULT_ENDPOINT

    @property
    def scope_url(self) -> str:
        return (
            f"{self.base_url}/v2/projects/{quote(self.project_id, safe='')}"
            f"/environments/{quote(self.environment_id, safe='')}"
        )


def code_name(key: Any, prefix: str) -> str | None:
    return identifier_key(key, prefix=prefix, min_length=2, max_length=MAX_CODE_NAME)


def attributes(values: Mapping[str, Any] | None) -> dict[str, Any]:
    """Segment traits/properties as Usertour attribute values under valid codeName keys."""
    out: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for key, value in scalar_leaves(values, "_", lists="keep").items():
        name = code_name(key, "attr")
        if name is None:
            raise RejectMessage(f"attribute key {key!r} cannot be made a Usertour codeName (2-100 characters)")
        if name in out:
            raise RejectMessage(f"attribute keys {origin[name]!r} and {key!r} both become {name!r} in Usertour")
        out[name] = value
        origin[name] = key
    return out


def _traits(event: Mapping[str, Any]) -> dict[str, Any]:
    traits = normalized_traits(traits_of(event))
    traits.pop("id", None)  # the id is the path, not an attribute
    for segment_name, usertour_name in TRAIT_RENAMES.items():
        if segment_name in traits and usertour_name not in traits:
            traits[usertour_name] = traits.pop(segment_name)
    return traits


def _put(settings: Settings, path: str, attrs: Mapping[str, Any], index: int) -> Request:
    return Request("PUT", settings.scope_url + path, _headers(settings), json_body({"attributes": attrs}), (index,))


def _headers(settings: Settings) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {settings.api_token.get_secret_value()}",
        "Content-Type": "application/json",
    }


def _user_path(uid: str) -> str:
    return f"/users/{quote(uid, safe='')}"


def _identify(event: Mapping[str, Any], index: int, settings: Settings) -> list[Request]:
    uid = user_id(event)
    assert uid is not None
    return [_put(settings, _user_path(uid), attributes(_traits(event)), index)]


def _group(event: Mapping[str, Any], index: int, settings: Settings) -> list[Request]:
    gid = group_id(event)
    if gid is None:
        raise RejectMessage("group call without a groupId: Usertour companies are keyed by it")
    uid = user_id(event)
    company = f"/companies/{quote(gid, safe='')}"
    company_attrs = attributes(_traits(event))
    options = integration_options(event, INTEGRATION_NAMES)
    membership = options.get("membership")
    membership_attrs = attributes(membership if isinstance(membership, Mapping) else {})
    requests: list[Request] = []
    if uid is not None:
        requests.append(_put(settings, _user_path(uid), {}, index))
    requests.append(_put(settings, company, company_attrs, index))
    if uid is not None:
        requests.append(_put(settings, f"{company}/memberships/{quote(uid, safe='')}", membership_attrs, index))
    return requests


def _event_request(
    event: Mapping[str, Any], index: int, settings: Settings, name: Any, props: Mapping[str, Any]
) -> Request:
    uid = user_id(event)
    assert uid is not None
    if len(uid) > MAX_EXTERNAL_ID:
        raise RejectMessage(f"userId is {len(uid)} characters; Usertour events take at most {MAX_EXTERNAL_ID}")
    if not isinstance(name, str) or not name.strip():
        raise RejectMessage("track call without an event name")
    code = code_name(name, "event")
    if code is None:
        raise RejectMessage(f"event name {name!r} cannot be made a Usertour codeName (2-100 characters)")
    if code in BUILT_IN_EVENTS:
        raise RejectMessage(f"event name {code!r} is a built-in Usertour event; its events API refuses it")
    body: dict[str, Any] = {"userId": uid, "name": code}
    options = integration_options(event, INTEGRATION_NAMES)
    company = None if options.get("userOnly") is True else group_id(event)
    if company is not None:
        if len(company) > MAX_EXTERNAL_ID:
            raise RejectMessage(
                f"context.groupId is {len(company)} characters; Usertour events take at most {MAX_EXTERNAL_ID}"
            )
        body["companyId"] = company
    attrs = attributes(props)
    if attrs:
        body["attributes"] = attrs
    when = event_time(event)
    if when is not None:
        body["occurredAt"] = iso_utc(when)
    return Request("POST", settings.scope_url + "/events", _headers(settings), json_body(body), (index,))


# Event names Usertour records itself; POST /events refuses them.
BUILT_IN_EVENTS = frozenset({
    "page_viewed", "flow_started", "flow_ended", "flow_completed", "flow_step_seen", "question_answered",
    "checklist_seen", "checklist_dismissed", "checklist_completed", "launcher_seen",
})
PAGE_EVENT, SCREEN_EVENT = "segment_page_viewed", "segment_screen_viewed"

SKIP_ALIAS = "Usertour has no API to merge or re-key users"
SKIP_PAGE = "Usertour has no page-view API (set page_events: true to send page/screen calls as events)"
SKIP_ANONYMOUS = "no userId: Usertour records users and events by your user id only"


def _requests(event: Mapping[str, Any], kind: str | None, index: int, settings: Settings) -> list[Request]:
    if kind == "alias":
        raise SkipMessage(SKIP_ALIAS)
    if kind in ("page", "screen") and not settings.page_events:
        raise SkipMessage(SKIP_PAGE)
    if kind == "group":
        requests = _group(event, index, settings)
    elif kind not in ("identify", "track", "page", "screen"):
        raise SkipMessage(f"unknown call type {kind!r}")
    elif user_id(event) is None:
        raise SkipMessage(SKIP_ANONYMOUS)
    elif kind == "identify":
        requests = _identify(event, index, settings)
    elif kind == "track":
        requests = [_event_request(event, index, settings, event.get("event"), properties_of(event))]
    else:
        name = PAGE_EVENT if kind == "page" else SCREEN_EVENT
        requests = [_event_request(event, index, settings, name, page_properties(event))]
    for request in requests:
        size = len(request.body or b"")
        if size > MAX_BODY_BYTES:
            raise RejectMessage(f"request body is {size} bytes; Usertour's server parses at most {MAX_BODY_BYTES}")
    return requests


def build_requests(messages: Sequence[Message], settings: Settings) -> Built:
    built = Built()
    for index, message in enumerate(messages):
        requests = built.attempt(index, _requests, message.event, message.type, index, settings)
        if requests is not None:
            built.requests.extend(requests)
    return built


def classify(request: Request, response: Response) -> Outcome:
    """The shared rule, with Usertour's error envelope in the reason, and one exception: a
    membership write answered 404 (user or company not found) is retried — the same message's
    user and company writes create both, so the 404 can only mean they have not landed yet."""
    outcome = default_classify(request, response)
    if outcome.verdict is Verdict.OK:
        return outcome
    payload = response.json()
    error = payload.get("error") if isinstance(payload, Mapping) else None
    if isinstance(error, Mapping):
        reason = f"HTTP {response.status} {error.get('code', '')}: {error.get('message', '')}"
        issues = error.get("issues")
        if isinstance(issues, list) and issues:
            reason += " (" + "; ".join(
                f"{i.get('path', '')}: {i.get('message', '')}" for i in issues if isinstance(i, Mapping)
            ) + ")"
    else:
        reason = f"HTTP {response.status}: {body_excerpt(response.body)}"
    if response.status == 404 and "/memberships/" in request.url:
        return Outcome(Verdict.RETRY, reason + " — the user or company of this membership is not there yet")
    return Outcome(outcome.verdict, reason, outcome.retry_after)


ADAPTER = Adapter(
    type="usertour",
    settings=Settings,
    build_requests=build_requests,
    integration_names=INTEGRATION_NAMES,
    limits=BatchLimits(max_events=100, max_bytes=5 * 1024 * 1024),
    classify=classify,
    description="Usertour: users, companies, memberships and events over the REST API v2.",
)
