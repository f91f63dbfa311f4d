"""Delivery state of the embedded backend, in SQLite (``state.db``, WAL, synchronous=FULL): per
destination the log offset up to which everything is settled, the durable retries (each with its
own copy of the enriched event), the dead letters, and a few meta values. These are small and
transactional, which is what SQLite is good at; events themselves live in the segment log.

Every call runs on one thread of its own (SQLite connections are not shared across threads), so
the event loop never waits on a disk sync. The CLI opens the same file from another process while
a server runs: SQLite's locking (busy timeout) keeps that safe.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import orjson

from proxy.spool.base import DeadLetter, DeadQuery

T = TypeVar("T")
NAME = "state.db"

SCHEMA = """
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
    received_at REAL,
    done TEXT,
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
    received_at REAL,
    event BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_dest_at ON dead(dest, at);
CREATE TABLE IF NOT EXISTS partial (dest TEXT NOT NULL, record INTEGER NOT NULL, position INTEGER NOT NULL,
                                    PRIMARY KEY (dest, record, position)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
"""


class RetryRow:
    __slots__ = ("id", "due", "attempts", "first_failed", "source", "key_index", "received_at", "done", "event")

    def __init__(self, row: tuple[Any, ...]) -> None:
        (self.id, self.due, self.attempts, self.first_failed, self.source, self.key_index, self.received_at,
         done, self.event) = row
        self.done = frozenset(orjson.loads(done)) if done else frozenset()


def connect(path: Path, readonly: bool = False) -> sqlite3.Connection:
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False, isolation_level=None)
    else:
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA busy_timeout=10000")
    if not readonly:
        # before the first table exists: lets maintenance give freed pages (delivered retries) back
        conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        # small transactions: keep the WAL small too (it counts towards storage.max_bytes)
        conn.execute("PRAGMA wal_autocheckpoint=256")
        conn.execute("PRAGMA journal_size_limit=1048576")
        conn.executescript(SCHEMA)
    return conn


class State:
    def __init__(self, directory: Path, readonly: bool = False) -> None:
        self.path = directory / NAME
        self.readonly = readonly
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="spool-state")
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = connect(self.path, self.readonly)
        return self._conn

    def call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in a transaction, on the calling thread (start-up, CLI)."""
        with self._lock:
            conn = self._db()
            conn.execute("BEGIN IMMEDIATE" if not self.readonly else "BEGIN")
            try:
                result = fn(conn)
                conn.execute("COMMIT")
                return result
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self.call, fn)

    async def checkpoint(self) -> None:
        def run() -> None:
            with self._lock:
                self._db().execute("PRAGMA wal_checkpoint(TRUNCATE)")
        await asyncio.get_running_loop().run_in_executor(self._pool, run)

    async def shrink(self, threshold: int) -> int:
        """Give free pages back to the file system once more than ``threshold`` bytes are free."""
        def run() -> int:
            with self._lock:
                conn = self._db()
                pages = conn.execute("PRAGMA freelist_count").fetchone()[0]
                free = pages * conn.execute("PRAGMA page_size").fetchone()[0]
                if free <= threshold:
                    return 0
                conn.executescript("PRAGMA incremental_vacuum;")  # runs it to the end (execute() steps once)
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                return int(free)
        return await asyncio.get_running_loop().run_in_executor(self._pool, run)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # -- queries (run through call/run) --------------------------------------------------------

    @staticmethod
    def cursors(conn: sqlite3.Connection) -> dict[str, int]:
        return dict(conn.execute("SELECT dest, pos FROM cursors").fetchall())

    @staticmethod
    def meta(conn: sqlite3.Connection, key: str) -> str | None:
        row = conn.execute("SELECT v FROM meta WHERE k = ?", (key,)).fetchone()
        return row[0] if row else None

    @staticmethod
    def set_meta(conn: sqlite3.Connection, key: str, value: str) -> None:
        conn.execute("INSERT OR REPLACE INTO meta (k, v) VALUES (?, ?)", (key, value))

    @staticmethod
    def due_retries(conn: sqlite3.Connection, dest: str, now: float, limit: int) -> list[RetryRow]:
        rows = conn.execute(
            "SELECT id, due, attempts, first_failed, source, key_index, received_at, done, event FROM retry "
            "WHERE dest = ? AND due <= ? ORDER BY due, id LIMIT ?", (dest, now, limit)).fetchall()
        return [RetryRow(r) for r in rows]

    @staticmethod
    def expedite(conn: sqlite3.Connection, dest: str, now: float, limit: int | None) -> int:
        return conn.execute(
            "UPDATE retry SET due = ? WHERE id IN (SELECT id FROM retry WHERE dest = ? AND due > ? ORDER BY due, id"
            " LIMIT ?)", (now, dest, now, -1 if limit is None else limit)).rowcount

    @staticmethod
    def next_due(conn: sqlite3.Connection, dest: str, after: float) -> float | None:
        """The earliest due time after ``after`` (retries due already are leased or in flight)."""
        due = conn.execute("SELECT MIN(due) FROM retry WHERE dest = ? AND due > ?", (dest, after)).fetchone()[0]
        return None if due is None else float(due)

    @staticmethod
    def settle(conn: sqlite3.Connection, dest: str, dead: Sequence[tuple[Any, ...]],
               new_retries: Sequence[tuple[Any, ...]],
               updated: Sequence[tuple[Any, ...]], finished: Sequence[int], cursor: int | None,
               partial: Sequence[tuple[int, int]] = ()) -> None:
        if dead:
            conn.executemany(
                "INSERT INTO dead (dest, at, attempts, status, reason, response, source, key_index, message_id,"
                " received_at, event) VALUES (?,?,?,?,?,?,?,?,?,?,?)", [(dest, *d) for d in dead])
        if new_retries:
            conn.executemany(
                "INSERT INTO retry (dest, due, attempts, first_failed, last_status, last_error, source, key_index,"
                " received_at, done, event) VALUES (?,?,?,?,?,?,?,?,?,?,?)", [(dest, *r) for r in new_retries])
        if updated:
            conn.executemany(
                "UPDATE retry SET due = ?, attempts = ?, last_status = ?, last_error = ?, done = ? WHERE id = ?",
                             updated)
        if finished:
            conn.executemany("DELETE FROM retry WHERE id = ?", [(i,) for i in finished])
        if partial:
            conn.executemany("INSERT OR IGNORE INTO partial (dest, record, position) VALUES (?,?,?)",
                             [(dest, off, pos) for off, pos in partial])
        if cursor is not None:
            State.move_cursor(conn, dest, cursor)
            conn.execute("DELETE FROM partial WHERE dest = ? AND record < ?", (dest, cursor))

    @staticmethod
    def partial(conn: sqlite3.Connection, dest: str, cursor: int) -> dict[int, set[int]]:
        out: dict[int, set[int]] = {}
        for off, pos in conn.execute("SELECT record, position FROM partial WHERE dest = ? AND record >= ?",
                                     (dest, cursor)):
            out.setdefault(off, set()).add(pos)
        return out

    @staticmethod
    def move_cursor(conn: sqlite3.Connection, dest: str, pos: int) -> None:
        conn.execute("INSERT INTO cursors (dest, pos) VALUES (?, ?) ON CONFLICT(dest) DO UPDATE SET pos = excluded.pos"
                     " WHERE excluded.pos > cursors.pos", (dest, pos))

    @staticmethod
    def _where(query: DeadQuery) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        if query.destination:
            clauses.append("dest = ?")
            params.append(query.destination)
        if query.since is not None:
            clauses.append("at >= ?")
            params.append(query.since)
        if query.until is not None:
            clauses.append("at <= ?")
            params.append(query.until)
        if query.ids:
            ids = [int(i) for i in query.ids if str(i).isdigit()]
            clauses.append(f"id IN ({','.join('?' * len(ids))})" if ids else "0")
            params.extend(ids)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params

    @staticmethod
    def dead_letters(conn: sqlite3.Connection, query: DeadQuery) -> tuple[list[DeadLetter], int]:
        where, params = State._where(query)
        limit = query.limit if query.limit is not None else -1
        rows = conn.execute(
            f"SELECT id, dest, at, attempts, status, reason, response, source, message_id FROM dead{where}"
            " ORDER BY id LIMIT ?", (*params, limit)).fetchall()
        total = conn.execute(f"SELECT COUNT(*) FROM dead{where}", params).fetchone()[0]
        return [DeadLetter(str(r[0]), *r[1:]) for r in rows], total

    @staticmethod
    def dead_letter(conn: sqlite3.Connection, id: str) -> DeadLetter | None:
        if not str(id).isdigit():
            return None
        r = conn.execute("SELECT id, dest, at, attempts, status, reason, response, source, message_id, event"
                         " FROM dead WHERE id = ?", (int(id),)).fetchone()
        return DeadLetter(str(r[0]), *r[1:]) if r else None

    @staticmethod
    def replay_chunk(conn: sqlite3.Connection, ids: Sequence[int]) -> int:
        now = time.time()
        marks = ",".join("?" * len(ids))
        conn.execute(
            "INSERT INTO retry (dest, due, attempts, first_failed, last_status, last_error, source, key_index,"
            " received_at, done, event) SELECT dest, ?, 0, ?, NULL, 'replayed from dead letters', source, key_index,"
            f" received_at, NULL, event FROM dead WHERE id IN ({marks})", (now, now, *ids))
        return conn.execute(f"DELETE FROM dead WHERE id IN ({marks})", list(ids)).rowcount

    @staticmethod
    def reroute_chunk(conn: sqlite3.Connection, moves: Sequence[tuple[int, Sequence[str]]]) -> int:
        """Each dead letter (id) becomes a retry, due now, of each destination named with it; then it
        is deleted. Returns how many dead letters were moved (one may have gone meanwhile)."""
        now = time.time()
        moved = 0
        for did, targets in moves:
            for dest in targets:
                conn.execute(
                    "INSERT INTO retry (dest, due, attempts, first_failed, last_status, last_error, source, key_index,"
                    " received_at, done, event) SELECT ?, ?, 0, ?, NULL, 'replayed', source, key_index,"
                    " received_at, NULL, event FROM dead WHERE id = ?", (dest, now, now, did))
            moved += conn.execute("DELETE FROM dead WHERE id = ?", (did,)).rowcount
        return moved

    @staticmethod
    def counts(conn: sqlite3.Connection) -> tuple[dict[str, int], dict[str, int]]:
        retries = dict(conn.execute("SELECT dest, COUNT(*) FROM retry GROUP BY dest").fetchall())
        dead = dict(conn.execute("SELECT dest, COUNT(*) FROM dead GROUP BY dest").fetchall())
        return retries, dead

    @staticmethod
    def oldest_retries(conn: sqlite3.Connection) -> dict[str, float]:
        return dict(conn.execute("SELECT dest, MIN(received_at) FROM retry WHERE received_at IS NOT NULL"
                                 " GROUP BY dest").fetchall())

    @staticmethod
    def known(conn: sqlite3.Connection) -> list[str]:
        return sorted({r[0] for r in conn.execute(
            "SELECT dest FROM cursors UNION SELECT dest FROM retry UNION SELECT dest FROM dead")})

    @staticmethod
    def forget(conn: sqlite3.Connection, dest: str) -> int:
        conn.execute("DELETE FROM cursors WHERE dest = ?", (dest,))
        conn.execute("DELETE FROM partial WHERE dest = ?", (dest,))
        return conn.execute("DELETE FROM retry WHERE dest = ?", (dest,)).rowcount
