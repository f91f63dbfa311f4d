"""The stored record format: the only place that encodes or decodes what a backend stores.

One record per accepted request: ingest's decisions (a small msgpack header) followed by the
accepted items' JSON exactly as the client sent them. Nothing is re-encoded at ingest; enrichment
(:func:`materialize`) is applied when delivery reads, from the header's facts, so a record is
written once and read as often as destinations need.

    payload = u32 header length | header (msgpack, array-like) | item 0 JSON | item 1 JSON | ...

The header holds: format version, receivedAt, source, write-key index, client ip, short-path flag,
path call type, batch sentAt / context / integrations (raw JSON), the distinct routes
(destinations, skip reasons), per item (length, dedup hash, route, batch index, generated
messageId), the rejected items' (index, reason), whether the items are already enriched
(records converted from a v0 spool), and the tracking-plan violations of flagged or blocked items
(position -> violations JSON; :func:`materialize` puts them at ``context.violations``). Fields are
only ever added at the end, with a default, so records written before a field existed still decode.

The embedded backend frames a payload for its segment files (:func:`frame`: u32 length | u32
CRC-32 | payload; :func:`scan` reads frames back and stops at the first torn or corrupt one);
JetStream publishes the payload as a message body, or several requests' payloads together as a
:func:`bundle` (:class:`Bundle` reads either).
"""

from __future__ import annotations

import bisect
import struct
import zlib
from collections.abc import Iterator, Sequence
from typing import Any

import msgspec
import orjson
import structlog

from proxy.enrich import Enrichment
from proxy.spool.base import Append, Item, Route, StoredEvent

log = structlog.get_logger("trackrelay.spool")

VERSION = 1
_U32 = struct.Struct("<I")
FRAME = struct.Struct("<II")  # payload length, CRC-32 of the payload
FRAME_SIZE = FRAME.size
MAX_PAYLOAD = 64 * 1024 * 1024  # a length above this is corruption, not a record


class Header(msgspec.Struct, array_like=True, forbid_unknown_fields=False):
    version: int
    received_at: float
    source: str
    key_index: int
    client_ip: str | None
    short_path: bool
    call_type: str | None
    sent_at: str | None
    context: bytes | None
    integrations: bytes | None
    routes: list[tuple[tuple[str, ...], dict[str, str]]]
    # per item: (JSON length, dedup hash, route index, batch index, generated messageId or None)
    items: list[tuple[int, int, int, int, str | None]]
    rejected: list[tuple[int, str]]
    enriched: bool = False
    # position in the record -> the item's tracking-plan violations (JSON list), when it has some
    violations: dict[int, bytes] | None = None


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Header)


def encode(request: Append, items: Sequence[Item] | None = None) -> bytes:
    """The payload for ``request`` with ``items`` (default: all of them; duplicates left out)."""
    items = request.items if items is None else items
    header = Header(
        VERSION, request.received_at, request.source, request.key_index, request.client_ip,
        request.short_path, request.call_type, request.sent_at, request.context, request.integrations,
        [(r.destinations, dict(r.skipped)) for r in request.routes],
        [(len(it.raw), it.dedup, it.route, it.index, it.message_id) for it in items],
        request.rejected, request.enriched,
        {pos: orjson.dumps(it.violations) for pos, it in enumerate(items) if it.violations} or None,
    )
    head = _encoder.encode(header)
    return b"".join([_U32.pack(len(head)), head, *[it.raw for it in items]])


class Record:
    """A decoded payload. Items are sliced lazily from the payload; ``materialize`` enriches one."""

    __slots__ = ("header", "payload", "_body", "_enrichment", "routes")

    def __init__(self, payload: bytes | memoryview) -> None:
        (hlen,) = _U32.unpack_from(payload, 0)
        self.payload = payload
        self.header: Header = _decoder.decode(payload[4:4 + hlen])
        self._body = 4 + hlen
        self._enrichment: Enrichment | None = None
        self.routes = [Route(tuple(d), s) for d, s in self.header.routes]

    def __len__(self) -> int:
        return len(self.header.items)

    def raw_items(self) -> Iterator[tuple[int, bytes]]:
        """(position in the record, item JSON as received) for every item."""
        pos = self._body
        payload = self.payload
        for i, (length, *_rest) in enumerate(self.header.items):
            yield i, bytes(payload[pos:pos + length])
            pos += length

    def route_of(self, position: int) -> Route:
        return self.routes[self.header.items[position][2]]

    def hashes(self) -> list[int]:
        return [it[1] for it in self.header.items]

    def sizes(self) -> list[int]:
        return [it[0] for it in self.header.items]

    def materialize(self, position: int, raw: bytes) -> dict[str, Any]:
        """The enriched event of item ``position`` (``raw`` its JSON from :meth:`raw_items`), as
        ingest would have stored it before the storage rework: the same pure functions, applied now."""
        event: dict[str, Any] = orjson.loads(raw)
        h = self.header
        if h.enriched:
            return self._violations(position, event)
        return self._violations(position, self._enrichment_of(h).apply(event, h.items[position][4]))

    def materialize_json(self, position: int, raw: bytes) -> bytes:
        """The enriched event of item ``position`` as JSON: equal, parsed, to :meth:`materialize`,
        without parsing the event into a tree (what delivery hands to adapters)."""
        h = self.header
        violations = self._violations_json(position)
        if h.enriched:
            return raw if violations is None else orjson.dumps(self._violations(position, orjson.loads(raw)))
        return self._enrichment_of(h).apply_json(raw, h.items[position][4], violations)

    def _enrichment_of(self, h: Header) -> Enrichment:
        if self._enrichment is None:
            self._enrichment = Enrichment(h.received_at, h.client_ip, h.short_path, h.call_type, h.sent_at, h.context,
                                          h.integrations)
        return self._enrichment

    def _violations_json(self, position: int) -> bytes | None:
        found = self.header.violations
        return found.get(position) if found else None

    def violations_of(self, position: int) -> list[dict[str, Any]] | None:
        """The tracking-plan violations ingest recorded for item ``position``, if any."""
        data = self._violations_json(position)
        return orjson.loads(data) if data is not None else None

    def _violations(self, position: int, event: dict[str, Any]) -> dict[str, Any]:
        data = self._violations_json(position)
        if data is not None:
            context = event.get("context")
            if not isinstance(context, dict):
                context = event["context"] = {}
            context["violations"] = orjson.loads(data)
        return event

    def stored_events(self) -> Iterator[StoredEvent]:
        h = self.header
        for i, raw in self.raw_items():
            route = self.route_of(i)
            yield StoredEvent(self.materialize(i, raw), h.source, h.received_at, route.destinations,
                              dict(route.skipped))


