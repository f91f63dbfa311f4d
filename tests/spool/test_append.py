"""Conformance: append returns what it stored, and dedups (source, messageId) within the window."""

from __future__ import annotations

import asyncio
import time

from proxy.spool.base import Route
from tests.spool.support import deliver_all, ev, lease_all, mids, req


async def test_append_counts_and_duplicates_inside_one_request(harness):
    spool = await harness.open()
    await spool.attach(["A"])
    r = await spool.append(req(ev("m1"), ev("m2"), ev("m1"), ev("m3"), ev("m2")))
    assert (r.stored, r.duplicates) == (3, 2)
    assert await deliver_all(spool, "A") == ["m1", "m2", "m3"]


async def test_duplicates_across_requests_and_a_request_of_only_duplicates(harness):
    spool = await harness.open()
    await spool.attach(["A"])
    assert (await spool.append(req(ev("m1"), ev("m2")))).stored == 2
    r = await spool.append(req(ev("m2"), ev("m3")))
    assert (r.stored, r.duplicates) == (1, 1)
    r = await spool.append(req(ev("m1"), ev("m3")))
    assert (r.stored, r.duplicates) == (0, 2)
    assert await deliver_all(spool, "A") == ["m1", "m2", "m3"]
    assert [e.event["messageId"] for e in await spool.events()] == ["m1", "m2", "m3"]


async def test_concurrent_appends_of_one_id_store_it_once(harness):
    spool = await harness.open()
    await spool.attach(["A"])
    results = await asyncio.gather(*(spool.append(req(ev("same"), ev(f"own-{i}"))) for i in range(8)))
    assert sum(r.stored for r in results) == 9
    assert sum(r.duplicates for r in results) == 7
    delivered = await deliver_all(spool, "A")
    assert delivered.count("same") == 1 and len(delivered) == 9


async def test_duplicates_are_recognised_after_a_restart_and_a_crash(harness):
    spool = await harness.open()
    await spool.attach(["A"])
    assert (await spool.append(req(ev("m1")))).stored == 1
    spool = await harness.restart(spool)
    assert (await spool.append(req(ev("m1"), ev("m2")))).duplicates == 1
    await harness.crash(spool)
    spool = await harness.open()
    r = await spool.append(req(ev("m2"), ev("m1"), ev("m3")))
    assert (r.stored, r.duplicates) == (1, 2)
    assert await deliver_all(spool, "A") == ["m1", "m2", "m3"]


async def test_the_same_message_id_from_another_source_is_not_a_duplicate(harness):
    spool = await harness.open()
    await spool.attach(["A"])
    assert (await spool.append(req(ev("m1"), source="web"))).stored == 1
    assert (await spool.append(req(ev("m1"), source="backend"))).stored == 1
    works = await lease_all(spool, "A")
    assert sorted(w.source for w in works) == ["backend", "web"]


async def test_an_id_is_forgotten_after_the_dedup_window(harness):
    window = 100.0
    t0 = time.time()
    spool = await harness.open(dedup_window=window)
    await spool.attach(["A"])
    assert (await spool.append(req(ev("m1"), received_at=t0))).stored == 1
    assert (await spool.append(req(ev("m1"), received_at=t0 + window / 2))).duplicates == 1
    # backends may remember an id up to two windows (bucketed indexes); three is past any of them
    assert (await spool.append(req(ev("m1"), received_at=t0 + 3 * window + 1))).stored == 1
    assert mids(await lease_all(spool, "A")) == ["m1", "m1"]


async def test_items_without_a_message_id_are_never_duplicates_of_each_other(harness):
    spool = await harness.open()
    await spool.attach(["A"])
    r = await spool.append(req(ev(None), ev(None), ev(None)))
    assert (r.stored, r.duplicates) == (3, 0)
    got = mids(await lease_all(spool, "A"))
    assert len(set(got)) == 3 and all(m and m.startswith("api-") for m in got)


async def test_an_item_routed_nowhere_is_stored_but_leased_by_nobody(harness):
    spool = await harness.open()
    await spool.attach(["A"])
    routes = [Route(()), Route(("A",))]
    r = await spool.append(req(ev("m1"), ev("m2"), routes=routes, route_of=[0, 1]))
    assert r.stored == 2
    assert mids(await lease_all(spool, "A")) == ["m2"]
    assert [e.event["messageId"] for e in await spool.events()] == ["m1", "m2"]


async def test_an_append_after_close_is_refused_at_once(harness):
    """A request that reaches a closed spool (a shutdown racing a client) gets SpoolUnavailable —
    ingest answers 503 — and is never left waiting for a commit nobody will make."""
    from proxy.spool.base import SpoolUnavailable

    spool = await harness.open()
    await spool.attach(["A"])
    assert (await spool.append(req(ev("m1")))).stored == 1
    await harness.close(spool)
    try:
        await asyncio.wait_for(spool.append(req(ev("m2"))), 10)
    except SpoolUnavailable:
        pass
    else:
        raise AssertionError("a closed spool stored an event")
    spool = await harness.open()
    await spool.attach(["A"])
    assert await deliver_all(spool, "A") == ["m1"]
