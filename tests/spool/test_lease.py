"""Conformance: lease and settle, at-least-once across crashes, routes of several destinations."""

from __future__ import annotations

import asyncio

from proxy.spool.base import DeadQuery, Disposition, Route, Settlement
from tests.spool.support import BIG, deliver_all, ev, lease_all, mids, req, settle


async def test_lease_returns_new_events_in_arrival_order(harness):
    spool = await harness.open()
    await spool.attach(["A"])
    await spool.append(req(ev("m1"), ev("m2")))
    await spool.append(req(ev("m3")))
    works = await lease_all(spool, "A")
    assert mids(works) == ["m1", "m2", "m3"]
    assert all(w.source == "web" and w.key_index == 0 and w.size > 0 for w in works)
    assert all(w.attempts == 0 and w.first_failed is None and w.done == frozenset() for w in works)
    assert await lease_all(spool, "A") == []


async def test_lease_respects_max_events_and_max_bytes_but_returns_at_least_one(harness):
    spool = await harness.open()
    await spool.attach(["A"])
    await spool.append(req(*(ev(f"m{i}", properties={"pad": "x" * 400}) for i in range(10))))
    first = await spool.lease("A", 3, BIG)
    assert mids(first) == ["m0", "m1", "m2"]
    one = await spool.lease("A", 100, 1)
    assert mids(one) == ["m3"]
    some = await spool.lease("A", 100, 3 * one[0].size)
    assert 1 <= len(some) <= 4 and mids(some) == [f"m{i}" for i in range(4, 4 + len(some))]
    rest = await lease_all(spool, "A")
    assert mids(first + one + some + rest) == [f"m{i}" for i in range(10)]


async def test_leased_unsettled_work_is_never_leased_again(harness):
    spool = await harness.open()
    await spool.attach(["A"])
    await spool.append(req(*(ev(f"m{i}") for i in range(6))))
    a = await spool.lease("A", 2, BIG)
    b, c = await asyncio.gather(spool.lease("A", 2, BIG), spool.lease("A", 2, BIG))
    got = mids(a + b + c)
    assert sorted(got) == [f"m{i}" for i in range(6)] and len(set(got)) == 6
    assert await lease_all(spool, "A") == []
    # settling some does not bring back the others
    await settle(spool, "A", a)
    assert await lease_all(spool, "A") == []


async def test_each_disposition_ends_or_keeps_the_event(harness):
    spool = await harness.open()
    await spool.attach(["A"])
    await spool.append(req(ev("delivered"), ev("skipped"), ev("retry"), ev("dead")))
    w = {x.message_id: x for x in await lease_all(spool, "A")}
    await spool.settle("A", [
        Settlement(w["delivered"], Disposition.DELIVERED),
        Settlement(w["skipped"], Disposition.SKIPPED, reason="unsupported call"),
        Settlement(w["retry"], Disposition.RETRY, reason="503", status=503, retry_at=0.0, attempts=1,
                   first_failed=1000.0),
        Settlement(w["dead"], Disposition.DEAD, reason="400 bad", status=400, response="nope", attempts=1),
    ])
    assert mids(await lease_all(spool, "A")) == ["retry"]
    letters, total = await spool.dead_letters(DeadQuery())
    assert total == 1 and [d.message_id for d in letters] == ["dead"]
    spool = await harness.restart(spool)
    await spool.attach(["A"])
    # the retry was leased and not settled before the restart: due again; nothing else comes back
    assert mids(await lease_all(spool, "A")) == ["retry"]


async def test_settling_the_same_work_twice_records_it_once(harness):
    spool = await harness.open()
    await spool.attach(["A"])
    await spool.append(req(ev("m1"), ev("m2")))
    works = await lease_all(spool, "A")
    await settle(spool, "A", works[:1], Disposition.DEAD, reason="bad", attempts=1)
    await settle(spool, "A", works[:1], Disposition.DEAD, reason="bad", attempts=1)
    await settle(spool, "A", works[1:], Disposition.RETRY, retry_at=0.0, attempts=1)
    await settle(spool, "A", works[1:], Disposition.RETRY, retry_at=0.0, attempts=1)
    assert (await spool.dead_letters(DeadQuery()))[1] == 1
    assert mids(await lease_all(spool, "A")) == ["m2"]
    assert (await spool.stats(["A"])).destinations["A"].retries == 1


