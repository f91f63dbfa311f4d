"""What only the embedded backend has: its files. Torn and corrupt tails, the dedup index's memory
bound and its rebuild without the journal, a spool written by the release before the storage
rework, and space freed while a server runs."""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import time
from pathlib import Path

import orjson
import pytest

from proxy.config import EmbeddedStorage
from proxy.spool import Append, Disposition, Item, Route, Settlement, SpoolUnavailable, dedup_hash, open_spool
from proxy.spool.embedded import EmbeddedSpool
from tests.fakes.base import FakeServer
from tests.fakes.recorder import Recorder
from tests.helpers import WRITE_KEY, TrackRelay

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "spool_v0" / "spool.db"


def request(*mids: str, dests: tuple[str, ...] = ("a",)) -> Append:
    items = [Item(orjson.dumps({"type": "track", "event": "E", "userId": "u", "messageId": m}), dedup_hash("web", m), 0,
                  i)
             for i, m in enumerate(mids)]
    return Append("web", 0, time.time(), items, [Route(dests)])


async def opened(path: Path, **settings) -> EmbeddedSpool:
    spool = open_spool(EmbeddedStorage(path=path, **settings))
    await spool.start()
    await spool.attach(["a"])
    return spool  # type: ignore[return-value]


async def lease_all(spool, dest: str = "a") -> list[str]:
    works = await spool.lease(dest, 10_000, 1 << 30)
    return [w.message_id for w in works]


def segment(path: Path) -> Path:
    (seg,) = sorted((path / "log").glob("*.seg"))
    return seg


@pytest.fixture(params=["whole", "streamed"])
def validate_chunk(request, monkeypatch):
    """Recovery reads the log a few MB at a time: "streamed" makes that one frame at a time, so the
    chunk boundaries meet the torn tail and the dedup rebuild."""
    if request.param == "streamed":
        from proxy.spool.embedded import segments

        monkeypatch.setattr(segments, "VALIDATE_CHUNK", 1)
    return request.param


@pytest.mark.parametrize("damage", ["truncated", "garbage", "flipped"])
async def test_a_torn_or_corrupt_tail_is_cut_off_and_the_rest_kept(tmp_path, damage, validate_chunk):
    spool = await opened(tmp_path)
    for i in range(5):
        assert (await spool.append(request(f"m{i}a", f"m{i}b"))).stored == 2
    await spool.close()
    seg = segment(tmp_path)
    good_size = seg.stat().st_size
    data = seg.read_bytes()
    if damage == "truncated":  # the last frame's write was cut short
        seg.write_bytes(data[:-7])
    elif damage == "garbage":  # a write that never completed its header
        seg.write_bytes(data + b"\x99\x00\x00")
    else:  # a bit flipped in the last frame's payload: its CRC no longer matches
        seg.write_bytes(data[:-3] + bytes([data[-3] ^ 0x40]) + data[-2:])

    spool = await opened(tmp_path)
    try:
        got = await lease_all(spool)
        kept = [f"m{i}{s}" for i in range(5 if damage == "garbage" else 4) for s in "ab"]
        assert got == kept
        assert seg.stat().st_size == (good_size if damage == "garbage" else good_size - (len(data) - _last_frame(data)))
        # the log goes on after the cut: new records are appended and read in order
        assert (await spool.append(request("after"))).stored == 1
        assert await lease_all(spool) == ["after"]
    finally:
        await spool.close()
    spool = await opened(tmp_path)
    try:  # and a restart reads the same again (nothing settled: at-least-once)
        assert await lease_all(spool) == kept + ["after"]
    finally:
        await spool.close()


def _last_frame(data: bytes) -> int:
    from proxy.spool import records

    last = 0
    for off, _ in records.scan(data):
        last = off
    return last


