"""Conformance: dead letters (list with filters, show, replay to chosen destinations) and forget."""

from __future__ import annotations

import asyncio

import orjson

from proxy.spool.base import DeadQuery, Disposition, Settlement
from tests.spool.support import deliver_all, ev, lease_all, mids, req


async def _kill(spool, dest, *ids, reason="400 invalid", status=400, response='{"error":"bad"}', attempts=1):
    await spool.append(req(*(ev(i) for i in ids), dests=(dest,)))
    works = await lease_all(spool, dest)
    assert mids(works) == list(ids)
    await spool.settle(dest, [Settlement(w, Disposition.DEAD, reason=reason, status=status, response=response,
                                         attempts=attempts, first_failed=1.0) for w in works])


async def test_a_dead_letter_keeps_event_reason_response_status_and_attempts(harness):
    spool = await harness.open()
    await spool.attach(["A"])
    await _kill(spool, "A", "m1", reason="400 invalid", status=400, response='{"error":"bad"}', attempts=3)
    letters, total = await spool.dead_letters(DeadQuery())
    assert total == 1
    (d,) = letters
    assert (d.destination, d.attempts, d.status, d.reason, d.response, d.source, d.message_id) == \
        ("A", 3, 400, "400 invalid", '{"error":"bad"}', "web", "m1")
    assert d.at > 0 and d.event is None
    shown = await spool.dead_letter(d.id)
    assert shown is not None and shown.id == d.id and shown.reason == "400 invalid"
    event = orjson.loads(shown.event)
    assert event["messageId"] == "m1" and event["event"] == "Clicked" and "receivedAt" in event
    assert await spool.dead_letter("999999999") is None
    # durable
    spool = await harness.restart(spool)
    assert (await spool.dead_letter(d.id)).response == '{"error":"bad"}'


async def test_dead_letters_are_listed_oldest_first_with_filters_limit_and_total(harness):
    spool = await harness.open()
    await spool.attach(["A", "B"])
    await _kill(spool, "A", "a1", "a2")
    await asyncio.sleep(1.1)  # `at` may be stored with one-second resolution
    await _kill(spool, "B", "b1")
    await _kill(spool, "A", "a3")
    letters, total = await spool.dead_letters(DeadQuery())
    assert total == 4 and [d.message_id for d in letters] == ["a1", "a2", "b1", "a3"]
    letters, total = await spool.dead_letters(DeadQuery(destination="A"))
    assert total == 3 and [d.message_id for d in letters] == ["a1", "a2", "a3"]
    letters, total = await spool.dead_letters(DeadQuery(destination="A", limit=2))
    assert total == 3 and [d.message_id for d in letters] == ["a1", "a2"]
    everything = (await spool.dead_letters(DeadQuery()))[0]
    before_gap, after_gap = everything[1].at, everything[2].at      # a2 and b1
    assert before_gap < after_gap
    since, total = await spool.dead_letters(DeadQuery(since=after_gap))
    assert total == 2 and [d.message_id for d in since] == ["b1", "a3"]
    until, total = await spool.dead_letters(DeadQuery(until=before_gap))
    assert total == 2 and [d.message_id for d in until] == ["a1", "a2"]
    both, total = await spool.dead_letters(DeadQuery(destination="A", since=after_gap))
    assert total == 1 and [d.message_id for d in both] == ["a3"]
    assert (await spool.dead_letters(DeadQuery(since=everything[-1].at + 60)))[1] == 0
    assert (await spool.dead_letters(DeadQuery(destination="C")))[1] == 0
    by_id = {d.message_id: d.id for d in (await spool.dead_letters(DeadQuery()))[0]}
    letters, total = await spool.dead_letters(DeadQuery(ids=(by_id["a3"], by_id["a1"])))
    assert total == 2 and [d.message_id for d in letters] == ["a1", "a3"]


async def test_replay_puts_dead_letters_back_due_now_with_attempts_reset(harness):
    spool = await harness.open()
    await spool.attach(["A"])
    await _kill(spool, "A", "m1", "m2", attempts=7)
    seen: list[int] = []
    assert await spool.replay(DeadQuery(destination="A"), ["A"], seen.append) == 2
    assert seen and seen[-1] == 2
    assert (await spool.dead_letters(DeadQuery()))[1] == 0
    works = await lease_all(spool, "A")
    assert sorted(mids(works)) == ["m1", "m2"]
    assert all(w.attempts == 0 and w.done == frozenset() for w in works)
    assert works[0].parsed()["event"] == "Clicked"
    # a replayed event that fails again is a dead letter again; delivered, it is gone for good
    await spool.settle("A", [Settlement(works[0], Disposition.DEAD, reason="still bad", attempts=1),
                             Settlement(works[1], Disposition.DELIVERED)])
    assert (await spool.dead_letters(DeadQuery()))[1] == 1
    spool = await harness.restart(spool)
    await spool.attach(["A"])
    assert await lease_all(spool, "A") == []


async def test_replay_only_touches_the_given_destinations_and_matching_letters(harness):
    spool = await harness.open()
    await spool.attach(["A", "B"])
    await _kill(spool, "A", "a1", "a2")
    await _kill(spool, "B", "b1")
    ids = {d.message_id: d.id for d in (await spool.dead_letters(DeadQuery()))[0]}
    # the query matches B's letter too, but only A is to be replayed
    assert await spool.replay(DeadQuery(), ["A"]) == 2
    assert [d.message_id for d in (await spool.dead_letters(DeadQuery()))[0]] == ["b1"]
    assert await lease_all(spool, "B") == []
    assert sorted(await deliver_all(spool, "A")) == ["a1", "a2"]
    # by id
    await _kill(spool, "A", "a3", "a4")
    ids = {d.message_id: d.id for d in (await spool.dead_letters(DeadQuery(destination="A")))[0]}
    assert await spool.replay(DeadQuery(ids=(ids["a4"],)), ["A", "B"]) == 1
    assert await deliver_all(spool, "A") == ["a4"]
    assert sorted(d.message_id for d in (await spool.dead_letters(DeadQuery()))[0]) == ["a3", "b1"]
    assert await spool.replay(DeadQuery(destination="B"), []) == 0


