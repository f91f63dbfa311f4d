"""Conformance: what delivery reads is enriched through the port (the record format applies ingest's
decisions), events() shows routes, stats() counts."""

from __future__ import annotations

import time

import orjson

from proxy.enrich import iso_epoch
from proxy.spool.base import Disposition, Route, Settlement
from tests.spool.support import deliver_all, ev, lease_all, req


async def _one(spool, request):
    await spool.append(request)
    (work,) = await lease_all(spool, "A")
    return work.parsed()


async def test_an_item_without_message_id_gets_the_one_ingest_generated(harness):
    spool = await harness.open()
    await spool.attach(["A"])
    request = req(ev(None))
    generated = request.items[0].message_id
    assert generated
    await spool.append(request)
    (work,) = await lease_all(spool, "A")
    assert work.message_id == generated and work.parsed()["messageId"] == generated
    # the same id every time it is read: after a retry and after a restart
    await spool.settle("A", [Settlement(work, Disposition.RETRY, retry_at=0.0, attempts=1)])
    spool = await harness.restart(spool)
    await spool.attach(["A"])
    assert [w.message_id for w in await lease_all(spool, "A")] == [generated]
    assert (await spool.events())[0].event["messageId"] == generated


async def test_received_at_and_timestamp_corrected_by_the_batch_sent_at(harness):
    spool = await harness.open()
    await spool.attach(["A"])
    received = round(time.time(), 3)
    # the client's clock is 10 s behind: it stamped the event 5 s before sending the batch
    event = await _one(spool, req(ev("m1", timestamp=iso_epoch(received - 15)), received_at=received,
                                  sent_at=iso_epoch(received - 10)))
    assert event["receivedAt"] == iso_epoch(received)
    assert event["timestamp"] == iso_epoch(received - 5)
    assert event["originalTimestamp"] == iso_epoch(received - 15)
    assert event["sentAt"] == iso_epoch(received - 10)


async def test_no_timestamp_means_received_at_and_write_key_is_dropped(harness):
    spool = await harness.open()
    await spool.attach(["A"])
    received = round(time.time(), 3)
    event = await _one(spool, req(ev("m1", writeKey="secret-key"), received_at=received))
    assert event["timestamp"] == iso_epoch(received)
    assert "writeKey" not in event
    assert event["type"] == "track" and event["event"] == "Clicked" and event["properties"] == {"n": 1}


async def test_batch_context_and_integrations_are_merged_the_item_winning(harness):
    spool = await harness.open()
    await spool.attach(["A"])
    event = await _one(spool, req(
        ev("m1", context={"locale": "de-DE"}, integrations={"Mixpanel": False}),
        context=orjson.dumps({"locale": "en-US", "library": {"name": "analytics-python", "version": "2.3"}}),
        integrations=orjson.dumps({"All": True, "Mixpanel": True})))
    assert event["context"]["locale"] == "de-DE"
    assert event["context"]["library"] == {"name": "analytics-python", "version": "2.3"}
    assert event["integrations"] == {"All": True, "Mixpanel": False}
    assert event["channel"] == "server" and "ip" not in event["context"]


async def test_short_path_browser_traffic_gets_context_ip_and_channel_browser(harness):
    spool = await harness.open()
    await spool.attach(["A"])
    event = await _one(spool, req(ev("m1"), client_ip="203.0.113.7", short_path=True))
    assert event["context"]["ip"] == "203.0.113.7" and event["channel"] == "browser"
    # a server library on a normal path: the proxy's view of the address is not the user's
    event = await _one(spool, req(ev("m2"), client_ip="203.0.113.7"))
    assert "ip" not in event["context"] and event["channel"] == "server"
    # the client's own context.ip wins
    event = await _one(spool, req(ev("m3", context={"ip": "198.51.100.1"}), client_ip="203.0.113.7",
                                  short_path=True))
    assert event["context"]["ip"] == "198.51.100.1"