async def test_dedup_index_keeps_its_memory_bound_and_says_how_long_it_remembers(tmp_path):
    spool = await opened(tmp_path, dedup_memory=16 * 1024)  # 1,024 slots per generation: 512 ids each
    try:
        index = spool.index
        assert index is not None
        memory = index.memory_bytes()
        for batch in range(30):
            await spool.append(request(*[f"id-{batch}-{i}" for i in range(100)]))
        assert index.memory_bytes() == memory == 16 * 1024
        stats = await spool.stats(["a"])
        assert stats.extra["dedup_window_seconds"] < 86400, "the window shrank and says so"
        assert stats.extra["dedup_capacity_ids"] == 1024
        # the most recent ids are still known
        assert (await spool.append(request("id-29-5", "id-29-99"))).duplicates == 2
    finally:
        await spool.close()


async def test_dedup_is_rebuilt_from_the_log_when_the_journal_is_lost(tmp_path, validate_chunk):
    spool = await opened(tmp_path)
    for i in range(5):
        await spool.append(request(f"early-{i}"))
    await spool.append(request("keep-1", "keep-2"))
    await spool.close()
    # a power cut after the commit, before the journal was synced: journal gone, sync mark old
    shutil.rmtree(tmp_path / "dedup")
    with sqlite3.connect(tmp_path / "state.db") as conn:
        conn.execute("DELETE FROM meta")
    spool = await opened(tmp_path)
    try:
        result = await spool.append(request("keep-2", "new-1", "early-0", "early-4"))
        assert (result.stored, result.duplicates) == (1, 3)
    finally:
        await spool.close()


async def test_event_counts_kept_by_the_writer_match_a_scan_across_segments(tmp_path):
    """The writer counts the events it commits (stats() does not re-read the log for them): the
    count must equal a scan's, across segment rolls and duplicates, and a reader's from disk."""
    spool = await opened(tmp_path, segment_bytes=4096)
    total = 0
    try:
        for i in range(60):
            mids = [f"c-{i}-{j}" for j in range(i % 5 + 1)] + ["c-0-0"]  # c-0-0: a duplicate after the first
            result = await spool.append(request(*mids))
            total += result.stored
            if i % 7 == 0:
                assert (await spool.stats(["a"])).events == total
        assert total == sum(i % 5 + 1 for i in range(60))  # each c-0-0 after the very first is a duplicate
        assert len(list((tmp_path / "log").glob("*.seg"))) > 3
        # the last appends (after the last stats()) were counted by the writer itself
        assert sum(n for _, n in spool._counted.values()) == total
        assert (await spool.stats(["a"])).events == total
        spool._counted.clear()  # forget what was counted: stats() scans the log from its start
        assert (await spool.stats(["a"])).events == total
    finally:
        await spool.close()
    reader = open_spool(EmbeddedStorage(path=tmp_path), role="admin")
    await reader.start()
    try:
        assert (await reader.stats()).events == total
    finally:
        await reader.close()


async def test_appends_made_together_share_a_commit_and_none_is_left_behind_by_close(tmp_path, monkeypatch):
    """Appends made in one event-loop iteration reach the writer together: one commit (one fsync)
    for all, duplicates among them caught; close() right after still commits every one of them."""
    spool = await opened(tmp_path)
    groups: list[int] = []
    commit = spool._commit

    def counting(group):
        groups.append(len(group))
        return commit(group)

    monkeypatch.setattr(spool, "_commit", counting)
    try:
        results = await asyncio.gather(*(spool.append(request(f"t-{i}", "dup")) for i in range(50)))
        assert groups == [50]
        assert sum(r.stored for r in results) == 51 and sum(r.duplicates for r in results) == 49
        assert len(await lease_all(spool)) == 51
        late = [asyncio.ensure_future(spool.append(request(f"late-{i}"))) for i in range(5)]
        await asyncio.sleep(0)  # the appends are made and waiting; close before the writer has them
    finally:
        await spool.close()
    assert [r.stored for r in await asyncio.wait_for(asyncio.gather(*late), 5)] == [1] * 5
    with pytest.raises(SpoolUnavailable):  # after close: refused at once, never left waiting
        await asyncio.wait_for(spool.append(request("after-close")), 5)
    spool = await opened(tmp_path)
    try:
        again = await lease_all(spool)  # nothing was settled: all of it is leased again
        assert len(again) == 56 and {f"late-{i}" for i in range(5)} <= set(again)
    finally:
        await spool.close()


