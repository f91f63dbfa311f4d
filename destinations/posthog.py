"""PostHog: the capture batch endpoint (PostHog Cloud US/EU or a self-hosted instance).

API: POST {endpoint}/batch/ with ``{"api_key": "phc_...", "batch": [event, ...]}`` (plus
``"historical_migration": true`` for backfills). Docs: https://posthog.com/docs/api/capture ;
server: PostHog/posthog rust/capture (api.rs, v0_request.rs, token.rs). Hosts:
https://us.i.posthog.com, https://eu.i.posthog.com, or your instance URL (``endpoint``).

Auth: the project API key (``phc_...``) in the body as ``api_key``; no header. Personal API keys
(``phx_``) are refused by capture, so they are refused in the settings too.

Limits: no event count limit per batch; the body must stay under 20 MB; an event over 1 MB fails
the request ("maximum event size exceeded"), so events over 900,000 bytes are rejected here and
batches are cut at 10 MB. Capture silently cuts a distinct_id to 200 characters (rust/capture
v0_request.rs ``extract_distinct_id``, test ``extract_distinct_id_trims_to_200_chars``), which
would merge or split people, so an event whose userId/anonymousId is longer is dead-lettered.
Responses: 200 ``{"status": "Ok"}``; 400 plain text for an unparseable
body, an empty batch, an event without name or distinct_id, an invalid uuid or an oversized
event; 401 for a missing/invalid api_key; 429 rate or billing limit; 503 retryable. The shared
default classification fits (2xx ok, 429/5xx retried, other 4xx permanent), plus one case: a 200
whose ``quota_limited`` lists ``events`` means PostHog dropped them (billing quota), which is
reported as a permanent failure instead of a silent success.

Call mapping (each event: ``event``, ``distinct_id`` = userId or anonymousId, ``timestamp`` ISO
8601, ``uuid`` = the messageId when it is a UUID, else a UUIDv5 of it, so resends deduplicate):
    track     event name unchanged; properties unchanged (revenue/currency/products included)
    page      $pageview with $current_url, $pathname, $host, $referrer, title, name, category
    screen    $screen with $screen_name
    identify  $identify with $set = traits (and $set_once for ``set_once_traits``); when the call
              has both userId and anonymousId, $anon_distinct_id links the anonymous person to
              the user, as posthog-js identify() does
    group     $groupidentify with $group_type (setting ``group_type``), $group_key = groupId,
              $group_set = traits
    alias     $create_alias: distinct_id = userId, alias = previousId
Every event also gets: $groups {group_type: context.groupId}, $ip (context.ip, for GeoIP),
$current_url/$host/$pathname/$referrer/$referring_domain from context.page, $raw_user_agent, $lib/$lib_version
(context.library), $device_id, $os, $app_*, $screen_*, $timezone, $browser_language,
utm_* from context.campaign, and (``person_profiles: identified_only``)
$process_person_profile=false on events without a userId.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import AnyHttpUrl, Field, SecretStr, field_validator

from destinations import semantic
from destinations.base import (
    Adapter,
    BatchLimits,
    Built,
    DestinationSettings,
    Message,
    Outcome,
    Reject,
    Request,
    Response,
    Verdict,
    chunk_by_limits,
    default_classify,
    json_body,
)

HOSTS = {"us": "https://us.i.posthog.com", "eu": "https://eu.i.posthog.com"}
MAX_EVENT_BYTES = 900_000  # capture refuses events over 1 MB once wrapped; keep a margin
MAX_REQUEST_BYTES = 10_000_000  # capture's default body limit is 20 MB
MAX_DISTINCT_ID = 200  # capture trims longer ids, which would split one person in two


class Settings(DestinationSettings):
    type: Literal["posthog"] = Field("posthog", description="Adapter type.")
    api_key: SecretStr = Field(
        description="Project API key (`phc_...`, Project settings > Project API key). Not a personal API key (`phx_`), "
                    "which capture refuses."
    )
    region: Literal["us", "eu"] = Field("us", description="PostHog Cloud region, used when `endpoint` is not set.")
    endpoint: AnyHttpUrl | None = Field(
        None, description="Base URL of a self-hosted PostHog (or a reverse proxy in front of PostHog); /batch/ is "
                          "appended. Default: the region's PostHog Cloud ingestion host."
    )
    group_type: str = Field(
        "company", min_length=1, max_length=400,
        description="PostHog group type that Segment groups map to: $group_type of group calls and the key of $groups "
                    "on every event carrying context.groupId.",
    )
    person_profiles: Literal["always", "identified_only"] = Field(
        "always",
        description="`identified_only` sends track/page/screen events without a userId with "
                    "$process_person_profile=false (cheaper anonymous events, as posthog-js does by default).",
    )
    set_once_traits: list[str] = Field(
        default_factory=list,
        description="Identify traits sent with $set_once instead of $set (kept from the first time they are seen, e.g. "
                    "createdAt, initial_referrer); reserved traits match in any spelling (created_at = createdAt).",
    )
    historical_migration: bool = Field(
        False, description="Mark batches as a historical migration (backfills: PostHog then skips spike detection and "
                           "processes them in order)."
    )

    example = {"type": "posthog", "api_key": "phc_example_project_key_123"}

    @field_validator("api_key")
    @classmethod
    def _project_key(cls, value: SecretStr) -> SecretStr:
        key = value.get_secret_value().strip()
        if not key:
            raise ValueError("is empty")
        if key.startswith("phx_"):
            raise ValueError("is a personal API key (phx_); capture needs the project API key (phc_)")
        if len(key) > 64 or not key.isascii() or "\0" in key:
            raise ValueError("is not a PostHog project API key (at most 64 ASCII characters)")
        return SecretStr(key)

    @property
    def base_url(self) -> str:
        return str(self.endpoint).rstrip("/") if self.endpoint else HOSTS[self.region]


def _common_properties(event: Mapping[str, Any], settings: Settings) -> dict[str, Any]:
    ctx = semantic.context(event)
    out: dict[str, Any] = {}
    page = semantic.page_fields(event)
    if "url" in page:
        out["$current_url"] = page["url"]
        host = urlsplit(str(page["url"])).hostname
        if host:
            out["$host"] = host
    if "path" in page:
        out["$pathname"] = page["path"]
    if "referrer" in page:
        out["$referrer"] = page["referrer"]
        ref_host = urlsplit(str(page["referrer"])).hostname
        if ref_host:
            out["$referring_domain"] = ref_host
    if isinstance(ctx.get("ip"), str) and ctx["ip"]:
        out["$ip"] = ctx["ip"]
    if isinstance(ctx.get("userAgent"), str) and ctx["userAgent"]:
        out["$raw_user_agent"] = ctx["userAgent"]
    library = ctx.get("library")
    if isinstance(library, Mapping):
        if library.get("name"):
            out["$lib"] = library["name"]
        if library.get("version"):
            out["$lib_version"] = library["version"]
    device = ctx.get("device")
    if isinstance(device, Mapping):
        for src, dst in (("id", "$device_id"), ("manufacturer", "$device_manufacturer"),
                         ("model", "$device_model"), ("type", "$device_type")):
            if device.get(src) not in (None, ""):
                out[dst] = device[src]
    os_ = ctx.get("os")
    if isinstance(os_, Mapping):
        for src, dst in (("name", "$os"), ("version", "$os_version")):
            if os_.get(src) not in (None, ""):
                out[dst] = os_[src]
    app = ctx.get("app")
    if isinstance(app, Mapping):
        for src, dst in (("name", "$app_name"), ("version", "$app_version"),
                         ("build", "$app_build"), ("namespace", "$app_namespace")):
            if app.get(src) not in (None, ""):
                out[dst] = app[src]
    screen = ctx.get("screen")
    if isinstance(screen, Mapping):
        for src, dst in (("width", "$screen_width"), ("height", "$screen_height"), ("density", "$screen_density")):
            if screen.get(src) not in (None, ""):
                out[dst] = screen[src]
    for src, dst in (("timezone", "$timezone"), ("locale", "$browser_language")):
        if isinstance(ctx.get(src), str) and ctx[src]:
            out[dst] = ctx[src]
    out.update(semantic.utm_params(event))
    group = semantic.group_id(event)
    if group is not None:
        out["$groups"] = {settings.group_type: group}
    return out


def _merge(props: Mapping[str, Any], common: Mapping[str, Any]) -> dict[str, Any]:
    """The call's own properties, then the context-derived ones it does not set itself."""
    out = dict(props)
    for key, value in common.items():
        out.setdefault(key, value)
    return out