async def test_forget_removes_cursor_and_retries_but_keeps_dead_letters(harness):
    spool = await harness.open()
    await spool.attach(["A", "Old"])
    await _kill(spool, "Old", "d1")
    await spool.append(req(ev("r1"), ev("r2"), ev("pending"), dests=("Old", "A")))
    works = await spool.lease("Old", 2, 1 << 30)
    await spool.settle("Old", [Settlement(w, Disposition.RETRY, retry_at=0.0, attempts=1) for w in works])
    assert set(await spool.known_destinations()) >= {"A", "Old"}
    assert await spool.forget("Old") == 2
    assert "Old" in await spool.known_destinations()          # its dead letter is still there
    assert (await spool.dead_letters(DeadQuery(destination="Old")))[1] == 1
    stats = (await spool.stats()).destinations.get("Old")
    assert stats is not None and stats.retries == 0 and stats.dead == 1
    # a destination that comes back starts at the end of the log: nothing old is leased
    await spool.attach(["A", "Old"])
    assert await lease_all(spool, "Old") == []
    await spool.append(req(ev("fresh"), dests=("Old",)))
    assert mids(await lease_all(spool, "Old")) == ["fresh"]
    # A was not affected
    assert await deliver_all(spool, "A") == ["r1", "r2", "pending"]


async def test_forget_of_a_destination_with_nothing_but_a_cursor(harness):
    spool = await harness.open()
    await spool.attach(["A", "Gone"])
    assert "Gone" in await spool.known_destinations()
    assert await spool.forget("Gone") == 0
    assert "Gone" not in await spool.known_destinations()
    spool = await harness.restart(spool)
    assert "Gone" not in await spool.known_destinations()
    assert "A" in await spool.known_destinations()


async def test_reroute_moves_dead_letters_to_the_destinations_route_names(harness):
    """The blocked store's replay: a dead letter of one (pseudo-)destination goes to others."""
    spool = await harness.open()
    await spool.attach(["(blocked:web)", "A", "B"])
    for dest, ids in (("(blocked:web)", ("x1", "x2", "x3")), ("A", ("a1",))):
        await spool.append(req(*(ev(i) for i in ids), dests=(dest,)))
        works: list = []
        for _ in range(50):  # a broker-backed lease may need a moment for a just-created consumer
            works += await lease_all(spool, dest)
            if len(works) >= len(ids):
                break
            await asyncio.sleep(0.1)
        assert sorted(mids(works)) == list(ids)
        await spool.settle(dest, [Settlement(w, Disposition.DEAD, reason="blocked_by_tracking_plan", attempts=0)
                                  for w in works])
    targets = {"x1": ["A", "B"], "x2": ["B", "B"], "x3": []}   # x3 would reach nothing: it stays
    seen_events: dict[str, dict] = {}

    def route(letter):
        assert letter.event is not None           # the letter comes with its event
        seen_events[letter.message_id] = orjson.loads(letter.event)
        return targets[letter.message_id]

    assert await spool.reroute(DeadQuery(destination="(blocked:web)"), route) == 2
    assert set(seen_events) == {"x1", "x2", "x3"} and seen_events["x1"]["event"] == "Clicked"
    left = sorted(d.message_id for d in (await spool.dead_letters(DeadQuery()))[0])
    assert left == ["a1", "x3"]
    a = await lease_all(spool, "A", new=False)
    assert mids(a) == ["x1"] and a[0].attempts == 0 and a[0].parsed()["event"] == "Clicked"
    await spool.settle("A", [Settlement(w, Disposition.DELIVERED) for w in a])
    assert sorted(await deliver_all(spool, "B")) == ["x1", "x2"]   # once each, however often named
    spool = await harness.restart(spool)
    await spool.attach(["(blocked:web)", "A", "B"])
    assert await lease_all(spool, "A") == [] and await lease_all(spool, "B") == []


async def test_violations_recorded_at_ingest_reach_the_event_its_retry_and_its_dead_letter(harness):
    spool = await harness.open()
    await spool.attach(["A"])
    append = req(ev("v1"), ev("ok"), ev("v2"))
    violation = {"type": "Required", "field": "properties.order_id", "description": "properties.order_id is required"}
    append.items[0].violations = [violation]
    append.items[2].violations = [violation, {"type": "Unplanned", "field": "event", "description": "x"}]
    await spool.append(append)
    works = await lease_all(spool, "A")
    got = {w.message_id: w.parsed() for w in works}
    assert got["v1"]["context"]["violations"] == [violation]
    assert "violations" not in got["ok"].get("context", {})
    assert len(got["v2"]["context"]["violations"]) == 2
    by = {w.message_id: w for w in works}
    await spool.settle("A", [Settlement(by["v1"], Disposition.RETRY, retry_at=0.0, attempts=1),
                             Settlement(by["v2"], Disposition.DEAD, reason="bad", attempts=1),
                             Settlement(by["ok"], Disposition.DELIVERED)])
    (retry,) = await lease_all(spool, "A", new=False)
    assert retry.parsed()["context"]["violations"] == [violation]
    (letter,), _ = await spool.dead_letters(DeadQuery())
    shown = await spool.dead_letter(letter.id)
    assert len(orjson.loads(shown.event)["context"]["violations"]) == 2
