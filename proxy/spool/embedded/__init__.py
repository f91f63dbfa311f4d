"""The embedded backend (the default): events in an append-only segment log, delivery state in SQLite.

Files under ``storage.path``:

    log/*.seg, log/write.lock   the event log (segments.py): one CRC-framed record per request
    state.db                    cursors, retries, dead letters (state.py)
    dedup/*.ids                 the dedup journal (dedup.py)
    instance.lock               held by the one server using this spool

Why this layout (DESIGN.md "Measured", benchmarks/event_store.py): each event is written once,
appended sequentially and fsync'd with a group commit; SQLite in WAL mode writes every byte twice
(WAL, then checkpoint) and its dedup B-tree wrote random pages, 4.3-8.1 KB per 1.1 KB event. The
log needs no checkpoint, frees space a segment at a time, and a torn tail is found by its CRC.

Appends: ingest hands an Append to the writer thread, which takes everything queued, and under the
log's write lock re-reads what other processes appended since (their dedup hashes), drops
duplicates, writes one frame per request in one write(), journals the hashes, releases the lock and
fdatasyncs; then every request of the group is answered. Reads: each destination follows the log
from its cursor (the offset below which it has settled everything), materialising (enriching) the
items routed to it; retries come from state.db.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import os
import queue
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import structlog

from proxy.spool import records
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
    SpoolBusy,
    SpoolUnavailable,
    Stats,
    StoredEvent,
    Work,
)
from proxy.spool.embedded.dedup import DedupIndex, Journal
from proxy.spool.embedded.segments import SegmentLog, is_disk_full
from proxy.spool.embedded.state import State

log = structlog.get_logger("trackrelay.spool")

DEDUP_SYNCED = "dedup_synced_offset"


def segment_size(storage: Any) -> int:
    if getattr(storage, "segment_bytes", None):
        return int(storage.segment_bytes)
    return int(min(64 * 1024 * 1024, max(64 * 1024, storage.max_bytes // 16)))


@dataclass(slots=True)
class _Pending:
    request: Append
    future: asyncio.Future[tuple[AppendResult, int]]
    loop: asyncio.AbstractEventLoop
    frame: bytes = b""


@dataclass(slots=True)
class _Dest:
    name: str
    cursor: int
    read_pos: int
    # record offset -> [events not yet settled, receivedAt, next offset]
    pending: OrderedDict[int, list[Any]] = field(default_factory=OrderedDict)
    leftover: deque[Work] = field(default_factory=deque)
    inflight_retries: set[int] = field(default_factory=set)
    leased: set[int] = field(default_factory=set)  # tokens of works leased and not settled
    tokens: int = 0
    # record offset -> positions settled in records the cursor has not passed (survives restarts)
    partial: dict[int, set[int]] = field(default_factory=dict)
    next_retry_check: float = 0.0   # when to look for due retries next
    event: asyncio.Event = field(default_factory=asyncio.Event)
    cursor_saved: int = 0


class EmbeddedSpool(Spool):
    engine = "embedded"

    def __init__(self, storage: Any, *, role: str = "main") -> None:
        self.storage = storage
        self.role = role
        self.dir = Path(storage.path)
        self.max_bytes = int(storage.max_bytes)
        self.retention = float(storage.retention)
        self.sync = storage.durability == "full"
        self.window = float(storage.dedup_window)
        self.segment_bytes = segment_size(storage)
        self.log: SegmentLog | None = None
        self.state: State | None = None
        self.index: DedupIndex | None = None
        self.journal: Journal | None = None
        self._instance_fd = -1
        self._queue: queue.SimpleQueue[list[_Pending] | None] = queue.SimpleQueue()
        # appends of this event-loop iteration, handed to the writer together (one wake-up)
        self._gathering: dict[asyncio.AbstractEventLoop, list[_Pending]] = {}
        self._thread: threading.Thread | None = None
        self._dests: dict[str, _Dest] = {}
        self._known_end = 0      # writer: where our view of the log ends (a record boundary)
        self.committed_end = 0   # readers: everything below is committed
        self.size_bytes = 0
        self.full = False
        self.last_error: str | None = None
        self._bytes_per_event = 1200.0  # running average of log bytes per event (for estimates)
        self._counted: dict[int, tuple[int, int]] = {}  # segment base -> (counted up to, events)
        self._counted_lock = threading.Lock()  # the writer counts what it commits; stats() the rest
        self._journal_synced_end = -1  # the log end the journal was last synced for
        self._closed = False

    # -- lifecycle --------------------------------------------------------------------------------

    def _take_instance_lock(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.dir / "instance.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SpoolBusy(f"another trackrelay server is using the spool in {self.dir}; stop it first "
                            "(several processes on one spool: server.workers)") from None
        self._instance_fd = fd

    def claim(self) -> None:
        if self.role == "main" and self._instance_fd < 0:
            self._take_instance_lock()

    def claim_for_upgrade(self) -> None:
        """The instance lock, whatever the role: no server may run during a migration."""
        self._take_instance_lock()

    def release(self) -> None:
        if self._instance_fd >= 0:
            os.close(self._instance_fd)
            self._instance_fd = -1

    def open_sync(self) -> None:
        """Open and recover (blocking; start() runs it in a thread)."""
        if self.role == "main":
            self.claim()
            from proxy.spool.embedded import migrate

            migrate.migrate_if_needed(self.dir, self.storage)
        if self.role == "admin":
            from proxy.spool.embedded import migrate

            if not (self.dir / "log").exists() and not (self.dir / migrate.LEGACY).exists():
                raise FileNotFoundError(f"no spool at {self.dir}")
            if migrate.needed(self.dir):  # no server has opened it since the upgrade: convert it now
                self.claim_for_upgrade()
                try:
                    migrate.migrate_if_needed(self.dir, self.storage)
                finally:
                    self.release()
            self.log = SegmentLog(self.dir / "log", self.segment_bytes, readonly=True)
            self.state = State(self.dir)
            self.committed_end = self.log.end()
            return
        self.log = SegmentLog(self.dir / "log", self.segment_bytes)
        self.state = State(self.dir)
        self.index = DedupIndex(int(self.storage.dedup_memory), self.window)
        self.journal = Journal(self.dir / "dedup", self.window)
        self._rebuild_dedup()
        self._refresh_size()

    def _rebuild_dedup(self) -> None:
        """The dedup index from the journal, plus the log past the journal's last sync point (a
        power loss may have cut the journal's tail; the log has those hashes)."""
        assert self.log and self.index and self.journal and self.state
        now = time.time()
        since = now - self.window
        for at, hashes in self.journal.blocks(since):
            self.index.add_many(hashes, at)
        synced = self.state.call(lambda c: State.meta(c, DEDUP_SYNCED))
        index = self.index

        def add(payload: bytes) -> None:
            rec = records.Record(payload)
            if rec.header.received_at >= since:
                index.add_many(rec.hashes(), rec.header.received_at)

        with self.log.locked():  # the whole last segment is checked: a torn tail is cut off there
            start = min(int(synced), self.log.last()) if synced else self.log.first()
            _, end = self.log.validate(start, add)  # streamed: a 64 MB segment is not held in memory
        self._known_end = self.committed_end = end

    async def start(self) -> None:
        await asyncio.to_thread(self.open_sync)
        if self.role != "admin":
            self._thread = threading.Thread(target=self._writer, name="spool-writer", daemon=True)
            self._thread.start()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            for loop in list(self._gathering):  # appends not handed over yet go first
                self._hand_over(loop)
            self._queue.put(None)
            await asyncio.to_thread(self._thread.join)
            self._thread = None
        if self.role == "main":
            with contextlib.suppress(Exception):
                await self._save_cursors()
                await self._sync_journal()
        if self.journal is not None:
            self.journal.close()
        if self.index is not None:
            self.index.close()
        if self.log is not None:
            self.log.close()
        if self.state is not None:
            self.state.close()
        if self._instance_fd >= 0:
            os.close(self._instance_fd)
            self._instance_fd = -1

    def problems(self) -> list[str]:
        out = []
        if self.role != "admin" and (self._thread is None or not self._thread.is_alive()):
            out.append("spool writer not running")
        if self.last_error:
            out.append(f"spool cannot commit: {self.last_error}")
        return out

    # -- ingest -----------------------------------------------------------------------------------

    def refusal(self) -> Refusal | None:
        if self.full:
            return Refusal(429, "spool_full", "the spool is full; retry later", 30)
        return None

    async def append(self, request: Append) -> AppendResult:
        if self._closed:  # nobody would commit it: 503, never a wait
            raise SpoolUnavailable("the spool is closed")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[tuple[AppendResult, int]] = loop.create_future()
        gathering = self._gathering.get(loop)
        if gathering is None:
            gathering = self._gathering[loop] = []
            loop.call_soon(self._hand_over, loop)
        gathering.append(_Pending(request, fut, loop))
        result, end = await fut
        if result.stored:
            self._committed(end)
        return result

    def _committed(self, end: int) -> None:
        if end > self.committed_end:
            self.committed_end = end
            for d in self._dests.values():
                d.event.set()
        if self.on_commit is not None:
            self.on_commit(end)

    def observe_commit(self, token: int) -> None:
        if token > self.committed_end:
            self.committed_end = token
            for d in self._dests.values():
                d.event.set()

    def _hand_over(self, loop: asyncio.AbstractEventLoop) -> None:
        """Give the writer every append this loop made since the last hand-over: one queue put and
        at most one wake-up of the writer thread per loop iteration, rather than one per request."""
        gathered = self._gathering.pop(loop, None)
        if gathered:
            self._queue.put(gathered)

    def _writer(self) -> None:
        stop = False
        while not stop:
            item = self._queue.get()
            if item is None:
                break
            group = list(item)
            while True:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                group += nxt
            try:
                results, end = self._commit(group)
                self.last_error = None
                outcome: list[tuple[_Pending, Any, BaseException | None]] = [
                    (p, (r, end), None) for p, r in zip(group, results, strict=True)]
            except Exception as exc:  # the commit failed: every request of the group gets a 503
                self.last_error = ("disk full" if is_disk_full(exc) else repr(exc))[:300]
                log.error("spool_commit_failed", error=repr(exc))
                err = SpoolUnavailable(self.last_error)
                outcome = [(p, None, err) for p in group]
            by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any, BaseException | None]]] = {}
            for p, value, error in outcome:
                by_loop.setdefault(p.loop, []).append((p.future, value, error))
            for loop, res in by_loop.items():
                with contextlib.suppress(RuntimeError):  # loop closed during shutdown
                    loop.call_soon_threadsafe(_resolve, res)

    def _commit(self, group: list[_Pending]) -> tuple[list[AppendResult], int]:
        assert self.log and self.index and self.journal
        for p in group:  # the usual case, no duplicate: the frame is ready before the lock
            p.frame = records.frame(records.encode(p.request))
        index = self.index
        with self.log.locked():
            seen_from = self._known_end
            others, seen_to = self.log.validate(seen_from)
            others_events = 0
            for payload in others:  # what other processes committed since our last write
                rec = records.Record(payload)
                others_events += len(rec)
                index.add_many(rec.hashes(), rec.header.received_at)
            index.advance(max(p.request.received_at for p in group))
            hashes = [it.dedup for p in group for it in p.request.items]
            seen = index.seen_among(hashes)
            results: list[AppendResult] = []
            frames: list[bytes] = []
            if not seen and len(set(hashes)) == len(hashes):  # the usual case: no duplicate at all
                frames = [p.frame for p in group]
                results = [AppendResult(len(p.request.items), 0) for p in group]
            else:
                group_seen: set[int] = set()
                for p in group:
                    items = p.request.items
                    keep = []
                    for it in items:
                        h = it.dedup
                        if h in group_seen or h in seen:
                            continue
                        group_seen.add(h)
                        keep.append(it)
                    if len(keep) == len(items):
                        frames.append(p.frame)
                    elif keep:
                        frames.append(records.frame(records.encode(p.request, keep)))
                    results.append(AppendResult(len(keep), len(items) - len(keep)))
            now = max(p.request.received_at for p in group)
            end = start = self._known_end
            if frames:
                start, end = self.log.append(b"".join(frames))
            self.journal.write(hashes, now)
            self._known_end = end
            segment_of = self.log.segment_of
            spans = [(seen_from, seen_to, others_events, segment_of(seen_from), segment_of(seen_to - 1)),
                     (start, end, sum(r.stored for r in results), segment_of(start), segment_of(end - 1))]
        if frames and self.sync:
            self.log.sync()
        self._count_committed(spans)
        index.add_many(hashes, now)
        if frames and hashes:
            self._bytes_per_event = 0.9 * self._bytes_per_event + 0.1 * (sum(map(len, frames)) / len(hashes))
        return results, end

    # -- delivery ---------------------------------------------------------------------------------

    async def attach(self, destinations: Sequence[str]) -> None:
        assert self.state
        end = self.committed_end

        def op(conn: Any) -> tuple[dict[str, int], dict[str, dict[int, set[int]]]]:
            cursors = State.cursors(conn)
            for name in destinations:
                if name not in cursors:
                    State.move_cursor(conn, name, end)
                    cursors[name] = end
            return cursors, {name: State.partial(conn, name, cursors[name]) for name in destinations}

        cursors, partial = await self.state.run(op)
        first = self.log.first() if self.log else 0
        for name in destinations:
            if name not in self._dests:
                pos = max(cursors[name], first)
                self._dests[name] = _Dest(name, pos, pos, cursor_saved=pos, partial=partial[name])

    async def _dest(self, name: str) -> _Dest:
        d = self._dests.get(name)
        if d is None:  # not attached in this process yet: from its saved cursor, or the end
            await self.attach([name])
            d = self._dests[name]
        return d

    async def lease(self, destination: str, max_events: int, max_bytes: int, *, new: bool = True) -> list[Work]:
        assert self.state
        d = await self._dest(destination)
        now = time.time()
        out: list[Work] = []
        size = 0
        if now >= d.next_retry_check:
            limit = max_events + len(d.inflight_retries)
            rows = await self.state.run(lambda c: State.due_retries(c, destination, now, limit))
            for r in rows:
                if r.id in d.inflight_retries:
                    continue
                if out and (len(out) >= max_events or size + len(r.event) > max_bytes):
                    break
                d.inflight_retries.add(r.id)
                size += len(r.event)
                out.append(Work(("r", r.id, 0, self._token(d)), r.source, r.key_index, r.received_at or 0.0,
                                len(r.event), raw=r.event, attempts=r.attempts, first_failed=r.first_failed,
                                done=r.done))
            if len(out) < max_events:
                nxt = await self.state.run(lambda c: State.next_due(c, destination, now))
                # poll at least every second: `trackrelay dead-letters replay` adds retries from outside
                d.next_retry_check = now + 1.0 if nxt is None else min(nxt, now + 1.0)
        while new and len(out) < max_events and (not out or size < max_bytes):
            if d.leftover:
                w = d.leftover[0]
                if out and size + w.size > max_bytes:
                    break
                d.leftover.popleft()
                w.ref = (*w.ref[:3], self._token(d))
                out.append(w)
                size += w.size
                continue
            end = self.committed_end
            if d.read_pos >= end:
                break
            start = d.read_pos
            done = {off: set(pos) for off, pos in d.partial.items() if off >= start}
            batch = await asyncio.to_thread(self._read_for, destination, start, end, max_bytes, done)
            if d.read_pos != start:  # a concurrent lease moved on meanwhile: its result counts
                continue
            if not batch:
                break
            self._take_records(d, batch)
        return out

    @staticmethod
    def _token(d: _Dest) -> int:
        d.tokens += 1
        d.leased.add(d.tokens)
        return d.tokens

    def _read_for(self, dest: str, start: int, end: int, max_bytes: int, done: dict[int, set[int]]
                  ) -> list[tuple[int, int, float, list[Work]]]:
        """Records from ``start``: (offset, next offset, receivedAt, the destination's enriched works,
        leaving out items settled before a restart)."""
        assert self.log
        out = []
        for off, nxt, payload in self.log.read(start, end, max_bytes):
            rec = records.Record(payload)
            h = rec.header
            skip = done.get(off, ())
            wanted = {i for i, it in enumerate(h.items)
                      if dest in rec.routes[it[2]].destinations and i not in skip}
            works = []
            if wanted:
                for i, raw in rec.raw_items():
                    if i in wanted:
                        works.append(Work(("l", off, i, 0), h.source, h.key_index, h.received_at, len(raw),
                                          stored=(rec, i, raw)))
            out.append((off, nxt, h.received_at, works))
        return out

    def _take_records(self, d: _Dest, batch: list[tuple[int, int, float, list[Work]]]) -> None:
        for off, nxt, received_at, works in batch:
            if off < d.read_pos:
                continue
            d.read_pos = nxt
            if works:
                d.pending[off] = [len(works), received_at, nxt]
                d.leftover.extend(works)
            elif not d.pending:
                d.cursor = nxt
            else:
                d.pending[off] = [0, received_at, nxt]

    async def settle(self, destination: str, settlements: Sequence[Settlement]) -> None:
        assert self.state
        d = await self._dest(destination)
        dead: list[tuple[Any, ...]] = []
        new_retries: list[tuple[Any, ...]] = []
        updated: list[tuple[Any, ...]] = []
        finished: list[int] = []
        settled: list[tuple[int, int]] = []  # (record offset, position) of log items settled now
        now = time.time()
        due: list[float] = []
        for s in settlements:
            w = s.work
            kind, key, pos, token = w.ref
            if token not in d.leased:
                continue  # settled already, or leased by an instance before a restart: once only
            d.leased.discard(token)
            if s.disposition is Disposition.RETRY:
                at = s.retry_at if s.retry_at is not None else now
                due.append(at)
                done = orjson.dumps(sorted(s.done)).decode() if s.done else None
                if kind == "r":
                    updated.append((at, s.attempts, s.status, s.reason[:2000], done, key))
                else:
                    new_retries.append((at, s.attempts, s.first_failed or now, s.status, s.reason[:2000], w.source,
                                        w.key_index, w.received_at, done, w.json()))
            else:
                if kind == "r":
                    finished.append(key)
                if s.disposition is Disposition.DEAD:
                    dead.append((now, s.attempts, s.status, s.reason[:2000], s.response, w.source, w.key_index,
                                 w.message_id, w.received_at, w.json()))
            if kind == "l":
                entry = d.pending.get(key)
                if entry is not None:
                    entry[0] -= 1
                    settled.append((key, pos))
        moved = self._advance(d)
        # items of records the cursor cannot pass yet: remembered, so a restart does not send them again
        partial = [(off, pos) for off, pos in settled if off in d.pending]
        for off, pos in partial:
            d.partial.setdefault(off, set()).add(pos)
        for off in [o for o in d.partial if o < d.cursor]:
            del d.partial[off]
        cursor = d.cursor if moved or d.cursor > d.cursor_saved else None
        if dead or new_retries or updated or finished or cursor is not None or partial:
            await self.state.run(lambda c: State.settle(c, destination, dead, new_retries, updated, finished, cursor,
                                                        partial))
            if cursor is not None:
                d.cursor_saved = max(d.cursor_saved, cursor)
        for s in settlements:
            if s.work.ref[0] == "r":
                d.inflight_retries.discard(s.work.ref[1])
        if due:
            d.next_retry_check = min(d.next_retry_check, min(due))

    async def expedite(self, destination: str, limit: int | None = None) -> int:
        assert self.state
        d = await self._dest(destination)
        now = time.time()
        moved = await self.state.run(lambda c: State.expedite(c, destination, now, limit))
        if moved:
            d.next_retry_check = 0.0
            d.event.set()
        return moved

    def _advance(self, d: _Dest) -> bool:
        moved = False
        while d.pending:
            off, entry = next(iter(d.pending.items()))
            if entry[0] > 0:
                break
            d.pending.popitem(last=False)
            d.cursor = entry[2]
            moved = True
        if not d.pending and not d.leftover and d.read_pos > d.cursor:
            d.cursor = d.read_pos
            moved = True
        return moved

    async def wait(self, destination: str, timeout: float) -> None:
        d = self._dests.get(destination)
        if d is None or timeout <= 0 or self._closed:
            return
        d.event.clear()
        if d.leftover or d.read_pos < self.committed_end:
            return
        timeout = min(timeout, max(0.02, d.next_retry_check - time.time()))
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(d.event.wait(), timeout)

    def wake(self, destination: str | None = None) -> None:
        for name, d in self._dests.items():
            if destination is None or name == destination:
                d.event.set()

    # -- operators --------------------------------------------------------------------------------

    def _state(self) -> State:
        if self.state is None:
            raise FileNotFoundError(f"no spool at {self.dir}")
        return self.state

    async def dead_letters(self, query: DeadQuery) -> tuple[list[DeadLetter], int]:
        return await self._state().run(lambda c: State.dead_letters(c, query))

    async def dead_letter(self, id: str) -> DeadLetter | None:
        return await self._state().run(lambda c: State.dead_letter(c, id))

    async def replay(self, query: DeadQuery, destinations: Sequence[str], progress: Progress | None = None) -> int:
        state = self._state()
        wanted = set(destinations)
        letters, _ = await state.run(lambda c: State.dead_letters(c, DeadQuery(
            query.destination, query.since, query.until, query.ids, None)))
        ids = [int(dl.id) for dl in letters if dl.destination in wanted]
        done = 0
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            done += await state.run(functools.partial(State.replay_chunk, ids=chunk))
            if progress is not None:
                progress(len(chunk))
        for name in wanted:
            d = self._dests.get(name)
            if d is not None:
                d.next_retry_check = 0.0
                d.event.set()
        return done

    async def reroute(self, query: DeadQuery, route: Callable[[DeadLetter], Sequence[str]],
                      progress: Progress | None = None) -> int:
        state = self._state()
        letters, _ = await state.run(lambda c: State.dead_letters(c, query))
        moved = 0
        woken: set[str] = set()
        for i in range(0, len(letters), 200):
            moves: list[tuple[int, list[str]]] = []
            for dl in letters[i:i + 200]:
                full = await state.run(partial(State.dead_letter, id=dl.id))
                targets = list(dict.fromkeys(route(full))) if full is not None else []
                if targets:
                    moves.append((int(dl.id), targets))
                    woken.update(targets)
            if moves:
                moved += await state.run(partial(State.reroute_chunk, moves=moves))
                if progress is not None:
                    progress(moved)
        for name in woken:
            d = self._dests.get(name)
            if d is not None:
                d.next_retry_check = 0.0
                d.event.set()
        return moved

    async def stats(self, destinations: Sequence[str] = (), *, exact: bool = False) -> Stats:
        state = self._state()
        retries, dead = await state.run(State.counts)
        oldest_retry = await state.run(State.oldest_retries)
        cursors = await state.run(State.cursors)
        events = await asyncio.to_thread(self._count_events)
        await asyncio.to_thread(self._refresh_size)
        names = set(destinations) | set(retries) | set(dead) | set(self._dests)
        per: dict[str, DestinationStats] = {}
        for name in sorted(names):
            d = self._dests.get(name)
            oldest = None
            if d is not None:
                unread = (await asyncio.to_thread(self._count_routed, name, d.read_pos) if exact
                          else self._estimate(self.committed_end - d.read_pos))
                backlog = sum(e[0] for e in d.pending.values()) + unread  # read and not settled, and unread
                if d.pending:
                    oldest = next(iter(d.pending.values()))[1]
                else:
                    oldest = await asyncio.to_thread(self._oldest_routed, name, d.read_pos)
            elif name in cursors:
                backlog = (await asyncio.to_thread(self._count_routed, name, cursors[name]) if exact
                           else self._estimate(self.committed_end - cursors[name]))
            else:
                backlog = 0
            if name in oldest_retry:
                oldest = oldest_retry[name] if oldest is None else min(oldest, oldest_retry[name])
            per[name] = DestinationStats(backlog, retries.get(name, 0), dead.get(name, 0), oldest)
        extra: dict[str, Any] = {"segments": len(self.log._list()) if self.log else 0,
                                 "backlog_exact": exact}
        if self.index is not None:
            extra.update(dedup_window_seconds=self.index.effective_window(),
                         dedup_capacity_ids=self.index.ids_capacity * 2,
                         dedup_memory_bytes=self.index.memory_bytes())
        return Stats(self.engine, events, self.size_bytes, self.max_bytes, self.full, per, extra)

    def _estimate(self, log_bytes: int) -> int:
        """Events in ``log_bytes`` of log, from the average record size seen (all destinations'
        share: an estimate, not a count)."""
        if log_bytes <= 0:
            return 0
        return max(1, round(log_bytes / self._bytes_per_event))


    def _scan(self, start: int | None = None, end: int | None = None):  # type: ignore[no-untyped-def]
        assert self.log
        pos = self.log.first() if start is None else start
        if end is None:
            end = self.log.end() if self.role == "admin" else self.committed_end
        while pos < end:
            chunk = self.log.read(pos, end, 8 << 20)
            if not chunk:
                return
            for off, nxt, payload in chunk:
                yield off, records.Record(payload)
                pos = nxt

    def _count_committed(self, spans: list[tuple[int, int, int, int, int]]) -> None:
        """Writer: add committed regions (start, end, events, segment of start, of end - 1) to the
        event counts, when each continues where a segment's count stands (else the next stats()
        scans for it)."""
        with self._counted_lock:
            for start, end, events, base, last in spans:
                if end <= start or base != last:
                    continue
                upto, n = self._counted.get(base, (base, 0))
                if upto == start:
                    self._counted[base] = (end, n + events)

    def _count_events(self) -> int:
        """Events in the log, counted incrementally: a segment once read is not read again, except
        the part of the last one written since."""
        assert self.log
        end = self.log.end() if self.role == "admin" else self.committed_end
        bases = self.log._list()
        with self._counted_lock:
            counted = {b: c for b, c in self._counted.items() if b in bases}
        total = 0
        for i, base in enumerate(bases):
            upto, n = counted.get(base, (base, 0))
            seg_end = bases[i + 1] if i + 1 < len(bases) else end
            for _, rec in self._scan(max(upto, self.log.first()), min(seg_end, end)):
                n += len(rec)
            counted[base] = (max(upto, min(seg_end, end)), n)
            total += n
        with self._counted_lock:  # the writer may have counted further meanwhile: the further count wins
            for base, (upto, n) in counted.items():
                if upto >= self._counted.get(base, (-1, 0))[0]:
                    self._counted[base] = (upto, n)
            for base in [b for b in self._counted if b not in bases]:
                del self._counted[base]
        return total


    def _oldest_routed(self, dest: str, start: int, records_at_most: int = 1000) -> float | None:
        """receivedAt of the first record from ``start`` with an event for ``dest`` (None if none
        is found within ``records_at_most`` records)."""
        for n, (_, rec) in enumerate(self._scan(start)):
            if any(dest in rec.routes[it[2]].destinations for it in rec.header.items):
                return float(rec.header.received_at)
            if n >= records_at_most:
                break
        return None

    def _count_routed(self, dest: str, start: int) -> int:
        n = 0
        for _, rec in self._scan(start):
            for it in rec.header.items:
                if dest in rec.routes[it[2]].destinations:
                    n += 1
        return n

    async def events(self, limit: int | None = None) -> list[StoredEvent]:
        def read() -> list[StoredEvent]:
            out: list[StoredEvent] = []
            for _, rec in self._scan():
                for ev in rec.stored_events():
                    out.append(ev)
                    if limit is not None and len(out) >= limit:
                        return out
            return out
        return await asyncio.to_thread(read)

    async def known_destinations(self) -> list[str]:
        return await self._state().run(State.known)

    async def forget(self, destination: str) -> int:
        self._dests.pop(destination, None)
        return await self._state().run(lambda c: State.forget(c, destination))

    # -- housekeeping -----------------------------------------------------------------------------

    def _refresh_size(self) -> None:
        if self.log is None:
            return
        total = self.log.size_bytes()
        for name in ("state.db", "state.db-wal"):
            with contextlib.suppress(FileNotFoundError):
                total += os.stat(self.dir / name).st_size
        with contextlib.suppress(FileNotFoundError):
            total += sum(p.stat().st_size for p in (self.dir / "dedup").glob("*.ids"))
        self.size_bytes = total
        self.full = total >= self.max_bytes

    async def _save_cursors(self) -> None:
        assert self.state
        moves = [(d.name, d.cursor) for d in self._dests.values() if d.cursor > d.cursor_saved]
        if not moves:
            return

        def op(conn: Any) -> None:
            for name, pos in moves:
                State.move_cursor(conn, name, pos)
        await self.state.run(op)
        for name, pos in moves:
            self._dests[name].cursor_saved = max(self._dests[name].cursor_saved, pos)

    async def _sync_journal(self) -> int:
        """fsync the dedup journal and record up to where the log's hashes are in it."""
        assert self.log and self.journal and self.state
        log_, journal = self.log, self.journal

        def sync() -> int:
            with log_.locked():  # every record below `end` had its hashes journalled first
                end = log_.end()
            journal.sync()
            return end
        if not self.journal.unsynced and self._journal_synced_end == self.committed_end:
            return self._journal_synced_end  # idle: no fsync, no write
        end = await asyncio.to_thread(sync)
        if end != self._journal_synced_end:
            await self.state.run(lambda c: State.set_meta(c, DEDUP_SYNCED, str(end)))
            self._journal_synced_end = end
        return end


    async def maintain(self, active_destinations: Sequence[str]) -> None:
        if self.role == "admin" or self.log is None:
            return
        if self.role == "ingest":
            await asyncio.to_thread(self._refresh_size)
            return
        assert self.state and self.journal
        await self._save_cursors()
        synced = await self._sync_journal()
        # rows other processes committed are noticed here even if their notification was lost
        self.observe_commit(synced)
        safe = synced
        for name in active_destinations:
            d = self._dests.get(name)
            if d is not None:
                safe = min(safe, d.cursor_saved)
        now = time.time()
        pressure = self.size_bytes >= self.max_bytes * 0.9
        older_than = now if pressure else now - self.retention
        log_, journal = self.log, self.journal

        def housekeeping() -> None:
            log_.roll_if_idle(safe, older_than)
            freed = log_.delete_before(safe, older_than)
            if freed:
                log.info("spool_segments_freed", bytes=freed)
            journal.prune(now)
        await asyncio.to_thread(housekeeping)
        # delivered retries and dead letters leave free pages, and a WAL file does not shrink by
        # itself; both count towards max_bytes, so give them back
        await self.state.shrink(min(4 * 1024 * 1024, self.max_bytes // 32))
        with contextlib.suppress(FileNotFoundError):
            if (self.dir / "state.db-wal").stat().st_size > min(8 * 1024 * 1024, self.max_bytes // 16):
                await self.state.checkpoint()
        await asyncio.to_thread(self._refresh_size)

def _resolve(results: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for fut, value, error in results:
        if fut.done():
            continue
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(value)
