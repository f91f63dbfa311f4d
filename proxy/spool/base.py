"""The spool port: the one interface through which ingest, delivery, the CLI and the console use
durable storage. Nothing outside ``proxy/spool/`` knows how or where events are stored.

Data walks one way:

- **ingest** calls :meth:`Spool.append` with what it decided about one request (an :class:`Append`:
  the accepted items' JSON exactly as received, their dedup hashes and routes, and the few facts
  enrichment needs). It returns only once the request is durable (fsync'd commit for the embedded
  backend, a quorum PubAck for JetStream); many concurrent requests share one commit. Items whose
  (source, messageId) was seen within the dedup window are dropped as duplicates.
- **delivery** (one worker per destination) calls :meth:`Spool.lease` for due work — due retries
  first, then new events routed to it, in arrival order — and :meth:`Spool.settle` once per leased
  item with its :class:`Settlement`: delivered, skipped (reason), retry at T (attempts, last status,
  requests already done), or dead (reason, response). Work leased and not settled (a crash, a
  cancelled shutdown) is leased again later: delivery is at-least-once.
  The events a lease returns are **enriched** (receivedAt, messageId, corrected timestamp,
  context.ip, channel...): a backend stores the raw items plus ingest's decisions and applies
  :func:`proxy.spool.records.materialize` when it reads them.
- **operators** (CLI, console) list, show and replay dead letters, read stats, list stored events
  and remove the state of destinations no longer configured — all safe while a server runs.

Change notification: :meth:`Spool.wait` returns early when new work may be there for a destination
(an append committed, a retry became due, a replay); it is a hint, never a promise: callers lease
and find out.

Full: :meth:`Spool.refusal` tells ingest to answer 429 (full) or 503 (engine unreachable) with a
Retry-After, before it does any work. Never a 500, never an unbounded queue in RAM.

Backends: ``embedded`` (the default: a CRC-framed segment log + SQLite for delivery state, see
:mod:`proxy.spool.embedded`), ``memory`` (in-process, for tests; nothing survives the process), and
``jetstream`` (NATS JetStream, for scale-out). :func:`proxy.spool.open_spool` picks one from
``storage.engine``. tests/spool/ holds the conformance suite every backend must pass.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
from xxhash import xxh3_64_intdigest

# -- ingest side ---------------------------------------------------------------------------------


_SIGN = 1 << 63


def dedup_prefix(source: str) -> bytes:
    """The bytes a source's dedup keys start with (see :func:`dedup_hash`)."""
    return f"{source}\x00".encode()


def dedup_key(key: bytes) -> int:
    """:func:`dedup_hash` of ``dedup_prefix(source) + messageId.encode()``, for a caller hashing many
    ids of one source."""
    return ((xxh3_64_intdigest(key) ^ _SIGN) - _SIGN) or 1


def dedup_hash(source: str, message_id: str) -> int:
    """The 64-bit dedup key of (source, messageId): xxh3-64 of ``source NUL messageId`` (UTF-8), as
    a signed int64, never 0 (0 marks an empty slot in the embedded backend's index)."""
    return dedup_key(f"{source}\x00{message_id}".encode())


