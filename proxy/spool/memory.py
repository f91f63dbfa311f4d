"""The in-process backend: the executable reference of the port's semantics (proxy/spool/base.py),
used by the conformance suite and by delivery-engine tests that need no server process.

Durable state lives in a :class:`MemoryStore` handed to the constructor: a test "restarts" by
opening a new :class:`MemorySpool` on the same store. What was appended or settled survives; what
was leased and not settled is leased again (leases belong to the instance, not the store). Nothing
survives the process.

Appended requests are stored as :func:`proxy.spool.records.encode` payloads, exactly as a real
backend stores them, and read back through :class:`proxy.spool.records.Record` (so enrichment is
applied when delivery reads). ``bytes`` is the sum of the stored payloads' sizes.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from proxy.spool.base import (
    Append,
    AppendResult,
    DeadLetter,
    DeadQuery,
    DestinationStats,
    Disposition,
    Progress,
    Refusal,
    Settlement,
    Spool,
    SpoolFull,
    SpoolUnavailable,
    Stats,
    StoredEvent,
    Work,
)
from proxy.spool.records import Record, encode

_PRESSURE = 0.9  # above this share of max_bytes, settled records are freed without waiting for retention
RETRY_AFTER_FULL = 30  # seconds, what ingest puts in Retry-After when the spool is full


@dataclass(slots=True)
class _LogRecord:
    seq: int                      # global position of the record's first item
    payload: bytes
    record: Record                # decoded header (items are sliced lazily)
    settled_at: float | None = None  # when maintain() first saw every active destination done with it

    @property
    def end(self) -> int:
        return self.seq + len(self.record)


@dataclass(slots=True)
class _Retry:
    key: int
    raw: bytes                    # the enriched event JSON
    source: str
    key_index: int
    received_at: float
    retry_at: float
    attempts: int
    first_failed: float | None
    done: frozenset[str]
    status: int | None
    reason: str


@dataclass(slots=True)
class _Dead:
    letter: DeadLetter            # with its event
    key_index: int
    received_at: float


@dataclass(slots=True)
class _Cursor:
    low: int                      # every item below this is settled (or not routed) for the destination
    settled: set[int] = field(default_factory=set)  # settled items at or above ``low``


class MemoryStore:
    """The durable half of a memory spool: survives a MemorySpool being closed or abandoned."""

    def __init__(self) -> None:
        self.log: list[_LogRecord] = []     # arrival order; freed records are removed
        self.next_seq = 0                   # position of the next appended item
        self.dedup: dict[int, float] = {}   # dedup hash -> receivedAt it was last seen
        self.cursors: dict[str, _Cursor] = {}
        self.retries: dict[str, dict[int, _Retry]] = {}
        self.dead: dict[int, _Dead] = {}
        self.ids = itertools.count(1)       # retry keys and dead-letter ids

    @property
    def bytes(self) -> int:
        return sum(len(r.payload) for r in self.log)

    def find(self, seq: int) -> tuple[_LogRecord, int] | None:
        """The record holding item ``seq`` and the item's position in it."""
        lo, hi = 0, len(self.log)
        while lo < hi:
            mid = (lo + hi) // 2
            rec = self.log[mid]
            if seq < rec.seq:
                hi = mid
            elif seq >= rec.end:
                lo = mid + 1
            else:
                return rec, seq - rec.seq
        return None