async def test_a_second_server_process_cannot_take_the_spool(tmp_path):
    first = await opened(tmp_path)
    try:
        second = open_spool(EmbeddedStorage(path=tmp_path))
        from proxy.spool import SpoolBusy

        with pytest.raises(SpoolBusy):
            second.claim()
    finally:
        await first.close()


async def test_upgrade_from_a_v0_spool_keeps_queues_retries_dead_letters_and_dedup(tmp_path):
    shutil.copy(FIXTURE, tmp_path / "spool.db")
    spool = open_spool(EmbeddedStorage(path=tmp_path))
    await spool.start()
    try:
        await spool.attach(["dead", "retry"])
        assert not (tmp_path / "spool.db").exists() and (tmp_path / "spool.db.v0-migrated").exists()
        stats = await spool.stats(["dead", "retry"], exact=True)
        assert stats.events == 13
        assert (stats.destinations["retry"].retries, stats.destinations["dead"].dead) == (4, 13)
        # "retry" had read the 4 events of the first row (waiting for their retry, with attempts 1;
        # the fixture is older than their backoff, so they are due) and none of the other 9: those
        # are still queued for it, in order, enriched as they were stored
        works = await spool.lease("retry", 100, 1 << 30)
        mids = [w.message_id for w in works]
        assert set(mids[:4]) == {f"fx-0-{j}" for j in range(4)} and all(w.attempts == 1 for w in works[:4])
        assert mids[4:] == [f"fx-{i}-{j}" for i in (1, 2) for j in range(4)] + ["fx-browser"]
        ev = works[4].parsed()
        assert ev["receivedAt"] and ev["originalTimestamp"] == "2026-11-30T10:00:00.000Z"
        assert ev["properties"]["big"] == 12345678901234567
        assert await spool.lease("dead", 100, 1 << 30) == [], "'dead' had settled everything"
        letters, total = await spool.dead_letters(__import__("proxy.spool", fromlist=["DeadQuery"]).DeadQuery())
        assert total == 13 and {dl.status for dl in letters} == {400}
        # the dedup hashes came along: a resend of a stored event is a duplicate
        resend = Append("web", 0, time.time(), [Item(b'{"type":"track","event":"E","userId":"u","messageId":"fx-0-0"}',
                                                     dedup_hash("web", "fx-0-0"), 0)], [Route(("retry",))])
        assert (await spool.append(resend)).duplicates == 1
        await spool.settle("retry", [Settlement(w, Disposition.DELIVERED) for w in works])
    finally:
        await spool.close()


def test_upgrade_through_a_real_server_delivers_what_the_old_release_owed(tmp_path):
    rec = Recorder()
    with FakeServer(rec.app()) as fake:
        tr = TrackRelay(tmp_path, destinations=[
            {"name": "retry", "type": "webhook", "settings": {"url": fake.url + "/r"},
             "delivery": {"flush_interval": 0.05}},
            {"name": "dead", "type": "webhook", "settings": {"url": fake.url + "/d"},
             "delivery": {"flush_interval": 0.05}},
        ])
        tr.data_dir.mkdir(parents=True)
        shutil.copy(FIXTURE, tr.data_dir / "spool.db")
        with tr:
            want = {f"fx-{i}-{j}" for i in (1, 2) for j in range(4)} | {"fx-browser"}
            deadline = time.monotonic() + 20
            while not want <= set(rec.delivered_ids()) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert want <= set(rec.delivered_ids())
            assert len(tr.wait_dead_letters("dead", 13)) == 13
            assert '"spool_migrated"' in tr.logs()


