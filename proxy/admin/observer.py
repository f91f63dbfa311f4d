"""What the console remembers, fed by the in-process taps (proxy/observe.py):

- :class:`Traces`: a bounded index of recent events by messageId (``admin.trace_events`` entries,
  none older than ``admin.trace_age``): the item as received plus the few facts of its request that
  enrichment needs, its routes, and its delivery attempts (masked when recorded, the latest
  ``admin.trace_attempts``) and outcomes. The enriched form is computed when a trace is asked for,
  with the same pure functions delivery applies (proxy.enrich), so ingest pays no parse for it.
- :class:`Figures`: per-minute counters for the last hour (per source: accepted, rejected,
  duplicates; per destination: delivered, skipped, retried, dead, errors, latency samples for
  p50/p99) plus backlog samples taken from the spool's stats.
- :class:`Live`: the live view's watchers. Its listeners are registered only while someone
  watches; each watcher has a bounded queue and what does not fit is dropped and counted.

Memory: a trace entry costs about its raw JSON plus ~0.6 KB (the shared request facts, its routes,
the bookkeeping); each recorded attempt is shared by the events it carried and holds the masked
request (body cut at 16 KB) and response excerpt (2 KB). 5,000 traces of 1 KB events with one
attempt each: ~10 MB. Figures: 60 buckets of a few counters per source/destination, negligible.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
import orjson
import structlog

from proxy.admin.mask import Masker
from proxy.admin.tester import render_request
from proxy.enrich import Enrichment
from proxy.observe import TAPS

log = structlog.get_logger("trackrelay.admin")

BODY_LIMIT = 16 * 1024


class _Ids(msgspec.Struct):
    messageId: Any = None
    type: Any = None
    event: Any = None
    userId: Any = None
    anonymousId: Any = None


_ids = msgspec.json.Decoder(_Ids)


def _ids_of(raw: bytes) -> _Ids:
    try:
        return _ids.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return _Ids()


def _s(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


@dataclass(slots=True)
class _Request:
    """The facts of one ingest request enrichment needs (shared by its items' traces)."""

    source: str
    received_at: float
    client_ip: str | None
    short_path: bool
    call_type: str | None
    sent_at: str | None
    context: bytes | None
    integrations: bytes | None
    enriched: bool


@dataclass(slots=True)
class Trace:
    message_id: str
    request: _Request
    raw: bytes
    generated_id: str | None
    destinations: tuple[str, ...]
    skipped: dict[str, str]
    attempts: deque = field(default_factory=deque)
    outcomes: dict[str, dict[str, Any]] = field(default_factory=dict)

    def enriched(self) -> dict[str, Any]:
        """The event as delivery reads it: what proxy.spool.records materialize does, from the same facts."""
        event = orjson.loads(self.raw)
        r = self.request
        if r.enriched:
            return event
        enrichment = Enrichment(r.received_at, r.client_ip, r.short_path, r.call_type, r.sent_at, r.context,
                                r.integrations)
        return enrichment.apply(event, self.generated_id)


class Traces:
    def __init__(self, masker: Masker, max_events: int, max_age: float, max_attempts: int) -> None:
        self.masker = masker
        self.max_events = max_events
        self.max_age = max_age
        self.max_attempts = max_attempts
        self.index: OrderedDict[str, Trace] = OrderedDict()
        self.evicted = 0

    def _trim(self, now: float) -> None:
        index = self.index
        while index and (len(index) > self.max_events
                         or next(iter(index.values())).request.received_at < now - self.max_age):
            index.popitem(last=False)
            self.evicted += 1

    def stored(self, append: Any, result: Any, raw_items: Sequence[bytes]) -> None:
        if not self.max_events:
            return
        req = _Request(append.source, append.received_at, append.client_ip, append.short_path, append.call_type,
                       append.sent_at, append.context, append.integrations, append.enriched)
        index = self.index
        for item in append.items:
            mid = item.message_id or _s(_ids_of(item.raw).messageId)
            if not mid or mid in index:  # a duplicate keeps the first trace
                continue
            route = append.routes[item.route]
            index[mid] = Trace(mid, req, item.raw, item.message_id, route.destinations, dict(route.skipped),
                               deque(maxlen=self.max_attempts))
        self._trim(append.received_at)

    def attempted(self, destination: str, request: Any, response: Any, error: str | None, outcome: Any,
                  mids: Sequence[str | None], attempt: int, at: float) -> None:
        traces = [self.index[m] for m in mids if m is not None and m in self.index]
        if not traces:
            return
        masker = self.masker
        shown = render_request(request, masker) if len(request.body or b"") <= BODY_LIMIT else {
            "method": request.method, "url": masker.url(request.url), "headers": masker.headers(request.headers),
            "body": masker.body(request.body, BODY_LIMIT)}
        record = {
            "destination": destination, "at": at, "attempt": attempt, "request": shown,
            "messages_in_request": len(mids),
            "response": None if response is None else {
                "status": response.status, "body": masker.text(response.body[:2000].decode("utf-8", "replace"))},
            "error": masker.text(error),
            "verdict": outcome.verdict.value, "reason": masker.text(outcome.reason[:1000]),
        }
        for t in traces:
            per = outcome.for_message(mids.index(t.message_id)) if outcome.per_message else None
            t.attempts.append(record if per is None else {**record, "verdict": per.verdict.value,
                                                          "reason": masker.text(per.reason[:1000])})

    def settled(self, destination: str, settlements: Sequence[Any]) -> None:
        now = time.time()
        for s in settlements:
            mid = s.work.message_id
            trace = self.index.get(mid) if mid else None
            if trace is None:
                continue
            trace.outcomes[destination] = {
                "disposition": s.disposition.value, "at": now, "reason": self.masker.text(s.reason),
                "status": s.status, "retry_at": s.retry_at, "attempts": s.attempts,
            }

    def get(self, message_id: str) -> dict[str, Any] | None:
        t = self.index.get(message_id)
        if t is None:
            return None
        try:
            event: Any = self.masker.json(t.enriched())
        except Exception as exc:  # never a 500 over one odd item
            event = {"error": f"could not rebuild the event: {type(exc).__name__}"}
        routes = [{"destination": d, "decision": "routed", "outcome": t.outcomes.get(d, {"disposition": "pending"})}
                  for d in t.destinations]
        routes += [{"destination": d, "decision": "skipped", "reason": r} for d, r in t.skipped.items()]
        return {"messageId": t.message_id, "source": t.request.source, "receivedAt": t.request.received_at,
                "event": event, "routes": routes, "attempts": list(t.attempts)}

    def recent(self, limit: int = 50) -> list[str]:
        return list(reversed(list(self.index.keys())[-limit:]))


MINUTES = 60


def _bucket() -> dict[str, Any]:
    return {"sources": {}, "destinations": {}, "refused": 0}


class Figures:
    """Per-minute counters for the last hour, keyed by the minute (epoch // 60)."""

    def __init__(self) -> None:
        self.minutes: OrderedDict[int, dict[str, Any]] = OrderedDict()

    def _now_bucket(self, now: float | None = None) -> dict[str, Any]:
        minute = int((time.time() if now is None else now) // 60)
        b = self.minutes.get(minute)
        if b is None:
            b = self.minutes[minute] = _bucket()
            while len(self.minutes) > MINUTES:
                self.minutes.popitem(last=False)
        return b

    def _src(self, name: str) -> dict[str, int]:
        return self._now_bucket()["sources"].setdefault(name, {"accepted": 0, "rejected": 0, "duplicates": 0})

    def _dest(self, name: str) -> dict[str, Any]:
        return self._now_bucket()["destinations"].setdefault(name, {
            "delivered": 0, "skipped": 0, "retried": 0, "dead": 0, "errors": 0, "latency": [],
            "backlog": None, "oldest_undelivered": None})

    def stored(self, append: Any, result: Any, raw_items: Sequence[bytes]) -> None:
        s = self._src(append.source)
        s["accepted"] += result.stored
        s["duplicates"] += result.duplicates
        s["rejected"] += len(append.rejected)

    def refused(self, status: int, code: str, message: str, source: str | None) -> None:
        if source is None:
            self._now_bucket()["refused"] += 1
        else:
            self._src(source)["rejected"] += 1

    def attempted(self, destination: str, request: Any, response: Any, error: str | None, outcome: Any,
                  mids: Sequence[str | None], attempt: int, at: float) -> None:
        if outcome.verdict.value != "ok":
            self._dest(destination)["errors"] += 1

    def settled(self, destination: str, settlements: Sequence[Any]) -> None:
        d = self._dest(destination)
        now = time.time()
        lat = d["latency"]
        for s in settlements:
            disp = s.disposition.value
            key = {"delivered": "delivered", "skipped": "skipped", "retry": "retried", "dead": "dead"}[disp]
            d[key] += 1
            if disp == "delivered" and s.work.received_at and len(lat) < 2000:
                lat.append(max(0.0, now - s.work.received_at))

    def sample(self, stats: Any) -> None:
        for name, ds in stats.destinations.items():
            d = self._dest(name)
            d["backlog"] = ds.backlog
            d["oldest_undelivered"] = ds.oldest_undelivered

    def series(self) -> dict[str, Any]:
        """Per minute of the last hour (oldest first): per source and destination figures, latency p50/p99."""
        now_minute = int(time.time() // 60)
        minutes = list(range(now_minute - MINUTES + 1, now_minute + 1))
        sources: set[str] = set()
        dests: set[str] = set()
        for b in self.minutes.values():
            sources |= set(b["sources"])
            dests |= set(b["destinations"])
        out_src: dict[str, dict[str, list[int]]] = {
            s: {k: [] for k in ("accepted", "rejected", "duplicates")} for s in sorted(sources)}
        out_dst: dict[str, dict[str, list[float | None]]] = {
            d: {k: [] for k in ("delivered", "skipped", "retried", "dead", "errors", "p50", "p99", "backlog",
                                "oldest_undelivered")} for d in sorted(dests)}
        refused = []
        for m in minutes:
            b = self.minutes.get(m) or _bucket()
            refused.append(b["refused"])
            for s, counts in out_src.items():
                v = b["sources"].get(s, {})
                for k in counts:
                    counts[k].append(v.get(k, 0))
            for d, figures in out_dst.items():
                v = b["destinations"].get(d, {})
                lat = sorted(v.get("latency") or ())
                for k in ("delivered", "skipped", "retried", "dead", "errors"):
                    figures[k].append(v.get(k, 0))
                figures["p50"].append(round(lat[len(lat) // 2], 4) if lat else None)
                figures["p99"].append(round(lat[min(len(lat) - 1, int(len(lat) * 0.99))], 4) if lat else None)
                figures["backlog"].append(v.get("backlog"))
                figures["oldest_undelivered"].append(v.get("oldest_undelivered"))
        return {"minutes": [m * 60 for m in minutes], "sources": out_src, "destinations": out_dst,
                "refused_requests": refused}


@dataclass
class Watcher:
    filters: dict[str, str]
    queue: asyncio.Queue
    dropped: int = 0
    closed: bool = False

    def wants(self, item: dict[str, Any]) -> bool:
        for key, want in self.filters.items():
            if item.get(key) != want:
                return False
        return True

    def offer(self, item: dict[str, Any]) -> None:
        if not self.wants(item):
            return
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            self.dropped += 1


LIVE_FILTERS = ("source", "kind", "type", "event", "userId", "anonymousId", "messageId")
EVENT_LIMIT = 8 * 1024


class Live:
    """The live view's watchers. No watcher, no listener: ingest then pays one truth test."""

    def __init__(self, masker: Masker, queue_size: int) -> None:
        self.masker = masker
        self.queue_size = queue_size
        self.watchers: list[Watcher] = []
        self.dropped_total = 0

    def watch(self, filters: dict[str, str]) -> Watcher:
        w = Watcher(filters, asyncio.Queue(self.queue_size))
        if not self.watchers:
            TAPS.stored.append(self.stored)
            TAPS.refused.append(self.refused)
        self.watchers.append(w)
        return w

    def unwatch(self, w: Watcher) -> None:
        if w in self.watchers:
            self.watchers.remove(w)
            self.dropped_total += w.dropped
        if not self.watchers:
            if self.stored in TAPS.stored:
                TAPS.stored.remove(self.stored)
            if self.refused in TAPS.refused:
                TAPS.refused.remove(self.refused)

    def close_all(self) -> None:
        for w in list(self.watchers):
            w.closed = True
            try:
                w.queue.put_nowait(None)
            except asyncio.QueueFull:
                pass

    def _event(self, raw: bytes) -> Any:
        if len(raw) > EVENT_LIMIT:
            return {"truncated": self.masker.body(raw, EVENT_LIMIT)}
        try:
            return self.masker.json(orjson.loads(raw))
        except orjson.JSONDecodeError:
            return {"unparseable": self.masker.body(raw, 2000)}

    def stored(self, append: Any, result: Any, raw_items: Sequence[bytes]) -> None:
        at = append.received_at
        out = []
        for item in append.items:
            ids = _ids_of(item.raw)
            route = append.routes[item.route]
            out.append({"kind": "accepted", "source": append.source, "at": at,
                        "type": _s(append.call_type or ids.type), "event": _s(ids.event), "userId": _s(ids.userId),
                        "anonymousId": _s(ids.anonymousId), "messageId": item.message_id or _s(ids.messageId),
                        "destinations": list(route.destinations), "skipped": dict(route.skipped),
                        "payload": self._event(item.raw)})
        for index, reason in append.rejected:
            raw = raw_items[index] if 0 <= index < len(raw_items) else b""
            ids = _ids_of(raw)
            out.append({"kind": "rejected", "source": append.source, "at": at, "reason": self.masker.text(reason),
                        "type": _s(append.call_type or ids.type), "event": _s(ids.event), "userId": _s(ids.userId),
                        "anonymousId": _s(ids.anonymousId), "messageId": _s(ids.messageId),
                        "payload": self._event(raw) if raw else None})
        for w in self.watchers:
            for item in out:
                w.offer(item)

    def refused(self, status: int, code: str, message: str, source: str | None) -> None:
        item = {"kind": "rejected", "source": source, "at": time.time(), "status": status, "code": code,
                "reason": self.masker.text(message)}
        for w in self.watchers:
            w.offer(item)