def map_event(event: Mapping[str, Any], settings: Settings) -> tuple[dict[str, Any] | None, str | None]:
    """(PostHog event, reason it cannot be sent)."""
    kind = event.get("type")
    user = semantic.user_id(event)
    anon = semantic.anonymous_id(event)
    distinct_id = user or anon
    if distinct_id is None:
        return None, "PostHog needs a distinct_id: the event has neither userId nor anonymousId"
    if len(distinct_id) > MAX_DISTINCT_ID:
        return None, f"distinct_id is {len(distinct_id)} characters; PostHog keeps only {MAX_DISTINCT_ID}"
    props = semantic.properties_of(event)
    common = _common_properties(event, settings)
    if kind == "track":
        name = event.get("event")
        if not isinstance(name, str) or not name.strip():
            return None, "track call without an event name"
        properties = _merge(props, common)
    elif kind == "page":
        name = "$pageview"
        properties = _merge(props, common)
        for key in ("name", "category"):
            if event.get(key) not in (None, "") and key not in properties:
                properties[key] = event[key]
        page = semantic.page_fields(event)
        if "title" in page and "title" not in properties:
            properties["title"] = page["title"]
    elif kind == "screen":
        name = "$screen"
        properties = _merge(props, common)
        screen_name = event.get("name") or props.get("name")
        if screen_name not in (None, ""):
            properties["$screen_name"] = screen_name
    elif kind == "identify":
        name = "$identify"
        traits = semantic.normalized_traits(semantic.traits_of(event))
        once = {semantic.reserved_trait_name(k) or k for k in settings.set_once_traits}
        set_once = {k: traits.pop(k) for k in list(traits) if k in once}
        properties = {**common}
        if user is not None and anon is not None:
            properties["$anon_distinct_id"] = anon  # links the anonymous person to the user
        if traits:
            properties["$set"] = traits
        if set_once:
            properties["$set_once"] = set_once
    elif kind == "group":
        group = semantic.group_id(event)
        if group is None:
            return None, "group call without a groupId"
        name = "$groupidentify"
        properties = {**common, "$group_type": settings.group_type, "$group_key": group,
                      "$group_set": semantic.normalized_traits(semantic.traits_of(event))}
    elif kind == "alias":
        previous = event.get("previousId")
        if user is None or previous in (None, ""):
            return None, "alias needs both userId and previousId"
        name = "$create_alias"
        properties = {**common, "alias": str(previous)}
    else:
        return None, f"unknown call type {kind!r}"
    if settings.person_profiles == "identified_only" and user is None and kind in ("track", "page", "screen"):
        properties["$process_person_profile"] = False
    out: dict[str, Any] = {"event": name, "distinct_id": distinct_id, "properties": properties}
    when = semantic.event_time(event)
    if when is not None:
        out["timestamp"] = semantic.iso_utc(when)
    uuid = semantic.message_uuid(event.get("messageId"))
    if uuid is not None:
        out["uuid"] = uuid
    return out, None


