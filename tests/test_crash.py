"""Accepted means durable: SIGKILL the server while a load generator posts; after a restart every
event that got a 200 is in the spool."""

from __future__ import annotations

import http.client
import os
import signal
import threading
import time

import orjson
import pytest

from tests.helpers import WRITE_KEY, TrackRelay

pytestmark = pytest.mark.slow


def _load(port: int, prefix: str, acked: list[str], stop: threading.Event, batch: int) -> None:
    n = 0
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    while not stop.is_set():
        mids = [f"{prefix}-{n}-{i}" for i in range(batch)]
        n += 1
        if batch == 1:
            path, body = "/v1/t", {"writeKey": WRITE_KEY, "userId": "u", "event": "Load", "messageId": mids[0]}
        else:
            path, body = "/v1/batch", {"writeKey": WRITE_KEY, "batch": [
                {"type": "track", "event": "Load", "userId": "u", "messageId": m} for m in mids]}
        try:
            conn.request("POST", path, orjson.dumps(body), {"Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
        except (OSError, http.client.HTTPException):
            return  # the server is gone
        if resp.status == 200:
            acked.extend(mids)


@pytest.mark.parametrize("workers", [1, 2])
def test_sigkill_loses_no_acknowledged_event(tmp_path, workers, cycles=3):
    """With server.workers: 2 every process is SIGKILLed at the same moment, as a machine or
    container crash would: requests two processes were committing concurrently."""
    tr = TrackRelay(tmp_path, server={"workers": workers}, destinations=[
        {"name": "hook", "type": "webhook", "settings": {"url": "http://127.0.0.1:9/x"},
         "delivery": {"backoff_initial": 600}}])
    acked: list[str] = []
    try:
        for cycle in range(cycles):
            tr.start()
            stop = threading.Event()
            threads = [
                threading.Thread(target=_load, args=(tr.port, f"c{cycle}t{t}", acked, stop, 1 if t < 4 else 25))
                for t in range(8)
            ]
            for t in threads:
                t.start()
            time.sleep(1.0 + 0.37 * cycle)  # kill at a different point each cycle
            for pid in tr.worker_pids():
                os.kill(pid, signal.SIGKILL)
            tr.kill()
            stop.set()
            for t in threads:
                t.join(10)
        tr.start()
        stored = [e["messageId"] for e in tr.spool_events()]
    finally:
        tr.kill()
    assert len(acked) > 1000, f"the load generator got too few answers ({len(acked)}) to mean anything"
    missing = set(acked) - set(stored)
    assert not missing, f"{len(missing)} acknowledged events lost, e.g. {sorted(missing)[:5]}"
    assert len(stored) == len(set(stored)), "an event was stored twice"
