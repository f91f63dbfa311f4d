"""Event-store probe: which store should hold the spool's event log (issue 10)? It compares, in one run and
on the same disk, durable group commits of the same payloads into:

  sqlite    raw bodies as rows of one table (INTEGER PRIMARY KEY, BLOB), journal_mode WAL,
            synchronous FULL, the default autocheckpoint (the WAL's pages are written into the
            database again), one transaction per commit
  lmdb      py-lmdb (`pip install -e '.[bench]'`): one write transaction per commit, each payload put
            under an increasing 8-byte key with append=True; sync and metasync on (LMDB's durable mode)
  segments  CRC-framed records (length, CRC-32, payload) appended to 64 MB segment files: one writev and
            one fdatasync per commit; a new segment is created with O_EXCL and the directory fsync'ed

Two loads, each for every store:

  batch     commits of 4 x 110 KB request bodies (100-event /v1/batch bodies, as the ingest benchmark
            sends them), back to back from one thread: the batch ingest path's commits
  single    1.1 KB events from 64 concurrent committers (asyncio tasks) sharing commits: a writer
            thread takes everything queued, commits it once, then wakes every waiter of that
            commit; the group size follows from how long a commit takes (the single-event path)

For each it prints commits/s, appends/s, payload MB/s, the mean group size, bytes written to storage per
payload byte (/proc/self/io write_bytes - cancelled_write_bytes of the process that ran the store, the
final WAL checkpoint included for SQLite: every byte in the WAL is written to the database eventually),
and p50/p99 commit latency (batch: one commit; single: from an event's submission to its commit).

Every (store, load) runs in a fresh child process in a fresh directory under --dir (default: a temporary
directory on the same filesystem as the work tree's /tmp), deleted afterwards unless --keep. Figures
are printed, never asserted. On a shared or busy machine they are low and noisy: compare stores within
one run.

    .venv/bin/python benchmarks/event_store.py [--duration 10] [--only sqlite] [--load batch] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sqlite3
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import code_version, machine, percentile, proc_io, sample_body

STORES = ["sqlite", "lmdb", "segments"]
LOADS = {"batch": "4 x 110 KB bodies per commit, one committer",
         "single": "1.1 KB events, 64 concurrent committers sharing commits"}
BATCH_GROUP = 4
SINGLE_COMMITTERS = 64
SEGMENT_BYTES = 64 * 2**20


# ---------------------------------------------------------------------------------------------
# The stores: open(dir), commit(payloads) returns once durable, finish() (after the clock stops)
# ---------------------------------------------------------------------------------------------

class SqliteStore:
    def __init__(self, directory: Path) -> None:
        self.conn = sqlite3.connect(directory / "log.db", isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.execute("CREATE TABLE log (id INTEGER PRIMARY KEY, body BLOB NOT NULL)")

    def commit(self, payloads: list[bytes]) -> None:
        self.conn.execute("BEGIN")
        self.conn.executemany("INSERT INTO log (body) VALUES (?)", [(p,) for p in payloads])
        self.conn.execute("COMMIT")

    def finish(self) -> None:
        self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.conn.close()


class LmdbStore:
    def __init__(self, directory: Path) -> None:
        import lmdb

        self.env = lmdb.open(str(directory), map_size=1 << 37, sync=True, metasync=True, readahead=False,
                             meminit=False, max_dbs=0)
        self.seq = 0

    def commit(self, payloads: list[bytes]) -> None:
        with self.env.begin(write=True) as txn:
            for p in payloads:
                self.seq += 1
                txn.put(self.seq.to_bytes(8, "big"), p, append=True)

    def finish(self) -> None:
        self.env.close()


FRAME = struct.Struct("<II")  # payload length, CRC-32 of the payload


class SegmentStore:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        self.fd = -1
        self.offset = 0  # records so far: the next segment's name
        self.size = 0
        self._roll()

    def _roll(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
        self.fd = os.open(self.dir / f"{self.offset:020d}.seg", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND,
                          0o600)
        os.fsync(self.dir_fd)  # the new segment's directory entry is durable before anything in it is acked
        self.size = 0

    def commit(self, payloads: list[bytes]) -> None:
        bufs: list[bytes] = []
        for p in payloads:
            bufs.append(FRAME.pack(len(p), zlib.crc32(p)))
            bufs.append(p)
        total = sum(len(b) for b in bufs)
        done = 0
        for i in range(0, len(bufs), 1024):  # IOV_MAX
            done += os.writev(self.fd, bufs[i:i + 1024])
        if done != total:
            rest = b"".join(bufs)[done:]
            while rest:
                rest = rest[os.write(self.fd, rest):]
        os.fdatasync(self.fd)
        self.offset += len(payloads)
        self.size += total
        if self.size >= SEGMENT_BYTES:
            self._roll()

    def finish(self) -> None:
        os.close(self.fd)
        os.close(self.dir_fd)


def open_store(name: str, directory: Path) -> Any:
    return {"sqlite": SqliteStore, "lmdb": LmdbStore, "segments": SegmentStore}[name](directory)


# ---------------------------------------------------------------------------------------------
# The loads (run in a child process)
# ---------------------------------------------------------------------------------------------

def written() -> int:
    io = proc_io(os.getpid())
    return io.get("write_bytes", 0) - io.get("cancelled_write_bytes", 0)


def run_batch(store: Any, duration: float) -> dict[str, Any]:
    pool = [sample_body(100, f"b{i}") for i in range(BATCH_GROUP * 8)]
    lat: list[float] = []
    commits = payload = 0
    start = time.monotonic()
    deadline = start + duration
    while (t0 := time.monotonic()) < deadline:
        group = [pool[(commits * BATCH_GROUP + j) % len(pool)] for j in range(BATCH_GROUP)]
        store.commit(group)
        lat.append(time.monotonic() - t0)
        commits += 1
        payload += sum(len(p) for p in group)
    elapsed = time.monotonic() - start
    return {"elapsed": elapsed, "commits": commits, "appends": commits * BATCH_GROUP, "payload": payload,
            "lat": lat}


def run_single(store: Any, duration: float) -> dict[str, Any]:
    from concurrent.futures import ThreadPoolExecutor

    pool = [sample_body(1, f"s{i}") for i in range(256)]
    lat: list[float] = []
    stats = {"commits": 0, "appends": 0, "payload": 0}

    async def main() -> float:
        loop = asyncio.get_running_loop()
        executor = ThreadPoolExecutor(1, thread_name_prefix="commit")
        queue: list[tuple[bytes, asyncio.Future]] = []
        wake = asyncio.Event()
        stop = False

        async def writer() -> None:
            while not (stop and not queue):
                await wake.wait()
                wake.clear()
                if not queue:
                    continue
                group, queue[:] = list(queue), []
                await loop.run_in_executor(executor, store.commit, [p for p, _ in group])
                stats["commits"] += 1
                stats["appends"] += len(group)
                stats["payload"] += sum(len(p) for p, _ in group)
                for _, fut in group:
                    fut.set_result(None)

        async def committer(i: int, deadline: float) -> None:
            n = 0
            while time.monotonic() < deadline:
                fut = loop.create_future()
                t0 = time.monotonic()
                queue.append((pool[(i * 7 + n) % len(pool)], fut))
                wake.set()
                await fut
                lat.append(time.monotonic() - t0)
                n += 1

        w = loop.create_task(writer())
        start = time.monotonic()
        await asyncio.gather(*(committer(i, start + duration) for i in range(SINGLE_COMMITTERS)))
        elapsed = time.monotonic() - start
        stop = True
        wake.set()
        await w
        executor.shutdown()
        return elapsed

    elapsed = asyncio.run(main())
    return {"elapsed": elapsed, **stats, "lat": lat}


def child(store_name: str, load: str, directory: Path, duration: float) -> dict[str, Any]:
    directory.mkdir(parents=True, exist_ok=True)
    store = open_store(store_name, directory)
    w0 = written()
    res = (run_batch if load == "batch" else run_single)(store, duration)
    store.finish()  # SQLite's final checkpoint: its bytes count, its time does not
    res["written"] = written() - w0
    res["on_disk"] = sum(p.stat().st_blocks * 512 for p in directory.rglob("*") if p.is_file())
    lat = res.pop("lat")
    res.update(p50_ms=percentile(lat, 50) * 1e3, p99_ms=percentile(lat, 99) * 1e3,
               max_ms=max(lat, default=0.0) * 1e3)
    return res


# ---------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per (store, load)")
    ap.add_argument("--only", choices=STORES, action="append", help="stores to run (repeatable; default all)")
    ap.add_argument("--load", choices=list(LOADS), action="append", help="loads to run (repeatable; default both)")
    ap.add_argument("--dir", type=Path, help="where the stores are written (default: a new temporary directory)")
    ap.add_argument("--keep", action="store_true", help="keep the stores' files")
    ap.add_argument("--child", nargs=3, metavar=("STORE", "LOAD", "DIR"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        store_name, load, directory = args.child
        print(json.dumps(child(store_name, load, Path(directory), args.duration)))
        return 0

    workdir = Path(tempfile.mkdtemp(prefix="trackrelay-bench-store-", dir=args.dir))
    stores = args.only or STORES
    if "lmdb" in stores:
        try:
            import lmdb  # noqa: F401
        except ImportError:
            print("lmdb is not installed (`.venv/bin/pip install -e '.[bench]'`): skipping it", flush=True)
            stores = [s for s in stores if s != "lmdb"]
    print(f"event-store probe — {args.duration:.0f} s per store and load; work dir {workdir}", flush=True)
    print(f"code: {code_version()}; machine: {machine()}", flush=True)
    results: list[dict[str, Any]] = []
    try:
        for load in args.load or list(LOADS):
            print(f"{load}: {LOADS[load]}", flush=True)
            for name in stores:
                directory = workdir / f"{name}-{load}"
                out = subprocess.run([sys.executable, __file__, "--duration", str(args.duration), "--child", name, load,
                                      str(directory)], capture_output=True, text=True,
                                     timeout=args.duration * 3 + 120)
                if out.returncode != 0:
                    print(f"  {name:9} failed (exit {out.returncode}):\n{out.stderr[-3000:]}", flush=True)
                    continue
                r = json.loads(out.stdout.strip().splitlines()[-1])
                r.update(store=name, load=load)
                results.append(r)
                print(f"  {name:9} {r['commits'] / r['elapsed']:9,.0f} commits/s {r['appends'] / r['elapsed']:9,.0f} "
                      f"appends/s {r['payload'] / r['elapsed'] / 1e6:7.1f} MB/s  "
                      f"group {r['appends'] / max(r['commits'], 1):5.1f}"
                      f"  written/payload {r['written'] / max(r['payload'], 1):5.2f}  on disk/payload "
                      f"{r['on_disk'] / max(r['payload'], 1):5.2f}  p50 {r['p50_ms']:6.2f} ms  "
                      f"p99 {r['p99_ms']:7.2f} ms",
                      flush=True)
                if not args.keep:
                    shutil.rmtree(directory, ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    print()
    print("Summary (durable commits; batch = 4 x 110 KB bodies per commit; single = 1.1 KB events, 64 committers)")
    header = (f"{'load':8}{'store':10}{'commits/s':>10}{'appends/s':>11}{'MB/s':>8}{'group':>7}{'written/B':>11}"
              f"{'disk/B':>8}{'p50 ms':>9}{'p99 ms':>9}{'vs best MB/s':>14}")
    print(header)
    print("-" * len(header))
    for load in LOADS:
        rows = [r for r in results if r["load"] == load]
        best = max((r["payload"] / r["elapsed"] for r in rows), default=0.0)
        for r in rows:
            mbs = r["payload"] / r["elapsed"]
            print(f"{load:8}{r['store']:10}{r['commits'] / r['elapsed']:10,.0f}{r['appends'] / r['elapsed']:11,.0f}"
                  f"{mbs / 1e6:8.1f}{r['appends'] / max(r['commits'], 1):7.1f}"
                  f"{r['written'] / max(r['payload'], 1):11.2f}"
                  f"{r['on_disk'] / max(r['payload'], 1):8.2f}{r['p50_ms']:9.2f}{r['p99_ms']:9.2f}"
                  f"{mbs / best if best else 0:14.2f}")
    print()
    print("written/B = bytes written to storage (/proc/self/io of the store's process) per payload byte; disk/B = "
          "allocated size of the store's files per payload byte after the run; group = appends per commit.")
    print(f"(machine: {machine()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