def build_requests(messages: Sequence[Message], settings: Settings) -> Built:
    built = Built()
    items: list[tuple[int, bytes]] = []
    for i, msg in enumerate(messages):
        mapped, reason = map_event(msg.event, settings)
        if mapped is None:
            built.rejects.append(Reject(i, reason or "unsupported"))
            continue
        encoded = json_body(mapped)
        if len(encoded) > MAX_EVENT_BYTES:
            built.rejects.append(Reject(i, f"event is {len(encoded)} bytes; PostHog refuses events over 1 MB"))
            continue
        items.append((i, encoded))
    head: dict[str, Any] = {"api_key": settings.api_key.get_secret_value()}
    if settings.historical_migration:
        head["historical_migration"] = True
    prefix = json_body(head)[:-1] + b',"batch":['
    url = settings.base_url + "/batch/"
    for chunk in chunk_by_limits(items, len(items) or 1, MAX_REQUEST_BYTES, overhead=len(prefix) + 2):
        body = prefix + b",".join(b for _, b in chunk) + b"]}"
        built.requests.append(Request("POST", url, {"Content-Type": "application/json"}, body,
                                      tuple(i for i, _ in chunk)))
    return built


def classify(request: Request, response: Response) -> Outcome:
    outcome = default_classify(request, response)
    if outcome.verdict is Verdict.OK:
        body = response.json()
        limited = body.get("quota_limited") if isinstance(body, Mapping) else None
        if isinstance(limited, list) and "events" in limited:
            return Outcome(Verdict.PERMANENT, "PostHog dropped the events: the project is over its billing quota "
                                              "(quota_limited)")
    return outcome


ADAPTER = Adapter(
    type="posthog",
    settings=Settings,
    build_requests=build_requests,
    integration_names=("PostHog",),
    limits=BatchLimits(max_events=1000, max_bytes=MAX_REQUEST_BYTES),
    classify=classify,
    description="PostHog capture /batch/: events, $pageview/$screen, $identify, $groupidentify, $create_alias.",
)
