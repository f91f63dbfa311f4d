"""Customer.io: people, events, page/screen views, accounts (objects) and merges, through either
the Track API (``mode: track``, default) or the Segment-compatible Data Pipelines API
(``mode: pipelines``).

Track API (https://docs.customer.io/integrations/api/track/)
  Hosts: US https://track.customer.io, EU https://track-eu.customer.io (``region``; ``endpoint``
  overrides the host). Auth: HTTP Basic ``site_id:api_key`` (the Track API key).
  Identified calls go in batches to ``POST /api/v2/batch`` ``{"batch": [entity, ...]}``: one entity
  per message, at most 500,000 bytes per request and 32,000 bytes per entity (Customer.io says
  "500kb" / "32kb"; we use the decimal, stricter reading), and at most 1,000 entities per request
  (our cap, RudderStack's chunk size; Customer.io documents only the byte limits). Anonymous
  events are held to the same 32,000 bytes.
  Its answers: 200 ``{}``; 207 ``{"errors": [{"batch_index": 1, "reason": "invalid", "field":
  "attributes.plan", "message": "..."}]}`` = the listed items were refused (permanent, per
  message: the other items were accepted); 400 / 401 for the whole request. Anonymous events
  (no userId) go one by one to ``POST /api/v1/events`` (the v2 person identifiers are id, email,
  phone or cio_id: v2 has no anonymous person), answers 200 ``{}`` / 400
  ``{"meta": {"error": "..."}}``.
  Limits checked before sending (an item over them is dead-lettered with the reason, not sent to
  fail; docs.customer.io/journeys/invalid-api-requests): person id/email at most 150 bytes; at
  most 300 attributes per identify, attribute names at most 150 bytes, values at most 1,000 bytes
  (strings by their UTF-8 length, other values by their JSON length); custom event names not
  blank and at most 100 bytes; page/screen names (URLs, as Customer.io's own integrations send
  them) under 500 characters; event data at most 100,000 bytes.
  Rate limit: fair use ("3,000 requests per 3 seconds", not strictly enforced; 429 when exceeded,
  retried by the shared classification).

  Mapping (Segment call -> Customer.io)
  - identify -> v2 ``person``/``identify``. identifiers: userId (``cio_<x>`` -> ``{"cio_id": x}``,
    an email -> ``{"email": ...}``, else ``{"id": ...}``), or ``traits.email`` when there is no
    userId. attributes: the traits (context.traits when traits are empty) as they are, with
    createdAt/created_at -> ``created_at`` in unix seconds, ``anonymous_id`` = anonymousId (so
    Customer.io merges the person's anonymous events), and (``convert_timestamps``) every ISO 8601
    date string -> unix seconds. ``timestamp`` = event time in unix seconds. B2B: context.groupId
    -> ``cio_relationships: [{"identifiers": {"object_type_id", "object_id": groupId}}]`` (the
    person joins the account), unless ``integrations.Customer.io.userOnly`` is true.
    No userId and no traits.email -> skipped (Customer.io has no anonymous profiles).
  - track -> v2 ``person``/``event`` {name: event, id, timestamp, attributes: properties};
    anonymous -> v1 ``/api/v1/events`` {name, type: "event", anonymous_id, id, timestamp, data}.
  - page -> the same with action/type ``page``; name = properties.url or context.page.url, else
    the page name, else the path; data = context.page (url, path, referrer, search, title)
    overlaid with the properties, plus the Segment ``name``/``category``.
  - screen -> action/type ``screen``; name = the screen name (required: refused without one).
  - group -> v2 ``object``/``identify`` {identifiers: {object_type_id (traits.object_type_id or
    objectTypeId, else the ``object_type_id`` setting), object_id: groupId}, attributes: traits,
    cio_relationships: [{identifiers: the userId's person}]}; with only an anonymousId the action
    is ``identify_anonymous`` with ``{"anonymous_id": ...}`` as the relationship.
  - alias -> v2 ``person``/``merge`` {primary: userId, secondary: previousId} (previousId's person
    is merged into userId's and deleted). When previousId is the message's own anonymousId, the
    alias instead sets ``anonymous_id`` on userId's person (Customer.io's way of merging anonymous
    activity; there is no anonymous person to merge).
  - timestamps are unix seconds (Customer.io misreads milliseconds: numeric created_at values above
    1e11 are taken as ms and divided by 1000).
  - messageId -> the event ``id`` dedup key, which Customer.io requires to be a ULID: a messageId
    that is a ULID goes as is; any other is turned into a deterministic ULID (event time in ms +
    80 bits of SHA-256(messageId)), so a resend of the same message is deduplicated.
  - Not attributable: Customer.io events belong to a person only (the Track API has no event ->
    object link), so context.groupId on track/page/screen is not sent; the person's link to the
    account comes from identify (context.groupId) and group. ``userOnly`` therefore only affects
    identify in this mode.
  - Devices, deletes, suppressions (Customer.io semantic events) are sent as ordinary events in
    this mode; the Data Pipelines mode lets Customer.io interpret them.

Data Pipelines API (https://docs.customer.io/integrations/api/cdp/)
  Hosts: US https://cdp.customer.io, EU https://cdp-eu.customer.io; ``POST /v1/batch``
  ``{"batch": [Segment messages]}``. Auth: HTTP Basic with the Pipelines source API key as user and
  an empty password (``site_id`` is not used). Limits: 32 KB per call, 500 KB per batch;
  oversize requests are answered 200 and silently dropped, hence the check here (at 32,000 and
  500,000 bytes). ``strict_mode`` (default on) sends ``X-Strict-Mode: 1`` so invalid payloads get
  400/401 instead of a 200 that drops them. Every call type is forwarded as the Segment message
  (messageId, timestamp, originalTimestamp, context, integrations...) minus receivedAt and sentAt,
  which the collector sets itself; ``userOnly`` removes context.groupId. Messages the API would
  refuse (track without event, group without groupId, alias without previousId, no user identity)
  are dead-lettered before sending, because in strict mode one bad message fails its whole batch.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import AnyHttpUrl, Field, SecretStr, model_validator

from destinations.base import (
    Adapter,
    BatchLimits,
    Built,
    DestinationSettings,
    Message,
    MessageOutcome,
    Outcome,
    Reject,
    RejectMessage,
    Request,
    Response,
    SkipMessage,
    Verdict,
    chunk_by_limits,
    default_classify,
    json_body,
)
from destinations.semantic import (
    anonymous_id,
    context,
    dates_to_unix_seconds,
    epoch_ms,
    epoch_seconds,
    integration_options,
    is_email,
    iso_to_unix_seconds,
    properties_of,
    reserved_trait_name,
    to_number,
    traits_of,
    ulid_for,
    user_id,
)

TRACK_HOSTS = {"us": "https://track.customer.io", "eu": "https://track-eu.customer.io"}
PIPELINES_HOSTS = {"us": "https://cdp.customer.io", "eu": "https://cdp-eu.customer.io"}
BATCH_PATH = "/api/v2/batch"
ANONYMOUS_EVENTS_PATH = "/api/v1/events"
PIPELINES_BATCH_PATH = "/v1/batch"

MAX_BATCH_BYTES = 500_000
MAX_ENTRY_BYTES = 32_000
MAX_BATCH_ENTRIES = 1000
MAX_ID_BYTES = 150
MAX_ATTRIBUTES = 300
MAX_ATTRIBUTE_NAME_BYTES = 150
MAX_ATTRIBUTE_VALUE_BYTES = 1000
MAX_EVENT_NAME_BYTES = 100
MAX_VIEW_NAME_CHARS = 499  # "event name must be less than 500 characters"
MAX_EVENT_DATA_BYTES = 100_000

INTEGRATION_NAMES = (
    "Customer.io", "Customer.io (Actions)", "Actions Customerio", "Customer.io Actions",
    "Customer.io Data Pipelines",
)
_PAGE_CONTEXT_FIELDS = ("url", "path", "referrer", "search", "title")
_OBJECT_TYPE_KEYS = ("object_type_id", "objectTypeId")


class Settings(DestinationSettings):
    type: Literal["customerio"] = Field("customerio", description="Adapter type.")
    mode: Literal["track", "pipelines"] = Field(
        "track",
        description="`track`: Customer.io Journeys Track API (v2 batch + v1 anonymous events). "
        "`pipelines`: the Segment-compatible Data Pipelines API (events forwarded as Segment messages).",
    )
    site_id: SecretStr | None = Field(
        None, description="Track API Site ID (Basic auth user). Required in `track` mode, unused in `pipelines` mode."
    )
    api_key: SecretStr = Field(
        description="`track` mode: the Track API key paired with `site_id`. `pipelines` mode: the API key of a Data "
                    "Pipelines HTTP source."
    )
    region: Literal["us", "eu"] = Field("us", description="Customer.io account region; picks the host when `endpoint` "
                                                          "is not set.")
    endpoint: AnyHttpUrl | None = Field(
        None,
        description="Base URL overriding the region's host (API paths are appended), e.g. for a proxy or a test "
                    "server.",
    )
    object_type_id: str = Field(
        "1", pattern=r"^[1-9][0-9]*$",
        description="Customer.io object type that Segment groups (accounts) become (`1` is the first type, usually "
                    "Companies). "
        "A group call's traits.object_type_id / traits.objectTypeId overrides it.",
    )
    convert_timestamps: bool = Field(
        True, description="Convert ISO 8601 date strings in attributes and event data to unix seconds, the only date "
                          "form Customer.io segments on."
    )
    strict_mode: bool = Field(
        True, description="`pipelines` mode: send `X-Strict-Mode: 1` so invalid payloads are answered 400/401 instead "
                          "of a 200 that drops them."
    )

    example = {"type": "customerio", "site_id": "3f2a9c0d1e", "api_key": "trk_key_0123456789", "region": "us"}

    @model_validator(mode="after")
    def _site_id_for_track(self) -> Settings:
        if self.mode == "track" and (self.site_id is None or not self.site_id.get_secret_value()):
            raise ValueError("site_id is required when mode is track")
        return self

    @property
    def base_url(self) -> str:
        if self.endpoint:
            return str(self.endpoint).rstrip("/")
        return (TRACK_HOSTS if self.mode == "track" else PIPELINES_HOSTS)[self.region]


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _nbytes(text: str) -> int:
    return len(text.encode("utf-8"))


def _person(identifier: str) -> dict[str, str]:
    """Customer.io person identifiers for a Segment userId (as Customer.io's own Segment
    integration resolves them)."""
    if _nbytes(identifier) > MAX_ID_BYTES:
        raise RejectMessage(f"person identifier is {_nbytes(identifier)} bytes; Customer.io accepts at most "
                            f"{MAX_ID_BYTES}")
    if identifier.startswith("cio_") and len(identifier) > 4:
        return {"cio_id": identifier[4:]}
    if is_email(identifier):
        return {"email": identifier}
    return {"id": identifier}


def _unix(value: Any) -> Any:
    """A date as unix seconds: ISO strings parsed, millisecond numbers scaled; else unchanged."""
    seconds = iso_to_unix_seconds(value)
    if seconds is not None:
        return seconds
    number = to_number(value) if not isinstance(value, str) else None
    if number is not None:
        return int(number / 1000) if number > 1e11 else int(number)
    return value


def _attributes(traits: Mapping[str, Any], settings: Settings, drop: tuple[str, ...] = ()) -> dict[str, Any]:
    out: dict[str, Any] = {}
    created_key: str | None = None
    for key, value in traits.items():
        if key in drop:
            continue
        if isinstance(key, str) and reserved_trait_name(key) == "createdAt":
            # createdAt wins over created_at / other spellings when several are present
            if created_key is None or key == "createdAt":
                created_key = key
            continue
        out[key] = dates_to_unix_seconds(value) if settings.convert_timestamps else value
    if created_key is not None:
        out["created_at"] = _unix(traits[created_key])
    return out


def _check_attributes(attributes: Mapping[str, Any]) -> None:
    if len(attributes) > MAX_ATTRIBUTES:
        raise RejectMessage(f"{len(attributes)} attributes; Customer.io accepts at most {MAX_ATTRIBUTES} "
                            "in one request")
    for key, value in attributes.items():
        if _nbytes(str(key)) > MAX_ATTRIBUTE_NAME_BYTES:
            raise RejectMessage(f"attribute name {str(key)[:40]!r}... is longer than {MAX_ATTRIBUTE_NAME_BYTES} bytes")
        size = _nbytes(value) if isinstance(value, str) else len(json_body(value))
        if size > MAX_ATTRIBUTE_VALUE_BYTES:
            raise RejectMessage(f"value of attribute {str(key)!r} is {size} bytes; Customer.io accepts at most "
                                f"{MAX_ATTRIBUTE_VALUE_BYTES}")


def _event_data(data: dict[str, Any], settings: Settings) -> dict[str, Any]:
    data = dates_to_unix_seconds(data) if settings.convert_timestamps else data
    size = len(json_body(data))
    if size > MAX_EVENT_DATA_BYTES:
        raise RejectMessage(f"event data is {size} bytes; Customer.io accepts at most {MAX_EVENT_DATA_BYTES}")
    return data


def _user_only(event: Mapping[str, Any]) -> bool:
    return integration_options(event, INTEGRATION_NAMES).get("userOnly") is True


def _with_time(entry: dict[str, Any], event: Mapping[str, Any]) -> dict[str, Any]:
    seconds = epoch_seconds(event)
    if seconds is not None:
        entry["timestamp"] = seconds
    return entry


def _identify(event: Mapping[str, Any], settings: Settings) -> dict[str, Any]:
    traits = traits_of(event)
    uid = user_id(event)
    if uid:
        identifiers = _person(uid)
    elif is_email(traits.get("email")):
        identifiers = _person(traits["email"])
    else:
        raise SkipMessage("identify without userId or traits.email: Customer.io has no anonymous people to identify")
    attributes = _attributes(traits, settings)
    anon = anonymous_id(event)
    if anon and "anonymous_id" not in attributes:
        attributes["anonymous_id"] = anon
    _check_attributes(attributes)
    entry = _with_time({"type": "person", "identifiers": identifiers, "action": "identify", "attributes": attributes},
                       event)
    account = context(event).get("groupId")
    if account not in (None, "") and not _user_only(event):
        entry["cio_relationships"] = [
            {"identifiers": {"object_type_id": settings.object_type_id, "object_id": str(account)}}
        ]
    return entry


def _view_name(event: Mapping[str, Any], kind: str) -> str:
    props = properties_of(event)
    if kind == "event":
        name = event.get("event")
        if not isinstance(name, str) or not name.strip():
            raise RejectMessage("track call without an event name: Customer.io refuses blank event names")
        name = name.strip()
        if _nbytes(name) > MAX_EVENT_NAME_BYTES:
            raise RejectMessage(f"event name is {_nbytes(name)} bytes; Customer.io accepts at most "
                                f"{MAX_EVENT_NAME_BYTES}")
        return name
    page = context(event).get("page")
    page = page if isinstance(page, Mapping) else {}
    if kind == "page":
        candidates: tuple[Any, ...] = (props.get("url"), page.get("url"), event.get("name"), props.get("path"),
                                       page.get("path"))
    else:
        candidates = (event.get("name"), props.get("name"))
    for candidate in candidates:
        if isinstance(candidate, str) and candidate.strip():
            name = candidate.strip()
            if len(name) > MAX_VIEW_NAME_CHARS:
                raise RejectMessage(f"{kind} name is {len(name)} characters; Customer.io accepts fewer than 500")
            return name
    what = "a URL, name or path" if kind == "page" else "a name"
    raise RejectMessage(f"{kind} call without {what}: Customer.io needs a {kind} name")


def _view_data(event: Mapping[str, Any], kind: str) -> dict[str, Any]:
    props = properties_of(event)
    if kind != "page":
        return props
    page = context(event).get("page")
    data = {k: page[k] for k in _PAGE_CONTEXT_FIELDS if isinstance(page, Mapping) and page.get(k) not in (None, "")}
    data.update(props)
    for key in ("name", "category"):
        if event.get(key) not in (None, "") and key not in data:
            data[key] = event[key]
    return data


def _event(event: Mapping[str, Any], settings: Settings, kind: str) -> tuple[str, dict[str, Any]]:
    """("v2", entity) for a known person, ("v1", body) for an anonymous one."""
    name = _view_name(event, kind)
    data = _event_data(_view_data(event, kind), settings)
    dedup = ulid_for(str(event.get("messageId") or ""), epoch_ms(event)) if event.get("messageId") else None
    uid = user_id(event)
    if uid:
        entry: dict[str, Any] = {"type": "person", "identifiers": _person(uid), "action": kind, "name": name}
        if dedup:
            entry["id"] = dedup
        _with_time(entry, event)
        entry["attributes"] = data
        return "v2", entry
    anon = anonymous_id(event)
    if not anon:
        raise RejectMessage(f"{kind} call without userId or anonymousId")
    body: dict[str, Any] = {"name": name, "type": kind, "anonymous_id": anon}
    if dedup:
        body["id"] = dedup
    _with_time(body, event)
    body["data"] = data
    return "v1", body


def _group(event: Mapping[str, Any], settings: Settings) -> dict[str, Any]:
    group = event.get("groupId")
    if group in (None, ""):
        raise RejectMessage("group call without groupId: Customer.io needs an object_id")
    raw_traits = event.get("traits")
    traits: Mapping[str, Any] = raw_traits if isinstance(raw_traits, Mapping) else {}
    object_type = settings.object_type_id
    for key in _OBJECT_TYPE_KEYS:
        if traits.get(key) not in (None, ""):
            object_type = str(traits[key])
            break
    if not object_type.isdigit():
        raise RejectMessage(f"object type id {object_type[:40]!r} is not a string-formatted integer "
                            "as Customer.io requires")
    attributes = _attributes(traits, settings, drop=_OBJECT_TYPE_KEYS)
    _check_attributes(attributes)
    entry: dict[str, Any] = {
        "type": "object",
        "identifiers": {"object_type_id": object_type, "object_id": str(group)},
        "action": "identify",
        "attributes": attributes,
    }
    uid, anon = user_id(event), anonymous_id(event)
    if uid:
        entry["cio_relationships"] = [{"identifiers": _person(uid)}]
    elif anon:
        entry["action"] = "identify_anonymous"
        entry["cio_relationships"] = [{"identifiers": {"anonymous_id": anon}}]
    return entry


def _alias(event: Mapping[str, Any], settings: Settings) -> dict[str, Any]:
    uid = user_id(event)
    previous = event.get("previousId")
    if not uid or previous in (None, ""):
        raise RejectMessage("alias call needs both userId and previousId to merge people in Customer.io")
    previous = str(previous)
    if previous == uid:
        raise SkipMessage("alias with previousId equal to userId: nothing to merge")
    if previous == anonymous_id(event):
        return _with_time(
            {"type": "person", "identifiers": _person(uid), "action": "identify",
             "attributes": {"anonymous_id": previous}},
            event,
        )
    return {"type": "person", "action": "merge", "primary": _person(uid), "secondary": _person(previous)}


def _track_item(event: Mapping[str, Any], kind: str | None, settings: Settings) -> tuple[str, dict[str, Any]]:
    """(route, payload) of one message for the Track API: "v2" batch entries, or an anonymous event."""
    if kind == "identify":
        return "v2", _identify(event, settings)
    if kind in ("track", "page", "screen"):
        return _event(event, settings, "event" if kind == "track" else kind)
    if kind == "group":
        return "v2", _group(event, settings)
    if kind == "alias":
        return "v2", _alias(event, settings)
    raise SkipMessage(f"call type {kind!r} is not a Segment call Customer.io takes")


def _build_track(messages: Sequence[Message], settings: Settings) -> Built:
    built = Built()
    assert settings.site_id is not None
    headers = {
        "Content-Type": "application/json",
        "Authorization": _basic(settings.site_id.get_secret_value(), settings.api_key.get_secret_value()),
    }
    base = settings.base_url
    entries: list[tuple[int, bytes]] = []
    anonymous: list[tuple[int, bytes]] = []
    for i, msg in enumerate(messages):
        kind = msg.type
        mapped = built.attempt(i, _track_item, msg.event, kind, settings)
        if mapped is None:
            continue
        route, payload = mapped
        encoded = json_body(payload)
        if len(encoded) > MAX_ENTRY_BYTES:
            built.rejects.append(Reject(i, f"{kind} is {len(encoded)} bytes once mapped; Customer.io accepts at most "
                                           f"{MAX_ENTRY_BYTES} per item"))
            continue
        (entries if route == "v2" else anonymous).append((i, encoded))
    envelope = len(b'{"batch":}')
    for chunk in chunk_by_limits(entries, MAX_BATCH_ENTRIES, MAX_BATCH_BYTES - envelope):
        body = b'{"batch":[' + b",".join(b for _, b in chunk) + b"]}"
        built.requests.append(Request("POST", base + BATCH_PATH, headers, body, tuple(i for i, _ in chunk)))
    for i, encoded in anonymous:
        built.requests.append(Request("POST", base + ANONYMOUS_EVENTS_PATH, headers, encoded, (i,)))
    return built


_SEGMENT_CALLS = ("identify", "track", "page", "screen", "group", "alias")


def _pipelines_check(event: Mapping[str, Any]) -> bool:
    """True for a message the Data Pipelines API takes; raises SkipMessage / RejectMessage."""
    kind = event.get("type")
    if kind not in _SEGMENT_CALLS:
        raise SkipMessage(f"call type {kind!r} is not a Segment call the Data Pipelines API takes")
    has_user = user_id(event) or anonymous_id(event)
    if kind == "identify" and not has_user and not is_email(traits_of(event).get("email")):
        raise RejectMessage("identify without userId, anonymousId or traits.email")
    if kind != "identify" and not has_user:
        raise RejectMessage(f"{kind} call without userId or anonymousId")
    if kind == "track" and not (isinstance(event.get("event"), str) and event["event"].strip()):
        raise RejectMessage("track call without an event name")
    if kind == "group" and event.get("groupId") in (None, ""):
        raise RejectMessage("group call without groupId")
    if kind == "alias" and (event.get("previousId") in (None, "") or not user_id(event)):
        raise RejectMessage("alias call needs both userId and previousId")
    return True


def _build_pipelines(messages: Sequence[Message], settings: Settings) -> Built:
    built = Built()
    headers = {"Content-Type": "application/json", "Authorization": _basic(settings.api_key.get_secret_value(), "")}
    if settings.strict_mode:
        headers["X-Strict-Mode"] = "1"
    items: list[tuple[int, bytes]] = []
    for i, msg in enumerate(messages):
        if built.attempt(i, _pipelines_check, msg.event) is None:
            continue
        event = {k: v for k, v in msg.event.items() if k not in ("receivedAt", "sentAt")}
        ctx = event.get("context")
        if _user_only(event) and isinstance(ctx, Mapping) and "groupId" in ctx:
            event["context"] = {k: v for k, v in ctx.items() if k != "groupId"}
        encoded = json_body(event)
        if len(encoded) > MAX_ENTRY_BYTES:
            built.rejects.append(Reject(i, f"event is {len(encoded)} bytes; the Data Pipelines API accepts at most "
                                           f"{MAX_ENTRY_BYTES} per call"))
            continue
        items.append((i, encoded))
    envelope = len(b'{"batch":}')
    url = settings.base_url + PIPELINES_BATCH_PATH
    for chunk in chunk_by_limits(items, MAX_BATCH_ENTRIES, MAX_BATCH_BYTES - envelope):
        body = b'{"batch":[' + b",".join(b for _, b in chunk) + b"]}"
        built.requests.append(Request("POST", url, headers, body, tuple(i for i, _ in chunk)))
    return built


def build_requests(messages: Sequence[Message], settings: Settings) -> Built:
    if settings.mode == "pipelines":
        return _build_pipelines(messages, settings)
    return _build_track(messages, settings)


def classify(request: Request, response: Response) -> Outcome:
    """Shared rules, plus the v2 batch's per-item answers: a 2xx (207 in practice) listing
    ``errors[].batch_index`` refuses those items for good and accepts the rest."""
    outcome = default_classify(request, response)
    if outcome.verdict is not Verdict.OK or not request.url.endswith(BATCH_PATH):
        return outcome
    body = response.json()
    errors = body.get("errors") if isinstance(body, dict) else None
    if not errors:
        if response.status == 207:
            # a partial answer we cannot read: resending is safe (events carry their dedup id)
            return Outcome(Verdict.RETRY, f"HTTP 207 without a readable errors list: {response.body[:200]!r}")
        return outcome
    per_message: dict[int, MessageOutcome] = {}
    unplaced: list[str] = []
    for error in errors if isinstance(errors, list) else []:
        if not isinstance(error, dict):
            continue
        position = error.get("batch_index")
        detail = "; ".join(
            str(error[k]) for k in ("field", "message", "reason") if error.get(k) not in (None, "")
        ) or "no detail"
        if isinstance(position, int) and not isinstance(position, bool) and 0 <= position < len(request.messages):
            per_message[request.messages[position]] = MessageOutcome(
                Verdict.PERMANENT, f"Customer.io refused batch item {position}: {detail}"
            )
        else:
            unplaced.append(detail)
    if unplaced and not per_message:
        return Outcome(Verdict.RETRY,
                       f"HTTP {response.status} with errors not tied to an item: {'; '.join(unplaced)[:300]}")
    return Outcome(Verdict.OK, per_message=per_message)


ADAPTER = Adapter(
    type="customerio",
    settings=Settings,
    build_requests=build_requests,
    integration_names=INTEGRATION_NAMES,
    limits=BatchLimits(max_events=MAX_BATCH_ENTRIES, max_bytes=MAX_BATCH_BYTES),
    classify=classify,
    description="Customer.io people, events, accounts (objects) and merges via the Track API (v2 batch) or the Data "
                "Pipelines API.",
)
