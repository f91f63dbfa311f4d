"""The delivery engine against small recording servers, through a real trackrelay process."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

import orjson

from tests.fakes.base import FakeServer
from tests.fakes.recorder import Recorder
from tests.helpers import ROOT, WRITE_KEY, TrackRelay, metric, wait

FAST = {"flush_interval": 0.05, "backoff_initial": 0.2, "backoff_max": 1.0}


def hook(name: str, url: str, **delivery) -> dict:
    return {"name": name, "type": "webhook", "settings": {"url": url + "/" + name},
            "delivery": {**FAST, **delivery}}


def events(n: int, prefix: str) -> list[dict]:
    return [{"type": "track", "event": "E", "userId": "u", "messageId": f"{prefix}-{i}"} for i in range(n)]


def send(tr: TrackRelay, evs: list[dict]) -> None:
    for i in range(0, len(evs), 100):
        status, _, _ = tr.post("/v1/batch", {"writeKey": WRITE_KEY, "batch": evs[i:i + 100]})
        assert status == 200


def cli(tr: TrackRelay, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "proxy", *args, "--config", str(tr.config_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)


def dead_letters(tr: TrackRelay) -> list[dict]:
    out = cli(tr, "dead-letters", "list", "--json")
    assert out.returncode == 0, out.stderr
    return [orjson.loads(line) for line in out.stdout.splitlines() if line.strip()]




def test_503_503_200_delivers_once_after_three_attempts(tmp_path):
    rec = Recorder()
    rec.script = [503, 503]
    with FakeServer(rec.app()) as fake, TrackRelay(tmp_path, destinations=[hook("h", fake.url)]) as tr:
        send(tr, events(1, "r"))
        wait(lambda: rec.delivered_ids() == ["r-0"], what="delivery")
        time.sleep(0.5)
        assert [s for _, s, _ in rec.log] == [503, 503, 200]
        assert rec.delivered_ids() == ["r-0"]
        assert metric(tr, "trackrelay_events_delivered_total", destination="h") == 1
        assert dead_letters(tr) == []


def test_429_retry_after_is_waited_in_flight_and_durably(tmp_path):
    rec = Recorder()
    rec.script = [(429, {"Retry-After": "2"}, b""), 200, (429, {"Retry-After": "3"}, b"")]
    with FakeServer(rec.app()) as fake, TrackRelay(
        tmp_path, destinations=[hook("h", fake.url, inflight_retries=0, concurrency=1)]
    ) as tr:
        send(tr, events(1, "a"))
        wait(lambda: len(rec.log) >= 1, what="first attempt")
        # in-flight retries are disabled here: the 2 s wait comes from the durable reschedule
        wait(lambda: rec.delivered_ids() == ["a-0"], timeout=15, what="delivery of a-0")
        (t1, s1, _), (t2, s2, _) = rec.log[:2]
        assert (s1, s2) == (429, 200) and t2 - t1 >= 1.9
        send(tr, events(1, "b"))
        wait(lambda: "b-0" in rec.delivered_ids(), timeout=15, what="delivery of b-0")
        (t3, s3, _), (t4, s4, _) = rec.log[2:4]
        assert (s3, s4) == (429, 200) and t4 - t3 >= 2.9
        assert metric(tr, "trackrelay_events_retried_total", destination="h") == 2


def test_inflight_retry_honours_retry_after(tmp_path):
    rec = Recorder()
    rec.script = [(429, {"Retry-After": "1.5"}, b"")]
    with FakeServer(rec.app()) as fake, TrackRelay(tmp_path, destinations=[hook("h", fake.url)]) as tr:
        send(tr, events(1, "c"))
        wait(lambda: rec.delivered_ids() == ["c-0"], what="delivery")
        (t1, _, _), (t2, _, _) = rec.log[:2]
        assert t2 - t1 >= 1.45
        assert metric(tr, "trackrelay_events_retried_total", destination="h") == 0  # never left the worker


def test_400_dead_letters_with_response_body_and_replay_delivers(tmp_path):
    rec = Recorder()
    rec.default = (400, {"Content-Type": "application/json"}, b'{"error":"field x is invalid"}')
    with FakeServer(rec.app()) as fake, TrackRelay(tmp_path, destinations=[hook("h", fake.url)]) as tr:
        send(tr, events(3, "d"))
        wait(lambda: len(dead_letters(tr)) == 3, what="dead letters")
        assert len(rec.log) == 3, "a permanent error is not retried"
        dl = dead_letters(tr)
        assert {d["message_id"] for d in dl} == {"d-0", "d-1", "d-2"}
        assert all(d["status"] == 400 and d["destination"] == "h" and d["attempts"] == 1 for d in dl)
        shown = cli(tr, "dead-letters", "show", str(dl[0]["id"]))
        detail = orjson.loads(shown.stdout)
        assert "field x is invalid" in detail["response"]
        assert detail["event"]["messageId"] == dl[0]["message_id"]
        # filters: another destination name matches nothing
        assert cli(tr, "dead-letters", "list", "--json", "--destination", "other").stdout.strip() == ""

        rec.default = 200
        out = cli(tr, "dead-letters", "replay", "--destination", "h")
        assert out.returncode == 0 and "3 event(s) put back" in out.stdout
        wait(lambda: sorted(rec.delivered_ids()) == ["d-0", "d-1", "d-2"], what="replayed delivery")
        assert dead_letters(tr) == []


def test_destination_down_for_a_while_then_up_gets_every_event(tmp_path):
    rec = Recorder()
    rec.default = 503
    with FakeServer(rec.app()) as fake, TrackRelay(
        tmp_path, destinations=[hook("h", fake.url, max_batch_events=20)]
    ) as tr:
        sent = events(300, "down")
        for i in range(0, 300, 30):
            send(tr, sent[i:i + 30])
            time.sleep(0.1)
        time.sleep(1.5)
        assert rec.delivered_ids() == []
        assert len(rec.log) < 100, "a failing destination must back off, not hammer"
        rec.default = 200
        wait(lambda: set(rec.delivered_ids()) == {e["messageId"] for e in sent}, timeout=30, what="catch-up")
        assert dead_letters(tr) == []


def test_retry_window_expiry_dead_letters(tmp_path):
    rec = Recorder()
    rec.default = 502
    with FakeServer(rec.app()) as fake, TrackRelay(
        tmp_path, destinations=[hook("h", fake.url, retry_window="1s", backoff_initial=0.3, inflight_retries=0)]
    ) as tr:
        send(tr, events(2, "w"))
        wait(lambda: len(dead_letters(tr)) == 2, timeout=20, what="dead letters after the retry window")
        dl = dead_letters(tr)
        assert all(d["status"] == 502 and "retry window exceeded" in d["reason"] and d["attempts"] >= 2 for d in dl)


def test_black_holed_destination_does_not_slow_the_healthy_one(tmp_path):
    hole, good = Recorder(), Recorder()
    hole.blackhole = True
    with FakeServer(hole.app()) as fh, FakeServer(good.app()) as fg, TrackRelay(
        tmp_path,
        destinations=[hook("hole", fh.url, timeout=3, concurrency=2), hook("good", fg.url)],
    ) as tr:
        latencies = []
        for i in range(40):
            start = time.monotonic()
            send(tr, events(5, f"iso{i}"))
            wait(lambda n=5 * (i + 1): len(good.delivered_ids()) >= n, timeout=10, what="healthy delivery")
            latencies.append(time.monotonic() - start)
        assert len(fh.snapshot()) >= 1, "the black hole was tried"
        # the healthy destination's latency is flush_interval plus a little, never the hole's timeout
        assert statistics.median(latencies) < 1.0 and max(latencies) < 2.5, latencies
        assert len(set(good.delivered_ids())) == 200


def test_sigkill_during_delivery_delivers_everything_at_least_once(tmp_path):
    rec = Recorder()
    rec.delay = 0.02
    with FakeServer(rec.app()) as fake:
        tr = TrackRelay(tmp_path, destinations=[hook("h", fake.url, max_batch_events=50, concurrency=2)])
        sent = events(3000, "k")
        try:
            tr.start()
            send(tr, sent)
            wait(lambda: len(rec.delivered_ids()) > 200, what="some delivery")
            tr.kill()
            partial = len(rec.delivered_ids())
            assert partial < 3000, "delivery finished before the kill; the test proves nothing"
            tr.start()
            wanted = {e["messageId"] for e in sent}
            wait(lambda: wanted <= set(rec.delivered_ids()), timeout=60, what="full delivery after restart")
        finally:
            tr.kill()
        got = rec.delivered_ids()
        assert set(got) == wanted  # duplicates only ever carry an original messageId
        bodies = {}
        for e in rec.delivered():
            bodies.setdefault(e["messageId"], orjson.dumps(e))
            assert orjson.dumps(e) == bodies[e["messageId"]], "a redelivered event differs from the first"


def test_sigterm_finishes_in_flight_and_keeps_the_rest(tmp_path):
    rec = Recorder()
    rec.delay = 1.0
    with FakeServer(rec.app()) as fake:
        tr = TrackRelay(tmp_path, destinations=[hook("h", fake.url, max_batch_events=10, concurrency=1)],
                        server={"shutdown_grace": "5s"})
        sent = events(100, "t")
        try:
            tr.start()
            send(tr, sent)
            wait(lambda: len(fake.snapshot()) >= 1, what="a request in flight")
            code = tr.terminate(timeout=20)
            assert code == 0
            first = set(rec.delivered_ids())
            assert 0 < len(first) < 100
            rec.delay = 0
            tr.start()
            wait(lambda: set(rec.delivered_ids()) == {e["messageId"] for e in sent}, timeout=30, what="rest delivered")
        finally:
            tr.kill()


def test_delivered_events_leave_the_spool_and_undelivered_ones_stay(tmp_path):
    rec = Recorder()
    with FakeServer(rec.app()) as fake, TrackRelay(
        tmp_path, storage={"retention": "0s"},
        destinations=[hook("up", fake.url), hook("down", "http://127.0.0.1:9", backoff_initial=600)],
    ) as tr:
        send(tr, events(20, "gc-both"))
        send(tr, [{**e, "integrations": {"down": False}} for e in events(20, "gc-up-only")])
        wait(lambda: len(rec.delivered_ids()) == 40, what="delivery to the healthy destination")
        # rows still owed to the dead destination stay; the maintenance loop runs every 2 s
        time.sleep(4.5)
        left = {e["messageId"] for e in tr.spool_events()}
        assert {f"gc-both-{i}" for i in range(20)} <= left
    with FakeServer(rec.app()) as fake, TrackRelay(
        (tmp_path / "b").mkdir() or tmp_path / "b", storage={"retention": "0s"},
        destinations=[hook("up", fake.url)]) as tr:
        send(tr, events(20, "gc-only"))
        wait(lambda: tr.spool_events() == [], timeout=15, what="delivered events purged")


def test_recovery_after_an_outage_delivers_the_backlog_without_waiting_out_each_backoff(tmp_path):
    """Events rescheduled during an outage are due again as soon as a probe succeeds: with a
    2-minute first backoff, waiting them out would take minutes; the probe every 0.3 s finds the
    destination back and everything is delivered at once."""
    rec = Recorder()
    rec.default = 503
    with FakeServer(rec.app()) as fake, TrackRelay(tmp_path, destinations=[hook(
        "h", fake.url, backoff_initial=120, backoff_max=600, inflight_retries=0, max_batch_events=50,
        probe_interval=0.3, probe_interval_max=0.6)]) as tr:
        sent = events(600, "outage")
        send(tr, sent[:300])
        wait(lambda: metric(tr, "trackrelay_destination_circuit_open", destination="h") == 1, timeout=15,
             what="the circuit to open")
        send(tr, sent[300:])
        time.sleep(1.0)
        during = len(rec.log)
        time.sleep(1.5)
        assert len(rec.log) - during <= 8, "an open circuit sends one probe at a time, not the backlog"
        rec.default = 200
        wait(lambda: {e["messageId"] for e in sent} <= set(rec.delivered_ids()), timeout=30,
             what="the whole backlog delivered after recovery (long before any 2-minute backoff)")
        wait(lambda: metric(tr, "trackrelay_destination_circuit_open", destination="h") == 0, timeout=10,
             what="the circuit to close")
        assert '"destination_recovered"' in tr.logs()
        assert dead_letters(tr) == []


def test_a_refused_batch_is_split_so_only_the_bad_events_are_dead_lettered(tmp_path):
    rec = Recorder()
    # the receiver refuses any batch that holds one bad event, without saying which
    rec.answer = lambda body: 400 if isinstance(body, list) and any(e.get("event") == "Bad" for e in body) else None
    evs = [{"type": "track", "event": "Bad" if i % 50 == 7 else "Good", "userId": "u", "messageId": f"split-{i}"}
           for i in range(300)]
    with FakeServer(rec.app()) as fake, TrackRelay(tmp_path, destinations=[{
        "name": "h", "type": "webhook", "settings": {"url": fake.url + "/h", "batch_size": 10},
        "delivery": {**FAST, "max_batch_events": 100}}]) as tr:
        send(tr, evs)
        bad = {e["messageId"] for e in evs if e["event"] == "Bad"}
        good = {e["messageId"] for e in evs} - bad
        wait(lambda: good <= set(rec.delivered_ids()) and len(dead_letters(tr)) >= len(bad), timeout=30,
             what="good events delivered, bad ones dead-lettered")
        assert {d["message_id"] for d in dead_letters(tr)} == bad
        assert not bad & set(rec.delivered_ids())
        assert metric(tr, "trackrelay_destination_batch_splits_total", destination="h") > 0
