"""Server-side enrichment, as Segment's Tracking API does it (segment-docs connections/spec/common.md):

- batch-level ``context`` and ``integrations`` merged into each item (the item's own keys win);
- ``receivedAt``: one server time per request;
- ``messageId`` when the client sent none;
- ``originalTimestamp`` kept and ``timestamp = receivedAt - (sentAt - originalTimestamp)``, with an
  item's own ``sentAt`` winning over the batch's; without sentAt the client timestamp is kept;
- ``context.ip`` from the peer for client-side traffic (browser and mobile libraries, on any path) and
  ``context.direct`` traffic, never overwriting one the client sent; server libraries get none (their peer
  is a server, not the user);
- ``channel`` when absent: ``mobile`` for the mobile libraries whatever the path (analytics-kotlin and
  analytics-swift post to ``/v1/b``), ``browser`` for analytics.js and the browser-only short paths,
  ``server`` otherwise; ``version`` when absent; the write key is removed (the source name is kept).
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Any

import msgspec
import orjson

from proxy import spec

# context.library.name as the mobile SDKs set it (read from their sources): analytics-kotlin
# (core/.../plugins/ContextPlugin.kt), analytics-swift (Sources/Segment/Plugins/Context.swift),
# analytics-react-native (packages/core/src/context.ts), analytics_flutter ("analytics-flutter",
# packages/core/lib/plugins/inject_context.dart), and the legacy analytics-android / analytics-ios.
_MOBILE_LIBRARIES = ("analytics-ios", "analytics-android", "analytics-swift", "analytics-kotlin",
                     "analytics-react-native", "analytics-flutter", "analytics-xamarin")
# analytics.js classic and analytics-next both report "analytics.js"
_BROWSER_LIBRARIES = ("analytics.js",)


_PREFIXES: dict[int, str] = {}


def iso_epoch(ts: float) -> str:
    """Epoch seconds -> '2026-11-22T20:05:51.829Z'. The 'YYYY-MM-DDTHH:MM:SS' part is cached per
    second: almost every timestamp formatted on the hot path is within the last few seconds."""
    total_ms = round(ts * 1000)
    second, ms = divmod(total_ms, 1000)
    prefix = _PREFIXES.get(second)
    if prefix is None:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        if len(_PREFIXES) > 256:
            _PREFIXES.clear()
        _PREFIXES[second] = prefix
    return f"{prefix}.{ms:03d}Z"


def iso(dt: datetime) -> str:
    """UTC datetime -> '2026-11-22T20:05:51.829Z'."""
    return iso_epoch(dt.timestamp())


def parse_ts(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


def merge_batch_fields(item: dict[str, Any], batch: dict[str, Any]) -> None:
    for field in ("context", "integrations"):
        outer = batch.get(field)
        if isinstance(outer, dict) and outer:
            inner = item.get(field)
            item[field] = {**outer, **inner} if isinstance(inner, dict) else dict(outer)


def library_name(item: dict[str, Any]) -> str:
    ctx = item.get("context")
    lib = ctx.get("library") if isinstance(ctx, dict) else None
    # analytics-ios 1.x sent the library as a bare string ("library": "analytics-ios")
    name = lib.get("name") if isinstance(lib, dict) else lib
    return name if isinstance(name, str) else ""


def batch_sent_at(batch: dict[str, Any]) -> tuple[str, datetime] | None:
    """A batch's own ``sentAt``, raw and parsed (once per request, not per item), or None if absent or
    not a time."""
    raw = batch.get("sentAt")
    if not isinstance(raw, str):
        return None
    parsed = parse_ts(raw)
    return (raw, parsed) if parsed is not None else None


def enrich(item: dict[str, Any], received: float, received_iso: str, batch_sent: tuple[str, datetime] | None,
           client_ip: str | None, short_path: bool) -> dict[str, Any]:
    """Enrich one item in place; ``batch_sent`` is the batch's ``sentAt`` from :func:`batch_sent_at`."""
    item.pop("writeKey", None)
    item["receivedAt"] = received_iso
    if not item.get("messageId"):
        item["messageId"] = f"api-{uuid.uuid4()}"

    original_raw = item.get("timestamp")
    original = parse_ts(original_raw)
    if original is None:
        item["timestamp"] = received_iso
    else:
        item.setdefault("originalTimestamp", original_raw)
        sent_raw = item.get("sentAt")
        if sent_raw:
            sent = parse_ts(sent_raw)
        elif batch_sent is not None:
            sent_raw, sent = batch_sent
        else:
            sent = None
        try:
            timestamp = original.timestamp()
            if sent is not None:
                timestamp = received - (sent.timestamp() - timestamp)
            item["timestamp"] = iso_epoch(timestamp)
        except (OverflowError, ValueError, OSError):  # absurd client clocks: the server's time
            item["timestamp"] = received_iso
        if sent is not None and "sentAt" not in item and isinstance(sent_raw, str):
            item["sentAt"] = sent_raw

    ctx = item.get("context")
    if not isinstance(ctx, dict):
        ctx = item["context"] = {}
    lib = library_name(item)
    mobile = lib.startswith(_MOBILE_LIBRARIES)
    browser = not mobile and (short_path or lib.startswith(_BROWSER_LIBRARIES))
    if client_ip and "ip" not in ctx and (mobile or browser or ctx.get("direct") is True):
        ctx["ip"] = client_ip
    if "channel" not in item:
        item["channel"] = "mobile" if mobile else "browser" if browser else "server"
    item.setdefault("version", 2)
    return item


