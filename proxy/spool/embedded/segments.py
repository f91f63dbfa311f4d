"""The event log: append-only segment files of CRC-framed records, as Kafka, NATS and Vector's disk
buffer keep theirs.

- ``log/<base offset, 20 digits>.seg``: a segment holds the records from its base offset (a global
  byte offset) to the next segment's base. A record's position is its global offset, so positions
  only grow and a cursor is a single integer.
- Several processes (server.workers) append to the last segment, serialised by an exclusive
  ``flock`` on ``log/write.lock``; each write is one ``write()`` of whole frames, followed by
  ``fdatasync`` (durability full) after the lock is released, so the next writer's write overlaps
  this one's sync (an fdatasync covers every page written to the file before it).
- A writer that dies inside its ``write()`` leaves a torn frame at the end of the file, and only
  there (nothing is written without the lock). The next writer, which re-reads everything appended
  since its own last write (it needs those records' dedup hashes anyway), finds it and truncates
  the file there; so does recovery at start. Nothing torn was ever acknowledged.
- A new segment is started when the last one reaches ``segment_bytes``; its creation is made
  durable by an fsync of the directory. Segments are deleted whole, only when every active
  destination has settled everything in them (the caller decides the offset).
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import fcntl
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import structlog

from proxy.spool import records

log = structlog.get_logger("trackrelay.spool")

SUFFIX = ".seg"
READ_CHUNK = 1 << 20


VALIDATE_CHUNK = 4 << 20  # bytes of payloads a streaming validate() holds at once


def _name(base: int) -> str:
    return f"{base:020d}{SUFFIX}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SegmentLog:
    def __init__(self, directory: Path, segment_bytes: int, *, readonly: bool = False) -> None:
        self.dir = directory
        self.segment_bytes = segment_bytes
        self.readonly = readonly
        if not readonly:
            self.dir.mkdir(parents=True, exist_ok=True)
        self._lock_fd = -1 if readonly else os.open(self.dir / "write.lock", os.O_RDWR | os.O_CREAT, 0o600)
        self._thread_lock = threading.Lock()
        self._held = False  # this process holds the lock (set and cleared by locked())
        self._followed = False  # _follow() already looked while it is held
        self._dir = str(directory)
        self._bases: list[int] = self._list()
        self._wfd = -1
        self._rfds: dict[int, int] = {}
        if not readonly:
            with self.locked():
                if not self._bases:
                    self._create(0)
                self._open_tail()

    # -- segments -------------------------------------------------------------------------------

    def _list(self) -> list[int]:
        out = []
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(self.dir):
                if name.endswith(SUFFIX):
                    with contextlib.suppress(ValueError):
                        out.append(int(name[:-len(SUFFIX)]))
        return sorted(out)

    def _create(self, base: int) -> None:
        fd = os.open(self.dir / _name(base), os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
        _fsync_dir(self.dir)
        if base not in self._bases:
            bisect.insort(self._bases, base)

    def _open_tail(self) -> None:
        if self._wfd >= 0:
            os.close(self._wfd)
        self._wfd = os.open(self.dir / _name(self._bases[-1]), os.O_RDWR | os.O_APPEND)

    def _follow(self) -> None:
        """Under the lock: pick up segments other processes started (or deleted) since we last looked
        (once per holding of the lock: segments are only created or deleted under it)."""
        if self._followed:
            return
        self._followed = self._held
        st = os.fstat(self._wfd)
        if st.st_nlink and not os.path.exists(os.path.join(self._dir, _name(self._bases[-1] + st.st_size))):
            return  # still the last segment (a stat per commit)
        self._bases = self._list()
        for base in [b for b in self._rfds if b not in self._bases]:
            os.close(self._rfds.pop(base))
        self._open_tail()

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive use of the log's end, across threads and processes. An flock belongs to the
        open file, not the thread: a second thread of this process would get it at once and, on
        release, drop it while the first still writes; the thread lock comes first for that."""
        with self._thread_lock:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)  # waits in the kernel, GIL released
            self._held, self._followed = True, False
            try:
                yield
            finally:
                self._held = self._followed = False
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def end(self) -> int:
        """The end of the log (under the lock: a frame boundary)."""
        if self.readonly:
            self._bases = self._list() or [0]
            base = self._bases[-1]
            try:
                return base + os.stat(self.dir / _name(base)).st_size
            except FileNotFoundError:
                return base
        self._follow()
        return self._bases[-1] + os.fstat(self._wfd).st_size

    def first(self) -> int:
        return self._bases[0] if self._bases else 0

    def last(self) -> int:
        """Base offset of the last segment."""
        return self._bases[-1] if self._bases else 0

    def segment_of(self, offset: int) -> int:
        """Base offset of the segment holding ``offset``."""
        i = bisect.bisect_right(self._bases, offset) - 1
        return self._bases[max(0, i)]

    def _rfd(self, base: int) -> int:
        fd = self._rfds.get(base)
        if fd is None:
            fd = self._rfds[base] = os.open(self.dir / _name(base), os.O_RDONLY)
        return fd

    def _segment_end(self, base: int) -> int:
        i = bisect.bisect_right(self._bases, base)
        if i < len(self._bases):
            return self._bases[i]
        return base + os.fstat(self._rfd(base)).st_size

    # -- writing (callers hold the lock) --------------------------------------------------------

    def validate(self, start: int, each: Callable[[bytes], None] | None = None) -> tuple[list[bytes], int]:
        """Every record from ``start`` (a record boundary) to the end, and the end. A torn or corrupt
        tail is cut off (its writer died inside its write: nothing of it was acknowledged). With
        ``each``, every payload is handed to it as it is read, a few MB at a time, and none is
        returned (a recovery reading a whole segment keeps no more of it in memory)."""
        end = self.end()
        payloads: list[bytes] = []
        budget = None if each is None else VALIDATE_CHUNK
        pos = max(start, self.first())
        while pos < end:
            base = self.segment_of(pos)
            seg_end = min(self._segment_end(base), end)
            frames, stop = self._frames(base, pos, seg_end, budget)
            if each is None:
                payloads += [p for _, _, p in frames]
            else:
                for _, _, p in frames:
                    each(p)
                if stop < seg_end and stop > pos and sum(len(p) for _, _, p in frames) >= VALIDATE_CHUNK:
                    pos = stop  # stopped for the budget, not at a bad frame: read on
                    continue
            if stop < seg_end:
                if base == self._bases[-1]:
                    log.warning("spool_torn_tail_truncated", segment=_name(base), at=stop, bytes=seg_end - stop)
                    os.ftruncate(self._wfd, stop - base)
                    os.fsync(self._wfd)
                    return payloads, stop
                log.error("spool_segment_corrupt", segment=_name(base), at=stop, lost_bytes=seg_end - stop)
            pos = seg_end
        return payloads, end

    def _frames(self, base: int, start: int, end: int, max_bytes: int | None
                ) -> tuple[list[tuple[int, int, bytes]], int]:
        """(offset, next offset, payload) of the whole, intact frames of segment ``base`` from
        ``start`` towards ``end`` (about ``max_bytes`` of them when given), and where it stopped:
        ``end``, the byte budget, or a torn/corrupt frame."""
        fd = self._rfd(base)
        out: list[tuple[int, int, bytes]] = []
        pos, total = start, 0
        while pos < end and (max_bytes is None or total < max_bytes):
            data = os.pread(fd, min(READ_CHUNK, end - pos), pos - base)
            if len(data) < records.FRAME_SIZE:
                break
            length = records.FRAME.unpack_from(data, 0)[0]
            need = records.FRAME_SIZE + length
            if len(data) < need <= end - pos and length <= records.MAX_PAYLOAD:
                data = os.pread(fd, need, pos - base)  # one frame larger than a read
            nxt = pos
            for off, payload in records.scan(data):
                nxt = pos + off + records.FRAME_SIZE + len(payload)
                out.append((pos + off, nxt, bytes(payload)))
                total += len(payload)
                if max_bytes is not None and total >= max_bytes:
                    break
            if nxt == pos:
                break
            pos = nxt
        return out, pos

    def append(self, data: bytes) -> tuple[int, int]:
        """Write whole frames at the end; (start, end) offsets. On a write error the partial write
        is removed and the error raised."""
        self._follow()
        base = self._bases[-1]
        size = os.fstat(self._wfd).st_size
        if size >= self.segment_bytes:
            self._create(base + size)
            self._open_tail()
            base, size = self._bases[-1], 0
        start = base + size
        view = memoryview(data)
        written = 0
        try:
            while written < len(view):
                written += os.write(self._wfd, view[written:])
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(self._wfd, size)
            raise
        return start, start + len(data)

    def roll_if_idle(self, settled: int, older_than: float) -> bool:
        """Start a new segment when everything in the last one is settled (``settled`` ≥ the end) and
        it was last written before ``older_than``, so that it can be deleted like any other."""
        with self.locked():
            end = self.end()
            base = self._bases[-1]
            if end == base or settled < end or os.fstat(self._wfd).st_mtime >= older_than:
                return False
            self._create(end)
            self._open_tail()
            return True

    def sync(self) -> None:
        os.fdatasync(self._wfd)

    # -- reading --------------------------------------------------------------------------------

    def read(self, start: int, end: int, max_bytes: int) -> list[tuple[int, int, bytes]]:
        """(offset, next offset, payload) of whole records from ``start`` up to ``end`` (a known
        committed end), about ``max_bytes`` of them (at least one when there is one)."""
        if self.readonly or start >= self._segment_end(self._bases[-1]):
            self._bases = self._list() or self._bases
        out: list[tuple[int, int, bytes]] = []
        pos = max(start, self.first())
        while pos < end and (not out or sum(len(p) for _, _, p in out) < max_bytes):
            base = self.segment_of(pos)
            seg_end = min(self._segment_end(base), end)
            if pos >= seg_end:
                break
            try:
                frames, stop = self._frames(base, pos, seg_end, max_bytes)
            except FileNotFoundError:  # deleted meanwhile (an operator's read beside a running server)
                self._bases = self._list() or self._bases
                if self.first() <= pos:
                    break
                pos = self.first()
                continue
            out += frames
            if stop < seg_end and not frames:
                if base != self._bases[-1] and self._segment_end(base) <= end:
                    log.error("spool_segment_unreadable", segment=_name(base), at=stop)
                    pos = seg_end  # a corrupt older segment: skip what cannot be read
                    continue
                break
            pos = stop
            if stop < seg_end:
                break
        return out

    def size_bytes(self) -> int:
        total = 0
        for base in self._list():
            with contextlib.suppress(FileNotFoundError):
                total += os.stat(self.dir / _name(base)).st_size
        return total

    def delete_before(self, offset: int, older_than: float) -> int:
        """Delete whole segments that end at or before ``offset`` and were last written before
        ``older_than`` (epoch seconds); never the last one. Returns the bytes freed."""
        self._bases = self._list() or self._bases
        freed = 0
        for i, base in enumerate(self._bases[:-1]):
            nxt = self._bases[i + 1]
            if nxt > offset:
                break
            path = self.dir / _name(base)
            try:
                st = os.stat(path)
            except FileNotFoundError:
                continue
            if st.st_mtime >= older_than:
                break
            fd = self._rfds.pop(base, None)
            if fd is not None:
                os.close(fd)
            path.unlink(missing_ok=True)
            freed += st.st_size
        if freed:
            self._bases = self._list() or self._bases
        return freed

    def close(self) -> None:
        for fd in self._rfds.values():
            os.close(fd)
        self._rfds.clear()
        if self._wfd >= 0:
            os.close(self._wfd)
            self._wfd = -1
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
