"""Tracking API handlers: auth, decode, limits, check, route, spool, answer.

Answers follow what Segment's clients need (shared/reference/segment-api.md §4): success is exactly
``200 {"success": true}``; errors are JSON ``{"success": false, "code", "message"}`` so every SDK
version stops retrying (400), or retries later (429/503 with Retry-After).

Ingest decodes only what its checks and routing read (msgspec structs; objects such as properties,
traits and context stay raw bytes) and hands the spool each accepted item's JSON exactly as the
client sent it, with what it decided (proxy/spool/base.py ``Append``). Enrichment (receivedAt,
messageId, timestamp correction, context.ip, channel...) is applied when delivery reads, by the same
functions (proxy/enrich.py), from the facts recorded here. So no event is parsed into dicts or
re-encoded on the hot path, and numbers stay exactly as sent.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import time
import uuid
import zlib
from itertools import accumulate
from typing import Any, cast

import msgspec
import orjson
import structlog
from aiohttp import web

from proxy import spec
from proxy.config import Config
from proxy.governance.blocked import SKIP_BLOCKED, blocked_destination
from proxy.governance.plans import SourcePlan
from proxy.metrics import METRICS
from proxy.observe import TAPS
from proxy.routing import Router
from proxy.spool import Append, Item, Route, Spool, SpoolFull, SpoolUnavailable, dedup_key, dedup_prefix

log = structlog.get_logger("trackrelay.ingest")

_SUCCESS_BODY = b'{"success":true}'
_Raw = msgspec.Raw
_ABSENT = msgspec.Raw()  # an empty Raw: the field was not sent


class _Fields(msgspec.Struct, forbid_unknown_fields=False):
    """The fields of one event that checks and routing read; everything else stays in the raw bytes."""

    type: Any = None
    userId: Any = None
    anonymousId: Any = None
    event: Any = None
    name: Any = None
    category: Any = None
    groupId: Any = None
    previousId: Any = None
    messageId: Any = None
    timestamp: Any = None
    originalTimestamp: Any = None
    sentAt: Any = None
    writeKey: Any = None
    properties: _Raw = _ABSENT
    traits: _Raw = _ABSENT
    context: _Raw = _ABSENT
    integrations: _Raw = _ABSENT


class _Object(msgspec.Struct, forbid_unknown_fields=False, gc=False):
    """Any JSON object; msgspec checks that it is one and skips its contents without building them."""


_Id = str | int | float | None


class _Fast(msgspec.Struct, forbid_unknown_fields=False, gc=False):
    """The common valid event, typed so that msgspec's C decoder does most of the checks: string
    fields are strings, ids strings or numbers (not booleans), object fields objects. An event that
    does not decode into this takes the general path (``_Fields`` and spec.check), which gives the
    precise reason or accepts what is valid but unusual (a batch-level context replacing an item's
    non-object one, say)."""

    type: Any = None
    userId: _Id = None
    anonymousId: _Id = None
    event: str | None = None
    name: str | None = None
    category: str | None = None
    groupId: _Id = None
    previousId: _Id = None
    messageId: _Id = None
    timestamp: str | None = None
    originalTimestamp: str | None = None
    sentAt: str | None = None
    writeKey: Any = None
    properties: _Object | None = None
    traits: _Object | None = None
    context: _Object | None = None
    integrations: _Raw = _ABSENT


class _PlanContext(msgspec.Struct, forbid_unknown_fields=False, gc=False):
    traits: Any = None


class _PlanFields(msgspec.Struct, forbid_unknown_fields=False):
    """What a tracking plan reads of an event (proxy.governance.plans.SourcePlan.check): decoded
    without the rest (context's page, userAgent...)."""

    event: Any = None
    properties: Any = None
    traits: Any = None
    context: _PlanContext | None = None


_decode_plan_fields = msgspec.json.Decoder(_PlanFields).decode


def _plan_view(raw: bytes, call_type: str) -> dict[str, Any]:
    """The event as far as a tracking plan reads it (type as checked)."""
    try:
        f = _decode_plan_fields(raw)
    except msgspec.ValidationError:  # context not an object (a batch's replaces it): the whole event
        event: dict[str, Any] = orjson.loads(raw)
        event["type"] = call_type
        return event
    view: dict[str, Any] = {"type": call_type, "event": f.event, "properties": f.properties, "traits": f.traits}
    if f.context is not None:
        view["context"] = {"traits": f.context.traits}
    return view


# the call types the fast path decides alone (alias and group need previousId/groupId checks)
_FAST_TYPES = frozenset({"track", "identify", "page", "screen"})
_NULL = msgspec.Raw(b"null")
_EMPTY_OBJECT = msgspec.Raw(b"{}")


class _Batch(msgspec.Struct, forbid_unknown_fields=False):
    batch: _Raw = _ABSENT
    writeKey: Any = None
    sentAt: Any = None
    context: _Raw = _ABSENT
    integrations: _Raw = _ABSENT


_decode_fields = msgspec.json.Decoder(_Fields).decode
_decode_fast = msgspec.json.Decoder(_Fast).decode
_decode_batch = msgspec.json.Decoder(_Batch).decode
_decode_items = msgspec.json.Decoder(list[_Raw]).decode
_decode_any = msgspec.json.Decoder().decode


def _decode_item(raw: bytes) -> _Fast | _Fields | None:
    """One event's fields: as ``_Fast`` when they have the common types, else as ``_Fields`` (the
    general path decides); None when it is not a JSON object."""
    try:
        return _decode_fast(raw)
    except msgspec.ValidationError:
        pass
    except (msgspec.DecodeError, RecursionError):
        return None
    try:
        return _decode_fields(raw)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return None


def _decode_single(data: bytes) -> _Fast | _Fields:
    """A single-event body's fields (raises msgspec's errors when it is not a JSON object)."""
    try:
        return _decode_fast(data)
    except msgspec.ValidationError:
        return _decode_fields(data)


# Numbers that may not survive as sent: a run of 19+ digits (beyond 64 bits?) or a 3-digit exponent
# (overflow?). Digits are mapped to "0" and the runs looked for as substrings: a C-speed prefilter
# (a regex costs ~20x more); the rare hit is then checked exactly.
_DIGITS_TO_ZERO = bytes.maketrans(b"0123456789E", b"0000000000e")  # and E -> e; "+" is deleted
_NINETEEN_DIGITS = b"0" * 19
_BIG_EXPONENT = b"e000"


def _suspect_number(raw: bytes) -> bool:
    """Whether ``raw`` (valid JSON) may hold a number that does not survive as sent. A hit inside a
    string (a hex id's "e123", a long numeric id sent as a string) is not one: with no backslash
    before it, quotes are only string delimiters, so an odd count before the hit means it is inside
    one. Where a backslash precedes the hit, it counts (the exact check decides)."""
    zeroed = raw.translate(_DIGITS_TO_ZERO, b"+")
    for pattern in (_NINETEEN_DIGITS, _BIG_EXPONENT):
        pos = zeroed.find(pattern)
        quotes = last = 0
        while pos != -1:
            if zeroed.find(b"\\", last, pos) != -1:
                return True
            quotes += zeroed.count(b'"', last, pos)
            if not quotes & 1:
                return True  # outside every string: a number
            last = pos
            pos = zeroed.find(pattern, pos + 1)
    return False


_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"{}[]")
_DEPTH_STEP = {ord("{"): 1, ord("["): 1, ord("}"): -1, ord("]"): -1}
_INT_MIN, _INT_MAX = -(1 << 63), (1 << 64) - 1


