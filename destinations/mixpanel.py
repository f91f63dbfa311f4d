"""Mixpanel: events through the Import API, profiles through /engage, groups through /groups.

API: https://docs.mixpanel.com/reference/ingestion-api (import-events, profile-set, group-set).
Hosts: US https://api.mixpanel.com, EU https://api-eu.mixpanel.com, IN https://api-in.mixpanel.com
(``region``); ``endpoint`` overrides the host (a proxy, a test fake).

Auth:
- ``POST /import?strict=1``: HTTP Basic with a service account (``username:secret``) plus the
  ``project_id`` query parameter, or the project token as user with an empty password.
- ``POST /engage`` and ``POST /groups``: no auth header; the project token travels in each
  record (``$token``), as the API requires. Events carry it too (``properties.token``).

Limits (Mixpanel's): 2000 records and 10 MB per /import request (the documented 413 answer names
2 MiB, so every request here stays under 2,000,000 bytes); each event < 1 MB, < 255 properties,
nested objects < 255 keys and at most 3 levels deep, arrays < 255 elements: events over these
are dead-lettered (Reject) instead of being sent to fail. Mixpanel "truncate[s] all strings down to
255 characters" (import-events "Common Issues"): string property values of /import events (nested
ones and list items included) and event names over 255 characters are cut to 255 here and the
message is noted (``Built.note``: counted and logged as modified), so no cut is silent; an id
(``distinct_id``, ``$device_id``, ``$user_id``) over 255 characters is dead-lettered instead, as a
cut id would merge different people. /engage: 2000 updates per request, each < 1 MB; /groups: 200
per request. Rate limit 2 GB of JSON per minute per project (429, no
Retry-After: the engine's backoff applies).

Call mapping:
- track -> /import event ``event`` with the properties, ``time`` (ms), ``distinct_id``,
  ``$insert_id``, ``ip`` (``0`` when unknown so Mixpanel does not geolocate trackrelay's own
  address), context (page url/referrer, os, device, app, screen, library) and campaign -> ``utm_*``.
  Simplified ID Merge (default): ``distinct_id`` = userId or ``$device:<anonymousId>``, plus
  ``$device_id`` (anonymousId) and ``$user_id`` (userId). Original ID Merge: ``distinct_id`` =
  userId or anonymousId.
  ``properties.revenue`` (``Order Refunded``: minus revenue/total/value) is also appended to the
  profile's ``$transactions`` through /engage. ``Order Completed`` (v1: ``Completed Order``) also
  sends one ``Product Purchased`` event per product (setting ``product_purchased_events``):
  the order's properties without the order-level money fields, plus the product's fields.
- page / screen -> /import event ``Loaded a Page`` / ``Loaded a Screen`` (configurable) with
  ``name`` and ``category``.
- identify -> /engage ``$set`` with the reserved traits renamed (email -> ``$email``, firstName ->
  ``$first_name``, lastName -> ``$last_name``, name -> ``$name``, phone -> ``$phone``, avatar ->
  ``$avatar``, createdAt -> ``$created``, username -> ``$username``, address.city/state/country ->
  ``$city``/``$region``/``$country_code``). With both userId and anonymousId it also links them:
  an ``$identify`` event carrying ``$device_id`` and ``$user_id`` (Simplified) or a ``$merge`` event
  (Original) through /import.
- group -> /groups ``$set`` of the group traits (name -> ``$name``, createdAt -> ``$created``) on
  ``$group_key`` = ``group_key`` / ``$group_id`` = groupId, and /engage ``$union`` of the groupId
  into the user's ``group_key`` property. Events with ``context.groupId`` carry ``group_key``.
- alias -> /import ``$create_alias`` (distinct_id = previousId, alias = userId) under Original ID
  Merge; skipped under Simplified ID Merge, which does not process ``$create_alias``.

$insert_id: the messageId when it is a valid Mixpanel insert id (<= 36 chars of [A-Za-z0-9-], not
a reserved word such as ``null``); otherwise (e.g. ``ajs-next-<ts>-<uuid>``, 59 chars) a UUID-shaped
SHA-256 digest of the messageId, so retries and replays keep deduplicating. ``Product Purchased``
events use the digest of ``<order insert id>:<n>``.

Responses: /import 400 with ``failed_records`` is a partial success: only the failed records'
messages are dead-lettered, the rest count as delivered. /engage and /groups are called with
``verbose=1``; a 200 whose body says ``status: 0`` (or the plain ``0``) is a permanent failure.
Everything else follows the shared default (429/5xx retried, other 4xx permanent).
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import orjson
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
    Request,
    Response,
    Skip,
    Verdict,
    body_excerpt,
    default_classify,
    json_array,
    json_body,
)
from destinations.semantic import (
    ORDER_FIELDS,
    anonymous_id,
    canonical_event,
    context,
    currency,
    epoch_ms,
    event_time,
    group_id,
    normalized_traits,
    order_value,
    products,
    properties_of,
    revenue,
    traits_of,
    user_id,
    utm_params,
)

REGIONS = {
    "us": "https://api.mixpanel.com",
    "eu": "https://api-eu.mixpanel.com",
    "in": "https://api-in.mixpanel.com",
}
MAX_IMPORT_RECORDS = 2000
MAX_ENGAGE_RECORDS = 2000
MAX_GROUPS_RECORDS = 200
MAX_REQUEST_BYTES = 2_000_000
MAX_RECORD_BYTES = 1_000_000
MAX_PROPERTIES = 254  # "fewer than 255"
MAX_KEYS = 254
MAX_ARRAY = 254
MAX_DEPTH = 3
MAX_STRING = 255  # import-events "Common Issues": "We truncate all strings down to 255 characters"
ID_PROPERTIES = ("distinct_id", "$device_id", "$user_id")
MIN_TIME_MS = 31_536_000_000  # 1971-01-01T00:00:00Z: Mixpanel refuses earlier times

# Values Mixpanel refuses as distinct_id and $insert_id (import-events "Validation").
INVALID_IDS = frozenset({
    "00000000-0000-0000-0000-000000000000", "anon", "anonymous", "nil", "none", "null", "n/a",
    "na", "undefined", "unknown", "<nil>", "0", "-1", "true", "false", "[]", "{}",
})
_INSERT_ID = re.compile(r"^[A-Za-z0-9-]{1,36}$")

# Segment reserved traits -> Mixpanel reserved profile properties.
PROFILE_RENAMES = {
    "email": "$email", "firstName": "$first_name", "lastName": "$last_name", "name": "$name",
    "phone": "$phone", "avatar": "$avatar", "createdAt": "$created", "username": "$username",
}
ADDRESS_RENAMES = {"city": "$city", "state": "$region", "country": "$country_code"}
GROUP_RENAMES = {"name": "$name", "createdAt": "$created", "email": "$email", "phone": "$phone", "avatar": "$avatar"}

# Order-level fields left out of each "Product Purchased" event (they describe the whole order).
ORDER_ONLY_FIELDS = frozenset(set(ORDER_FIELDS) - {"order_id", "checkout_id"}) | {"order_number"}

# context path -> Mixpanel default property
CONTEXT_PROPERTIES: tuple[tuple[tuple[str, ...], str], ...] = (
    (("page", "url"), "$current_url"),
    (("page", "referrer"), "$referrer"),
    (("os", "name"), "$os"),
    (("os", "version"), "$os_version"),
    (("device", "manufacturer"), "$manufacturer"),
    (("device", "model"), "$model"),
    (("app", "version"), "$app_version_string"),
    (("app", "build"), "$app_build_number"),
    (("screen", "width"), "$screen_width"),
    (("screen", "height"), "$screen_height"),
    (("library", "name"), "mp_lib"),
    (("library", "version"), "$lib_version"),
)


class Settings(DestinationSettings):
    type: Literal["mixpanel"] = Field("mixpanel", description="Adapter type.")
    project_token: SecretStr = Field(
        description="Project token (Project Settings > Access Keys). Sent inside every record as "
        "Mixpanel requires, and used as /import Basic-auth user when no service account is set."
    )
    service_account_username: str | None = Field(
        None, description="Service account username for /import (Owner or Admin role). Needs "
        "`service_account_secret` and `project_id`."
    )
    service_account_secret: SecretStr | None = Field(
        None, description="Service account secret, paired with `service_account_username`."
    )
    project_id: int | None = Field(
        None, ge=1, description="Numeric project id, required with a service account (sent as `project_id` query "
                                "parameter)."
    )
    region: Literal["us", "eu", "in"] = Field(
        "us", description="Data residency of the project: us (api.mixpanel.com), eu (api-eu) or in (api-in). Used when "
                          "`endpoint` is not set."
    )
    endpoint: AnyHttpUrl | None = Field(
        None, description="Base URL of the ingestion API (default: the region's host). /import, /engage and /groups "
                          "are appended."
    )
    id_merge: Literal["simplified", "original"] = Field(
        "simplified", description="The project's ID Merge API: `simplified` (distinct_id userId or "
                                  "$device:<anonymousId>, "
        "$device_id/$user_id on events, alias skipped) or `original` (distinct_id userId or anonymousId, $merge on "
        "identify, alias as $create_alias)."
    )
    strict: bool = Field(
        True, description="Send /import with strict=1 so Mixpanel validates every record and answers failed_records "
                          "(recommended)."
    )
    page_event: str = Field("Loaded a Page", min_length=1, description="Event name for page calls.")
    screen_event: str = Field("Loaded a Screen", min_length=1, description="Event name for screen calls.")
    group_key: str = Field(
        "$group_id", min_length=1, description="Mixpanel group key that Segment groupIds are recorded under "
        "(must exist in Project Settings > Group Keys). Group calls and events with context.groupId use it."
    )
    product_purchased_events: bool = Field(
        True, description="Also send one `Product Purchased` event per product of an Order Completed event."
    )
    track_revenue: bool = Field(
        True, description="Append properties.revenue of track events (negative for Order Refunded) to the profile's "
                          "$transactions."
    )

    example = {"type": "mixpanel", "project_token": "0123456789abcdef0123456789abcdef", "region": "eu"}

    @model_validator(mode="after")
    def _service_account_complete(self) -> Settings:
        parts = (self.service_account_username, self.service_account_secret, self.project_id)
        if any(p is not None for p in parts) and not all(p is not None for p in parts):
            raise ValueError("service account auth needs service_account_username, service_account_secret and "
                             "project_id together")
        return self

    @property
    def base_url(self) -> str:
        return str(self.endpoint).rstrip("/") if self.endpoint else REGIONS[self.region]

    @property
    def token(self) -> str:
        return self.project_token.get_secret_value()

    def import_url(self) -> str:
        url = f"{self.base_url}/import?strict={1 if self.strict else 0}"
        if self.project_id is not None and self.service_account_username:
            url += f"&project_id={self.project_id}"
        return url

    def import_auth(self) -> str:
        if self.service_account_username and self.service_account_secret is not None:
            raw = f"{self.service_account_username}:{self.service_account_secret.get_secret_value()}"
        else:
            raw = f"{self.token}:"
        return "Basic " + base64.b64encode(raw.encode()).decode()


# ---------------------------------------------------------------------------------------------
# ids
# ---------------------------------------------------------------------------------------------


def hashed_id(text: str) -> str:
    """A UUID-shaped (36 chars, hex and dashes) SHA-256 digest: a valid, deterministic $insert_id."""
    h = hashlib.sha256(text.encode()).hexdigest()[:32]
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def insert_id(event: Mapping[str, Any]) -> str:
    """$insert_id for a message: its messageId if Mixpanel accepts it as such, else a digest of it."""
    mid = event.get("messageId")
    if isinstance(mid, str) and _INSERT_ID.match(mid) and mid.lower() not in INVALID_IDS:
        return mid
    if isinstance(mid, str) and mid:
        return hashed_id(mid)
    return hashed_id(orjson.dumps(event, option=orjson.OPT_SORT_KEYS).decode())


def extra_insert_id(main: str, n: int) -> str:
    """$insert_id of the n-th (0-based) extra event a message produces (Product Purchased)."""
    return hashed_id(f"{main}:{n}")


def _valid_id(value: str | None) -> str | None:
    if value is None or value.strip().lower() in INVALID_IDS:
        return None
    return value


class _Ids:
    __slots__ = ("user", "device", "distinct")

    def __init__(self, user: str | None, device: str | None, distinct: str) -> None:
        self.user, self.device, self.distinct = user, device, distinct


def _ids(event: Mapping[str, Any], settings: Settings) -> _Ids | None:
    uid, aid = _valid_id(user_id(event)), _valid_id(anonymous_id(event))
    if uid is None and aid is None:
        return None
    if settings.id_merge == "simplified":
        return _Ids(uid, aid, uid if uid is not None else f"$device:{aid}")
    return _Ids(uid, aid, uid if uid is not None else aid)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# records
# ---------------------------------------------------------------------------------------------


def _dig(obj: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = obj
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def _ip(event: Mapping[str, Any]) -> Any:
    ip = context(event).get("ip")
    # 0 tells Mixpanel not to geolocate (it would otherwise use trackrelay's own address).
    return ip if isinstance(ip, str) and ip else 0


def _context_properties(event: Mapping[str, Any]) -> dict[str, Any]:
    ctx = context(event)
    out: dict[str, Any] = {"ip": _ip(event)}
    for path, name in CONTEXT_PROPERTIES:
        value = _dig(ctx, path)
        if value not in (None, ""):
            out[name] = value
    out.update(utm_params(event))
    return out


def _event_record(
    name: str, event: Mapping[str, Any], props: Mapping[str, Any], ids: _Ids, time_ms: int,
    iid: str, settings: Settings, with_context: bool = True,
) -> dict[str, Any]:
    if with_context:
        properties = _context_properties(event)
        gid = group_id(event) if event.get("type") != "group" else None
        if gid is not None:
            properties[settings.group_key] = gid
    else:  # identity-link events: only the address, so Mixpanel does not geolocate trackrelay
        properties = {"ip": _ip(event)}
    properties.update(props)
    properties.update({
        "time": time_ms,
        "distinct_id": ids.distinct,
        "$insert_id": iid,
        "token": settings.token,
    })
    if settings.id_merge == "simplified":
        if ids.device is not None:
            properties["$device_id"] = ids.device
        if ids.user is not None:
            properties["$user_id"] = ids.user
    return {"event": name, "properties": properties}


def _profile_base(event: Mapping[str, Any], ids: _Ids, time_ms: int, settings: Settings) -> dict[str, Any]:
    return {"$token": settings.token, "$distinct_id": ids.distinct, "$ip": _ip(event), "$time": time_ms}


def profile_set(traits: Mapping[str, Any]) -> dict[str, Any]:
    """Identify traits as Mixpanel profile properties (reserved traits renamed)."""
    out: dict[str, Any] = {}
    for key, value in normalized_traits(traits).items():
        if key == "address" and isinstance(value, Mapping):
            rest = {}
            for k, v in value.items():
                if k in ADDRESS_RENAMES and v not in (None, ""):
                    out[ADDRESS_RENAMES[k]] = v
                else:
                    rest[k] = v
            if rest:
                out["address"] = rest
            continue
        out[PROFILE_RENAMES.get(key, key)] = value
    return out


def group_set(traits: Mapping[str, Any]) -> dict[str, Any]:
    return {GROUP_RENAMES.get(k, k): v for k, v in normalized_traits(traits).items()}


def _mixpanel_date(event: Mapping[str, Any]) -> str | None:
    when = event_time(event)
    return None if when is None else when.strftime("%Y-%m-%dT%H:%M:%S")


def transaction_amount(event: Mapping[str, Any]) -> float | None:
    """The amount a track event adds to $transactions: properties.revenue; for Order Refunded the
    refunded value (revenue, total, value or products), negated."""
    props = properties_of(event)
    if canonical_event(event.get("event")) == "Order Refunded":
        value = order_value(props)
        return -abs(value) if value else None
    value = revenue(props)
    return value if value else None


def _limit_problem(record: Mapping[str, Any], encoded: bytes) -> str | None:
    if len(encoded) >= MAX_RECORD_BYTES:
        return f"record is {len(encoded)} bytes; Mixpanel accepts less than 1 MB"
    props = record.get("properties")
    if isinstance(props, Mapping):
        if len(props) > MAX_PROPERTIES:
            return f"event has {len(props)} properties; Mixpanel accepts fewer than 255"
        return _nesting_problem(props, 0)
    return None


def _nesting_problem(value: Any, depth: int) -> str | None:
    if isinstance(value, Mapping):
        if depth > 0 and len(value) > MAX_KEYS:
            return f"a nested object has {len(value)} keys; Mixpanel accepts fewer than 255"
        children: Iterable[Any] = value.values()
    elif isinstance(value, list):
        if len(value) > MAX_ARRAY:
            return f"an array property has {len(value)} elements; Mixpanel accepts fewer than 255"
        children = value
    else:
        return None
    if depth > MAX_DEPTH:
        return f"properties are nested more than {MAX_DEPTH} levels deep; Mixpanel refuses that"
    for child in children:
        problem = _nesting_problem(child, depth + 1)
        if problem:
            return problem
    return None


def _cut_strings(value: Any, path: str, cut: list[str], depth: int = 0) -> Any:
    """``value`` with every string over MAX_STRING characters cut to it; cut paths go to ``cut``.
    Deeper than Mixpanel allows (MAX_DEPTH; such events are rejected) it leaves values as they are,
    so a hostile nesting cannot exhaust the stack."""
    if depth > MAX_DEPTH + 1:
        return value
    if isinstance(value, str):
        if len(value) > MAX_STRING:
            cut.append(path)
            return value[:MAX_STRING]
        return value
    if isinstance(value, Mapping):
        return {k: _cut_strings(v, f"{path}.{k}", cut, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_cut_strings(v, f"{path}[{i}]", cut, depth + 1) for i, v in enumerate(value)]
    return value


def _fit_strings(record: dict[str, Any]) -> tuple[list[str], str | None]:
    """Cut an /import record's long strings in place, as Mixpanel would silently: (cut paths, reject
    reason). An id over the limit is a reject, not a cut."""
    props = record["properties"]
    for key in ID_PROPERTIES:
        value = props.get(key)
        if isinstance(value, str) and len(value) > MAX_STRING:
            return [], (f"{key} is {len(value)} characters; Mixpanel truncates strings to {MAX_STRING}, "
                        "which would merge different people")
    cut: list[str] = []
    name = record.get("event")
    if isinstance(name, str) and len(name) > MAX_STRING:
        cut.append("event")
        record["event"] = name[:MAX_STRING]
    record["properties"] = {k: _cut_strings(v, k, cut) for k, v in props.items()}
    return cut, None


# ---------------------------------------------------------------------------------------------
# build
# ---------------------------------------------------------------------------------------------


class _Planned:
    """What one message becomes: records per endpoint."""

    __slots__ = ("imports", "engage", "groups")

    def __init__(self) -> None:
        self.imports: list[dict[str, Any]] = []
        self.engage: list[dict[str, Any]] = []
        self.groups: list[dict[str, Any]] = []


def _plan(event: Mapping[str, Any], settings: Settings) -> _Planned | Skip | str:
    """A message's records, a Skip (without index) or a reject reason."""
    kind = event.get("type")
    if kind not in ("track", "page", "screen", "identify", "group", "alias"):
        return Skip(-1, f"Mixpanel has no mapping for call type {kind!r}")
    ids = _ids(event, settings)
    if ids is None:
        return ("no usable userId or anonymousId (Mixpanel refuses empty ids and values such as 'null', "
                "'anonymous', '0')")
    time_ms = epoch_ms(event)
    if time_ms is None:
        return "no timestamp: Mixpanel requires properties.time"
    if time_ms < MIN_TIME_MS:
        return "timestamp is before 1971-01-01; Mixpanel refuses it"
    iid = insert_id(event)
    plan = _Planned()

    if kind == "track":
        name = event.get("event")
        if not isinstance(name, str) or not name.strip():
            return "track call without an event name"
        props = properties_of(event)
        plan.imports.append(_event_record(name, event, props, ids, time_ms, iid, settings))
        if settings.product_purchased_events and canonical_event(name) == "Order Completed":
            shared = {k: v for k, v in props.items() if k not in ORDER_ONLY_FIELDS}
            for n, product in enumerate(products(props)):
                plan.imports.append(_event_record(
                    "Product Purchased", event, {**shared, **product}, ids, time_ms,
                    extra_insert_id(iid, n), settings,
                ))
        amount = transaction_amount(event) if settings.track_revenue else None
        if amount is not None:
            transaction: dict[str, Any] = {"$time": _mixpanel_date(event), "$amount": amount,
                                           "currency": currency(props)}
            if props.get("order_id") not in (None, ""):
                transaction["order_id"] = props["order_id"]
            plan.engage.append({**_profile_base(event, ids, time_ms, settings),
                                "$append": {"$transactions": transaction}})
    elif kind in ("page", "screen"):
        props = {}
        for key in ("name", "category"):
            if event.get(key) not in (None, ""):
                props[key] = event[key]
        props.update(properties_of(event))
        name = settings.page_event if kind == "page" else settings.screen_event
        plan.imports.append(_event_record(name, event, props, ids, time_ms, iid, settings))
    elif kind == "identify":
        traits = profile_set(traits_of(event))
        if traits:
            plan.engage.append({**_profile_base(event, ids, time_ms, settings), "$set": traits})
        if ids.user is not None and ids.device is not None:
            if settings.id_merge == "simplified":
                link: dict[str, Any] = {"$anon_distinct_id": f"$device:{ids.device}"}
                plan.imports.append(_event_record("$identify", event, link, ids, time_ms, iid, settings, False))
            else:
                link = {"$distinct_ids": [ids.user, ids.device]}
                plan.imports.append(_event_record("$merge", event, link, ids, time_ms, iid, settings, False))
        if not plan.engage and not plan.imports:
            return Skip(-1, "identify without traits and without an anonymousId to link: nothing to send to Mixpanel")
    elif kind == "group":
        gid = group_id(event)
        if gid is None:
            return "group call without a groupId"
        traits = group_set(traits_of(event))
        if traits:
            plan.groups.append({"$token": settings.token, "$group_key": settings.group_key,
                                "$group_id": gid, "$set": traits})
        plan.engage.append({**_profile_base(event, ids, time_ms, settings),
                            "$union": {settings.group_key: [gid]}})
    else:  # alias
        if settings.id_merge == "simplified":
            return Skip(-1, "Mixpanel Simplified ID Merge does not process $create_alias; identities are "
                            "linked through $device_id/$user_id on events (set id_merge: original to send aliases)")
        previous = (_valid_id(event.get("previousId") if isinstance(event.get("previousId"), str) else None)
                    or ids.device)
        if ids.user is None:
            return "alias call without a userId"
        if previous is None:
            return "alias call without a previousId or anonymousId"
        if previous == ids.user:
            return "alias previousId equals userId"
        alias_ids = _Ids(ids.user, ids.device, previous)
        record = _event_record("$create_alias", event, {"alias": ids.user}, alias_ids, time_ms, iid, settings, False)
        record["properties"].pop("$device_id", None)
        record["properties"].pop("$user_id", None)
        plan.imports.append(record)
    return plan


