"""The dedup index: 64-bit hashes of (source, messageId) seen within the window, in memory, with a
fixed memory bound, rebuilt at start from a small journal.

Two generations of open-addressing hash tables (8-byte slots in an anonymous mmap, filled to at
most half: 16 bytes per remembered id). Lookups consult both; inserts go to the current one. The
current generation is retired when it is ``window`` old or half full, whichever comes first: an id
is remembered at least until the generation after its own is retired, so the guaranteed window is
the lifetime of one generation — ``window`` while the traffic fits, shorter when it does not. The
shortfall is visible (``effective_window``), memory never grows.

The journal (``dedup/<slot>.ids``, one file per ``window`` of wall time) holds every hash as it is
committed, in blocks ``u32 count | f64 receivedAt | count × i64``, appended under the log's write
lock by every process. It is not fsync'd per commit: the log itself holds the hashes of the
records it keeps, so after a power loss the rebuild re-reads the log past the last journal sync
point. Journal files two windows old are deleted.
"""

from __future__ import annotations

import mmap
import os
import struct
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

_BLOCK = struct.Struct("<Id")


class _Table:
    __slots__ = ("mask", "slots", "count", "limit", "started", "_map")

    def __init__(self, capacity: int, started: float) -> None:
        self._map = mmap.mmap(-1, capacity * 8)  # zero pages: memory is used as slots fill
        self.slots = memoryview(self._map).cast("q")
        self.mask = capacity - 1
        self.count = 0
        self.limit = capacity // 2
        self.started = started

    def close(self) -> None:
        self.slots.release()
        self._map.close()

    def add_all(self, hashes: Iterable[int]) -> None:
        """Insert each hash (the caller keeps ``count`` below ``limit`` beforehand: a table never
        fills beyond half, so probing ends)."""
        slots, mask = self.slots, self.mask
        added = 0
        for h in hashes:
            i = h & mask
            while True:
                v = slots[i]
                if v == h:
                    break
                if v == 0:
                    slots[i] = h
                    added += 1
                    break
                i = (i + 1) & mask
        self.count += added

    def found(self, hashes: Iterable[int]) -> set[int]:
        """The hashes of ``hashes`` this table holds."""
        slots, mask = self.slots, self.mask
        out: set[int] = set()
        for h in hashes:
            i = h & mask
            while True:
                v = slots[i]
                if v == h:
                    out.add(h)
                    break
                if v == 0:
                    break
                i = (i + 1) & mask
        return out


class DedupIndex:
    def __init__(self, memory_bytes: int, window: float) -> None:
        per_table = max(1024, memory_bytes // 16)  # two tables of 8-byte slots
        capacity = 1 << (per_table.bit_length() - 1)  # a power of two not above the share
        self.capacity = capacity
        self.window = window
        self.current = _Table(capacity, 0.0)
        self.previous: _Table | None = None
        self.rotations_full = 0  # generations retired for lack of room (the window shrank)
        self.last_lifetime: float | None = None  # how long the last retired generation lived

    @property
    def ids_capacity(self) -> int:
        return self.current.limit

    def _rotate(self, now: float, full: bool) -> None:
        old = self.previous
        if old is not None:
            old.close()
        if self.current.started:
            self.last_lifetime = now - self.current.started
        self.previous = self.current
        self.current = _Table(self.capacity, now)
        if full:
            self.rotations_full += 1

    def advance(self, now: float) -> None:
        """Retire generations the clock has left behind (before lookups at ``now``)."""
        cur = self.current
        if not cur.started:
            cur.started = now
        elif now - cur.started >= self.window:
            self._rotate(now, full=False)
            if self.previous is not None and now - self.previous.started >= self.window:
                self._rotate(now, full=False)  # two windows or more went by: nothing is remembered

    def seen_among(self, hashes: Sequence[int]) -> set[int]:
        """The hashes of ``hashes`` seen within the window (usually none)."""
        found = self.current.found(hashes)
        if self.previous is not None:
            found |= self.previous.found(hashes)
        return found

    def add_many(self, hashes: Iterable[int], now: float) -> None:
        self.advance(now)
        pending = hashes if isinstance(hashes, list) else list(hashes)
        while pending:
            cur = self.current
            room = cur.limit - cur.count  # each insert adds at most one: a chunk of ``room`` fits
            if room <= 0:
                self._rotate(now, full=True)
                continue
            cur.add_all(pending[:room] if len(pending) > room else pending)
            pending = pending[room:]

    def effective_window(self, now: float | None = None) -> float:
        """How long an id is remembered at least, as things stand: the window, or less when the
        generations fill up before it."""
        if self.rotations_full and self.last_lifetime is not None:
            return min(self.window, self.last_lifetime)
        return self.window

    def memory_bytes(self) -> int:
        return self.capacity * 8 * 2

    def close(self) -> None:
        self.current.close()
        if self.previous is not None:
            self.previous.close()


class Journal:
    """Appends of hash blocks, one file per window of wall time (callers hold the log's write lock)."""

    def __init__(self, directory: Path, window: float) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.window = max(1.0, window)
        self._slot: int | None = None
        self._fd: int | None = None
        self._dirty: set[int] = set()
        self.unsynced = False  # written since the last sync

    def _path(self, slot: int) -> Path:
        return self.dir / f"{slot:012d}.ids"

    def write(self, hashes: list[int], at: float) -> None:
        if not hashes:
            return
        slot = int(at // self.window)
        if slot != self._slot:
            if self._fd is not None:
                self._dirty.add(self._fd)
            self._fd = os.open(self._path(slot), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            self._slot = slot
        assert self._fd is not None  # opened above for the current slot
        os.write(self._fd, _BLOCK.pack(len(hashes), at) + struct.pack(f"<{len(hashes)}q", *hashes))
        self.unsynced = True

    def sync(self, now: float | None = None) -> None:
        """fsync the journal files of this window and the last, whoever wrote them (every process
        appends to the same files; an fsync covers the file, not the descriptor)."""
        self.unsynced = False
        for fd in list(self._dirty):
            os.fsync(fd)
            os.close(fd)
        self._dirty.clear()
        slot = int((time.time() if now is None else now) // self.window)
        for s in {slot - 1, slot, self._slot}:
            if s is None:
                continue
            try:
                fd = os.open(self._path(s), os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def close(self) -> None:
        self.sync()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def prune(self, now: float) -> None:
        """Delete journal files that hold nothing of the last two windows."""
        keep_from = int(now // self.window) - 2
        for path in self.dir.glob("*.ids"):
            try:
                slot = int(path.stem)
            except ValueError:
                continue
            if slot < keep_from and slot != self._slot:
                path.unlink(missing_ok=True)

    def blocks(self, since: float) -> Iterator[tuple[float, list[int]]]:
        """(receivedAt, hashes) of every whole block newer than ``since``, oldest file first."""
        for path in sorted(self.dir.glob("*.ids")):
            try:
                if (int(path.stem) + 1) * self.window < since:
                    continue
                data = path.read_bytes()
            except (ValueError, OSError):
                continue
            pos = 0
            while pos + _BLOCK.size <= len(data):
                count, at = _BLOCK.unpack_from(data, pos)
                end = pos + _BLOCK.size + 8 * count
                if end > len(data):
                    break  # a torn last block
                if at >= since:
                    yield at, list(struct.unpack_from(f"<{count}q", data, pos + _BLOCK.size))
                pos = end