def received_now() -> tuple[float, str]:
    now = time.time()
    return now, iso_epoch(now)





# Delivery reads a stored item as a *shallow view*: its top-level members and its context's members
# as raw JSON (msgspec.Raw), with only the members the rules read by value decoded. The rules (merge,
# spec.normalize, enrich) run unchanged on that view, and the encoder writes the untouched members'
# bytes back as they were: no event is parsed into a tree and encoded again (issue 10).
_SHALLOW = msgspec.json.Decoder(dict[str, msgspec.Raw])
_ENCODE = msgspec.json.Encoder().encode
_RAW = msgspec.Raw
_decode = msgspec.json.decode
# what spec.normalize and enrich read by value at the top level, and in context
_READ_TOP = ("type", "userId", "anonymousId", "previousId", "groupId", "messageId", "timestamp", "sentAt")
_READ_CONTEXT = ("library", "direct")


def _shallow_object(raw: msgspec.Raw) -> Any:
    """A raw JSON object as a dict of raw members; any other JSON value decoded (the rules replace a
    context that is not an object, as they do on a parsed event)."""
    try:
        return _SHALLOW.decode(raw)
    except msgspec.ValidationError:
        return _decode(raw)


def _shallow_context(value: Any) -> Any:
    ctx = _shallow_object(value) if type(value) is _RAW else value
    if isinstance(ctx, dict):
        for name in _READ_CONTEXT:
            member = ctx.get(name)
            if type(member) is _RAW:
                ctx[name] = _decode(member)
    return ctx


class Enrichment:
    """What delivery applies to each stored item of one request, from the facts ingest recorded:
    the batch's ``context`` and ``integrations`` merged in, the checks' normalisation (type from the
    path, ids as strings), the messageId ingest generated, then :func:`enrich`. The same for every
    reader (proxy/spool/records.py when a destination reads, the console's trace), so an event looks
    the same wherever it is shown: :meth:`apply` on a parsed event, :meth:`apply_json` from its JSON
    to the enriched JSON (the same rules, on a shallow view)."""

    __slots__ = ("received_at", "received_iso", "client_ip", "short_path", "call_type", "sent", "_context",
                 "_integrations", "_batch", "_shallow")

    def __init__(self, received_at: float, client_ip: str | None, short_path: bool, call_type: str | None,
                 sent_at: str | None, context: bytes | None, integrations: bytes | None) -> None:
        self.received_at = received_at
        self.received_iso = iso_epoch(received_at)
        self.client_ip = client_ip
        self.short_path = short_path
        self.call_type = call_type
        self.sent = batch_sent_at({"sentAt": sent_at}) if sent_at else None
        self._context = context
        self._integrations = integrations
        self._batch: dict[str, Any] | None = None     # the batch's fields parsed, for apply
        self._shallow: dict[str, Any] | None = None   # and as shallow views, for apply_json

    def _batch_fields(self) -> dict[str, Any]:
        if self._batch is None:
            self._batch = {}
            if self._context:
                self._batch["context"] = orjson.loads(self._context)
            if self._integrations:
                self._batch["integrations"] = orjson.loads(self._integrations)
        return self._batch

    def _shallow_batch(self) -> dict[str, Any]:
        if self._shallow is None:
            self._shallow = {}
            if self._context:
                self._shallow["context"] = _shallow_context(_RAW(self._context))
            if self._integrations:
                self._shallow["integrations"] = _shallow_object(_RAW(self._integrations))
        return self._shallow

    def apply(self, event: dict[str, Any], message_id: str | None = None) -> dict[str, Any]:
        """Enrich one stored item (its JSON parsed) in place and return it."""
        return self._rules(event, message_id, self._batch_fields() if self._context or self._integrations else None)

    def apply_json(self, raw: bytes, message_id: str | None = None, violations: bytes | None = None) -> bytes:
        """The enriched JSON of one stored item from its JSON ``raw`` (a JSON object: ingest checked
        it), with ``violations`` (a JSON list) at ``context.violations`` when given. Equal, parsed, to
        :meth:`apply` on the parsed item; members the rules do not change keep their bytes."""
        event: dict[str, Any] = _SHALLOW.decode(raw)
        for name in _READ_TOP:
            value = event.get(name)
            if type(value) is _RAW:
                event[name] = _decode(value)
        ctx = event.get("context")
        if ctx is not None:
            event["context"] = _shallow_context(ctx)
        batch = None
        if self._context or self._integrations:
            batch = self._shallow_batch()
            if "integrations" in batch and type(event.get("integrations")) is _RAW:
                event["integrations"] = _shallow_object(event["integrations"])
        self._rules(event, message_id, batch)
        if violations is not None:
            event["context"]["violations"] = _RAW(violations)  # enrich made context an object
        return _ENCODE(event)

    def _rules(self, event: dict[str, Any], message_id: str | None, batch: dict[str, Any] | None) -> dict[str, Any]:
        if batch:
            merge_batch_fields(event, batch)
        spec.normalize(event, self.call_type)  # what spec.check changes; ingest checked the item
        if message_id is not None:
            event["messageId"] = message_id
        return enrich(event, self.received_at, self.received_iso, self.sent, self.client_ip, self.short_path)
