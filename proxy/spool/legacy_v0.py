"""The embedded durable spool: one SQLite file in WAL mode, written by a single writer thread
with group commit.

Layout
- ``log``: one row per accepted request (not per event): the request's accepted events, each with
  the destinations it was routed to and the skip reasons for the others. Appending one row per
  request is what makes ingest cheap (see DESIGN.md, "Measured"). The payload is a sequence of
  length-prefixed records, ``>II`` (header length, event length) + header JSON
  ({"d": [destinations], "x": {destination: skip reason}}) + the event's JSON, so delivery can
  route on the small header and hand the event's stored bytes on without parsing them.
- ``seen_0`` / ``seen_1``: 64-bit hashes of (source, messageId) for deduplication; two buckets that
  rotate every dedup window, so lookups cover at least one full window without a per-row expiry.
- ``cursors``: per destination, the log id up to which everything is resolved (delivered, skipped,
  rescheduled into ``retry`` or dead-lettered). Delivery is at-least-once: after a crash a worker
  re-reads from its cursor.
- ``retry``: events waiting for a durable retry (own copy of the event, attempts, due time).
- ``dead``: dead letters with the destination, attempts and the last response.

Every write goes through the writer thread: callers queue an operation and await its future; the writer
thread runs everything queued so far in one transaction and commits once (fsync with
durability=full), then resolves all the futures. The 200 is sent only after that.

Several server processes (``server.workers``) may each run a writer on the same file. Their
transactions are serialised by an exclusive ``flock`` on ``spool.lock`` taken around each one: a
waiting writer is woken by the kernel the moment the lock is free, where SQLite's own busy handler
would sleep and poll (seconds of tail latency under load). Everything a transaction decides from
shared state (the dedup bucket, the next log id) is read inside it, under that lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import queue
import sqlite3
import struct
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import structlog

log = structlog.get_logger("trackrelay.spool")

DB_NAME = "spool.db"
LOCK_NAME = "spool.lock"

SCHEMA = """
CREATE TABLE IF NOT EXISTS log (
    id INTEGER PRIMARY KEY,
    received_at REAL NOT NULL,
    source TEXT NOT NULL,
    key_index INTEGER NOT NULL,
    count INTEGER NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS seen_0 (h INTEGER PRIMARY KEY);
CREATE TABLE IF NOT EXISTS seen_1 (h INTEGER PRIMARY KEY);
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cursors (dest TEXT PRIMARY KEY, pos INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS retry (
    id INTEGER PRIMARY KEY,
    dest TEXT NOT NULL,
    due REAL NOT NULL,
    attempts INTEGER NOT NULL,
    first_failed REAL NOT NULL,
    last_status INTEGER,
    last_error TEXT,
    source TEXT NOT NULL,
    key_index INTEGER NOT NULL,
    event BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS retry_dest_due ON retry(dest, due);
CREATE TABLE IF NOT EXISTS dead (
    id INTEGER PRIMARY KEY,
    dest TEXT NOT NULL,
    at REAL NOT NULL,
    attempts INTEGER NOT NULL,
    status INTEGER,
    reason TEXT NOT NULL,
    response TEXT,
    source TEXT NOT NULL,
    key_index INTEGER NOT NULL,
    message_id TEXT,
    event BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_dest_at ON dead(dest, at);
"""


def dedup_hash(source: str, message_id: str) -> int:
    digest = hashlib.blake2b(f"{source}\x00{message_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


@dataclass(slots=True)
class IngestItem:
    """One accepted event, pre-encoded by ingest: the routing header JSON and the event JSON."""

    dedup: int
    header: bytes
    event: bytes


_LENGTHS = struct.Struct(">II")
# A record on the notify pipe of an ingest worker (proxy/workers.py): the last log id of a commit,
# or -index when worker ``index`` is up. 8 bytes, so each write is atomic on a pipe.
NOTIFY_RECORD = struct.Struct("<q")


def encode_records(items: Iterable[tuple[bytes, bytes]]) -> bytes:
    parts: list[bytes] = []
    for header, event in items:
        parts += (_LENGTHS.pack(len(header), len(event)), header, event)
    return b"".join(parts)


@dataclass(slots=True)
class Record:
    destinations: tuple[str, ...]
    skipped: dict[str, str]
    event: bytes  # the stored event's JSON


_HEADERS: dict[bytes, tuple[tuple[str, ...], dict[str, str]]] = {}


def decode_records(payload: bytes) -> list[Record]:
    out: list[Record] = []
    pos, end, unpack = 0, len(payload), _LENGTHS.unpack_from
    while pos < end:
        hlen, elen = unpack(payload, pos)
        pos += 8
        header = payload[pos:pos + hlen]
        pos += hlen
        parsed = _HEADERS.get(header)
        if parsed is None:  # few distinct routing headers exist: parse each once
            meta = orjson.loads(header)
            parsed = (tuple(meta.get("d", ())), meta.get("x", {}))
            if len(_HEADERS) < 4096:
                _HEADERS[header] = parsed
        out.append(Record(parsed[0], parsed[1], payload[pos:pos + elen]))
        pos += elen
    return out


@dataclass(slots=True)
class IngestResult:
    stored: int
    duplicates: int
    log_id: int | None


@dataclass(slots=True)
class LogRow:
    id: int
    received_at: float
    source: str
    key_index: int
    records: list[Record]
    size: int


@dataclass(slots=True)
class RetryRow:
    id: int
    dest: str
    due: float
    attempts: int
    first_failed: float
    source: str
    key_index: int
    event: bytes


class _Op:
    __slots__ = ("fn", "future", "loop", "append")

    def __init__(self, fn: Callable[[sqlite3.Connection], Any] | None, future: asyncio.Future | None,
                 loop: asyncio.AbstractEventLoop | None, append: "_Append | None" = None) -> None:
        self.fn = fn
        self.future = future
        self.loop = loop
        self.append = append


@dataclass(slots=True)
class _Append:
    source: str
    key_index: int
    received_at: float
    items: list[IngestItem]
    hashes: list[int] | None = None
    payload: bytes = b""

    def prepare(self) -> None:
        """The log payload as if no item were a duplicate (the usual case), built outside the lock."""
        self.hashes = [it.dedup for it in self.items]
        self.payload = encode_records((it.header, it.event) for it in self.items)


def _resolve(results: list[tuple[asyncio.Future, Any, BaseException | None]]) -> None:
    for fut, value, error in results:
        if fut.done():
            continue
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(value)


def connect(path: Path, durability: str = "full", readonly: bool = False) -> sqlite3.Connection:
    db = path / DB_NAME
    if readonly:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, check_same_thread=False, isolation_level=None)
    else:
        conn = sqlite3.connect(db, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA busy_timeout=10000")
    if not readonly:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={'FULL' if durability == 'full' else 'NORMAL'}")
        conn.execute("PRAGMA cache_size=-32000")
        conn.execute("PRAGMA wal_autocheckpoint=2000")
    return conn


class Spool:
    """The embedded spool. Create with ``Spool.open(path)`` inside a running event loop."""

    def __init__(self, path: Path, durability: str = "full", dedup_window: float = 86400.0,
                 max_bytes: int = 10 * 1024**3, retention: float = 3600.0) -> None:
        self.path = Path(path)
        self.durability = durability
        self.dedup_window = dedup_window
        self.max_bytes = max_bytes
        self.retention = retention
        self.path.mkdir(parents=True, exist_ok=True)
        self._queue: queue.SimpleQueue[_Op | None] = queue.SimpleQueue()
        self._lock_fd = os.open(self.path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        self._conn = connect(self.path, durability)
        with self._write_lock():
            self._conn.executescript(SCHEMA)
        self._reader = connect(self.path, durability)
        self._reader_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._listeners: list[asyncio.Event] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self.full = False
        self.size_bytes = 0
        # set in an ingest-only worker process: each commit's last log id is written here (8 bytes)
        # so the process running delivery learns of new rows at once
        self.notify_fd: int | None = None
        self.last_log_id = self._conn.execute("SELECT COALESCE(MAX(id), 0) FROM log").fetchone()[0]
        self._refresh_size()
        self.commits = 0

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="spool-writer", daemon=True)
        self._thread.start()

    async def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            await asyncio.to_thread(self._thread.join)
            self._thread = None
        self._conn.close()
        self._reader.close()
        os.close(self._lock_fd)

    @contextlib.contextmanager
    def _write_lock(self):
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)  # blocks in the kernel with the GIL released
        try:
            yield
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def subscribe(self) -> asyncio.Event:
        """An Event set whenever new events were committed to the log."""
        event = asyncio.Event()
        self._listeners.append(event)
        return event

    def _notify(self) -> None:
        for event in self._listeners:
            event.set()

    def observe_commit(self, log_id: int) -> None:
        """Rows up to ``log_id`` were committed by another process (an ingest worker)."""
        if log_id > self.last_log_id:
            self.last_log_id = log_id
            self._notify()

    # -- the writer thread ----------------------------------------------------------------------

    def _run(self) -> None:
        conn = self._conn
        stop = False
        while not stop:
            op = self._queue.get()
            if op is None:
                break
            batch = [op]
            while True:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            results: list[tuple[Any, Any, BaseException | None]] = []
            appends = [item for item in batch if item.append is not None]
            others = [item for item in batch if item.append is None]
            try:
                for item in appends:
                    item.append.prepare()
                self._transaction(conn, appends, others, results)
            except Exception as exc:  # the commit itself failed: every op in the group fails
                log.error("spool_commit_failed", error=repr(exc))
                results = [(item, None, exc) for item in batch]
            by_loop: dict[Any, list] = {}
            for item, value, error in results:
                if item.future is not None and item.loop is not None:
                    by_loop.setdefault(item.loop, []).append((item.future, value, error))
            for loop, res in by_loop.items():
                try:
                    loop.call_soon_threadsafe(_resolve, res)
                except RuntimeError:  # loop closed during shutdown
                    pass

    def _transaction(self, conn: sqlite3.Connection, appends: list[_Op], others: list[_Op],
                     results: list[tuple[Any, Any, BaseException | None]]) -> None:
        with self._write_lock():
            try:
                conn.execute("BEGIN IMMEDIATE")
                if appends:
                    # all requests of the group in a handful of statements: every statement costs
                    # this thread a GIL hand-off with the busy event loop
                    values = self._append_many(conn, [item.append for item in appends])
                    results.extend((item, value, None) for item, value in zip(appends, values))
                for item in others:
                    conn.execute("SAVEPOINT op")
                    try:
                        value = item.fn(conn)
                        conn.execute("RELEASE op")
                        results.append((item, value, None))
                    except Exception as exc:  # one bad op must not sink the group
                        conn.execute("ROLLBACK TO op")
                        conn.execute("RELEASE op")
                        log.error("spool_op_failed", error=repr(exc))
                        results.append((item, None, exc))
                conn.execute("COMMIT")
                self.commits += 1
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise

    def submit(self, fn: Callable[[sqlite3.Connection], Any]) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._queue.put(_Op(fn, fut, loop))
        return fut

    def submit_nowait(self, fn: Callable[[sqlite3.Connection], Any]) -> None:
        self._queue.put(_Op(fn, None, None))

    # -- ingest ---------------------------------------------------------------------------------

    async def append(self, source: str, key_index: int, received_at: float,
                     items: list[IngestItem]) -> IngestResult:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._queue.put(_Op(None, fut, loop, _Append(source, key_index, received_at, items)))
        result: IngestResult = await fut
        if result.stored:
            # only now, after the commit, may readers look for it
            self.last_log_id = max(self.last_log_id, result.log_id or 0)
            self._notify()
            if self.notify_fd is not None:
                with contextlib.suppress(OSError):  # a full pipe: the reader's periodic poll catches up
                    os.write(self.notify_fd, NOTIFY_RECORD.pack(result.log_id or 0))
        return result

    def _append_many(self, conn: sqlite3.Connection, appends: list[_Append]) -> list[IngestResult]:
        """Dedup and store a commit group. This runs under the cross-process write lock, so it
        keeps round trips to SQLite few: each releases the GIL and must wait to take it back from
        the busy event loop while the other processes wait for the lock. Payloads and the hash
        array were built before the lock was taken (``_Append.prepare``)."""
        now = max(a.received_at for a in appends)
        bucket, started, last_id = conn.execute(
            "SELECT (SELECT v FROM meta WHERE k = 'seen_bucket'), (SELECT v FROM meta WHERE k = 'seen_bucket_started'),"
            " (SELECT COALESCE(MAX(id), 0) FROM log)").fetchone()
        bucket = self._rotate(conn, int(bucket or 0), float(started) if started else None, now)
        hashes = orjson.dumps([h for a in appends for h in a.hashes])
        seen = {h for (h,) in conn.execute(
            "SELECT h FROM seen_0 WHERE h IN (SELECT value FROM json_each(?1)) UNION ALL "
            "SELECT h FROM seen_1 WHERE h IN (SELECT value FROM json_each(?1))", (hashes,))}
        next_id = last_id + 1
        rows: list[Any] = []
        results: list[IngestResult] = []
        for a in appends:
            unique = set(a.hashes)
            if len(unique) == len(a.hashes) and seen.isdisjoint(unique):
                payload, kept = a.payload, len(a.items)  # the common case: nothing seen before
                seen |= unique
            else:
                keep: list[tuple[bytes, bytes]] = []
                for it in a.items:
                    if it.dedup not in seen:
                        seen.add(it.dedup)
                        keep.append((it.header, it.event))
                payload, kept = encode_records(keep), len(keep)
            if not kept:
                results.append(IngestResult(0, len(a.items), None))
                continue
            rows += (next_id, a.received_at, a.source, a.key_index, kept, payload)
            results.append(IngestResult(kept, len(a.items) - kept, next_id))
            next_id += 1
        # Every hash of the group goes into the current bucket (a duplicate's too: a message sent
        # again is remembered for another window).
        conn.execute(f"INSERT OR IGNORE INTO seen_{bucket} (h) SELECT value FROM json_each(?)", (hashes,))
        per = 6 * 500  # parameters of 500 rows: one statement, one step
        for i in range(0, len(rows), per):
            chunk = rows[i:i + per]
            conn.execute("INSERT INTO log (id, received_at, source, key_index, count, payload) VALUES "
                         + ",".join(["(?,?,?,?,?,?)"] * (len(chunk) // 6)), chunk)
        return results

    def _rotate(self, conn: sqlite3.Connection, bucket: int, started: float | None, now: float) -> int:
        """The current dedup bucket, rotated first when its window is over (``bucket`` and
        ``started`` are read in the transaction: another process may have rotated)."""
        if started is not None and now - started < self.dedup_window:
            return bucket
        if started is not None:
            # The other bucket is older than one window: empty it and make it current.
            bucket = 1 - bucket
            conn.execute(f"DELETE FROM seen_{bucket}")
        conn.executemany(
            "INSERT OR REPLACE INTO meta (k, v) VALUES (?, ?)",
            [("seen_bucket", str(bucket)), ("seen_bucket_started", repr(now))],
        )
        return bucket

    # -- reading (delivery side) ----------------------------------------------------------------

    def _read(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        with self._reader_lock:
            return fn(self._reader)

    async def read(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        return await asyncio.to_thread(self._read, fn)

    @staticmethod
    def fetch_log(conn: sqlite3.Connection, after: int, max_events: int, max_rows: int = 512) -> list[LogRow]:
        """Log rows after ``after``: as many as hold about ``max_events`` events (at least one row)."""
        counts = conn.execute("SELECT id, count FROM log WHERE id > ? ORDER BY id LIMIT ?", (after, max_rows)).fetchall()
        if not counts:
            return []
        upto, total = counts[0][0], 0
        for row_id, count in counts:
            if total and total + count > max_events:
                break
            upto, total = row_id, total + count
        rows = conn.execute(
            "SELECT id, received_at, source, key_index, payload FROM log WHERE id > ? AND id <= ? ORDER BY id",
            (after, upto),
        ).fetchall()
        return [LogRow(r[0], r[1], r[2], r[3], decode_records(r[4]), len(r[4])) for r in rows]

    @staticmethod
    def fetch_due_retries(conn: sqlite3.Connection, dest: str, now: float, limit: int) -> list[RetryRow]:
        rows = conn.execute(
            "SELECT id, dest, due, attempts, first_failed, source, key_index, event FROM retry "
            "WHERE dest = ? AND due <= ? ORDER BY due, id LIMIT ?",
            (dest, now, limit),
        ).fetchall()
        return [RetryRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7]) for r in rows]

    @staticmethod
    def next_retry_due(conn: sqlite3.Connection, dest: str) -> float | None:
        row = conn.execute("SELECT MIN(due) FROM retry WHERE dest = ?", (dest,)).fetchone()
        return row[0] if row else None

    async def cursor(self, dest: str) -> int:
        """The destination's persisted cursor; a new destination starts at the end of the log."""
        def op(conn: sqlite3.Connection) -> int:
            row = conn.execute("SELECT pos FROM cursors WHERE dest = ?", (dest,)).fetchone()
            if row:
                return row[0]
            pos = conn.execute("SELECT COALESCE(MAX(id), 0) FROM log").fetchone()[0]
            conn.execute("INSERT INTO cursors (dest, pos) VALUES (?, ?)", (dest, pos))
            return pos
        return await self.submit(op)

    # -- maintenance ----------------------------------------------------------------------------

    def _refresh_size(self) -> None:
        try:
            page_size = self._reader.execute("PRAGMA page_size").fetchone()[0]
            pages = self._reader.execute("PRAGMA page_count").fetchone()[0]
            free = self._reader.execute("PRAGMA freelist_count").fetchone()[0]
        except sqlite3.Error:
            return
        wal = self.path / (DB_NAME + "-wal")
        wal_size = wal.stat().st_size if wal.exists() else 0
        self.size_bytes = (pages - free) * page_size + wal_size
        self.full = self.size_bytes >= self.max_bytes

    async def maintain(self, active_destinations: Iterable[str]) -> int:
        """Drop log rows every active destination is past (after ``retention``, or at once when the
        spool is full), refresh the size, and report how many rows were dropped."""
        dests = list(active_destinations)
        now = time.time()
        size_pressure = self.size_bytes >= self.max_bytes * 0.9

        def op(conn: sqlite3.Connection) -> int:
            if dests:
                marks = ",".join("?" * len(dests))
                row = conn.execute(f"SELECT MIN(pos), COUNT(*) FROM cursors WHERE dest IN ({marks})", dests).fetchone()
                if row[1] < len(dests):
                    return 0
                upto = row[0]
            else:
                upto = conn.execute("SELECT COALESCE(MAX(id), 0) FROM log").fetchone()[0]
            cutoff = now if size_pressure else now - self.retention
            cur = conn.execute("DELETE FROM log WHERE id <= ? AND received_at < ?", (upto, cutoff))
            return cur.rowcount

        dropped = await self.submit(op)
        await self.refresh()
        return dropped

    async def refresh(self) -> None:
        """Re-read the spool's size (``full``) and the newest log id: rows committed by other
        processes are noticed here even if their notification was lost."""
        def op(conn: sqlite3.Connection) -> int:
            self._refresh_size()
            return conn.execute("SELECT COALESCE(MAX(id), 0) FROM log").fetchone()[0]
        self.observe_commit(await asyncio.to_thread(self._read, op))


def read_all_events(path: str | Path) -> list[dict[str, Any]]:
    """Every event in the log, in arrival order, each with ``_trackrelay`` = {source, destinations,
    skipped} attached (for tests and `trackrelay` inspection commands; read-only)."""
    conn = connect(Path(path), readonly=True)
    try:
        out = []
        for source, payload in conn.execute("SELECT source, payload FROM log ORDER BY id"):
            for rec in decode_records(payload):
                event = orjson.loads(rec.event)
                event["_trackrelay"] = {"source": source, "destinations": list(rec.destinations),
                                        "skipped": dict(rec.skipped)}
                out.append(event)
        return out
    finally:
        conn.close()
