"""The bounded (source, messageId) index of one JetStream instance.

Every instance keeps the dedup hashes it has seen in memory, fills it at start and keeps it current
by tailing the ``<prefix>_IDS`` stream (one small message per stored request: its items' hashes),
which every instance publishes to next to the event record. Memory is bounded: ``dedup_memory``
buys ``dedup_memory // BYTES_PER_ID`` ids; when more distinct ids arrive within the window the
oldest are forgotten first and the effective window shrinks (:attr:`DedupIndex.effective_window`).
"""

from __future__ import annotations

import struct
import time

BYTES_PER_ID = 128  # a Python dict entry int -> float (key, value objects and the slot), measured ~110 B
_HEAD = struct.Struct("<d")  # receivedAt of the request, then the int64 hashes


def pack_ids(received_at: float, hashes: list[int]) -> bytes:
    return _HEAD.pack(received_at) + struct.pack(f"<{len(hashes)}q", *hashes)


def unpack_ids(body: bytes) -> tuple[float, tuple[int, ...]]:
    (at,) = _HEAD.unpack_from(body, 0)
    n = (len(body) - _HEAD.size) // 8
    return at, struct.unpack_from(f"<{n}q", body, _HEAD.size)


class DedupIndex:
    """hash -> receivedAt, insertion-ordered; the oldest go first when full or out of the window."""

    def __init__(self, window: float, memory: int) -> None:
        self.window = window
        self.capacity = max(1024, memory // BYTES_PER_ID)
        self._seen: dict[int, float] = {}
        self._reserved: set[int] = set()  # hashes of appends in flight in this instance

    def __len__(self) -> int:
        return len(self._seen)

    def seen(self, h: int, now: float) -> bool:
        if h in self._reserved:
            return True
        at = self._seen.get(h)
        return at is not None and at >= now - self.window

    def reserve(self, hashes: list[int]) -> None:
        self._reserved.update(hashes)

    def release(self, hashes: list[int]) -> None:
        self._reserved.difference_update(hashes)

    def add(self, hashes: list[int] | tuple[int, ...], at: float) -> None:
        seen = self._seen
        for h in hashes:
            if h not in seen:
                seen[h] = at
        over = len(seen) - self.capacity
        if over > 0:
            it = iter(seen)
            drop = [next(it) for _ in range(over)]
            for h in drop:
                del seen[h]
        self._expire()

    def _expire(self) -> None:
        seen = self._seen
        cutoff = time.time() - self.window
        while seen:
            h = next(iter(seen))
            if seen[h] >= cutoff:
                break
            del seen[h]

    @property
    def effective_window(self) -> float:
        """Seconds back from now that the index still covers (the full window unless memory ran out)."""
        if len(self._seen) < self.capacity or not self._seen:
            return self.window
        oldest = self._seen[next(iter(self._seen))]
        return max(0.0, min(self.window, time.time() - oldest))
