"""Conformance: durable retries are due-ordered, never early, and carry their state back."""

from __future__ import annotations

import time

from proxy.spool.base import Disposition, Settlement
from tests.spool.support import ev, lease_all, mids, req, settle


async def _leased(spool, *ids):
    await spool.append(req(*(ev(i) for i in ids)))
    works = {w.message_id: w for w in await lease_all(spool, "A")}
    assert sorted(works) == sorted(ids)
    return works


async def test_due_retries_come_first_earliest_due_first_and_not_before_due(harness):
    spool = await harness.open()
    await spool.attach(["A"])
    w = await _leased(spool, "late", "early", "future")
    now = time.time()
    await spool.settle("A", [
        Settlement(w["late"], Disposition.RETRY, retry_at=now - 10, attempts=1),
        Settlement(w["early"], Disposition.RETRY, retry_at=now - 20, attempts=1),
        Settlement(w["future"], Disposition.RETRY, retry_at=now + 3600, attempts=1),
    ])
    await spool.append(req(ev("new")))
    assert mids(await lease_all(spool, "A")) == ["early", "late", "new"]
    assert await lease_all(spool, "A") == []   # "future" is not due for an hour


async def test_new_false_leases_only_due_retries(harness):
    spool = await harness.open()
    await spool.attach(["A"])
    w = await _leased(spool, "r1")
    await settle(spool, "A", w.values(), Disposition.RETRY, retry_at=0.0, attempts=1)
    await spool.append(req(ev("n1"), ev("n2")))
    assert mids(await lease_all(spool, "A", new=False)) == ["r1"]
    assert await lease_all(spool, "A", new=False) == []
    assert mids(await lease_all(spool, "A")) == ["n1", "n2"]


async def test_max_events_counts_retries_and_new_events_together(harness):
    spool = await harness.open()
    await spool.attach(["A"])
    w = await _leased(spool, "r1", "r2")
    await settle(spool, "A", w.values(), Disposition.RETRY, retry_at=0.0, attempts=1)
    await spool.append(req(ev("n1"), ev("n2")))
    assert mids(await spool.lease("A", 3, 1 << 30)) == ["r1", "r2", "n1"]
    assert mids(await lease_all(spool, "A")) == ["n2"]


async def test_a_retry_carries_attempts_first_failed_and_done_requests_back(harness):
    spool = await harness.open()
    await spool.attach(["A"])
    w = await _leased(spool, "m1")
    await spool.settle("A", [Settlement(w["m1"], Disposition.RETRY, reason="503 from /import", status=503,
                                        retry_at=0.0, attempts=2, first_failed=1234.5,
                                        done=frozenset({"import"}))])
    (again,) = await lease_all(spool, "A")
    assert (again.message_id, again.attempts, again.first_failed, again.done) == ("m1", 2, 1234.5,
                                                                                  frozenset({"import"}))
    assert again.parsed()["event"] == "Clicked" and again.received_at == w["m1"].received_at
    assert again.source == "web"
    # a second failure updates the state; it survives a restart
    await spool.settle("A", [Settlement(again, Disposition.RETRY, reason="503", status=503, retry_at=0.0,
                                        attempts=3, first_failed=1234.5,
                                        done=frozenset({"import", "append"}))])
    spool = await harness.restart(spool)
    await spool.attach(["A"])
    (third,) = await lease_all(spool, "A")
    assert (third.attempts, third.first_failed, third.done) == (3, 1234.5, frozenset({"import", "append"}))
    assert third.json() == again.json()
    await settle(spool, "A", [third])
    assert await lease_all(spool, "A") == []
    assert (await spool.stats(["A"])).destinations["A"].retries == 0


async def test_a_retry_that_fails_for_good_becomes_a_dead_letter(harness):
    spool = await harness.open()
    await spool.attach(["A"])
    w = await _leased(spool, "m1")
    await settle(spool, "A", w.values(), Disposition.RETRY, retry_at=0.0, attempts=1, first_failed=100.0)
    (again,) = await lease_all(spool, "A")
    await spool.settle("A", [Settlement(again, Disposition.DEAD, reason="retry window over", status=500,
                                        response="oops", attempts=2, first_failed=100.0)])
    stats = (await spool.stats(["A"])).destinations["A"]
    assert (stats.retries, stats.dead) == (0, 1)
    assert await lease_all(spool, "A") == []


async def test_expedite_makes_waiting_retries_due_now_earliest_first(harness):
    spool = await harness.open()
    await spool.attach(["A"])
    w = await _leased(spool, "soon", "later", "latest")
    now = time.time()
    await spool.settle("A", [
        Settlement(w["later"], Disposition.RETRY, retry_at=now + 7200, attempts=1),
        Settlement(w["soon"], Disposition.RETRY, retry_at=now + 3600, attempts=1),
        Settlement(w["latest"], Disposition.RETRY, retry_at=now + 9000, attempts=1),
    ])
    assert await lease_all(spool, "A") == []
    moved = await spool.expedite("A", 1)
    if "no_expedite" in harness.caveats:
        assert moved == 0
        return
    assert moved == 1
    first = await lease_all(spool, "A")
    assert mids(first) == ["soon"]
    assert await spool.expedite("A") == 2
    assert mids(await lease_all(spool, "A")) == ["later", "latest"]
    assert first[0].attempts == 1
