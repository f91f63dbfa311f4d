"""The record format of spools written before the storage rework (``spool.db``, one SQLite file),
kept only so that proxy/spool/embedded/migrate.py can read them: a log row's payload is a sequence
of length-prefixed records, ``>II`` (header length, event length) + header JSON
({"d": [destinations], "x": {destination: skip reason}}) + the enriched event's JSON."""

from __future__ import annotations

import struct
from dataclasses import dataclass

import orjson

_LENGTHS = struct.Struct(">II")


@dataclass(slots=True)
class Record:
    destinations: tuple[str, ...]
    skipped: dict[str, str]
    event: bytes  # the stored (enriched) event's JSON


def decode_records(payload: bytes) -> list[Record]:
    out: list[Record] = []
    pos, end = 0, len(payload)
    while pos + _LENGTHS.size <= end:
        hlen, elen = _LENGTHS.unpack_from(payload, pos)
        pos += _LENGTHS.size
        meta = orjson.loads(payload[pos:pos + hlen])
        pos += hlen
        out.append(Record(tuple(meta.get("d", ())), meta.get("x", {}), payload[pos:pos + elen]))
        pos += elen
    return out