async def test_a_crash_between_lease_and_settle_leases_the_same_work_again(harness):
    spool = await harness.open()
    await spool.attach(["A"])
    await spool.append(req(ev("m1"), ev("m2"), ev("m3")))
    first = await spool.lease("A", 2, BIG)
    await settle(spool, "A", first[:1])           # m1 delivered; m2 leased, unsettled; m3 not leased
    await harness.crash(spool)
    spool = await harness.open()
    await spool.attach(["A"])
    assert mids(await lease_all(spool, "A")) == ["m2", "m3"]


async def test_a_clean_close_with_unsettled_leases_also_gives_them_back(harness):
    spool = await harness.open()
    await spool.attach(["A"])
    await spool.append(req(ev("m1"), ev("m2")))
    assert mids(await lease_all(spool, "A")) == ["m1", "m2"]
    spool = await harness.restart(spool)
    await spool.attach(["A"])
    assert mids(await lease_all(spool, "A")) == ["m1", "m2"]


async def test_work_settled_after_a_restart_is_settled_once(harness):
    spool = await harness.open()
    await spool.attach(["A"])
    await spool.append(req(ev("d"), ev("r"), ev("x")))
    await lease_all(spool, "A")
    await harness.crash(spool)
    spool = await harness.open()
    await spool.attach(["A"])
    w = {x.message_id: x for x in await lease_all(spool, "A")}
    assert sorted(w) == ["d", "r", "x"]
    await spool.settle("A", [Settlement(w["d"], Disposition.DELIVERED),
                             Settlement(w["r"], Disposition.RETRY, retry_at=0.0, attempts=1),
                             Settlement(w["x"], Disposition.DEAD, reason="bad", attempts=1)])
    spool = await harness.restart(spool)
    await spool.attach(["A"])
    assert mids(await lease_all(spool, "A")) == ["r"]
    assert (await spool.dead_letters(DeadQuery()))[1] == 1
    stats = (await spool.stats(["A"])).destinations["A"]
    assert (stats.retries, stats.dead) == (1, 1)


async def test_a_destination_leases_only_what_was_routed_to_it(harness):
    spool = await harness.open()
    await spool.attach(["A", "B"])
    routes = [Route(("A",), {"B": "integrations: B disabled"}), Route(("B",), {"A": "unsupported"}),
              Route(("A", "B"))]
    await spool.append(req(ev("a-only"), ev("b-only"), ev("both"), routes=routes, route_of=[0, 1, 2]))
    assert mids(await lease_all(spool, "B")) == ["b-only", "both"]
    assert mids(await lease_all(spool, "A")) == ["a-only", "both"]
    assert await lease_all(spool, "B") == [] and await lease_all(spool, "A") == []


async def test_destinations_progress_independently(harness):
    spool = await harness.open()
    await spool.attach(["A", "B"])
    await spool.append(req(ev("m1"), ev("m2"), dests=("A", "B")))
    assert await deliver_all(spool, "A") == ["m1", "m2"]
    spool = await harness.restart(spool)
    await spool.attach(["A", "B"])
    assert await lease_all(spool, "A") == []
    assert await deliver_all(spool, "B") == ["m1", "m2"]


async def test_a_destination_seen_first_starts_at_the_end_of_the_log(harness):
    spool = await harness.open()
    await spool.attach(["A"])
    await spool.append(req(ev("before"), dests=("A", "B")))
    await spool.attach(["A", "B"])
    await spool.append(req(ev("after"), dests=("A", "B")))
    assert mids(await lease_all(spool, "B")) == ["after"]
    # attaching again, or after a restart, does not move a known destination to the end
    spool = await harness.restart(spool)
    await spool.attach(["A", "B"])
    assert mids(await lease_all(spool, "A")) == ["before", "after"]
    assert mids(await lease_all(spool, "B")) == ["after"]


async def test_delivered_work_stays_delivered_across_restarts(harness):
    spool = await harness.open()
    await spool.attach(["A"])
    await spool.append(req(*(ev(f"m{i}") for i in range(5))))
    assert len(await deliver_all(spool, "A")) == 5
    for _ in range(2):
        spool = await harness.restart(spool)
        await spool.attach(["A"])
        assert await lease_all(spool, "A") == []
    await spool.append(req(ev("m5")))
    assert await deliver_all(spool, "A") == ["m5"]