def test_full_spool_recovers_without_a_restart_once_delivered_data_is_freed(tmp_path):
    rec = Recorder()
    rec.default = 503
    with FakeServer(rec.app()) as fake, TrackRelay(
        tmp_path, storage={"max_bytes": "256KiB", "retention": "0s"},
        destinations=[{"name": "h", "type": "webhook", "settings": {"url": fake.url + "/h"},
                       "delivery": {"flush_interval": 0.05, "backoff_initial": 0.3, "backoff_max": 0.5,
                                    "inflight_retries": 0}}],
    ) as tr:
        blob = "x" * 10_000
        accepted, statuses = [], []
        for n in range(200):
            mids = [f"full-{n}-{i}" for i in range(5)]
            status, _, headers = tr.post("/v1/batch", {"writeKey": WRITE_KEY, "batch": [
                {"type": "track", "event": "E", "userId": "u", "messageId": m,
                 "properties": {"blob": blob}} for m in mids]})
            statuses.append(status)
            if status == 200:
                accepted += mids
            elif status == 429:
                assert int(headers["Retry-After"]) > 0
                break
            time.sleep(0.05)
        assert statuses[-1] == 429, statuses
        rec.default = 200  # the destination recovers: what it settles is freed, the 429 goes away
        deadline = time.monotonic() + 30
        status = 429
        while time.monotonic() < deadline:
            status, _, _ = tr.post("/v1/t",
                                   {"writeKey": WRITE_KEY, "userId": "u", "event": "E", "messageId": "after-full"})
            if status == 200:
                break
            time.sleep(0.3)
        assert status == 200, "still refused after the backlog was delivered"
        deadline = time.monotonic() + 20
        while not set(accepted) <= set(rec.delivered_ids()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert set(accepted) <= set(rec.delivered_ids()), "an accepted event was lost"


def test_spool_files_are_what_the_readme_says(tmp_path):
    async def main():
        spool = await opened(tmp_path)
        await spool.append(request("f1"))
        await spool.close()
    asyncio.run(main())
    names = sorted(os.listdir(tmp_path))
    assert names == ["dedup", "instance.lock", "log", "state.db"], names


async def test_a_failing_disk_refuses_with_503_and_shows_in_readiness_until_commits_work_again(tmp_path, monkeypatch):
    import errno

    from proxy.spool import SpoolUnavailable
    from proxy.spool.embedded import segments

    spool = await opened(tmp_path)
    try:
        assert spool.problems() == []
        real_append = segments.SegmentLog.append

        def disk_full(self, data):  # what os.write raises on a full disk
            raise OSError(errno.ENOSPC, "No space left on device")
        monkeypatch.setattr(segments.SegmentLog, "append", disk_full)
        with pytest.raises(SpoolUnavailable):
            await spool.append(request("nospace"))
        assert any("disk full" in p for p in spool.problems())  # /readyz answers 503 with this
        monkeypatch.setattr(segments.SegmentLog, "append", real_append)
        assert (await spool.append(request("nospace"))).stored == 1, "nothing of the failed commit was kept"
        assert spool.problems() == []
        assert await lease_all(spool) == ["nospace"]
    finally:
        await spool.close()


def test_a_record_written_before_the_violations_field_still_decodes():
    """records.Header gains fields only at the end, with a default: an old header reads as no violations."""
    import msgspec

    from proxy.spool import records
    from tests.spool.support import ev, req

    class OldHeader(msgspec.Struct, array_like=True):  # the header as written before violations existed
        version: int
        received_at: float
        source: str
        key_index: int
        client_ip: str | None
        short_path: bool
        call_type: str | None
        sent_at: str | None
        context: bytes | None
        integrations: bytes | None
        routes: list
        items: list
        rejected: list
        enriched: bool = False

    append = req(ev("m1"))
    raw = append.items[0].raw
    head = msgspec.msgpack.encode(OldHeader(1, append.received_at, "web", 0, None, False, None, None, None, None,
                                            [(("A",), {})], [(len(raw), append.items[0].dedup, 0, 0, None)], []))
    rec = records.Record(records._U32.pack(len(head)) + head + raw)
    assert rec.header.violations is None and rec.violations_of(0) is None
    event = rec.materialize(0, raw)
    assert event["messageId"] == "m1" and "violations" not in event.get("context", {})
    # and a new header with violations round-trips
    append.items[0].violations = [{"type": "Unplanned", "field": "event", "description": "d"}]
    new = records.Record(records.encode(append))
    assert new.materialize(0, raw)["context"]["violations"][0]["type"] == "Unplanned"