@dataclass(frozen=True, slots=True)
class Route:
    """Where ingest routed an item: the destinations that get it, and why each other one does not."""

    destinations: tuple[str, ...]
    skipped: Mapping[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Item:
    """One accepted item of a request."""

    raw: bytes                    # the item's JSON object exactly as the client sent it (after gunzip)
    dedup: int                    # dedup_hash(source, messageId); for a generated messageId, of that
    route: int                    # index into Append.routes
    index: int = 0                # position in the request's batch (0 for single-event paths)
    message_id: str | None = None  # the messageId ingest generated when the client sent none
    violations: list[dict[str, Any]] | None = None  # tracking-plan violations, set at context.violations when read


@dataclass(slots=True)
class Append:
    """What ingest decided about one request. Enrichment is a pure function of these fields and the
    raw items (proxy.spool.records.materialize), applied when delivery reads."""

    source: str
    key_index: int                # which of the source's write keys authenticated the request
    received_at: float            # epoch seconds, one server time per request
    items: list[Item]
    routes: list[Route]
    client_ip: str | None = None  # the client's address (peer, or X-Forwarded-For from a trusted proxy)
    short_path: bool = False      # posted to a short path (/v1/t, /v1/b...): analytics.js / browser traffic
    call_type: str | None = None  # the path's call type for single-event paths (wins over the body's type)
    sent_at: str | None = None    # the batch's sentAt, as sent
    context: bytes | None = None  # the batch-level context object (raw JSON), merged into every item
    integrations: bytes | None = None  # the batch-level integrations object (raw JSON), merged likewise
    rejected: list[tuple[int, str]] = field(default_factory=list)  # (index, reason) of refused items
    enriched: bool = False        # items are already enriched events (spools migrated from v0)


@dataclass(slots=True)
class AppendResult:
    stored: int                   # items committed
    duplicates: int               # items dropped as duplicates of (source, messageId) within the window


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why ingest must not append now: answer ``status`` with ``code`` and Retry-After."""

    status: int                   # 429 (full) or 503 (storage unavailable)
    code: str                     # "spool_full" | "storage_unavailable"
    message: str
    retry_after: int              # seconds


class SpoolUnavailable(Exception):
    """append() could not commit (disk error, engine unreachable past the bounded wait): ingest
    answers 503 with Retry-After; nothing of the request was acknowledged."""


class SpoolRefused(Exception):
    """The spool cannot be used at all, and waiting will not help on its own (another server holds
    it, the engine is too old, switched off, unreachable at start, or refuses the credentials).
    Raised by :meth:`Spool.claim` or :meth:`Spool.start`; ``serve`` prints its message (one line,
    no secrets) and exits with status 2, the CLI likewise."""


class SpoolBusy(SpoolRefused):
    """Another server holds this spool (claim()): two servers would deliver everything twice."""


class SpoolFull(Exception):
    """append() found the spool full: ingest answers 429 with Retry-After."""


# -- delivery side -------------------------------------------------------------------------------


class Stored(Protocol):
    """What a backend read: the enriched event, made on demand as a dict or as JSON from the
    stored item (proxy.spool.records: ``materialize`` / ``materialize_json``)."""

    def materialize(self, position: int, raw: bytes) -> dict[str, Any]: ...

    def materialize_json(self, position: int, raw: bytes) -> bytes: ...


@dataclass(slots=True)
class Work:
    """One leased event for one destination. ``ref`` is the backend's handle: give the Work back in
    its Settlement unchanged. ``event`` (enriched dict) or ``raw`` (enriched JSON) is set, or both,
    or ``stored`` (record, position, item JSON) makes whichever of them is asked for first
    (:meth:`parsed`, :meth:`json`): a pass-through adapter gets the JSON without a parse, a mapping
    one the dict without an encode."""

    ref: Any
    source: str
    key_index: int
    received_at: float
    size: int                     # approximate JSON bytes (for batching by bytes)
    event: dict[str, Any] | None = None
    raw: bytes | None = None
    attempts: int = 0             # attempts made before this lease
    first_failed: float | None = None  # when the first attempt failed (retry window start)
    done: frozenset[str] = frozenset()  # keys of this message's requests that already succeeded
    stored: tuple[Stored, int, bytes] | None = None

    def json(self) -> bytes:
        if self.raw is None:
            if self.event is None and self.stored is not None:
                record, position, item = self.stored
                self.raw = record.materialize_json(position, item)
            else:
                self.raw = orjson.dumps(self.event)
        return self.raw

    def parsed(self) -> dict[str, Any]:
        if self.event is None:
            if self.raw is None and self.stored is not None:
                record, position, item = self.stored
                self.event = record.materialize(position, item)
            else:
                self.event = orjson.loads(self.raw)  # type: ignore[arg-type]
        return self.event

    @property
    def message_id(self) -> str | None:
        try:
            mid = self.parsed().get("messageId")
        except (ValueError, TypeError):
            return None
        return mid if isinstance(mid, str) else None


class Disposition(enum.Enum):
    DELIVERED = "delivered"
    SKIPPED = "skipped"
    RETRY = "retry"
    DEAD = "dead"


@dataclass(slots=True)
class Settlement:
    work: Work
    disposition: Disposition
    reason: str = ""              # skip / retry / dead reason
    status: int | None = None     # last HTTP status, if any
    response: str | None = None   # last response body excerpt (dead letters keep it)
    retry_at: float | None = None  # RETRY: when it is due (epoch seconds)
    attempts: int = 0             # total attempts including this lease's
    done: frozenset[str] = frozenset()  # RETRY: request keys already done, not to be sent again
    first_failed: float | None = None  # RETRY/DEAD: start of the retry window


# -- operators -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeadQuery:
    destination: str | None = None
    since: float | None = None
    until: float | None = None
    ids: tuple[str,
               ...] = ()     # dead-letter ids (backend-specific strings; the embedded backend's are integers as text)
    limit: int | None = None


@dataclass(slots=True)
class DeadLetter:
    id: str
    destination: str
    at: float
    attempts: int
    status: int | None
    reason: str
    response: str | None
    source: str
    message_id: str | None
    event: bytes | None = None    # the enriched event JSON (only from dead_letter(), not from the list)


@dataclass(slots=True)
class DestinationStats:
    backlog: int = 0              # events routed to it, not yet settled (approximate for some backends)
    retries: int = 0              # events waiting for a durable retry
    dead: int = 0                 # dead letters
    oldest_undelivered: float | None = None  # receivedAt of the oldest event it still owes, if known


@dataclass(slots=True)
class Stats:
    engine: str
    events: int                   # events in the log (stored, not yet purged)
    bytes: int                    # bytes the spool holds on disk (or in the engine)
    max_bytes: int
    full: bool
    destinations: dict[str, DestinationStats] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # backend-specific figures (dedup window, segments...)

    def as_dict(self) -> dict[str, Any]:
        return {
            "engine": self.engine, "events": self.events, "bytes": self.bytes, "max_bytes": self.max_bytes,
            "full": self.full, **self.extra,
            "destinations": {name: {"backlog": d.backlog, "retries": d.retries, "dead": d.dead,
                                    "oldest_undelivered": d.oldest_undelivered}
                             for name, d in sorted(self.destinations.items())},
        }


@dataclass(slots=True)
class StoredEvent:
    """An event in the log as delivery would see it (enriched), with what ingest decided."""

    event: dict[str, Any]
    source: str
    received_at: float
    destinations: tuple[str, ...]
    skipped: Mapping[str, str]


Progress = Callable[[int], None]


class Spool(abc.ABC):
    """The port. One instance per process; create with :func:`proxy.spool.open_spool`.

    ``role``: "main" (ingest and delivery), "ingest" (an ingest-only worker process of
    server.workers > 1: append only) or "admin" (CLI: dead letters, stats, events; no append).
    """

    engine: str = "?"

    # -- lifecycle --------------------------------------------------------------------------------

    @abc.abstractmethod
    async def start(self) -> None:
        """Open/recover the store. Inside a running event loop. Raises SpoolRefused when the store
        cannot be used at all (serve then refuses to start)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Finish pending commits and release everything."""

    def claim(self) -> None:  # noqa: B027 (optional hook: backends without one inherit this no-op)
        """Take exclusive ownership where the backend needs one (the embedded spool: one server per
        directory); raises SpoolBusy. Called by ``serve`` before it listens."""

    def problems(self) -> list[str]:
        """Why this spool cannot take appends right now (readiness); empty when it can."""
        return []

    # -- ingest -----------------------------------------------------------------------------------

    def refusal(self) -> Refusal | None:
        """A Refusal when ingest must not append now (full, engine unreachable); cheap, no I/O."""
        return None

    @abc.abstractmethod
    async def append(self, request: Append) -> AppendResult:
        """Dedup and store the request's items; return after a durable commit. Raises SpoolFull or
        SpoolUnavailable (nothing acknowledged) instead of returning a partial result."""

    # -- delivery ---------------------------------------------------------------------------------

    @abc.abstractmethod
    async def attach(self, destinations: Sequence[str]) -> None:
        """Delivery starts for these destinations. One seen for the first time starts at the end of
        the log (it gets what is appended from now on)."""

    @abc.abstractmethod
    async def lease(self, destination: str, max_events: int, max_bytes: int, *, new: bool = True) -> list[Work]:
        """Up to ``max_events`` events (and about ``max_bytes``, at least one) for the destination:
        due retries first (due-ordered), then — when ``new`` — events not yet leased, in arrival
        order. Never an item already leased and not yet settled. Empty when nothing is due."""

    @abc.abstractmethod
    async def settle(self, destination: str, settlements: Sequence[Settlement]) -> None:
        """Record outcomes of leased work, durably and each exactly once. RETRY keeps the event for
        a later lease at ``retry_at``; DEAD moves it to the dead letters; DELIVERED and SKIPPED end it."""

    async def expedite(self, destination: str, limit: int | None = None) -> int:
        """Make the destination's rescheduled events (all, or the ``limit`` earliest) due now, e.g.
        once a failing destination answers again; return how many. A backend that cannot move
        retries forward returns 0 and they stay due when they were."""
        return 0

    @abc.abstractmethod
    async def wait(self, destination: str, timeout: float) -> None:
        """Return when new work may be there for the destination, or after ``timeout`` seconds."""

    def wake(self, destination: str | None = None) -> None:  # noqa: B027 (optional hook)
        """Make waiters of ``destination`` (all when None) return now (shutdown)."""

    # -- operators --------------------------------------------------------------------------------

    @abc.abstractmethod
    async def dead_letters(self, query: DeadQuery) -> tuple[list[DeadLetter], int]:
        """(matching dead letters, oldest first, without their event, up to ``query.limit``; total matching)."""

    @abc.abstractmethod
    async def dead_letter(self, id: str) -> DeadLetter | None:
        """One dead letter with its event."""

    @abc.abstractmethod
    async def replay(self, query: DeadQuery, destinations: Sequence[str], progress: Progress | None = None) -> int:
        """Put matching dead letters of the given (enabled) destinations back on their queue, due
        now, with their attempts reset; return how many. Safe while a server delivers."""

    @abc.abstractmethod
    async def reroute(self, query: DeadQuery, route: Callable[[DeadLetter], Sequence[str]],
                      progress: Progress | None = None) -> int:
        """Move each matching dead letter (of any destination) onto the queues of the destinations
        ``route(letter)`` names — the letter is given with its event — due now, attempts reset, and
        delete it; a letter for which ``route`` names none stays where it is. Return how many were
        moved; ``progress(n)`` is told how many so far. ``trackrelay plan blocked replay`` uses it: a
        blocked event is a dead letter of the pseudo-destination ``(blocked:<source>)`` and goes, at
        replay, to the destinations it would have reached. Safe while a server delivers."""

    @abc.abstractmethod
    async def stats(self, destinations: Sequence[str] = (), *, exact: bool = False) -> Stats:
        """Sizes and per-destination figures (for ``destinations`` and any other known one). Cheap
        by default (backlogs may be estimates); ``exact`` counts, which may read the whole log."""

    @abc.abstractmethod
    async def events(self, limit: int | None = None) -> list[StoredEvent]:
        """Events in the log, in arrival order, enriched (inspection, tests, ``plan infer``)."""

    @abc.abstractmethod
    async def known_destinations(self) -> list[str]:
        """Destinations the spool holds delivery state for (cursors, retries, dead letters)."""

    @abc.abstractmethod
    async def forget(self, destination: str) -> int:
        """Remove a destination's cursor and retries (not its dead letters); return the retries removed."""

    # -- housekeeping -----------------------------------------------------------------------------

    async def maintain(self, active_destinations: Sequence[str]) -> None:  # noqa: B027 (optional hook)
        """Periodic work (every second or so): free what every active destination has settled
        (after the retention time, at once under size pressure), refresh sizes and ``refusal``."""

    # -- cross-process notification (server.workers > 1) ----------------------------------------------

    on_commit: Callable[[int], None] | None = None
    """Set in an ingest-only process: called with an opaque token after each commit, which the main
    process passes to :meth:`observe_commit` (proxy/workers.py relays it over a pipe)."""

    def observe_commit(self, token: int) -> None:  # noqa: B027 (optional hook)
        """Another process committed (token from its ``on_commit``): wake delivery."""
