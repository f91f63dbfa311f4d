"""Tracking API handlers: auth, decode, limits, parse, check, enrich, route, spool, answer.

Answers follow what Segment's clients need (shared/reference/segment-api.md §4): success is exactly
``200 {"success": true}``; errors are JSON ``{"success": false, "code", "message"}`` so every SDK
version stops retrying (400), or retries later (429 with Retry-After).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import zlib
from typing import Any

import orjson
import structlog
from aiohttp import web

from proxy import spec
from proxy.config import Config
from proxy.enrich import batch_sent_at, enrich, merge_batch_fields, received_now
from proxy.metrics import METRICS
from proxy.routing import Router
from proxy.spool.sqlite import IngestItem, Spool, dedup_hash

log = structlog.get_logger("trackrelay.ingest")

_SUCCESS_BODY = b'{"success":true}'


def error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    body = orjson.dumps({"success": False, "code": code, "message": message})
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)


class BadRequest(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


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
        self._headers: dict[tuple[tuple[str, ...], tuple[tuple[str, str], ...]], bytes] = {}
        # labelled counters resolved once: .labels() on every request is measurable
        self._received = {s.name: METRICS.events_received.labels(s.name) for s in config.sources}
        self._stored = {s.name: METRICS.events_stored.labels(s.name) for s in config.sources}

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

    def write_key(self, request: web.Request, body: dict[str, Any], items: list[Any] | None) -> str:
        key = body.get("writeKey")
        if not isinstance(key, str) or not key:
            key = None
            for item in items or ():
                if isinstance(item, dict) and isinstance(item.get("writeKey"), str) and item["writeKey"]:
                    key = item["writeKey"]
                    break
        auth = request.headers.get("Authorization")
        if key is None and auth:
            scheme, _, value = auth.partition(" ")
            if scheme.lower() == "basic":
                try:
                    decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
                except (binascii.Error, ValueError):
                    raise BadRequest(400, "invalid_authorization", "Authorization: Basic value is not valid base64") from None
                key = decoded.split(":", 1)[0] or None
        if key is None:
            raise BadRequest(400, "invalid_request", "An invalid write key was provided")
        return key

    def header(self, dests: list[str], skipped: dict[str, str]) -> bytes:
        """The routing header stored with an event (cached: few distinct routes exist)."""
        # a tuple of names, or a pair of tuples when something was skipped: the two shapes never compare equal
        cache_key: tuple = (tuple(dests), tuple(sorted(skipped.items()))) if skipped else tuple(dests)
        head = self._headers.get(cache_key)
        if head is None:
            meta: dict[str, Any] = {"d": dests}
            if skipped:
                meta["x"] = skipped
            head = orjson.dumps(meta)
            if len(self._headers) < 4096:
                self._headers[cache_key] = head
        return head

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
        except BadRequest as exc:
            METRICS.requests_rejected.labels(exc.code).inc()
            log.info("request_rejected", code=exc.code, reason=exc.message, path=request.path)
            return error(exc.status, exc.code, exc.message)

    async def _handle(self, request: web.Request, segment: str, call_type: str | None) -> web.Response:
        data = await self.read_body(request)
        prepared = self.prepare(request, data, segment, call_type)
        # Only bytes are kept across the commit wait: the parsed request is garbage by now, so the
        # next request's parse reuses warm memory and the collector has little to walk.
        del data
        if isinstance(prepared, web.Response):
            return prepared
        source, key_index, received_ts, spool_items, rejected_count = prepared
        try:
            result = await self.spool.append(source, key_index, received_ts, spool_items)
        except Exception as exc:  # a storage failure is ours, not the client's: 503, SDKs retry
            log.error("spool_append_failed", error=repr(exc))
            return error(503, "storage_unavailable", "could not store the events; retry later",
                         headers={"Retry-After": "5"})
        self._stored[source].inc(result.stored)
        if result.duplicates:
            METRICS.duplicates.labels(source).inc(result.duplicates)
        if rejected_count:
            return web.Response(body=_SUCCESS_BODY, content_type="application/json",
                                headers={"X-Trackrelay-Rejected": str(rejected_count)})
        return web.Response(body=_SUCCESS_BODY, content_type="application/json")

    def prepare(self, request: web.Request, data: bytes, segment: str, call_type: str | None
                ) -> web.Response | tuple[str, int, float, list[IngestItem], int]:
        """Parse, check, enrich and route a request body: (source, key index, receivedAt, the
        encoded items to store, how many items were rejected), or an error response to send."""
        try:
            body = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise BadRequest(400, "invalid_json", "request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise BadRequest(400, "invalid_json", "request body must be a JSON object")

        if call_type is None:
            items = body.get("batch")
            if not isinstance(items, list):
                raise BadRequest(400, "invalid_batch", "batch must be an array of events")
            if len(items) > self.limits.max_batch_events:
                raise BadRequest(400, "batch_too_large",
                                 f"batch has {len(items)} events; at most {self.limits.max_batch_events}")
        else:
            items = None

        key = self.write_key(request, body, items)
        known = self.keys.get(key)
        if known is None:
            raise BadRequest(401, "invalid_write_key", "unknown write key")
        source, key_index = known
        if self.spool.full:
            METRICS.requests_rejected.labels("spool_full").inc()
            return error(429, "spool_full", "the spool is full; retry later",
                         headers={"Retry-After": "30", "X-RateLimit-Reset": "30"})

        received_ts, received_iso = received_now()
        client_ip = self.client_ip(request)
        short = segment in spec.SHORT_PATHS
        max_event = self.limits.max_event_bytes
        max_mid = self.limits.max_message_id_length

        if items is None:
            body.pop("writeKey", None)
            try:
                event = spec.check(body, call_type, max_mid)
            except spec.Invalid as exc:
                METRICS.events_rejected.labels(source, exc.reason).inc()
                raise BadRequest(400, exc.reason, exc.message) from None
            if len(data) > max_event:
                METRICS.events_rejected.labels(source, "event_too_large").inc()
                raise BadRequest(400, "event_too_large", f"event exceeds {max_event} bytes")
            events = [enrich(event, received_ts, received_iso, None, client_ip, short)]
            rejected: list[tuple[int, str, str]] = []
        else:
            events = []
            rejected = []
            batch_sent = batch_sent_at(body)
            has_batch_fields = isinstance(body.get("context"), dict) or isinstance(body.get("integrations"), dict)
            for index, item in enumerate(items):
                try:
                    if isinstance(item, dict) and has_batch_fields:
                        merge_batch_fields(item, body)
                    event = spec.check(item, None, max_mid)
                    if len(data) > max_event and len(orjson.dumps(event)) > max_event:
                        raise spec.Invalid("event_too_large", f"event exceeds {max_event} bytes")
                except spec.Invalid as exc:
                    rejected.append((index, exc.reason, exc.message))
                    continue
                events.append(enrich(event, received_ts, received_iso, batch_sent, client_ip, short))
            for index, reason, message in rejected:
                METRICS.events_rejected.labels(source, reason).inc()
                item = items[index]
                mid = item.get("messageId") if isinstance(item, dict) else None
                log.warning("event_rejected", source=source, index=index, reason=reason, detail=message,
                            message_id=mid if isinstance(mid, str) else None)
            if not events:
                first = rejected[0] if rejected else (0, "empty_batch", "batch has no events")
                raise BadRequest(400, first[1], f"no valid event in batch; first error (item {first[0]}): {first[2]}")

        self._received[source].inc(len(events) + len(rejected))
        spool_items = []
        for event in events:
            dests, skipped = self.router.route(source, event)
            for dest, reason in skipped.items():
                METRICS.skipped.labels(dest, reason).inc()
            spool_items.append(IngestItem(dedup_hash(source, event["messageId"]), self.header(dests, skipped),
                                          orjson.dumps(event)))
        return source, key_index, received_ts, spool_items, len(rejected)