def error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    body = orjson.dumps({"success": False, "code": code, "message": message})
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)


class Accepted(Exception):
    """Answer 200 {"success": true} without storing anything (the events are counted as dropped)."""


class BadRequest(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def nesting_depth(raw: bytes) -> int:
    """How deeply objects and arrays nest in a JSON value (1 for a flat object)."""
    brackets = _STRINGS.sub(b"", raw).translate(None, _NOT_BRACKETS)
    return max(accumulate(_DEPTH_STEP[b] for b in brackets), default=0)


def _out_of_range(value: Any) -> bool:
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
        elif isinstance(v, int) and not isinstance(v, bool) and not _INT_MIN <= v <= _INT_MAX:
            return True
    return False


def _present(raw: _Raw) -> bool:
    """A raw field was sent, and not as null."""
    return len(raw) > 0 and memoryview(raw)[0] != 0x6E  # "n": null


def _as_field(raw: _Raw, merged: bool = False) -> Any:
    """What spec.check sees of an object field kept raw: a dict when it is an object (or when a
    batch-level object of that name replaces what is not one, as merge_batch_fields does)."""
    if not _present(raw):
        return {} if merged else None
    if merged or memoryview(raw)[0] == 0x7B:  # "{"
        return {}
    return "not an object"


class Ingest:
    def __init__(self, config: Config, spool: Spool, router: Router) -> None:
        self.config = config
        self.spool = spool
        self.router = router
        self.limits = config.limits
        self.keys: dict[str, tuple[str, int]] = {
            key: (src.name, i) for src in config.sources for i, key in enumerate(src.write_keys)
        }
        self.trusted = [ipaddress.ip_network(p, strict=False) for p in config.server.trusted_proxies]
        self._routes: dict[tuple[Any, ...], Route] = {}
        self._last_items: list[bytes] = []  # the last prepared request's items as sent (for TAPS.stored)
        # labelled counters resolved once: .labels() on every request is measurable
        self._received = {s.name: METRICS.events_received.labels(s.name) for s in config.sources}
        self._stored = {s.name: METRICS.events_stored.labels(s.name) for s in config.sources}
        self._prefixes = {s.name: dedup_prefix(s.name) for s in config.sources}
        # tracking plans (only sources with one parse their items); blocked variants of routes
        self.plans = {s.name: plan for s in config.sources if (plan := SourcePlan.from_config(s)) is not None}
        self._blocked: dict[int, tuple[Route, Route]] = {}

    # -- helpers --------------------------------------------------------------------------------

    def is_trusted(self, peer: str | None) -> bool:
        if not peer or not self.trusted:
            return False
        try:
            addr = ipaddress.ip_address(peer)
        except ValueError:
            return False
        return any(addr in net for net in self.trusted)

    def client_ip(self, request: web.Request) -> str | None:
        peer = request.remote
        if self.is_trusted(peer):
            forwarded = request.headers.get("X-Forwarded-For")
            if forwarded:
                # the right-most address not itself a trusted proxy is the client
                for hop in reversed([h.strip() for h in forwarded.split(",") if h.strip()]):
                    if not self.is_trusted(hop):
                        return hop
        return peer

    async def read_body(self, request: web.Request) -> bytes:
        limit = self.limits.max_request_bytes
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise BadRequest(400, "request_too_large", f"request body exceeds {limit} bytes") from None
        encoding = request.headers.get("Content-Encoding", "").strip().lower()
        if encoding in ("", "identity"):
            data = raw
        elif encoding in ("gzip", "x-gzip"):
            decomp = zlib.decompressobj(16 + zlib.MAX_WBITS)
            try:
                data = decomp.decompress(raw, limit + 1)
            except zlib.error:
                raise BadRequest(400, "invalid_gzip", "request body is not valid gzip") from None
            if len(data) > limit or decomp.unconsumed_tail:
                raise BadRequest(400, "request_too_large", f"decompressed body exceeds {limit} bytes")
        else:
            raise BadRequest(400, "unsupported_encoding", f"Content-Encoding {encoding!r} is not supported")
        if len(data) > limit:
            raise BadRequest(400, "request_too_large", f"request body exceeds {limit} bytes")
        return data

    def write_key(self, request: web.Request, body_key: Any, items: list[_Fast | _Fields] | None) -> str:
        key = body_key if isinstance(body_key, str) and body_key else None
        if key is None:
            for item in items or ():
                if isinstance(item.writeKey, str) and item.writeKey:
                    key = item.writeKey
                    break
        auth = request.headers.get("Authorization")
        if key is None and auth:
            scheme, _, value = auth.partition(" ")
            if scheme.lower() == "basic":
                try:
                    decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
                except (binascii.Error, ValueError):
                    raise BadRequest(400, "invalid_authorization",
                                     "Authorization: Basic value is not valid base64") from None
                key = decoded.split(":", 1)[0] or None
        if key is None:
            raise BadRequest(400, "invalid_request", "An invalid write key was provided")
        return key

    def route_index(self, routes: list[Route], cache: dict[int, int], source: str, fields: _Fast | _Fields,
                    batch_integrations: dict[str, Any] | None) -> int:
        """Route one item and return its index in ``routes`` (each distinct route once per request;
        the caller counts skips per route)."""
        integrations: Any = None
        if _present(fields.integrations):
            integrations = orjson.loads(bytes(fields.integrations))
            if batch_integrations and isinstance(integrations, dict):
                integrations = {**batch_integrations, **integrations}
        if batch_integrations and not isinstance(integrations, dict):
            integrations = batch_integrations  # as merge_batch_fields will do at delivery
        dests, skipped = self.router.route(
            source, {"type": fields.type, "event": fields.event, "integrations": integrations})
        key = (tuple(dests), tuple(skipped.items())) if skipped else tuple(dests)
        route = self._routes.get(key)  # type: ignore[arg-type]
        if route is None:
            route = Route(tuple(dests), skipped)
            if len(self._routes) < 4096:
                self._routes[key] = route  # type: ignore[index]
        slot = cache.get(id(route))
        if slot is None:
            slot = cache[id(route)] = len(routes)
            routes.append(route)
        return slot

    def apply_plan(self, plan: SourcePlan, raw: bytes, fields: _Fast | _Fields, routes: list[Route],
                   cache: dict[int, int], slot: int) -> tuple[int, list[dict[str, str]] | None]:
        """The source's tracking plan on one item: (route index, violations to store with it).
        allow: as routed, nothing stored; flag: as routed, with its violations (delivered at
        context.violations); block: routed only to the source's blocked store, every destination
        it would have reached skipped with ``blocked_by_tracking_plan`` (counted)."""
        decision = plan.decide(_plan_view(raw, fields.type))  # type checked: the path's wins over the body's
        if decision.action == "allow":
            return slot, None
        violations = [v.as_dict() for v in decision.violations]
        if decision.action == "flag":
            return slot, violations
        route = routes[slot]
        pair = self._blocked.get(id(route))
        if pair is None or pair[0] is not route:
            skipped = {**route.skipped, **{d: SKIP_BLOCKED for d in route.destinations}}
            pair = (route, Route((blocked_destination(plan.source),), skipped))
            if len(self._blocked) < 4096:
                self._blocked[id(route)] = pair  # holds the route, so its id is not reused meanwhile
        for dest in route.destinations:
            METRICS.skipped.labels(dest, SKIP_BLOCKED).inc()
        blocked = pair[1]
        index = cache.get(id(blocked))
        if index is None:
            index = cache[id(blocked)] = len(routes)
            routes.append(blocked)
        return index, violations

    def fast_valid(self, f: _Fast, call_type: str | None, batch_integrations: bool) -> bool:
        """True when the common event decoded as ``_Fast`` passes every spec check (and its type is
        set); False when only the general path can tell (it may still be valid)."""
        t = f.type if call_type is None else call_type
        if type(t) is not str or t not in _FAST_TYPES:
            return False
        uid, aid = f.userId, f.anonymousId
        if uid is not None and (type(uid) is not str or not uid or uid.isspace()):
            return False
        if aid is not None and (type(aid) is not str or not aid or aid.isspace()):
            return False
        if uid is None and aid is None:
            return False
        if t == "track":
            name = f.event
            if not name or name.isspace():
                return False
        mid = f.messageId
        if mid is not None and (type(mid) is not str or not mid or mid.isspace()
                                or len(mid) > self.limits.max_message_id_length):
            return False
        integrations = f.integrations
        if (integrations and integrations != _EMPTY_OBJECT and integrations != _NULL and not batch_integrations
                and memoryview(integrations)[0] != 0x7B):  # "{"
            return False
        f.type = t
        return True

    def check_item(self, raw: bytes, fields: _Fast | _Fields, call_type: str | None, batch_context: bool,
                   batch_integrations: bool, numbers_suspect: bool = True) -> _Fast | _Fields:
        """The spec checks and limits of one item; raises spec.Invalid with the reason. Returns the
        item's decoded fields with type and messageId as checked. ``numbers_suspect`` False: the
        request's body as a whole has no number that may not survive as sent."""
        limits = self.limits
        if type(fields) is _Fast and self.fast_valid(fields, call_type, batch_integrations):
            self.check_size(raw, numbers_suspect)
            return fields
        if type(fields) is _Fast:
            fields = _decode_fields(raw)  # cannot fail: it decoded as _Fast
        assert isinstance(fields, _Fields)
        view = {
            "type": fields.type, "userId": fields.userId, "anonymousId": fields.anonymousId, "event": fields.event,
            "name": fields.name, "category": fields.category, "groupId": fields.groupId,
            "previousId": fields.previousId, "messageId": fields.messageId, "timestamp": fields.timestamp,
            "originalTimestamp": fields.originalTimestamp, "sentAt": fields.sentAt,
            "properties": _as_field(fields.properties), "traits": _as_field(fields.traits),
            "context": _as_field(fields.context, batch_context),
            "integrations": _as_field(fields.integrations, batch_integrations),
        }
        checked = spec.check(view, call_type, limits.max_message_id_length)
        fields.type = checked["type"]
        fields.messageId = checked.get("messageId")
        self.check_size(raw, numbers_suspect)
        return fields

    def check_size(self, raw: bytes, numbers_suspect: bool) -> None:
        """The limits on one item's bytes: size, nesting, numbers that would not survive as sent."""
        limits = self.limits
        if len(raw) > limits.max_event_bytes:
            raise spec.Invalid("event_too_large", f"event exceeds {limits.max_event_bytes} bytes")
        depth_limit = limits.max_nesting_depth
        if raw.count(b"{") + raw.count(b"[") > depth_limit and nesting_depth(raw) > depth_limit:
            raise spec.Invalid("too_deeply_nested", f"objects and arrays nest deeper than {depth_limit} levels")
        if numbers_suspect and _suspect_number(raw):
            try:
                value = _decode_any(raw)
            except (msgspec.DecodeError, RecursionError):
                raise spec.Invalid("number_out_of_range", "a number is out of range (not a finite double)") from None
            if _out_of_range(value):
                raise spec.Invalid("number_out_of_range",
                                   "an integer is outside the 64-bit range; send it as a string to keep every digit")

    # -- handlers -------------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.Response:
        segment = request.match_info["call"]
        if segment == "m":  # analytics-next telemetry: accepted and ignored
            return web.Response(body=_SUCCESS_BODY, content_type="application/json")
        if segment not in spec.PATHS:
            return error(404, "not_found", f"unknown endpoint /v1/{segment}")
        call_type = spec.PATHS[segment]
        try:
            return await self._handle(request, segment, call_type)
        except Accepted:
            return web.Response(body=_SUCCESS_BODY, content_type="application/json")
        except BadRequest as exc:
            METRICS.requests_rejected.labels(exc.code).inc()
            log.info("request_rejected", code=exc.code, reason=exc.message, path=request.path)
            if TAPS.refused:
                TAPS.emit(TAPS.refused, exc.status, exc.code, exc.message, None)
            return error(exc.status, exc.code, exc.message, exc.headers)

    async def _handle(self, request: web.Request, segment: str, call_type: str | None) -> web.Response:
        data = await self.read_body(request)
        prepared = self.prepare(request, data, segment, call_type)
        # only the console's live view needs every item as sent (rejected ones too)
        raw_items = self._last_items if TAPS.stored else ()
        del data
        try:
            result = await self.spool.append(prepared)
        except SpoolFull:
            raise BadRequest(429, "spool_full", "the spool is full; retry later",
                             {"Retry-After": "30", "X-RateLimit-Reset": "30"}) from None
        except (SpoolUnavailable, OSError) as exc:  # ours, not the client's: 503, SDKs retry
            log.error("spool_append_failed", error=repr(exc))
            raise BadRequest(503, "storage_unavailable", "could not store the events; retry later",
                             {"Retry-After": "5"}) from None
        if TAPS.stored:
            TAPS.emit(TAPS.stored, prepared, result, raw_items)
        self._stored[prepared.source].inc(result.stored)
        if result.duplicates:
            METRICS.duplicates.labels(prepared.source).inc(result.duplicates)
        if prepared.rejected:
            return web.Response(body=_SUCCESS_BODY, content_type="application/json",
                                headers={"X-Trackrelay-Rejected": str(len(prepared.rejected))})
        return web.Response(body=_SUCCESS_BODY, content_type="application/json")

    def prepare(self, request: web.Request, data: bytes, segment: str, call_type: str | None) -> Append:
        """Decode, check and route a request body into what the spool stores (an Append with the
        accepted items' raw JSON); raises BadRequest for a request refused as a whole."""
        if not data.isascii():
            try:
                data.decode("utf-8")  # what is kept raw is not decoded below: check the whole body once
            except UnicodeDecodeError:
                raise BadRequest(400, "invalid_json", "request body is not valid UTF-8") from None
        try:
            if call_type is None:
                batch = _decode_batch(data)
            else:
                single = _decode_single(data)
        except msgspec.ValidationError:
            raise BadRequest(400, "invalid_json", "request body must be a JSON object") from None
        except (msgspec.DecodeError, RecursionError):
            raise BadRequest(400, "invalid_json", "request body is not valid JSON") from None

        if call_type is None:
            if not _present(batch.batch):
                raise BadRequest(400, "invalid_batch", "batch must be an array of events")
            try:
                raws = _decode_items(batch.batch)
            except (msgspec.DecodeError, msgspec.ValidationError):
                raise BadRequest(400, "invalid_batch", "batch must be an array of events") from None
            if len(raws) > self.limits.max_batch_events:
                raise BadRequest(400, "batch_too_large",
                                 f"batch has {len(raws)} events; at most {self.limits.max_batch_events}")
            items_raw = [bytes(r) for r in raws]
            parsed = [_decode_item(raw) for raw in items_raw]
            key = self.write_key(request, batch.writeKey, [p for p in parsed if p is not None])
        else:
            parsed, items_raw = [single], [data]
            key = self.write_key(request, single.writeKey, None)

        known = self.keys.get(key)
        if known is None:
            if self.config.server.unknown_write_key == "accept_and_drop":  # as Segment's own API does
                METRICS.events_dropped.labels("unknown_write_key").inc(len(items_raw))
                log.info("events_dropped", reason="unknown_write_key", events=len(items_raw), path=request.path)
                raise Accepted()
            # 400: the one status every Segment SDK drops without retrying (analytics-swift retries a 401 forever)
            METRICS.events_refused.labels("unknown_write_key").inc(len(items_raw))
            raise BadRequest(400, "invalid_write_key", "unknown write key")
        source, key_index = known
        refusal = self.spool.refusal()
        if refusal is not None:
            METRICS.requests_rejected.labels(refusal.code).inc()
            headers = {"Retry-After": str(refusal.retry_after)}
            if refusal.status == 429:
                headers["X-RateLimit-Reset"] = str(refusal.retry_after)
            raise BadRequest(refusal.status, refusal.code, refusal.message, headers)

        context_raw = integrations_raw = None
        batch_integrations: dict[str, Any] | None = None
        sent_at = None
        if call_type is None:
            if _present(batch.context) and memoryview(batch.context)[0] == 0x7B and bytes(batch.context) != b"{}":
                context_raw = bytes(batch.context)
            if _present(batch.integrations) and memoryview(batch.integrations)[0] == 0x7B:
                integrations_raw = bytes(batch.integrations)
                batch_integrations = orjson.loads(integrations_raw) or None
                if not batch_integrations:
                    integrations_raw = None
            sent_at = batch.sentAt if isinstance(batch.sentAt, str) else None

        items: list[Item] = []
        rejected: list[tuple[int, str]] = []
        messages: list[str] = []
        routes: list[Route] = []
        route_cache: dict[int, int] = {}
        memo: dict[tuple[Any, ...], int] = {}  # (type, event, integrations) -> route index
        skips: dict[int, int] = {}  # route index -> items routed there that skip a destination
        numbers_suspect = _suspect_number(data)  # per body: a C-speed scan, then per item only if it hit
        has_context, has_integrations = context_raw is not None, integrations_raw is not None
        plan = self.plans.get(source) if self.plans else None
        prefix = self._prefixes[source]
        for index, (fields, raw) in enumerate(zip(parsed, items_raw, strict=True)):
            try:
                if fields is None:
                    raise spec.Invalid("not_an_object", "each event must be a JSON object")
                fields = self.check_item(raw, fields, call_type, has_context, has_integrations, numbers_suspect)
            except spec.Invalid as exc:
                rejected.append((index, exc.reason))
                messages.append(exc.message)
                METRICS.events_rejected.labels(source, exc.reason).inc()
                if call_type is not None:
                    raise BadRequest(400, exc.reason, exc.message) from None
                mid = fields.messageId if fields is not None else None
                log.warning("event_rejected", source=source, index=index, reason=exc.reason, detail=exc.message,
                            message_id=mid if isinstance(mid, str) else None)
                continue
            generated = None
            mid = cast("str | None", fields.messageId)  # checked: a non-blank string, or None
            if not mid:
                mid = generated = f"api-{uuid.uuid4()}"
            integrations = fields.integrations
            route_key = (fields.type, fields.event,
                         None if not integrations or integrations == _EMPTY_OBJECT or integrations == _NULL
                         else bytes(integrations))
            slot = memo.get(route_key)  # type: ignore[arg-type]
            if slot is None:
                slot = memo[route_key] = self.route_index(routes, route_cache, source, fields, batch_integrations)
            if routes[slot].skipped:
                skips[slot] = skips.get(slot, 0) + 1
            if plan is None:
                items.append(Item(raw, dedup_key(prefix + mid.encode()), slot, index, generated))
            else:
                slot, violations = self.apply_plan(plan, raw, fields, routes, route_cache, slot)
                items.append(Item(raw, dedup_key(prefix + mid.encode()), slot, index, generated, violations))

        for slot, count in skips.items():
            for dest, reason in routes[slot].skipped.items():
                METRICS.skipped.labels(dest, reason).inc(count)
        self._received[source].inc(len(items) + len(rejected))
        self._last_items = items_raw
        if not items:
            if not rejected:
                raise BadRequest(400, "empty_batch", "batch has no events")
            (index, reason), message = rejected[0], messages[0]
            raise BadRequest(400, reason, f"no valid event in batch; first error (item {index}): {message}")
        return Append(
            source, key_index, time.time(), items, routes, client_ip=self.client_ip(request),
            short_path=segment in spec.SHORT_PATHS, call_type=call_type, sent_at=sent_at, context=context_raw,
            integrations=integrations_raw, rejected=rejected,
        )