# -- bundles: several requests' records in one message -------------------------------------------

# Where a payload starts with its header's length, a bundle starts with this (no header is that long).
BUNDLE = b"\xff\xff\xff\xff"


def bundle(payloads: Sequence[bytes]) -> bytes:
    """One message body holding the records ``payloads`` (JetStream publishes the requests that
    queued up during a publish together); a single payload is returned as it is."""
    if len(payloads) == 1:
        return payloads[0]
    return b"".join([BUNDLE, *(frame(p) for p in payloads)])


class Bundle:
    """The records of one message body (:func:`bundle`, or a single record) as one sequence of
    items: position ``p`` is item ``p - start`` of the record that holds it, so a message's items
    are numbered the same way whoever reads it."""

    __slots__ = ("records", "_starts")

    def __init__(self, body: bytes | memoryview) -> None:
        if bytes(body[:4]) == BUNDLE:
            frames = list(scan(body, 4))
            end = (frames[-1][0] + FRAME_SIZE + len(frames[-1][1])) if frames else 4
            if not frames or end != len(body):
                raise ValueError(f"corrupt bundle: {len(frames)} whole records, {len(body) - end} bytes left over")
            self.records = [Record(p) for _, p in frames]
        else:
            self.records = [Record(body)]
        starts, n = [], 0
        for rec in self.records:
            starts.append(n)
            n += len(rec)
        self._starts = starts

    def __len__(self) -> int:
        return self._starts[-1] + len(self.records[-1])

    def locate(self, position: int) -> tuple[Record, int]:
        """The record holding item ``position``, and the item's position in it."""
        i = bisect.bisect_right(self._starts, position) - 1
        return self.records[i], position - self._starts[i]

    def header_of(self, position: int) -> Header:
        return self.locate(position)[0].header

    def raw_items(self) -> Iterator[tuple[int, bytes]]:
        for start, rec in zip(self._starts, self.records, strict=True):
            for i, raw in rec.raw_items():
                yield start + i, raw

    def route_of(self, position: int) -> Route:
        rec, i = self.locate(position)
        return rec.route_of(i)

    def materialize(self, position: int, raw: bytes) -> dict[str, Any]:
        rec, i = self.locate(position)
        return rec.materialize(i, raw)

    def materialize_json(self, position: int, raw: bytes) -> bytes:
        rec, i = self.locate(position)
        return rec.materialize_json(i, raw)

    def stored_events(self) -> Iterator[StoredEvent]:
        for rec in self.records:
            yield from rec.stored_events()


# -- framing for files ---------------------------------------------------------------------------


def frame(payload: bytes) -> bytes:
    return FRAME.pack(len(payload), zlib.crc32(payload)) + payload


def scan(buf: bytes | memoryview, start: int = 0) -> Iterator[tuple[int, memoryview]]:
    """(offset in ``buf``, payload) for every whole, intact frame from ``start``; stops at the first
    frame that is torn (runs past the end) or corrupt (bad length or CRC). The caller compares the
    end of the last frame with the end of ``buf`` to know whether a bad tail follows."""
    view = memoryview(buf)
    end = len(view)
    pos = start
    unpack = FRAME.unpack_from
    while pos + FRAME_SIZE <= end:
        length, crc = unpack(view, pos)
        if length == 0 or length > MAX_PAYLOAD or pos + FRAME_SIZE + length > end:
            return
        payload = view[pos + FRAME_SIZE:pos + FRAME_SIZE + length]
        if zlib.crc32(payload) != crc:
            return
        yield pos, payload
        pos += FRAME_SIZE + length