def _chunks(groups: list[tuple[int, list[bytes]]], max_records: int) -> list[list[tuple[int, list[bytes]]]]:
    """Split per-message record groups into requests, never splitting one message's records."""
    chunks: list[list[tuple[int, list[bytes]]]] = []
    current: list[tuple[int, list[bytes]]] = []
    count, size = 0, 2
    for index, records in groups:
        extra = sum(len(r) + 1 for r in records)
        if current and (count + len(records) > max_records or size + extra > MAX_REQUEST_BYTES):
            chunks.append(current)
            current, count, size = [], 0, 2
        current.append((index, records))
        count += len(records)
        size += extra
    if current:
        chunks.append(current)
    return chunks


def build_requests(messages: Sequence[Message], settings: Settings) -> Built:
    built = Built()
    per_endpoint: dict[str, list[tuple[int, list[bytes]]]] = {"import": [], "engage": [], "groups": []}
    for index, message in enumerate(messages):
        plan = _plan(message.event, settings)
        if isinstance(plan, Skip):
            built.skips.append(Skip(index, plan.reason))
            continue
        if isinstance(plan, str):
            built.rejects.append(Reject(index, plan))
            continue
        cut: list[str] = []
        too_long: str | None = None
        for record in plan.imports:
            record_cut, too_long = _fit_strings(record)
            if too_long:
                break
            cut.extend(p for p in record_cut if p not in cut)
        if too_long:
            built.rejects.append(Reject(index, too_long))
            continue
        encoded = {
            "import": [json_body(r) for r in plan.imports],
            "engage": [json_body(r) for r in plan.engage],
            "groups": [json_body(r) for r in plan.groups],
        }
        problem = None
        for endpoint, records in (("import", plan.imports), ("engage", plan.engage), ("groups", plan.groups)):
            for record, data in zip(records, encoded[endpoint], strict=True):
                problem = problem or _limit_problem(record, data)
        if problem:
            built.rejects.append(Reject(index, problem))
            continue
        for endpoint, bodies in encoded.items():
            if bodies:
                per_endpoint[endpoint].append((index, bodies))
        if cut:
            shown = ", ".join(cut[:5]) + (f" and {len(cut) - 5} more" if len(cut) > 5 else "")
            built.note(index, f"strings over {MAX_STRING} characters cut to {MAX_STRING} (Mixpanel truncates "
                              f"them): {shown}")

    import_headers = {"Content-Type": "application/json", "Authorization": settings.import_auth()}
    plain_headers = {"Content-Type": "application/json"}
    targets = (
        ("import", settings.import_url(), import_headers, MAX_IMPORT_RECORDS),
        ("engage", f"{settings.base_url}/engage?verbose=1", plain_headers, MAX_ENGAGE_RECORDS),
        ("groups", f"{settings.base_url}/groups?verbose=1", plain_headers, MAX_GROUPS_RECORDS),
    )
    for endpoint, url, headers, max_records in targets:
        for chunk in _chunks(per_endpoint[endpoint], max_records):
            body = json_array([r for _, records in chunk for r in records])
            built.requests.append(Request("POST", url, dict(headers), body, tuple(i for i, _ in chunk)))
    return built


