"""Conformance: a full spool refuses, and recovers once delivered data is freed (no restart);
wait() wakes on new work and on a due retry, and otherwise waits."""

from __future__ import annotations

import asyncio
import time

from proxy.spool.base import Disposition, Settlement, SpoolFull
from tests.spool.support import deliver_all, ev, lease_all, mids, req, settle

# generous bounds for "returns soon", never compared with measured durations
SOON = 20.0


async def _fill(spool, start: int = 0, dests=("A",)) -> int:
    """Append ~20 KB requests until the spool refuses; how many events were stored."""
    stored = 0
    for n in range(start, start + 200):
        if spool.refusal() is not None:
            return stored
        pad = "x" * 1000
        r = await spool.append(req(*(ev(f"m{n}-{i}", properties={"pad": pad}) for i in range(20)),
                                 dests=dests))
        stored += r.stored
        await spool.maintain(list(dests))  # refreshes sizes; frees nothing: nothing is delivered
    raise AssertionError("the spool never reported full")


async def test_full_spool_refuses_with_429_then_recovers_after_delivery_without_restart(harness):
    spool = await harness.open(max_bytes=harness.small_max_bytes, retention=0)
    await spool.attach(["A"])
    assert spool.refusal() is None
    stored = await _fill(spool)
    refusal = spool.refusal()
    assert refusal.status == 429 and refusal.code == "spool_full" and refusal.retry_after > 0
    assert refusal.message
    stats = await spool.stats(["A"])
    assert stats.full and stats.bytes >= stats.max_bytes == harness.small_max_bytes
    assert len(await deliver_all(spool, "A")) == stored
    await spool.maintain(["A"])
    assert spool.refusal() is None
    stats = await spool.stats(["A"])
    assert not stats.full and stats.bytes < stats.max_bytes
    # and it takes events again, and fills again
    assert (await spool.append(req(ev("after")))).stored == 1
    assert await _fill(spool, 1000) > 0


async def test_undelivered_events_keep_the_spool_full(harness):
    spool = await harness.open(max_bytes=harness.small_max_bytes, retention=0)
    await spool.attach(["A", "B"])
    await _fill(spool, dests=("A", "B"))
    await deliver_all(spool, "A")                  # B still owes everything
    await spool.maintain(["A", "B"])
    assert spool.refusal() is not None
    # a destination removed from the config does not hold the spool
    await spool.maintain(["A"])
    assert spool.refusal() is None


async def test_maintain_keeps_delivered_events_for_the_retention_time(harness):
    spool = await harness.open(retention=3600)
    await spool.attach(["A"])
    await spool.append(req(ev("m1"), ev("m2")))
    await deliver_all(spool, "A")
    await spool.maintain(["A"])
    assert [e.event["messageId"] for e in await spool.events()] == ["m1", "m2"]


async def test_maintain_with_zero_retention_frees_what_every_destination_settled(harness):
    spool = await harness.open(retention=0)
    await spool.attach(["A"])
    await spool.append(req(ev("m1")))
    await deliver_all(spool, "A")
    # a log of segments frees a whole segment once everything in it is settled: this is when m1's is
    await spool.maintain(["A"])
    await spool.append(req(ev("m2")))
    await spool.maintain(["A"])
    assert [e.event["messageId"] for e in await spool.events()] == ["m2"]
    assert (await spool.stats(["A"])).events == 1
    assert mids(await lease_all(spool, "A")) == ["m2"]


async def test_append_while_full_is_refused_or_raises_spool_full(harness):
    spool = await harness.open(max_bytes=harness.small_max_bytes, retention=0)
    await spool.attach(["A"])
    await _fill(spool)
    try:
        await spool.append(req(ev("over")))
    except SpoolFull:
        pass
    # ingest answers the refusal before appending; a backend that still stores must not lose it
    else:
        assert "over" in [e.event["messageId"] for e in await spool.events()]


async def test_wait_returns_on_append(harness):
    spool = await harness.open()
    await spool.attach(["A"])
    assert await lease_all(spool, "A") == []
    waiter = asyncio.create_task(spool.wait("A", 3600))
    await asyncio.sleep(0.2)
    assert not waiter.done(), "wait() returned with nothing new (a busy loop for delivery)"
    await spool.append(req(ev("m1")))
    await asyncio.wait_for(waiter, SOON)
    assert mids(await lease_all(spool, "A")) == ["m1"]


async def test_an_append_between_lease_and_wait_is_not_missed(harness):
    spool = await harness.open()
    await spool.attach(["A"])
    assert await lease_all(spool, "A") == []
    await spool.append(req(ev("m1")))
    await asyncio.wait_for(spool.wait("A", 3600), SOON)


async def test_wait_returns_when_a_retry_becomes_due(harness):
    spool = await harness.open()
    await spool.attach(["A"])
    await spool.append(req(ev("m1")))
    (work,) = await lease_all(spool, "A")
    await spool.settle("A", [Settlement(work, Disposition.RETRY, retry_at=time.time() + 0.5, attempts=1)])
    await lease_all(spool, "A")  # consume whatever notification the settle gave
    await asyncio.wait_for(spool.wait("A", 3600), SOON)
    for _ in range(40):  # the wait may be a hint slightly early; the retry is due within a second
        if got := await lease_all(spool, "A"):
            assert mids(got) == ["m1"]
            return
        await spool.wait("A", 0.1)
    raise AssertionError("the retry never became due")


async def test_wait_returns_on_replay_and_on_wake(harness):
    spool = await harness.open()
    await spool.attach(["A"])
    await spool.append(req(ev("m1")))
    await settle(spool, "A", await lease_all(spool, "A"), Disposition.DEAD, reason="bad", attempts=1)
    assert await lease_all(spool, "A") == []
    from proxy.spool.base import DeadQuery

    waiter = asyncio.create_task(spool.wait("A", 3600))
    await asyncio.sleep(0.05)
    assert await spool.replay(DeadQuery(destination="A"), ["A"]) == 1
    await asyncio.wait_for(waiter, SOON)
    assert mids(await lease_all(spool, "A")) == ["m1"]
    waiter = asyncio.create_task(spool.wait("A", 3600))
    await asyncio.sleep(0.05)
    spool.wake("A")
    await asyncio.wait_for(waiter, SOON)
    waiter = asyncio.create_task(spool.wait("A", 3600))
    await asyncio.sleep(0.05)
    spool.wake()
    await asyncio.wait_for(waiter, SOON)


async def test_wait_times_out(harness):
    spool = await harness.open()
    await spool.attach(["A"])
    assert await lease_all(spool, "A") == []
    await asyncio.wait_for(spool.wait("A", 0.1), SOON)
