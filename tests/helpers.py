"""Start a real trackrelay server process for tests.

    with TrackRelay(tmp_path, destinations=[{...}]) as tr:
        tr.url                 # http://127.0.0.1:PORT
        tr.write_key           # the write key of source "web"
        tr.post("/v1/track", {...})            # -> (status, json)
        tr.kill(); tr.start()  # SIGKILL and restart on the same spool
        tr.spool_events()      # every stored event, enriched (through the spool port)

Destinations are config dicts exactly as in trackrelay.yaml (name, type, settings, delivery...).

On a real 3-node JetStream cluster (``storage.engine: jetstream``), one per test module:

    from tests.helpers import jetstream, nats_cluster  # noqa: F401  (nats_cluster is a fixture)

    def test_x(nats_cluster, tmp_path):
        storage = jetstream(nats_cluster, "t1")        # a stream prefix of its own per test
        with TrackRelay(tmp_path / "a", storage=storage) as a, TrackRelay(tmp_path / "b", storage=storage) as b:
            ...                                        # two instances sharing one spool
"""

from __future__ import annotations

import base64
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from tests.fakes.base import free_port

ROOT = Path(__file__).resolve().parent.parent
WRITE_KEY = "test-write-key-123"


@pytest.fixture(scope="module")
def nats_cluster(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A real 3-node nats-server cluster (tests/spool/jetstream_cluster.py) for the test module."""
    from tests.spool.jetstream_cluster import NatsCluster

    with NatsCluster(tmp_path_factory.mktemp("nats")) as cluster:
        yield cluster


def jetstream(cluster: Any, stream: str, **settings: Any) -> dict[str, Any]:
    """``storage`` for TrackRelay on ``cluster`` under the stream prefix ``stream``: replicas 3,
    64 MiB, and a short ack_wait (a killed instance's leased events move on after 3 s)."""
    js = {"servers": list(cluster.urls), "stream": stream, "replicas": 3, "max_bytes": "64MiB", "ack_wait": "3s",
          **settings}
    return {"engine": "jetstream", "dedup_memory": "8MiB", "jetstream": js}


class TrackRelay:
    def __init__(
        self,
        tmp_path: Path,
        destinations: list[dict[str, Any]] | None = None,
        sources: list[dict[str, Any]] | None = None,
        server: dict[str, Any] | None = None,
        storage: dict[str, Any] | None = None,
        delivery: dict[str, Any] | None = None,
        limits: dict[str, Any] | None = None,
        extra: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
        tls_ca: Path | None = None,
    ) -> None:
        self.tmp_path = Path(tmp_path)
        self.tmp_path.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.write_key = WRITE_KEY
        self.data_dir = self.tmp_path / "data"
        config: dict[str, Any] = {
            "server": {"host": "127.0.0.1", "port": self.port, **(server or {})},
            # events stay inspectable in the spool for the whole test, delivered or not
            "storage": {"path": str(self.data_dir), "retention": "1h", **(storage or {})},
            "sources": sources if sources is not None else [{"name": "web", "write_keys": [WRITE_KEY]}],
            "destinations": destinations or [],
        }
        if delivery is not None:
            config["delivery"] = delivery
        if limits is not None:
            config["limits"] = limits
        config.update(extra or {})
        self.config = config
        self.config_path = self.tmp_path / "trackrelay.yaml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.tmp_path / "trackrelay.log"
        # server.tls: https, verified against this CA (the test's own, see tests/tls_support.py)
        self.ssl_context = ssl.create_default_context(cafile=str(tls_ca)) if tls_ca is not None else None
        self.scheme = "https" if self.config["server"].get("tls") else "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> TrackRelay:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "proxy", "serve", "--config", str(self.config_path)],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"trackrelay exited with {self.proc.returncode}:\n{self.logs()[-4000:]}")
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=1, context=self.ssl_context) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"trackrelay not ready in {timeout}s:\n{self.logs()[-4000:]}")

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def worker_pids(self) -> list[int]:
        """The ingest worker processes (server.workers > 1) of the running server."""
        assert self.proc is not None
        try:
            with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as f:
                return [int(p) for p in f.read().split()]
        except OSError:
            return []

    def terminate(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout)
        return self.proc.returncode

    def __enter__(self) -> TrackRelay:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def post(
        self, path: str, body: Any, *, headers: dict[str, str] | None = None, auth: bool = False,
        raw: bytes | None = None,
    ) -> tuple[int, Any, dict[str, str]]:
        data = raw if raw is not None else orjson.dumps(body)
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        if auth:
            hdrs["Authorization"] = "Basic " + base64.b64encode(f"{self.write_key}:".encode()).decode()
        req = urllib.request.Request(self.url + path, data=data, headers=hdrs, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=30, context=self.ssl_context) as r:
                payload = r.read()
                return r.status, (orjson.loads(payload) if payload else None), dict(r.headers)
        except urllib.error.HTTPError as e:
            payload = e.read()
            try:
                parsed = orjson.loads(payload)
            except orjson.JSONDecodeError:
                parsed = payload
            return e.code, parsed, dict(e.headers)

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any, dict[str, str]]:
        req = urllib.request.Request(self.url + path, headers=headers or {}, method="GET")
        try:
            with urllib.request.urlopen(req, timeout=30, context=self.ssl_context) as r:
                payload = r.read()
                try:
                    return r.status, orjson.loads(payload), dict(r.headers)
                except orjson.JSONDecodeError:
                    return r.status, payload, dict(r.headers)
        except urllib.error.HTTPError as e:
            payload = e.read()
            try:
                return e.code, orjson.loads(payload), dict(e.headers)
            except orjson.JSONDecodeError:
                return e.code, payload, dict(e.headers)

    def _spool(self, fn):  # type: ignore[no-untyped-def]
        """``await fn(spool)`` on this server's spool, opened as an operator (the port, as the CLI does)."""
        import asyncio

        from proxy.config import load_config
        from proxy.spool import open_spool

        storage = load_config(self.config_path).storage

        async def main():  # type: ignore[no-untyped-def]
            spool = open_spool(storage, role="admin")
            await spool.start()
            try:
                return await fn(spool)
            finally:
                await spool.close()
        return asyncio.run(main())

    def wait_dead_letters(self, dest: str, count: int, timeout: float = 15.0) -> list[tuple[str, str]]:
        """(message_id, reason) of the destination's dead letters once there are ``count`` of them
        (or whatever is there when ``timeout`` runs out), read through the spool port."""
        from proxy.spool import DeadQuery

        deadline = time.monotonic() + timeout
        while True:
            rows, _ = self._spool(lambda spool: spool.dead_letters(DeadQuery(destination=dest)))
            if len(rows) >= count or time.monotonic() > deadline:
                return [(r.message_id, r.reason) for r in rows]
            time.sleep(0.1)

    def spool_events(self) -> list[dict[str, Any]]:
        """Every event in the spool, in arrival order, enriched as delivery sees it, each with
        ``_trackrelay`` = {source, destinations, skipped} (read through the spool port)."""
        stored = self._spool(lambda spool: spool.events())
        return [{**e.event, "_trackrelay": {"source": e.source, "destinations": list(e.destinations),
                                            "skipped": dict(e.skipped)}} for e in stored]


def metric(tr: TrackRelay, name: str, **labels) -> float:
    """The sum of a Prometheus metric's samples with these labels, from the server's /metrics."""
    text = tr.get("/metrics")[1].decode()
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def wait(cond, timeout=20.0, what="condition"):
    """Poll ``cond()`` until it is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what} not met within {timeout}s")