# ---------------------------------------------------------------------------------------------
# classify
# ---------------------------------------------------------------------------------------------


def import_positions(request: Request) -> list[int] | None:
    """Message index of every record in an /import body, in body order. A message's extra records
    (Product Purchased) follow it and carry ``extra_insert_id(main, n)``: that is how they are told
    apart from the next message's record. None if the body does not match ``request.messages``."""
    try:
        records = orjson.loads(request.body or b"[]")
    except orjson.JSONDecodeError:
        return None
    if not isinstance(records, list):
        return None
    out: list[int] = []
    position, main, n = -1, None, 0
    for record in records:
        props = record.get("properties") if isinstance(record, Mapping) else None
        iid = props.get("$insert_id") if isinstance(props, Mapping) else None
        if main is not None and iid == extra_insert_id(main, n):
            n += 1
        else:
            position, main, n = position + 1, iid, 0
        if position >= len(request.messages):
            return None
        out.append(request.messages[position])
    if position != len(request.messages) - 1:
        return None
    return out


def _classify_import(request: Request, response: Response) -> Outcome:
    if response.status != 400:
        return default_classify(request, response)
    body = response.json()
    failed = body.get("failed_records") if isinstance(body, Mapping) else None
    if not isinstance(failed, list) or not failed:
        return default_classify(request, response)
    positions = import_positions(request)
    if positions is None:
        return Outcome(Verdict.PERMANENT, "HTTP 400 with failed_records that cannot be mapped to messages: "
                                          f"{body_excerpt(response.body)}")
    by_insert_id: dict[str, int] = {}
    for record, position in zip(orjson.loads(request.body or b"[]"), positions, strict=False):
        by_insert_id.setdefault(str(record.get("properties", {}).get("$insert_id")), position)
    per_message: dict[int, MessageOutcome] = {}
    for item in failed:
        if not isinstance(item, Mapping):
            continue
        message: int | None = None
        idx = item.get("index")
        if isinstance(idx, int) and not isinstance(idx, bool) and 0 <= idx < len(positions):
            message = positions[idx]
        else:
            iid = item.get("$insert_id", item.get("insert_id"))
            message = by_insert_id.get(str(iid)) if iid is not None else None
        if message is None:
            return Outcome(Verdict.PERMANENT,
                           f"HTTP 400 with an unmappable failed record: {body_excerpt(response.body)}")
        reason = f"Mixpanel refused {item.get('field') or 'the record'}: {item.get('message') or 'validation failed'}"
        if message in per_message:
            reason = per_message[message].reason + "; " + reason
        per_message[message] = MessageOutcome(Verdict.PERMANENT, reason)
    return Outcome(Verdict.OK, "", None, per_message)


