"""The spool's dedup window and its sharing between processes (two Spool objects on one file
stand in for two server processes; each has its own connection and writer thread)."""

from __future__ import annotations

import asyncio
import time

from proxy.spool.sqlite import IngestItem, Spool, dedup_hash, read_all_events


def _item(mid: str) -> IngestItem:
    return IngestItem(dedup_hash("web", mid), b'{"d":[]}', b'{"messageId":"%s"}' % mid.encode())


async def _append(spool: Spool, *mids: str, at: float | None = None):
    return await spool.append("web", 0, at if at is not None else time.time(), [_item(m) for m in mids])


def test_duplicates_within_a_request_a_group_and_across_spools(tmp_path):
    async def main():
        a = Spool(tmp_path)
        b = Spool(tmp_path)
        a.start()
        b.start()
        try:
            r = await _append(a, "m1", "m1", "m2")
            assert (r.stored, r.duplicates) == (2, 1)
            # the same ids through the other "process", and one new
            r = await _append(b, "m2", "m3")
            assert (r.stored, r.duplicates) == (1, 1)
            # concurrent requests in one commit group carrying the same id: stored once
            rs = await asyncio.gather(*(_append(a, "m4") for _ in range(5)), _append(b, "m4"))
            assert sum(x.stored for x in rs) == 1
        finally:
            await a.close()
            await b.close()
        assert [e["messageId"] for e in read_all_events(tmp_path)] == ["m1", "m2", "m3", "m4"]

    asyncio.run(main())


def test_window_rotation_is_shared_between_spools(tmp_path):
    window = 100.0
    t0 = time.time()

    async def main():
        a = Spool(tmp_path, dedup_window=window)
        b = Spool(tmp_path, dedup_window=window)
        a.start()
        b.start()
        try:
            assert (await _append(a, "old", at=t0)).stored == 1
            # one window later: `a` rotates; "old" is still found in the previous bucket
            assert (await _append(a, "x1", at=t0 + window + 1)).stored == 1
            assert (await _append(b, "old", at=t0 + window + 2)).duplicates == 1
            # the other spool writes into the bucket `a` made current, so its ids survive the
            # next rotation (done by `b` this time) like everyone else's
            assert (await _append(b, "fresh", at=t0 + window + 3)).stored == 1
            assert (await _append(b, "x2", at=t0 + 2 * window + 4)).stored == 1
            assert (await _append(a, "fresh", at=t0 + 2 * window + 5)).duplicates == 1
            # an id is remembered between one and two windows after it was last seen...
            assert (await _append(a, "x1", at=t0 + 2 * window + 6)).duplicates == 1
            # ...then forgotten: "old" was last seen at t0 + window + 2
            assert (await _append(a, "x3", at=t0 + 3 * window + 7)).stored == 1
            assert (await _append(b, "old", at=t0 + 3 * window + 8)).stored == 1
            # a duplicate renews the memory of its id: "x1", seen again at 2w+6, is still known
            assert (await _append(b, "x1", at=t0 + 3 * window + 9)).duplicates == 1
        finally:
            await a.close()
            await b.close()

    asyncio.run(main())
