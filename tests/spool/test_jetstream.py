"""JetStream-specific behaviour beyond the conformance suite, against real nats-server processes:
two instances sharing dedup and delivery, refusals at start, the bounded wait when the cluster is
gone, retries that hold no consumer slot, secrets kept out of repr and errors, and SIGKILLs of
nats nodes (one, then the stream leader, then the whole cluster) during appends from two processes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from proxy.spool.base import DeadQuery, Disposition, Settlement, SpoolUnavailable
from proxy.spool.jetstream import GROUP_BYTES, PULL_BYTES, JetStreamRefused, JetStreamSpool
from tests.spool.harness_jetstream import shared_cluster, storage
from tests.spool.jetstream_cluster import NatsCluster, _free_ports, nats_server_binary
from tests.spool.support import BIG, deliver_all, ev, lease_all, mids, req

ROOT = Path(__file__).resolve().parents[2]
SMALL = {"max_bytes": 64 * 1024 * 1024, "dedup_memory": 8 * 1024 * 1024}


@pytest.fixture
async def two(tmp_path):
    """Two instances on one stream prefix of the shared cluster (as two servers behind a balancer)."""
    cluster = shared_cluster()
    prefix = "x" + uuid.uuid4().hex[:10]
    spools = []
    for _ in range(2):
        s = JetStreamSpool(storage(cluster.urls, prefix, tmp_path, **SMALL), role="main")
        await s.start()
        spools.append(s)
    yield spools
    for s in spools:
        await s.close()
    admin = JetStreamSpool(storage(cluster.urls, prefix, tmp_path, **SMALL), role="admin")
    await admin.start()
    await admin.delete_everything()
    await admin.close()


async def _until(cond, timeout=20.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if await cond():
            return True
        await asyncio.sleep(0.05)
    return False


async def test_a_resend_to_the_other_instance_is_a_duplicate(two):
    a, b = two
    await a.attach(["A"])
    assert (await a.append(req(ev("m1"), ev("m2")))).stored == 2

    async def b_knows():
        return b._index.seen(req(ev("m1")).items[0].dedup, time.time())

    assert await _until(b_knows)  # b follows the ids stream
    r = await b.append(req(ev("m1"), ev("m3")))
    assert (r.stored, r.duplicates) == (1, 1)
    got = await deliver_all(a, "A") + await deliver_all(b, "A")
    assert sorted(got) == ["m1", "m2", "m3"]


async def test_a_new_instance_loads_the_ids_of_the_window_at_start(two, tmp_path):
    a, _b = two
    await a.append(req(*(ev(f"m{i}") for i in range(50))))
    c = JetStreamSpool(storage(a._cfg.servers, a.prefix, tmp_path, **SMALL), role="ingest")
    await c.start()
    try:
        r = await c.append(req(*(ev(f"m{i}") for i in range(45, 55))))
        assert (r.stored, r.duplicates) == (5, 5)
    finally:
        await c.close()


async def test_two_instances_share_the_work_each_event_leased_once(two):
    a, b = two
    await a.attach(["A"])
    await b.attach(["A"])
    for n in range(20):
        await a.append(req(*(ev(f"m{n}-{i}") for i in range(5))))
    got_a, got_b = [], []
    for _ in range(10):
        wa, wb = await asyncio.gather(a.lease("A", 7, BIG), b.lease("A", 7, BIG))
        got_a += mids(wa)
        got_b += mids(wb)
        await asyncio.gather(a.settle("A", [Settlement(w, Disposition.DELIVERED) for w in wa]),
                             b.settle("A", [Settlement(w, Disposition.DELIVERED) for w in wb]))
    got_a += await deliver_all(a, "A")
    got_b += await deliver_all(b, "A")
    assert sorted(got_a + got_b) == sorted(f"m{n}-{i}" for n in range(20) for i in range(5))
    assert got_a and got_b  # the server spread the records


async def test_concurrent_requests_share_messages_and_each_item_keeps_its_own_facts(two):
    """Requests that arrive while every publish lane waits for its PubAck go out together in one
    message (a bundle of their records). Each item is still leased once, with its own request's
    facts; a retry and a dead letter of one item of a bundle hold only that item; a redelivery of a
    partly settled bundle skips what was settled."""
    a, b = two
    await a.attach(["A"])
    await b.attach(["A"])
    n = 200
    results = await asyncio.gather(*(a.append(req(ev(f"g{i}"), ev(f"g{i}-x"), ev(f"d{i % 150}"),
                                                  source=f"src{i % 3}", received_at=1_700_000_000.0 + i))
                                     for i in range(n)))
    # d{i % 150} repeats for i >= 150 from the same source (150 is a multiple of 3): 50 duplicates
    assert sum(r.stored for r in results) == 3 * n - 50
    assert sum(r.duplicates for r in results) == 50
    messages = (await a._stream_state(a.s_events))["messages"]
    assert messages < n, f"{messages} messages for {n} concurrent requests: nothing was grouped"
    works = await lease_all(b, "A")
    by_mid = {w.message_id: w for w in works}
    assert len(works) == len(by_mid) == sum(r.stored for r in results)
    for i in (0, 77, 199):
        w = by_mid[f"g{i}"]
        assert w.source == f"src{i % 3}" and w.received_at == 1_700_000_000.0 + i
        assert w.parsed()["receivedAt"].startswith("2023-11-14T22:")
    retry, dead = by_mid["g5"], by_mid["g6-x"]
    first = [w for w in works if w is not retry and w is not dead][:100]
    await b.settle("A", [Settlement(retry, Disposition.RETRY, retry_at=time.time(), attempts=1),
                         Settlement(dead, Disposition.DEAD, "refused", attempts=1),
                         *(Settlement(w, Disposition.DELIVERED) for w in first)])
    await b._abandon()  # the rest of its leases: redelivered after ack_wait, settled part skipped

    async def a_gets_the_rest():
        got = await lease_all(a, "A")
        a_gets_the_rest.seen += mids(got)
        await a.settle("A", [Settlement(w, Disposition.DELIVERED) for w in got])
        return len(a_gets_the_rest.seen) >= len(works) - 101

    a_gets_the_rest.seen = []
    assert await _until(a_gets_the_rest)
    expected = set(by_mid) - {w.message_id for w in first} - {"g6-x"}
    assert set(a_gets_the_rest.seen) == expected  # the retry of g5 among them, once
    assert sorted(a_gets_the_rest.seen) == sorted(expected)
    letters, total = await a.dead_letters(DeadQuery("A"))
    assert total == 1 and letters[0].message_id == "g6-x"


async def test_large_bundles_are_leased_without_a_gap(two):
    """Bundles of big batches (~0.5 MB each): every lease returns events until all are leased. A
    pull that asks for more than arrives within its timeout (or that the server cuts short with a
    status sent ahead of its last messages) leaves messages in flight, leased again only after
    ack_wait: an empty lease with events still stored is that bug."""
    a, _b = two
    await a.attach(["A"])
    pad = "x" * 1000
    for r in range(3):
        await asyncio.gather(*(a.append(req(*(ev(f"L{r}-{i}-{k}", pad=pad) for k in range(100))))
                               for i in range(32)))
    assert (await a._stream_state(a.s_events))["messages"] < 3 * 32
    pulled: list[int] = []
    pull = a._pull

    async def measured_pull(stream, consumer, batch, timeout=2.0):
        msgs = await pull(stream, consumer, batch, timeout)
        if stream == a.s_events:
            pulled.append(sum(len(m.data) for m in msgs))
        return msgs

    a._pull = measured_pull
    seen: list[str | None] = []
    while len(seen) < 3 * 32 * 100:
        works = await a.lease("A", 500, BIG)
        assert works, f"an empty lease after {len(seen)} of {3 * 32 * 100} events"
        seen += mids(works)
        await a.settle("A", [Settlement(w, Disposition.DELIVERED) for w in works])
    assert len(set(seen)) == len(seen) == 3 * 32 * 100
    # each pull asked for about PULL_BYTES (what it learnt of the message sizes), at most a message more
    assert max(pulled) <= PULL_BYTES + GROUP_BYTES, pulled


async def test_a_retry_waiting_for_hours_holds_no_consumer_slot(two):
    a, _b = two
    await a.attach(["A"])
    await a.append(req(*(ev(f"m{i}") for i in range(30))))
    works = await lease_all(a, "A")
    await a.settle("A", [Settlement(w, Disposition.RETRY, retry_at=time.time() + 3 * 3600, attempts=1)
                         for w in works])
    assert await lease_all(a, "A") == []
    stats = (await a.stats(["A"])).destinations["A"]
    assert stats.retries == 30
    if a._schedules:
        for stream, name in ((a.s_events, f"{a.prefix}_A"), (a.s_retry, f"{a.prefix}_A_retry")):
            info = await a._consumer_info(stream, name)
            assert info["num_ack_pending"] == 0, (name, info["num_ack_pending"])


async def test_a_dead_instance_s_leases_go_to_the_other_one_after_ack_wait(two):
    a, b = two
    await a.attach(["A"])
    await b.attach(["A"])
    await a.append(req(ev("m1"), ev("m2"), ev("m3")))
    first = await a.lease("A", 1, BIG)
    await a.settle("A", [Settlement(first[0], Disposition.DELIVERED)])
    await a._abandon()
    assert await b.lease("A", 10, BIG) == [] or True  # may already be due if ack_wait passed

    async def b_gets_them():
        got = await lease_all(b, "A")
        b_gets_them.seen += mids(got)
        await b.settle("A", [Settlement(w, Disposition.DELIVERED) for w in got])
        return sorted(b_gets_them.seen) == ["m2", "m3"]

    b_gets_them.seen = []
    assert await _until(b_gets_them)


async def test_refuses_to_start_without_jetstream_and_when_unreachable(tmp_path):
    port, http = _free_ports(2)
    proc = subprocess.Popen([nats_server_binary(), "-a", "127.0.0.1", "-p", str(port)],  # noqa: ASYNC220 - starts at once, never waited on here
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        await asyncio.sleep(0.5)
        spool = JetStreamSpool(storage([f"nats://127.0.0.1:{port}"], "nojs", tmp_path, **SMALL))
        with pytest.raises(JetStreamRefused, match="JetStream is not enabled"):
            await spool.start()
    finally:
        proc.terminate()
        proc.wait(10)
    s = storage([f"nats://127.0.0.1:{http}"], "gone", tmp_path, **SMALL)
    s.jetstream.connect_timeout = 1.0
    with pytest.raises(JetStreamRefused, match="cannot connect to NATS at nats://127.0.0.1"):
        await JetStreamSpool(s).start()


def test_version_check():
    from proxy.spool.jetstream import MIN_VERSION, _version

    assert _version("2.9.10") < MIN_VERSION <= _version("2.10.0") < _version("2.15.1")
    assert _version("2.11.0-beta.2") == (2, 11, 0)


async def test_secrets_stay_out_of_repr_and_errors(tmp_path):
    from proxy.config import JetStreamStorage

    s = JetStreamStorage(engine="jetstream", path=tmp_path, jetstream={
        "servers": ["nats://alice:hunter2-zq9@127.0.0.1:1"], "stream": "sec", "connect_timeout": 1.0,
        "user": "bob", "password": "pw-zq9", "max_bytes": SMALL["max_bytes"]})
    spool = JetStreamSpool(s)
    assert "zq9" not in repr(spool) and "zq9" not in repr(s)
    with pytest.raises(JetStreamRefused) as exc:
        await spool.start()
    assert "zq9" not in str(exc.value) and "alice" not in str(exc.value)
    t = JetStreamStorage(engine="jetstream", path=tmp_path, jetstream={"token": "tok-zq9"})
    assert "zq9" not in repr(t) and "zq9" not in repr(JetStreamSpool(t))


async def test_an_unreachable_cluster_answers_503_after_the_bounded_wait(tmp_path):
    with NatsCluster(tmp_path) as cluster:
        s = storage(cluster.urls, "gone", tmp_path, **SMALL)
        s.jetstream.publish_timeout = 3.0
        spool = JetStreamSpool(s)
        await spool.start()
        try:
            assert (await spool.append(req(ev("m1")))).stored == 1
            cluster.kill_all()
            t0 = time.monotonic()
            with pytest.raises(SpoolUnavailable):
                await spool.append(req(ev("m2")))
            assert time.monotonic() - t0 < 60  # bounded (publish_timeout), not a hang
            refusal = spool.refusal()
            assert refusal is not None and refusal.status == 503 and refusal.code == "storage_unavailable"
            assert spool.problems()
            cluster.start_all()

            async def back():
                try:
                    return (await spool.append(req(ev("m3")))).stored == 1
                except SpoolUnavailable:
                    return False

            assert await _until(back, 90)
            assert spool.refusal() is None
            await spool.attach(["A"])
        finally:
            await spool.close()


async def test_no_peers_for_placement_is_asked_again_and_a_bad_request_is_not(tmp_path):
    """Stream creation answered "no suitable peers for placement" (seen while a node restarts or
    misses its heartbeats on a loaded machine) is asked again within the wait, as a 503 is; any
    other refusal is raised at once."""
    from proxy.spool.jetstream import ERR_NO_PEERS, _ApiError

    spool = JetStreamSpool(storage(["nats://127.0.0.1:1"], "patient", tmp_path, **SMALL))
    answers: list[BaseException | str] = [
        _ApiError(400, ERR_NO_PEERS, "no suitable peers for placement, peer offline"),
        _ApiError(503, 10008, "JetStream system temporarily unavailable"), "created"]

    async def call():
        answer = answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    assert await spool._patiently(call, "stream x") == "created" and not answers

    async def refused():
        raise _ApiError(400, 10052, "replicas > 1 not supported in non-clustered mode")

    with pytest.raises(_ApiError):
        await asyncio.wait_for(spool._patiently(refused, "stream x"), 5)


def _run_driver(mode: str, prefix: str, out: Path, urls: list[str], name: str = "p") -> subprocess.Popen[bytes]:
    log = out.with_suffix(".log").open("ab")
    return subprocess.Popen([sys.executable, "-m", "tests.spool.jetstream_driver", mode, prefix, str(out), *urls,
                             "--name", name], cwd=ROOT, stdout=log, stderr=log,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.mark.slow
async def test_sigkill_a_node_then_the_leader_then_an_instance_then_the_whole_cluster_loses_nothing_acked(tmp_path):
    prefix = "kill"
    with NatsCluster(tmp_path) as cluster:
        setup = JetStreamSpool(storage(cluster.urls, prefix, tmp_path, max_bytes=512 * 1024 * 1024,
                                       dedup_memory=8 * 1024 * 1024))
        await setup.start()
        await setup.attach(["A"])  # the destination exists before the load: it gets all of it
        await setup.close()
        outs = [tmp_path / "acked-1.txt", tmp_path / "acked-2.txt"]
        procs = [_run_driver("append", prefix, o, cluster.urls, name=f"p{i}") for i, o in enumerate(outs)]

        def acked() -> int:
            return sum(len(o.read_text().split()) for o in outs if o.exists())

        try:
            def both() -> bool:  # both appenders run (else killing one later proves nothing)
                return all(o.exists() and o.stat().st_size for o in outs)

            async def loaded() -> bool:
                return acked() >= 2000 and both()
            await _until(loaded, 90)
            assert acked() >= 2000, "no load"
            assert both(), "\n".join(o.with_suffix(".log").read_text()[-3000:] for o in outs
                                      if o.with_suffix(".log").exists())
            leader = cluster.leader(f"{prefix}_EVENTS")
            victim = next(i for i in range(3) if i != leader)
            cluster.kill(victim)                          # a follower
            before = acked()
            await asyncio.sleep(3)
            cluster.start(victim)
            cluster.wait_ready(90)
            leader = cluster.leader(f"{prefix}_EVENTS")
            assert leader is not None
            cluster.kill(leader)                          # the stream leader: an election
            mark = acked()

            async def resumed() -> bool:
                return acked() >= mark + 1000
            await _until(resumed, 90)
            assert acked() >= mark + 1000, "publishing did not resume after the election"
            cluster.start(leader)
            cluster.wait_ready(90)
            assert acked() > before
            procs[0].send_signal(signal.SIGKILL)          # one instance dies mid-load; the other goes on
            procs[0].wait(30)
            mark2 = acked()

            async def goes_on() -> bool:
                return acked() >= mark2 + 500
            await _until(goes_on, 60)
            assert acked() >= mark2 + 500
        finally:
            for p in procs:
                p.send_signal(signal.SIGTERM)
            for p in procs:
                try:
                    p.wait(60)
                except subprocess.TimeoutExpired:
                    p.kill()
        acked_ids = [m for o in outs for m in o.read_text().split()]
        assert len(acked_ids) == len(set(acked_ids))
        print(f"acknowledged: {len(acked_ids)} events from 2 processes")
        cluster.kill_all()                                # a whole-cluster crash, then a restart
        cluster.start_all()
        drained = tmp_path / "leased.txt"
        d = _run_driver("drain", prefix, drained, cluster.urls)
        assert d.wait(600) == 0, drained.with_suffix(".log").read_text()[-3000:]
        leased = drained.read_text().split()
        missing = set(acked_ids) - set(leased)
        assert not missing, f"{len(missing)} of {len(acked_ids)} acknowledged events never leased"
        # duplicates only of the same messageId (at-least-once): nothing leased that nobody sent
        prefixes = {"p0", "p1"}
        assert all(m.split("-")[0] in prefixes for m in leased)


async def test_only_a_delivering_instance_frees_the_event_stream(tmp_path):
    """An ingest worker (server.workers > 1) knows no destinations: its housekeeping must never
    purge events a destination still owes, even with the stream near full."""
    cluster = shared_cluster()
    prefix = "p" + uuid.uuid4().hex[:10]
    small = {"max_bytes": 1024 * 1024, "dedup_memory": 8 * 1024 * 1024, "retention": 0.01}
    main = JetStreamSpool(storage(cluster.urls, prefix, tmp_path, **small), role="main")
    worker = JetStreamSpool(storage(cluster.urls, prefix, tmp_path, **small), role="ingest")
    await main.start()
    await worker.start()
    try:
        await main.attach(["A"])
        pad = "x" * 8000
        sent = [f"m{i}" for i in range(110)]
        for i in range(0, len(sent), 10):  # ~880 KB: over 80 % of the quota
            await worker.append(req(*({**ev(m), "properties": {"pad": pad}} for m in sent[i:i + 10])))
        await asyncio.sleep(0.05)
        await worker.maintain([])
        await worker.maintain([])
        assert sorted(await deliver_all(main, "A")) == sorted(sent)
    finally:
        await worker.close()
        await main.close()
        admin = JetStreamSpool(storage(cluster.urls, prefix, tmp_path, **small), role="admin")
        await admin.start()
        await admin.delete_everything()
        await admin.close()
