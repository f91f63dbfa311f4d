"""Upgrade a spool written before the storage rework (one SQLite file, ``spool.db``) to the segment
log + state.db layout, losing nothing: undelivered events keep their place in each destination's
queue, retries and dead letters move as they are, dedup hashes are kept for a window.

It runs at the first start of the new release on an old spool (and with ``trackrelay spool
migrate``), under the instance lock. The new files are built in ``migrate.tmp/`` and moved into place
at the end, the log directory last (its existence marks a finished migration); the old file is kept
as ``spool.db.v0-migrated`` until the operator deletes it.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any

import orjson
import structlog

from proxy.spool import records
from proxy.spool.base import Append, Item, Route, dedup_hash
from proxy.spool.embedded.dedup import Journal
from proxy.spool.embedded.segments import SegmentLog, _fsync_dir
from proxy.spool.embedded.state import State
from proxy.spool.legacy_v0 import decode_records

log = structlog.get_logger("trackrelay.spool")

LEGACY = "spool.db"
KEPT = "spool.db.v0-migrated"


def needed(directory: Path) -> bool:
    return (directory / LEGACY).exists() and not (directory / "log").exists()


def migrate_if_needed(directory: Path, storage: Any) -> dict[str, int] | None:
    if not needed(directory):
        return None
    return migrate(directory, storage)


def migrate(directory: Path, storage: Any) -> dict[str, int]:
    from proxy.spool.embedded import DEDUP_SYNCED, segment_size

    started = time.monotonic()
    tmp = directory / "migrate.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    old = sqlite3.connect(f"file:{directory / LEGACY}?mode=rw", uri=True, isolation_level=None)
    old.execute("PRAGMA busy_timeout=10000")
    counts = {"rows": 0, "events": 0, "retries": 0, "dead": 0, "cursors": 0, "hashes": 0}
    seglog = SegmentLog(tmp / "log", segment_size(storage))
    first_after: dict[int, int] = {}  # old row id -> offset of its record
    row_ids: list[int] = []
    try:
        with seglog.locked():
            for row_id, received_at, source, key_index, payload in old.execute(
                    "SELECT id, received_at, source, key_index, payload FROM log ORDER BY id"):
                routes: list[Route] = []
                route_of: dict[tuple[Any, ...], int] = {}
                items = []
                for i, rec in enumerate(decode_records(payload)):
                    key = (rec.destinations, tuple(sorted(rec.skipped.items())))
                    if key not in route_of:
                        route_of[key] = len(routes)
                        routes.append(Route(tuple(rec.destinations), dict(rec.skipped)))
                    try:
                        mid = orjson.loads(rec.event).get("messageId") or ""
                    except orjson.JSONDecodeError:
                        mid = ""
                    items.append(Item(bytes(rec.event), dedup_hash(source, str(mid)), route_of[key], i))
                if not items:
                    continue
                request = Append(source, key_index, received_at, items, routes, enriched=True)
                start, _ = seglog.append(records.frame(records.encode(request)))
                first_after[row_id] = start
                row_ids.append(row_id)
                counts["rows"] += 1
                counts["events"] += len(items)
            seglog.sync()
            end = seglog.end()
        state = State(tmp)
        cursors = dict(old.execute("SELECT dest, pos FROM cursors").fetchall())
        retry = old.execute("SELECT dest, due, attempts, first_failed, last_status, last_error, source, key_index, "
                            "event FROM retry ORDER BY id").fetchall()
        dead = old.execute("SELECT dest, at, attempts, status, reason, response, source, key_index, message_id, event "
                           "FROM dead ORDER BY id").fetchall()

        def fill(conn: sqlite3.Connection) -> None:
            for dest, pos in cursors.items():
                # the first record made from a row the destination had not passed yet
                new = next((first_after[r] for r in row_ids if r > pos), end)
                State.move_cursor(conn, dest, new)
            conn.executemany(
                "INSERT INTO retry (dest, due, attempts, first_failed, last_status, last_error, source, key_index,"
                " received_at, done, event) VALUES (?,?,?,?,?,?,?,?,NULL,NULL,?)", retry)
            conn.executemany(
                "INSERT INTO dead (dest, at, attempts, status, reason, response, source, key_index, message_id,"
                " received_at, event) VALUES (?,?,?,?,?,?,?,?,?,NULL,?)", dead)
            State.set_meta(conn, DEDUP_SYNCED, str(end))
        state.call(fill)
        state.close()
        counts.update(cursors=len(cursors), retries=len(retry), dead=len(dead))
        hashes = [h for table in ("seen_0", "seen_1") for (h,) in old.execute(f"SELECT h FROM {table}")]
        journal = Journal(tmp / "dedup", float(storage.dedup_window))
        for i in range(0, len(hashes), 10_000):  # remembered for a window from now
            journal.write([h or 1 for h in hashes[i:i + 10_000]], time.time())
        journal.close()
        counts["hashes"] = len(hashes)
        old.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the kept copy is whole without its -wal file
    finally:
        seglog.close()
        old.close()
    for name in ("state.db", "dedup"):
        dst = directory / name
        if dst.is_dir():
            shutil.rmtree(dst)
        os.replace(tmp / name, dst)
    os.replace(tmp / "log", directory / "log")  # the marker of a finished migration
    for suffix in ("-wal", "-shm"):
        (directory / (LEGACY + suffix)).unlink(missing_ok=True)
    os.replace(directory / LEGACY, directory / KEPT)
    shutil.rmtree(tmp, ignore_errors=True)
    _fsync_dir(directory)
    log.info("spool_migrated", **counts, seconds=round(time.monotonic() - started, 2), kept=KEPT)
    return counts
