"""A bundle (several requests' records in one JetStream message) reads as one sequence of items,
each with its own request's facts; a single record reads the same through Bundle; a torn or padded
bundle is refused, never half read."""

from __future__ import annotations

import orjson
import pytest

from proxy.spool import records
from proxy.spool.base import Route
from tests.spool.support import ev, req


def payloads() -> list[bytes]:
    return [
        records.encode(req(ev("a0"), ev("a1"), source="web", received_at=1_700_000_000.0)),
        records.encode(req(ev("b0"), source="ios", received_at=1_700_000_001.0, client_ip="192.0.2.8",
                           routes=[Route(("A",)), Route(("B",), {"A": "filter:1:drop"})], route_of=[1])),
        records.encode(req(ev("c0"), ev("c1"), ev("c2"), source="web", received_at=1_700_000_002.0)),
    ]


def test_positions_run_across_the_records_with_each_record_s_facts() -> None:
    parts = payloads()
    bundle = records.Bundle(records.bundle(parts))
    assert len(bundle) == 6
    got = {pos: orjson.loads(bundle.materialize_json(pos, raw)) for pos, raw in bundle.raw_items()}
    assert [got[p]["messageId"] for p in range(6)] == ["a0", "a1", "b0", "c0", "c1", "c2"]
    assert [bundle.header_of(p).source for p in range(6)] == ["web", "web", "ios", "web", "web", "web"]
    assert bundle.route_of(2).destinations == ("B",) and bundle.route_of(3).destinations == ("A",)
    assert bundle.locate(4)[1] == 1 and bundle.locate(2)[1] == 0
    alone = records.Record(parts[1])
    (_, raw), = alone.raw_items()
    assert got[2] == orjson.loads(alone.materialize_json(0, raw))  # as if it had been published alone
    assert got[2]["receivedAt"] == "2023-11-14T22:13:21.000Z"
    assert [se.source for se in bundle.stored_events()] == ["web", "web", "ios", "web", "web", "web"]


def test_one_record_is_published_as_it_is_and_reads_the_same() -> None:
    part = payloads()[0]
    assert records.bundle([part]) == part
    bundle = records.Bundle(part)
    assert len(bundle) == 2 and [p for p, _ in bundle.raw_items()] == [0, 1]


@pytest.mark.parametrize("damage", ["truncated", "padded", "bit flip", "empty"])
def test_a_damaged_bundle_is_refused(damage: str) -> None:
    body = bytearray(records.bundle(payloads()))
    if damage == "truncated":
        body = body[:-10]
    elif damage == "padded":
        body += b"\0" * 12
    elif damage == "bit flip":
        body[len(body) // 2] ^= 0x40
    else:
        body = bytearray(records.BUNDLE)
    with pytest.raises(ValueError, match="corrupt bundle"):
        records.Bundle(bytes(body))
