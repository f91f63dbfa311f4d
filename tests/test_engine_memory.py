"""The delivery engine in-process, on the memory spool, with a scripted transport: no server
process, no sockets. What a message owes several requests for, what a retry sends again, and the
circuit breaker's probe."""

from __future__ import annotations

import asyncio
import time

import orjson

from destinations.base import Request, Response
from proxy.config import Config
from proxy.delivery.engine import DeliveryEngine
from proxy.spool import Append, DeadQuery, Item, Route, dedup_hash
from proxy.spool.memory import MemorySpool

TOKEN = "0123456789abcdef0123456789abcdef"


def config(**delivery) -> Config:
    return Config.model_validate({
        "sources": [{"name": "web", "write_keys": ["k"]}],
        "destinations": [{"name": "mp", "type": "mixpanel", "settings": {"project_token": TOKEN,
                                                                         "endpoint": "http://mixpanel.test"},
                          "delivery": {"flush_interval": 0.01, "inflight_retries": 0, "backoff_initial": 0.05,
                                       "backoff_max": 0.1, **delivery}}],
    })


def order(mid: str) -> Append:
    event = {"type": "track", "event": "Order Completed", "userId": "u1", "messageId": mid,
             "properties": {"order_id": mid, "revenue": 12.5, "currency": "USD"}}
    return Append("web", 0, time.time(), [Item(orjson.dumps(event), dedup_hash("web", mid), 0)], [Route(("mp",))])


class Script:
    """Answers by URL path: a list of statuses per path, then 200."""

    def __init__(self, answers: dict[str, list[int]]) -> None:
        self.answers = answers
        self.sent: list[tuple[str, Request]] = []

    async def __call__(self, req: Request, timeout: float) -> Response:
        path = req.url.split("?", 1)[0].removeprefix("http://mixpanel.test")
        self.sent.append((path, req))
        queue = self.answers.get(path) or []
        status = queue.pop(0) if queue else 200
        return Response(status, {}, b'{"status":1}' if path == "/engage" else b'{"code":200,"num_records_imported":1}')


async def until(cond, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met")
        await asyncio.sleep(0.01)


async def test_a_retry_sends_only_the_requests_that_failed():
    spool = MemorySpool()
    await spool.start()
    engine = DeliveryEngine(config(), spool)
    script = Script({"/engage": [503]})
    engine.transport = script  # type: ignore[method-assign]
    await engine.start()
    try:
        await spool.append(order("o1"))
        await until(lambda: [p for p, _ in script.sent].count("/engage") == 2)
        await asyncio.sleep(0.3)
        paths = [p for p, _ in script.sent]
        # the order went to /import once; only the profile's $transactions append was retried
        assert paths.count("/import") == 1, paths
        assert paths.count("/engage") == 2, paths
        assert (await spool.stats(["mp"])).destinations["mp"].retries == 0
        assert (await spool.dead_letters(DeadQuery()))[1] == 0
    finally:
        await engine.stop(1.0)
        await spool.close()


async def failing_engine(spool: MemorySpool, failures: int) -> tuple[DeliveryEngine, Script]:
    """A started engine, one delivery at a time, batches of 10, whose first ``failures`` imports
    get 503: the circuit opens, retries wait an hour, probes every 50-100 ms."""
    engine = DeliveryEngine(config(backoff_initial=3600, backoff_max=3600, probe_interval=0.05, concurrency=1,
                                   probe_interval_max=0.1, max_batch_events=10), spool)
    script = Script({"/import": [503] * failures})
    engine.transport = script  # type: ignore[method-assign]
    await engine.start()
    return engine, script


def imported(script: Script) -> set[str]:
    """The $insert_id of every event sent to /import (failed or not)."""
    return {m["properties"]["$insert_id"] for p, r in script.sent if p == "/import" for m in orjson.loads(r.body)}


async def test_a_batch_that_waited_for_a_slot_is_not_sent_once_the_destination_failed():
    """concurrency 1: the second batch is taken while the first is in flight. The first fails and
    opens the circuit; the second then goes back to the buffer and only one-event probes are sent."""
    spool = MemorySpool()
    await spool.start()
    await spool.attach(["mp"])
    for i in range(40):  # all there before the worker starts: its batches are full at once
        await spool.append(order(f"w{i}"))
    engine, script = await failing_engine(spool, 4)
    try:
        await until(lambda: len([1 for p, _ in script.sent if p == "/import"]) >= 4)
        imports = [len(r.messages) for p, r in script.sent if p == "/import"]
        assert imports[:4] == [10, 1, 1, 1], imports
        await until(lambda: len(imported(script)) == 40)
        assert (await spool.stats(["mp"])).destinations["mp"].backlog == 0
    finally:
        await engine.stop(1.0)
        await spool.close()


async def test_an_open_circuit_sends_one_probe_at_a_time_and_recovery_delivers_everything():
    spool = MemorySpool()
    await spool.start()
    engine, script = await failing_engine(spool, 6)
    try:
        for i in range(40):
            await spool.append(order(f"p{i}"))
        await until(lambda: len([1 for p, _ in script.sent if p == "/import"]) >= 6)
        worker = engine.workers[0]
        # while it failed, one request at a time carried one event (the probes) after the first batch
        imports = [r for p, r in script.sent if p == "/import"]
        assert all(len(r.messages) == 1 for r in imports[1:6]), [len(r.messages) for r in imports]
        await until(lambda: worker.open_since is None)
        # the probe went through: every event rescheduled an hour ahead is due at once
        await until(lambda: len(imported(script)) == 40)
        stats = await spool.stats(["mp"])
        assert stats.destinations["mp"].retries == 0 and stats.destinations["mp"].backlog == 0
    finally:
        await engine.stop(1.0)
        await spool.close()


async def test_a_partial_batch_is_not_leased_again_after_every_commit():
    """At a low rate each request is its own commit; the worker gathers a partial batch until the
    flush interval is up without reading the spool once per commit, and still delivers every event."""
    spool = MemorySpool()
    await spool.start()
    engine = DeliveryEngine(config(flush_interval=0.2, max_batch_events=500), spool)
    script = Script({})
    engine.transport = script  # type: ignore[method-assign]
    leases = 0
    lease = spool.lease

    async def counted(*args, **kwargs):
        nonlocal leases
        leases += 1
        return await lease(*args, **kwargs)

    spool.lease = counted  # type: ignore[method-assign]
    await engine.start()
    try:
        await until(lambda: leases > 0)
        leases = 0
        for i in range(60):  # one commit every ~5 ms
            await spool.append(order(f"s{i}"))
            await asyncio.sleep(0.005)
        await until(lambda: sum(len(r.messages) for p, r in script.sent if p == "/import") == 60)
        assert leases < 30, leases  # once per commit would be 60 or more
    finally:
        await engine.stop(1.0)
        await spool.close()