class MemorySpool(Spool):
    engine = "memory"

    def __init__(self, store: MemoryStore | None = None, *, max_bytes: int = 10 * 1024**3,
                 dedup_window: float = 86400.0, retention: float = 600.0, role: str = "main") -> None:
        self.store = store if store is not None else MemoryStore()
        self.max_bytes = max_bytes
        self.dedup_window = dedup_window
        self.retention = retention
        self.role = role
        self._leased: dict[str, set[tuple[str, int]]] = {}   # this instance's unsettled leases
        self._pending: dict[str, bool] = {}                   # a notification not yet consumed by lease
        self._events: dict[str, asyncio.Event] = {}
        self._bytes = self.store.bytes
        self._closed = False

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        self._bytes = self.store.bytes

    async def close(self) -> None:
        self._closed = True
        self.wake()

    def problems(self) -> list[str]:
        return ["the spool is closed"] if self._closed else []

    # -- ingest -----------------------------------------------------------------------------------

    def refusal(self) -> Refusal | None:
        if self._bytes >= self.max_bytes:
            return Refusal(429, "spool_full", "the spool is full; retry later", RETRY_AFTER_FULL)
        return None

    async def append(self, request: Append) -> AppendResult:
        if self.role == "admin":
            raise RuntimeError("an admin spool does not append")
        if self._closed:
            raise SpoolUnavailable("the spool is closed")
        await asyncio.sleep(0)  # a commit point: concurrent appends interleave here, as with a real backend
        if self._bytes >= self.max_bytes:
            raise SpoolFull("the spool is full")
        store = self.store
        now = request.received_at
        kept = []
        seen: set[int] = set()
        for item in request.items:
            last = store.dedup.get(item.dedup)
            if item.dedup in seen or (last is not None and now - last < self.dedup_window):
                continue
            seen.add(item.dedup)
            kept.append(item)
        for h in seen:
            store.dedup[h] = max(now, store.dedup.get(h, now))
        if kept:
            payload = encode(request, kept)
            store.log.append(_LogRecord(store.next_seq, payload, Record(payload)))
            store.next_seq += len(kept)
            self._bytes += len(payload)
            self._notify(None)
        return AppendResult(len(kept), len(request.items) - len(kept))

    # -- delivery ---------------------------------------------------------------------------------

    async def attach(self, destinations: Sequence[str]) -> None:
        for name in destinations:
            self._cursor(name)

    def _cursor(self, destination: str) -> _Cursor:
        cursor = self.store.cursors.get(destination)
        if cursor is None:
            cursor = self.store.cursors[destination] = _Cursor(self.store.next_seq)
        return cursor

    async def lease(self, destination: str, max_events: int, max_bytes: int, *, new: bool = True) -> list[Work]:
        self._pending[destination] = False
        cursor = self._cursor(destination)
        leased = self._leased.setdefault(destination, set())
        out: list[Work] = []
        total = 0

        def room(size: int) -> bool:
            return len(out) < max_events and (not out or total + size <= max_bytes)

        now = time.time()
        due = sorted((r for r in self.store.retries.get(destination, {}).values()
                      if r.retry_at <= now and ("r", r.key) not in leased),
                     key=lambda r: (r.retry_at, r.key))
        for r in due:
            if not room(len(r.raw)):
                return out
            leased.add(("r", r.key))
            total += len(r.raw)
            out.append(Work(("r", r.key), r.source, r.key_index, r.received_at, len(r.raw), raw=r.raw,
                            attempts=r.attempts, first_failed=r.first_failed, done=r.done))
        if not new:
            return out
        self._advance(destination, cursor)
        for rec in self.store.log:
            if rec.end <= cursor.low:
                continue
            h = rec.record.header
            for pos, raw in rec.record.raw_items():
                seq = rec.seq + pos
                if seq < cursor.low or seq in cursor.settled or ("n", seq) in leased:
                    continue
                if destination not in rec.record.route_of(pos).destinations:
                    continue
                if not room(len(raw)):
                    return out
                leased.add(("n", seq))
                total += len(raw)
                # made on demand, as the embedded and JetStream backends do (Work.json / parsed)
                out.append(Work(("n", seq), h.source, h.key_index, h.received_at, len(raw),
                                stored=(rec.record, pos, raw)))
        return out

    def _advance(self, destination: str, cursor: _Cursor) -> None:
        """Move ``low`` past items that are settled or not routed to the destination."""
        store = self.store
        while cursor.low < store.next_seq:
            found = store.find(cursor.low)
            if found is None:  # freed, or below the first record
                nxt = next((r.seq for r in store.log if r.seq > cursor.low), store.next_seq)
                cursor.settled = {s for s in cursor.settled if s >= nxt}
                cursor.low = nxt
                continue
            rec, pos = found
            if cursor.low in cursor.settled:
                cursor.settled.discard(cursor.low)
            elif destination in rec.record.route_of(pos).destinations:
                return
            cursor.low += 1

    async def settle(self, destination: str, settlements: Sequence[Settlement]) -> None:
        store = self.store
        leased = self._leased.setdefault(destination, set())
        retries = store.retries.setdefault(destination, {})
        now = time.time()
        for s in settlements:
            ref = s.work.ref
            if ref not in leased:  # not leased by this instance (settled already, or a stale Work): ignore
                continue
            leased.discard(ref)
            kind, key = ref
            previous = retries.get(key) if kind == "r" else None
            if kind == "r" and previous is None:  # forgotten meanwhile
                continue
            if kind == "n":
                cursor = self._cursor(destination)
                if key >= cursor.low:
                    cursor.settled.add(key)
            if s.disposition in (Disposition.DELIVERED, Disposition.SKIPPED):
                if previous is not None:
                    del retries[key]
            elif s.disposition is Disposition.RETRY:
                at = s.retry_at if s.retry_at is not None else now
                if previous is not None:
                    previous.retry_at, previous.attempts, previous.done = at, s.attempts, s.done
                    previous.status, previous.reason = s.status, s.reason
                    previous.first_failed = s.first_failed if s.first_failed is not None else previous.first_failed
                else:
                    w = s.work
                    rkey = next(store.ids)
                    retries[rkey] = _Retry(rkey, w.json(), w.source, w.key_index, w.received_at, at, s.attempts,
                                           s.first_failed if s.first_failed is not None else now, s.done,
                                           s.status, s.reason)
                self._notify(destination)
            elif s.disposition is Disposition.DEAD:
                if previous is not None:
                    del retries[key]
                w = s.work
                did = next(store.ids)
                store.dead[did] = _Dead(DeadLetter(str(did), destination, now, s.attempts, s.status, s.reason,
                                                   s.response, w.source, w.message_id, w.json()),
                                        w.key_index, w.received_at)
            else:  # pragma: no cover - the enum is closed
                raise ValueError(f"unknown disposition {s.disposition!r}")

    async def expedite(self, destination: str, limit: int | None = None) -> int:
        now = time.time()
        leased = self._leased.get(destination, set())
        waiting = sorted((r for r in self.store.retries.get(destination, {}).values()
                          if r.retry_at > now and ("r", r.key) not in leased), key=lambda r: (r.retry_at, r.key))
        for r in waiting[:limit]:
            r.retry_at = now
        if waiting:
            self._notify(destination)
        return len(waiting[:limit])

    async def wait(self, destination: str, timeout: float) -> None:
        if self._pending.get(destination) or self._closed:
            return
        leased = self._leased.get(destination, set())
        dues = [r.retry_at for r in self.store.retries.get(destination, {}).values() if ("r", r.key) not in leased]
        if dues:
            timeout = min(timeout, max(0.0, min(dues) - time.time()))
        if timeout <= 0:
            return
        event = self._events.setdefault(destination, asyncio.Event())
        event.clear()
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            pass

    def wake(self, destination: str | None = None) -> None:
        for name, event in self._events.items():
            if destination is None or name == destination:
                event.set()

    def _notify(self, destination: str | None) -> None:
        names = set(self.store.cursors) | set(self._events) if destination is None else {destination}
        for name in names:
            self._pending[name] = True
        self.wake(destination)

    def observe_commit(self, token: int) -> None:
        self._notify(None)

    # -- operators --------------------------------------------------------------------------------

    def _matching(self, query: DeadQuery) -> list[_Dead]:
        ids = set(query.ids)
        out = []
        for did in sorted(self.store.dead):
            d = self.store.dead[did].letter
            if query.destination is not None and d.destination != query.destination:
                continue
            if query.since is not None and d.at < query.since:
                continue
            if query.until is not None and d.at > query.until:
                continue
            if ids and d.id not in ids:
                continue
            out.append(self.store.dead[did])
        return out

    async def dead_letters(self, query: DeadQuery) -> tuple[list[DeadLetter], int]:
        matching = self._matching(query)
        shown = matching if query.limit is None else matching[:query.limit]
        letters = []
        for d in shown:
            x = d.letter
            letters.append(DeadLetter(x.id, x.destination, x.at, x.attempts, x.status, x.reason, x.response,
                                      x.source, x.message_id))
        return letters, len(matching)

    async def dead_letter(self, id: str) -> DeadLetter | None:
        try:
            d = self.store.dead.get(int(id))
        except ValueError:
            return None
        if d is None:
            return None
        x = d.letter
        return DeadLetter(x.id, x.destination, x.at, x.attempts, x.status, x.reason, x.response, x.source,
                          x.message_id, x.event)

    async def replay(self, query: DeadQuery, destinations: Sequence[str], progress: Progress | None = None) -> int:
        allowed = set(destinations)
        matching = [d for d in self._matching(query) if d.letter.destination in allowed]
        if query.limit is not None:
            matching = matching[:query.limit]
        now = time.time()
        count = 0
        for d in matching:
            x = d.letter
            rkey = next(self.store.ids)
            self.store.retries.setdefault(x.destination, {})[rkey] = _Retry(
                rkey, x.event or b"{}", x.source, d.key_index, d.received_at, now, 0, None, frozenset(), None, "")
            del self.store.dead[int(x.id)]
            count += 1
            self._notify(x.destination)
            if progress is not None:
                progress(count)
        return count

    async def reroute(self, query: DeadQuery, route: Callable[[DeadLetter], Sequence[str]],
                      progress: Progress | None = None) -> int:
        matching = self._matching(query)
        if query.limit is not None:
            matching = matching[:query.limit]
        now = time.time()
        count = 0
        for d in matching:
            x = d.letter
            targets = list(dict.fromkeys(route(x)))
            if not targets:
                continue
            for target in targets:
                rkey = next(self.store.ids)
                self.store.retries.setdefault(target, {})[rkey] = _Retry(
                    rkey, x.event or b"{}", x.source, d.key_index, d.received_at, now, 0, None, frozenset(), None, "")
                self._notify(target)
            del self.store.dead[int(x.id)]
            count += 1
            if progress is not None:
                progress(count)
        return count

    async def stats(self, destinations: Sequence[str] = (), *, exact: bool = False) -> Stats:
        store = self.store
        names = set(destinations) | set(await self.known_destinations())
        per: dict[str, DestinationStats] = {name: DestinationStats() for name in names}
        for d in store.dead.values():
            per[d.letter.destination].dead += 1
        for name, retries in store.retries.items():
            if name in per:
                per[name].retries = len(retries)
                for r in retries.values():
                    _oldest(per[name], r.received_at)
        events = 0
        for rec in store.log:
            events += len(rec.record)
            for pos in range(len(rec.record)):
                seq = rec.seq + pos
                for name in rec.record.route_of(pos).destinations:
                    cursor = store.cursors.get(name)
                    if name not in per or cursor is None or seq < cursor.low or seq in cursor.settled:
                        continue
                    per[name].backlog += 1
                    _oldest(per[name], rec.record.header.received_at)
        full = self._bytes >= self.max_bytes
        return Stats(self.engine, events, self._bytes, self.max_bytes, full, per,
                     {"dedup_window": self.dedup_window, "dedup_ids": len(store.dedup)})

    async def events(self, limit: int | None = None) -> list[StoredEvent]:
        out: list[StoredEvent] = []
        for rec in self.store.log:
            for ev in rec.record.stored_events():
                if limit is not None and len(out) >= limit:
                    return out
                out.append(ev)
        return out

    async def known_destinations(self) -> list[str]:
        store = self.store
        names = set(store.cursors) | {n for n, r in store.retries.items() if r}
        names |= {d.letter.destination for d in store.dead.values()}
        return sorted(names)

    async def forget(self, destination: str) -> int:
        self.store.cursors.pop(destination, None)
        removed = len(self.store.retries.pop(destination, {}))
        self._leased.pop(destination, None)
        return removed

    # -- housekeeping -----------------------------------------------------------------------------

    async def maintain(self, active_destinations: Sequence[str]) -> None:
        store = self.store
        now = time.time()
        active = [n for n in active_destinations if n in store.cursors]
        for name in active:
            self._advance(name, store.cursors[name])
        pressure = store.bytes >= self.max_bytes * _PRESSURE
        keep = []
        for rec in store.log:
            # settled by every active destination: each one's cursor is past it, or it settled every
            # item of the record routed to it
            done = all(
                store.cursors[n].low >= rec.end or all(
                    n not in rec.record.route_of(pos).destinations or rec.seq + pos < store.cursors[n].low
                    or rec.seq + pos in store.cursors[n].settled
                    for pos in range(len(rec.record)))
                for n in active)
            if done and rec.settled_at is None:
                rec.settled_at = now
            elif not done:
                rec.settled_at = None
            settled = rec.settled_at
            if done and (pressure or self.retention <= 0 or (settled is not None and now - settled >= self.retention)):
                continue
            keep.append(rec)
        store.log = keep
        for name in active:
            self._advance(name, store.cursors[name])
        cutoff = now - self.dedup_window
        for h in [h for h, seen in store.dedup.items() if seen < cutoff]:
            del store.dedup[h]
        self._bytes = store.bytes


def _oldest(stats: DestinationStats, received_at: float) -> None:
    if stats.oldest_undelivered is None or received_at < stats.oldest_undelivered:
        stats.oldest_undelivered = received_at