def _classify_profiles(request: Request, response: Response) -> Outcome:
    outcome = default_classify(request, response)
    if outcome.verdict is not Verdict.OK:
        return outcome
    text = response.body.strip()
    if text == b"0":
        return Outcome(Verdict.PERMANENT, "Mixpanel answered 0: no record of the request was valid")
    body = response.json()
    if isinstance(body, Mapping) and body.get("status") in (0, "0"):
        return Outcome(Verdict.PERMANENT,
                       f"Mixpanel refused the update: {body.get('error') or body_excerpt(response.body)}")
    return outcome


def classify(request: Request, response: Response) -> Outcome:
    path = request.url.split("?", 1)[0]
    if path.endswith("/import"):
        return _classify_import(request, response)
    if path.endswith(("/engage", "/groups")):
        return _classify_profiles(request, response)
    return default_classify(request, response)


ADAPTER = Adapter(
    type="mixpanel",
    settings=Settings,
    build_requests=build_requests,
    integration_names=("Mixpanel", "Mixpanel (Actions)"),
    limits=BatchLimits(max_events=MAX_IMPORT_RECORDS, max_bytes=MAX_REQUEST_BYTES),
    classify=classify,
    description="Mixpanel: events through /import, profiles and revenue through /engage, groups through /groups.",
)
