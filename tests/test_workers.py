"""server.workers > 1: several processes ingest on one port, the main one also delivers.

Every request here goes on a new connection (urllib), so SO_REUSEPORT spreads them over the
processes; which process took a request shows in its log lines (a worker's carry ``worker``)."""

from __future__ import annotations

import os
import signal
import time

import orjson
import pytest

from tests.fakes.base import FakeServer
from tests.fakes.recorder import Recorder
from tests.helpers import TrackRelay

pytestmark = pytest.mark.slow


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait(cond, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _metric(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") or line.startswith(name + " "))


def test_workers_share_ingest_and_delivery(tmp_path):
    rec = Recorder()
    with FakeServer(rec.app()) as hook:
        tr = TrackRelay(tmp_path, server={"workers": 2}, destinations=[
            {"name": "hook", "type": "webhook", "settings": {"url": hook.url + "/hook"}}])
        with tr:
            assert len(tr.worker_pids()) == 1
            n = 60
            for i in range(n):
                status, body, headers = tr.post("/v1/batch", {"writeKey": tr.write_key, "batch": [
                    {"type": "track", "event": "Signed Up", "userId": f"u{i}", "messageId": f"ok-{i}"},
                    {"type": "track", "userId": f"u{i}", "messageId": f"bad-{i}"},  # no event name
                ]})
                assert (status, body, headers.get("X-Trackrelay-Rejected")) == (200, {"success": True}, "1")

            stored = [e["messageId"] for e in tr.spool_events()]
            assert sorted(stored) == sorted(f"ok-{i}" for i in range(n))

            # both processes took requests: each rejected item is logged by the process that had it
            rejected = [orjson.loads(line) for line in tr.logs().splitlines()
                        if line.startswith("{") and '"event_rejected"' in line]
            assert len(rejected) == n
            by_worker = {r.get("worker", "main") for r in rejected}
            assert by_worker == {"main", 1}, by_worker

            # events a worker stored reach the destination run by the main process
            _wait(lambda: len(rec.delivered_ids()) >= n, 20, "delivery")
            assert sorted(rec.delivered_ids()) == sorted(stored)

            # whichever process answers a scrape, the counters are the totals of all of them
            for _ in range(6):
                status, text, _h = tr.get("/metrics")
                text = text.decode() if isinstance(text, bytes) else str(text)
                assert status == 200
                assert _metric(text, "trackrelay_events_stored_total") == n
                assert _metric(text, "trackrelay_events_rejected_total") == n
            _wait(lambda: _metric(tr.get("/metrics")[1].decode(), "trackrelay_events_delivered_total") == n, 10,
                  "delivered counter")


def test_dedup_holds_across_workers(tmp_path):
    with TrackRelay(tmp_path, server={"workers": 2}) as tr:
        for _ in range(30):
            status, _b, _h = tr.post("/v1/track", {"writeKey": tr.write_key, "userId": "u", "event": "Paid",
                                                   "messageId": "same-id"})
            assert status == 200
        assert [e["messageId"] for e in tr.spool_events()] == ["same-id"]
        _s, text, _h = tr.get("/metrics")
        assert _metric(text.decode(), "trackrelay_events_duplicate_total") == 29


def test_dead_worker_is_restarted_and_workers_follow_their_parent(tmp_path):
    tr = TrackRelay(tmp_path, server={"workers": 3})
    tr.start()
    try:
        first = _wait(lambda: len(tr.worker_pids()) == 2 and tr.worker_pids(), 10, "two workers")
        os.kill(first[0], signal.SIGKILL)
        replaced = _wait(lambda: (p := tr.worker_pids()) and len(p) == 2 and first[0] not in p and p, 10,
                         "a replacement worker")
        assert first[1] in replaced
        assert '"worker_exited"' in tr.logs()
        for i in range(20):
            assert tr.post("/v1/track", {"writeKey": tr.write_key, "userId": "u", "event": "E",
                                         "messageId": f"m{i}"})[0] == 200
        assert len(tr.spool_events()) == 20

        # the main process dies without a chance to stop them: the workers notice and exit
        tr.kill()
        _wait(lambda: not any(_alive(p) for p in replaced), 15, "workers to exit after their parent")
        assert tr.logs().count('"parent_gone_shutting_down"') == 2
    finally:
        tr.kill()


def test_sigterm_stops_every_process(tmp_path):
    tr = TrackRelay(tmp_path, server={"workers": 2})
    tr.start()
    workers = _wait(tr.worker_pids, 10, "the worker")
    assert tr.terminate() == 0
    assert not any(_alive(p) for p in workers)
    assert '"role": "ingest", "event": "stopped"' in tr.logs()


def test_a_second_server_on_the_same_spool_is_refused(tmp_path):
    with TrackRelay(tmp_path, server={"workers": 2}) as tr:
        (tmp_path / "other").mkdir()
        other = TrackRelay(tmp_path / "other", storage={"path": str(tr.data_dir)})
        other.data_dir = tr.data_dir
        with pytest.raises(RuntimeError, match="another trackrelay server is using the spool"):
            other.start()
        assert other.proc.returncode == 2
        # the first one is unaffected
        assert tr.post("/v1/track", {"writeKey": tr.write_key, "userId": "u", "event": "E"})[0] == 200