async def test_the_path_call_type_wins_over_the_body(harness):
    spool = await harness.open()
    await spool.attach(["A"])
    event = await _one(spool, req({"messageId": "m1", "type": "track", "userId": 42, "traits": {"a": 1}},
                                  call_type="identify"))
    assert event["type"] == "identify" and event["userId"] == "42"


async def test_events_are_enriched_with_destinations_and_skip_reasons_in_arrival_order(harness):
    spool = await harness.open()
    await spool.attach(["A", "B"])
    received = round(time.time(), 3)
    routes = [Route(("A",), {"B": "integrations: B is off"}), Route(("A", "B"))]
    await spool.append(req(ev("m1"), ev("m2"), routes=routes, route_of=[0, 1], received_at=received,
                           source="backend"))
    await spool.append(req(ev(None)))
    events = await spool.events()
    assert [e.event["messageId"] for e in events[:2]] == ["m1", "m2"]
    assert events[2].event["messageId"].startswith("api-")
    assert events[0].destinations == ("A",) and dict(events[0].skipped) == {"B": "integrations: B is off"}
    assert set(events[1].destinations) == {"A", "B"} and dict(events[1].skipped) == {}
    assert events[0].source == "backend" and events[0].received_at == received
    assert events[0].event["receivedAt"] == iso_epoch(received)
    assert [e.event["messageId"] for e in await spool.events(limit=2)] == ["m1", "m2"]


async def test_stats_count_events_bytes_backlog_retries_dead_and_oldest(harness):
    spool = await harness.open()
    await spool.attach(["A", "B"])
    t0 = round(time.time(), 3) - 100
    await spool.append(req(ev("m1"), ev("m2"), ev("m3"), dests=("A", "B"), received_at=t0))
    await spool.append(req(ev("m4"), dests=("A",), received_at=t0 + 50))
    stats = await spool.stats(["A", "B", "C"])
    assert stats.events == 4 and stats.bytes > 0 and not stats.full
    a, b, c = stats.destinations["A"], stats.destinations["B"], stats.destinations["C"]
    exact_backlog = "approximate_backlog" not in harness.caveats
    if exact_backlog:
        assert (a.backlog, b.backlog, c.backlog) == (4, 3, 0)
    if "no_oldest_undelivered" not in harness.caveats:
        assert a.oldest_undelivered == t0 and b.oldest_undelivered == t0 and c.oldest_undelivered is None
    w = {x.message_id: x for x in await lease_all(spool, "A")}
    await spool.settle("A", [Settlement(w["m1"], Disposition.DELIVERED),
                             Settlement(w["m2"], Disposition.RETRY, retry_at=time.time() + 3600, attempts=1),
                             Settlement(w["m3"], Disposition.DEAD, reason="bad", attempts=1),
                             Settlement(w["m4"], Disposition.DELIVERED)])
    stats = await spool.stats(["A", "B"])
    a = stats.destinations["A"]
    assert (a.retries, a.dead) == (1, 1)
    if exact_backlog:
        assert a.backlog == 0 and stats.destinations["B"].backlog == 3
    if "no_oldest_undelivered" not in harness.caveats:
        assert a.oldest_undelivered == t0      # the retry is still owed
    assert await deliver_all(spool, "B") == ["m1", "m2", "m3"]
    stats = await spool.stats(["A", "B"])
    assert stats.destinations["B"].backlog == 0 and stats.destinations["B"].oldest_undelivered is None
    assert stats.events == 4                   # delivered events stay until maintain frees them
    as_dict = stats.as_dict()
    assert as_dict["destinations"]["A"]["dead"] == 1 and as_dict["engine"] == spool.engine


async def test_stats_list_known_destinations_not_asked_for(harness):
    spool = await harness.open()
    await spool.attach(["A", "Old"])
    stats = await spool.stats(["A"])
    assert set(stats.destinations) >= {"A", "Old"}
    assert set(await spool.known_destinations()) == {"A", "Old"}
