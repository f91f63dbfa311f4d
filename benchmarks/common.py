"""Shared pieces of the benchmarks: the sample event, process handling, /proc readings, the wrk Lua
script, and small helper servers / load generators that run as separate processes.

Run as a program it starts one of those helpers (each in its own process, so it never shares a
core's GIL with the benchmark driver or with trackrelay):

    python benchmarks/common.py bare --port P           # aiohttp that reads the body, answers 200
    python benchmarks/common.py durable --port P --dir D     # + appends it, 200 after group-commit fdatasync
    python benchmarks/common.py validating --port P --dir D  # + msgspec checks and an enrichment patch
    python benchmarks/common.py receiver --port P       # batching webhook receiver (counts events)
    python benchmarks/common.py load ...                # closed-loop Segment load (wrk fallback, fills)
    python benchmarks/common.py paced ...               # open-loop single events at a fixed rate
    python benchmarks/common.py post-bodies ...         # post pre-built JSON arrays (drain baseline)

Everything listens on and connects to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zlib
from datetime import UTC
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PYTHON = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv" / "bin" / "python").exists() else sys.executable
WRITE_KEY = "bench-write-key"
MID = "__MID__"  # placeholder for the messageId in the event template


# ---------------------------------------------------------------------------------------------
# The sample event: a ~1.1 KB Segment track call as analytics-node / analytics.js would send it
# ---------------------------------------------------------------------------------------------

def track_event(message_id: str = MID) -> dict[str, Any]:
    return {
        "type": "track",
        "event": "Order Completed",
        "userId": "user-5b1d6c2e-3f0a-4d6b-9a7e-2c41f7d0a913",
        "anonymousId": "a3f1c2d4-5e6f-4a7b-8c9d-0e1f2a3b4c5d",
        "messageId": message_id,
        "timestamp": "2026-11-22T21:00:00.000Z",
        "properties": {
            "order_id": "50314b8e9bcf000000000000",
            "affiliation": "Google Store",
            "total": 27.5, "subtotal": 22.5, "revenue": 25.0, "shipping": 3.0, "tax": 2.0,
            "discount": 2.5, "coupon": "hasbros", "currency": "USD",
            "products": [
                {"product_id": "507f1f77bcf86cd799439011", "sku": "45790-32", "name": "Monopoly: 3rd Edition",
                 "price": 19, "quantity": 1, "category": "Games"},
                {"product_id": "505bd76785ebb509fc183733", "sku": "46493-32", "name": "Uno Card Game",
                 "price": 3, "quantity": 2, "category": "Games"},
            ],
        },
        "context": {
            "library": {"name": "analytics.js", "version": "next-1.70.0"},
            "page": {"path": "/checkout/complete", "referrer": "https://www.example.com/cart",
                     "search": "?step=3", "title": "Thank you for your order",
                     "url": "https://www.example.com/checkout/complete?step=3"},
            "userAgent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
                         "Chrome/131.0.0.0 Safari/537.36",
            "locale": "en-US",
        },
        "integrations": {},
    }


def compact(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def event_template() -> tuple[str, str]:
    """(prefix, suffix) of the compact event JSON around the messageId value."""
    text = compact(track_event())
    prefix, suffix = text.split(MID)
    return prefix, suffix


def single_body(message_id: str) -> bytes:
    """A /v1/track body (write key in the JSON body) for one event."""
    prefix, suffix = event_template()
    return (f'{{"writeKey":"{WRITE_KEY}",' + prefix[1:] + message_id + suffix).encode()


def batch_prefix_suffix() -> tuple[str, str]:
    return f'{{"writeKey":"{WRITE_KEY}","sentAt":"2026-11-22T21:00:00.100Z","batch":[', "]}"


def sample_body(per: int, base: str) -> bytes:
    """A request body as the load generators send it: one event for /v1/track (``per`` 1), else a batch
    of ``per`` events; messageIds ``<base>`` or ``<base>-<i>``."""
    if per == 1:
        return single_body(base)
    prefix, suffix = event_template()
    bprefix, bsuffix = batch_prefix_suffix()
    return (bprefix + ",".join(prefix + f"{base}-{i}" + suffix for i in range(1, per + 1)) + bsuffix).encode()


# ---------------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Procs:
    """Child processes, each in its own session/process group; ``close`` kills every group."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, args: list[str], log_path: Path | None = None, **kw: Any) -> subprocess.Popen:
        out = open(log_path, "ab") if log_path else subprocess.DEVNULL
        try:
            proc = subprocess.Popen(args, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT if log_path else None,
                                    start_new_session=True, **kw)
        finally:
            if log_path:
                out.close()
        proc.spawned_at = time.time()  # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int | None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        # anything else left in the group (there should be nothing)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        return proc.returncode

    def close(self) -> None:
        for proc in reversed(self.procs):
            self.stop(proc, signal.SIGTERM, 10.0)


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM (peak RSS) of a process, in bytes."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, value = line.split(":", 1)
                    out[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return out


_TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by a process, all threads."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK
    except (OSError, IndexError, ValueError):
        return 0.0


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (a server with worker processes)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out


def tree_cpu(pid: int) -> float:
    """CPU seconds used so far by a process and its live descendants."""
    return sum(proc_cpu(p) for p in process_tree(pid))


def tree_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM summed over a process and its descendants (each process's own peak)."""
    out: dict[str, int] = {}
    for p in process_tree(pid):
        for k, v in proc_status(p).items():
            out[k] = out.get(k, 0) + v
    return out


def system_busy() -> float:
    """CPU seconds spent not idle by the whole machine so far (all cores, /proc/stat)."""
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    idle = parts[3] + (parts[4] if len(parts) > 4 else 0)
    return (sum(parts[:8]) - idle) / _TICK


def children_cpu() -> float:
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def disk_written(path: Path) -> int:
    """Bytes written so far by the block device holding ``path`` (all writers on the machine, the kernel's
    writeback included; 0 where /sys does not tell)."""
    st = os.stat(path)
    try:
        fields = Path(f"/sys/dev/block/{os.major(st.st_dev)}:{os.minor(st.st_dev)}/stat").read_text().split()
        return int(fields[6]) * 512  # sectors written; a sector is 512 bytes in this interface
    except (OSError, IndexError, ValueError):
        return 0


class CpuMeter:
    """Cores used during an interval: by the server process (and its workers), by load generators we waited for
    (reaped children), and by everything else on the machine (other people's jobs, kernel); and the disk's
    write rate (MB/s) on the device holding ``disk_path``."""

    def __init__(self, pid: int, disk_path: Path | None = None) -> None:
        self.pid = pid
        self.disk_path = disk_path
        self.disk_mbs = 0.0

    def __enter__(self) -> CpuMeter:
        self.t0, self.s0, self.b0, self.c0 = time.monotonic(), tree_cpu(self.pid), system_busy(), children_cpu()
        self.d0 = disk_written(self.disk_path) if self.disk_path else 0
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.monotonic() - self.t0
        self.server = (tree_cpu(self.pid) - self.s0) / wall
        self.loadgen = (children_cpu() - self.c0) / wall
        self.busy = (system_busy() - self.b0) / wall
        self.other = max(0.0, self.busy - self.server - self.loadgen)
        if self.disk_path:
            self.disk_mbs = (disk_written(self.disk_path) - self.d0) / wall / 1e6


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_http(url: str, proc: subprocess.Popen | None = None, timeout: float = 30.0) -> float:
    """Poll ``url`` until it answers 200; returns the time it first did."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        with contextlib.suppress(OSError):
            status, _ = http_get(url, 1.0)
            if status == 200:
                return time.time()
        time.sleep(0.02)
    raise RuntimeError(f"{url} did not answer 200 within {timeout}s")


def write_config(path: Path, port: int, data_dir: Path, destinations: list[dict[str, Any]],
                 server: dict[str, Any] | None = None, storage: dict[str, Any] | None = None) -> Path:
    import yaml

    config = {
        "server": {"host": "127.0.0.1", "port": port, **(server or {})},
        "storage": {"path": str(data_dir), "durability": "full", **(storage or {})},
        "sources": [{"name": "bench", "write_keys": [WRITE_KEY]}],
        "destinations": destinations,
        "logging": {"level": "info", "format": "json"},
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def start_trackrelay(procs: Procs, workdir: Path, name: str, data_dir: Path,
                     destinations: list[dict[str, Any]], server: dict[str, Any] | None = None,
                     storage: dict[str, Any] | None = None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cfg = write_config(workdir / f"{name}.yaml", port, data_dir, destinations, server, storage)
    proc = procs.start([PYTHON, "-m", "proxy", "serve", "--config", str(cfg)], log_path=workdir / f"{name}.log",
                       env={**os.environ, "PYTHONUNBUFFERED": "1"})
    proc.config = cfg  # type: ignore[attr-defined]  # for spool_stats(proc.config)
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/readyz", proc)
    return proc, url


def start_helper(procs: Procs, workdir: Path, kind: str, *args: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = procs.start([PYTHON, str(Path(__file__).resolve()), kind, "--port", str(port), *args],
                       log_path=workdir / f"{kind}-{port}.log")
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/__ready", proc)
    return proc, url


def spool_stats(config: Path, timeout: float = 120.0) -> dict[str, Any]:
    """What the spool of the trackrelay configured by ``config`` holds, from ``trackrelay spool stats
    --config F --json`` (the benchmarks never read spool files themselves; this is the one place that
    asks): ``{"events": stored events, "bytes": bytes on disk, "destinations": {name: {"backlog",
    "retries", "dead"}}}`` (further keys are kept). Run it while no server uses the spool, or after."""
    args = [PYTHON, "-m", "proxy", "spool", "stats", "--config", str(config), "--json"]
    out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    try:
        stats = json.loads(out.stdout) if out.returncode == 0 else None
    except json.JSONDecodeError:
        stats = None
    if not isinstance(stats, dict) or not isinstance(stats.get("events"), int):
        raise RuntimeError(f"`{' '.join(args[1:])}` did not print the spool's stats as JSON (exit {out.returncode}):\n"
                           f"{out.stdout[-2000:]}{out.stderr[-2000:]}")
    stats.setdefault("destinations", {})
    return stats


def proc_io(pid: int) -> dict[str, int]:
    """/proc/PID/io of a process (bytes), {} if it is gone or unreadable."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/io") as f:
            for line in f:
                key, _, value = line.partition(":")
                out[key.strip()] = int(value)
    except (OSError, ValueError):
        pass
    return out


def tree_written(pid: int) -> int:
    """Bytes a process and its live descendants caused to be written to storage so far: ``write_bytes`` minus
    ``cancelled_write_bytes`` (dirty pages of files truncated or deleted before writeback), summed. The
    kernel's journal writes for the filesystem are not included (nor are they in anyone's figure)."""
    total = 0
    for p in process_tree(pid):
        io = proc_io(p)
        total += io.get("write_bytes", 0) - io.get("cancelled_write_bytes", 0)
    return total


def code_version() -> str:
    """The git commit measured, and whether proxy/ or destinations/ had uncommitted changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "proxy", "destinations/webhook.py",
                                "destinations/base.py"], cwd=ROOT, capture_output=True, text=True,
                               timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"git {head or '?'}" + (" + uncommitted changes in proxy/ or destinations/" if dirty else "")


def machine() -> str:
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    return f"{os.cpu_count()} cores, load average {load}"


def have_wrk() -> str | None:
    return shutil.which("wrk")


# ---------------------------------------------------------------------------------------------
# wrk
# ---------------------------------------------------------------------------------------------

def _lua_str(s: str) -> str:
    assert "]==]" not in s
    return "[==[" + s + "]==]"


def wrk_script(path: Path, *, events_per_request: int, run_id: str, count_responses: bool) -> Path:
    """A wrk Lua script POSTing Segment events with a unique messageId per event:
    ``<run_id>-<thread>-<counter>[-<i>]``. Single events go to /v1/track, batches to /v1/batch.
    With ``count_responses`` each thread counts its 200s (exact, for the spool check); that costs
    a Lua callback per response, so it is used for batches only."""
    prefix, suffix = event_template()
    bprefix, bsuffix = batch_prefix_suffix()
    single_prefix = f'{{"writeKey":"{WRITE_KEY}",' + prefix[1:]
    lua = f"""
local prefix = {_lua_str(prefix)}
local suffix = {_lua_str(suffix)}
local single_prefix = {_lua_str(single_prefix)}
local bprefix = {_lua_str(bprefix)}
local bsuffix = {_lua_str(bsuffix)}
local per = {events_per_request}
local run = "{run_id}"
local path = per == 1 and "/v1/track" or "/v1/batch"
local headers = {{["Content-Type"] = "application/json"}}
local threads = {{}}
counter = 0
ok = 0
other = 0

function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end

function request()
  counter = counter + 1
  local base = run .. "-" .. tid .. "-" .. counter
  local body
  if per == 1 then
    body = single_prefix .. base .. suffix
  else
    local parts = {{}}
    for i = 1, per do parts[i] = prefix .. base .. "-" .. i .. suffix end
    body = bprefix .. table.concat(parts, ",") .. bsuffix
  end
  return wrk.format("POST", path, headers, body)
end
"""
    if count_responses:
        lua += """
function response(status, headers, body)
  if status == 200 then ok = ok + 1 else other = other + 1 end
end
"""
    lua += """
function done(summary, latency, requests)
  local okc, oth = 0, 0
  for _, t in ipairs(threads) do okc = okc + (t:get("ok") or 0); oth = oth + (t:get("other") or 0) end
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,"write":%d,"status":%d,' ..
    '"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f,"ok":%d,"other":%d}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean, okc, oth))
end
"""
    path.write_text(lua)
    return path


def run_wrk(url: str, script: Path, *, threads: int = 2, connections: int = 64, duration: float = 10.0,
            timeout: float = 10.0) -> dict[str, Any]:
    args = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{int(duration)}s", f"--timeout={int(timeout)}s",
            "--latency", "-s", str(script), url]
    out = subprocess.run(args, capture_output=True, text=True, timeout=duration + timeout + 30)
    for line in out.stdout.splitlines():
        if line.startswith("WRKJSON "):
            result = json.loads(line[len("WRKJSON "):])
            result["raw"] = out.stdout
            return result
    raise RuntimeError(f"wrk failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = min(len(s) - 1, max(0, int(round(p / 100.0 * len(s) + 0.5)) - 1))
    return s[k]


# ---------------------------------------------------------------------------------------------
# Helper programs (run in their own process)
# ---------------------------------------------------------------------------------------------

def _install_uvloop() -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()


def _ready_route(app: Any) -> None:
    from aiohttp import web

    async def ready(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app.router.add_get("/__ready", ready)


def serve_bare(port: int, workers: int = 1) -> None:
    """The baseline: the same aiohttp (and uvloop, as trackrelay) reading the body and answering 200
    with trackrelay's success body, without parsing anything; with ``workers`` > 1, that many
    processes accepting on one inherited listening socket, as trackrelay's server.workers."""
    sock = socket.create_server(("127.0.0.1", port), backlog=2048)
    for _ in range(workers - 1):
        if os.fork() == 0:
            break
    _install_uvloop()
    from aiohttp import web

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=b'{"success":true}', content_type="application/json")

    app = web.Application(client_max_size=2 * 1024 * 1024)
    _ready_route(app)
    app.router.add_post("/v1/{call}", handle)
    web.run_app(app, sock=sock, access_log=None, print=None)


# -- the durable and validating floors ----------------------------------------------------------
#
# Both append what they store to an append-only file of CRC-framed records and answer 200 only after
# the fdatasync that covers the request: a group commit, as a log-structured spool does it (many
# requests waiting at once share one fdatasync). With ``workers`` > 1 each process has its own file.

FLOOR_FRAME = struct.Struct("<IBI")  # payload length, kind (0 body, 1 patch), CRC-32 of the payload
FLOOR_BODY, FLOOR_PATCH = 0, 1
_SEGMENT_TYPES = ("track", "identify", "page", "screen", "group", "alias")
_MAX_EVENT_BYTES = 32 * 1024  # trackrelay's limits.max_event_bytes default
_MAX_MESSAGE_ID = 100  # trackrelay's limits.max_message_id_length default


class GroupCommitLog:
    """``await append(records)`` returns once the records are written and fdatasync'ed. One writer task
    takes everything queued, writes it with one writev and one fdatasync in a thread (the GIL is free
    meanwhile), then resolves every waiter of that commit; requests arriving during a commit form the
    next one."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self.pending: list[tuple[int, bytes]] = []
        self.waiters: list[asyncio.Future] = []
        self.wake = asyncio.Event()
        self.commits = 0
        from concurrent.futures import ThreadPoolExecutor

        self.executor = ThreadPoolExecutor(1, thread_name_prefix="group-commit")

    async def append(self, records: list[tuple[int, bytes]]) -> None:
        fut = asyncio.get_running_loop().create_future()
        self.pending += records
        self.waiters.append(fut)
        self.wake.set()
        await fut

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self.wake.wait()
            self.wake.clear()
            if not self.waiters:
                continue
            records, self.pending = self.pending, []
            waiters, self.waiters = self.waiters, []
            try:
                await loop.run_in_executor(self.executor, self._commit, records)
            except Exception as exc:  # the waiters answer 503
                for w in waiters:
                    if not w.done():
                        w.set_exception(exc)
                continue
            self.commits += 1
            for w in waiters:
                if not w.done():
                    w.set_result(None)

    def _commit(self, records: list[tuple[int, bytes]]) -> None:
        bufs: list[bytes] = []
        for kind, payload in records:  # zlib.crc32 releases the GIL for large buffers
            bufs.append(FLOOR_FRAME.pack(len(payload), kind, zlib.crc32(payload)))
            bufs.append(payload)
        total = sum(len(b) for b in bufs)
        done = 0
        for i in range(0, len(bufs), 1024):  # IOV_MAX
            done += os.writev(self.fd, bufs[i:i + 1024])
        if done != total:  # a short write (a full disk): finish it or fail
            rest = b"".join(bufs)[done:]
            while rest:
                rest = rest[os.write(self.fd, rest):]
        os.fdatasync(self.fd)


def floor_records(directory: Path) -> list[tuple[int, bytes]]:
    """Every (kind, payload) of the floors' log files in ``directory``; stops at a torn or corrupt tail."""
    out: list[tuple[int, bytes]] = []
    for path in sorted(directory.glob("floor-*.log")):
        data = path.read_bytes()
        pos = 0
        while pos + FLOOR_FRAME.size <= len(data):
            length, kind, crc = FLOOR_FRAME.unpack_from(data, pos)
            payload = data[pos + FLOOR_FRAME.size:pos + FLOOR_FRAME.size + length]
            if len(payload) != length or zlib.crc32(payload) != crc:
                break
            out.append((kind, payload))
            pos += FLOOR_FRAME.size + length
    return out


def floor_stored(directory: Path, events_per_body: int) -> int:
    """Events a floor stored: bodies x events per body for the durable floor (it does not parse), the
    accepted count of each enrichment patch for the validating floor."""
    import msgspec

    records = floor_records(directory)
    patches = [p for k, p in records if k == FLOOR_PATCH]
    if patches:
        return sum(msgspec.msgpack.decode(p)[1] for p in patches)
    return sum(1 for k, _ in records if k == FLOOR_BODY) * events_per_body


def _validator() -> Any:
    """The validating floor's per-request work: msgspec decoding of the fields Segment's checks need
    (the rest stays raw), the checks (tests pin the same ones in proxy/spec.py), and a compact
    enrichment patch per request: receivedAt, and per item its index, the corrected timestamp (ms),
    a generated messageId if it had none, or its rejection reason. Returns ``validate(body,
    call_type) -> (status, patch or error code, accepted)``."""
    import uuid
    from datetime import datetime

    import msgspec

    ident_t = str | int | float | None
    raw = msgspec.Raw
    # defstruct, not class syntax: this module's annotations are strings (``from __future__``)
    Event = msgspec.defstruct("Event", [
        ("type", str | None, None), ("userId", ident_t, None), ("anonymousId", ident_t, None),
        ("previousId", ident_t, None), ("groupId", ident_t, None), ("event", str | None, None),
        ("messageId", ident_t, None), ("timestamp", str | None, None), ("sentAt", str | None, None),
        ("writeKey", str | None, None), ("context", raw, raw()), ("properties", raw, raw()),
        ("traits", raw, raw()), ("integrations", raw, raw()),
    ])
    Batch = msgspec.defstruct("Batch", [("batch", list[raw]), ("writeKey", str | None, None),
                                        ("sentAt", str | None, None)])

    event_dec = msgspec.json.Decoder(Event)
    batch_dec = msgspec.json.Decoder(Batch)
    patch_enc = msgspec.msgpack.Encoder()

    def ident(v: Any) -> str | None:
        if v is None or isinstance(v, bool):
            return None
        s = v if isinstance(v, str) else str(v)
        return s if s.strip() else None

    def ts_ms(raw: str | None) -> float | None:
        if not raw:
            return None
        try:
            dt = datetime.fromisoformat(raw)
        except ValueError:
            return None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        return dt.timestamp()

    null = raw(b"null")

    def check(ev: Any, call_type: str | None, size: int, received: float, batch_sent: float | None
              ) -> tuple[str, Any]:
        """("ok", [timestamp ms, generated messageId or None]) or ("rejected", reason)."""
        t = call_type or ev.type
        if t not in _SEGMENT_TYPES:
            return "rejected", "invalid_type"
        for value in (ev.context, ev.properties, ev.traits, ev.integrations):  # absent, an object, or null
            if value and memoryview(value)[0] != 123 and value != null:  # 123: "{"
                return "rejected", "invalid_field_type"
        uid, aid = ev.userId, ev.anonymousId  # strings almost always: ident() only for the rest
        if type(uid) is not str or not uid.strip():
            uid = ident(uid)
        if type(aid) is not str or not aid.strip():
            aid = ident(aid)
        if t == "alias":
            if ident(ev.previousId) is None:
                return "rejected", "missing_previous_id"
            if uid is None:
                return "rejected", "missing_user_id"
        elif uid is None and aid is None:
            return "rejected", "missing_identity"
        if t == "track" and not (ev.event and ev.event.strip()):
            return "rejected", "missing_event_name"
        if t == "group" and ident(ev.groupId) is None:
            return "rejected", "missing_group_id"
        mid = ev.messageId
        if type(mid) is not str or not mid.strip():
            mid = ident(mid)
        if mid is not None and len(mid) > _MAX_MESSAGE_ID:
            return "rejected", "message_id_too_long"
        if size > _MAX_EVENT_BYTES:
            return "rejected", "event_too_large"
        original = ts_ms(ev.timestamp)
        if original is None:
            ts = received
        else:
            sent = ts_ms(ev.sentAt) if ev.sentAt else batch_sent
            ts = original if sent is None else received - (sent - original)
        return "ok", [round(ts * 1000), None if mid else f"api-{uuid.uuid4()}"]

    def validate(body: bytes, call_type: str | None) -> tuple[int, Any, int]:
        received = time.time()
        try:
            if call_type is not None:
                ev = event_dec.decode(body)
                key, items, batch_sent = ev.writeKey, None, None
            else:
                b = batch_dec.decode(body)
                key, items, batch_sent = b.writeKey, b.batch, ts_ms(b.sentAt)
        except msgspec.ValidationError:
            return 400, "invalid_request", 0
        except msgspec.DecodeError:
            return 400, "invalid_json", 0
        if key != WRITE_KEY:
            return 401, "invalid_write_key", 0
        results: list[Any] = []
        accepted = 0
        if items is None:
            status, detail = check(ev, call_type, len(body), received, None)
            if status != "ok":
                return 400, detail, 0
            results.append([0, *detail])
            accepted = 1
        else:
            decode = event_dec.decode
            for i, item in enumerate(items):
                try:
                    status, detail = check(decode(item), None, len(item), received, batch_sent)
                except msgspec.ValidationError:
                    status, detail = "rejected", "invalid_field_type"
                if status == "ok":
                    results.append([i, *detail])
                    accepted += 1
                else:
                    results.append([i, detail])
        if not accepted:
            return 400, "no_valid_event", 0
        return 200, patch_enc.encode([round(received * 1000), accepted, results]), accepted

    return validate


def serve_floor(port: int, workers: int, directory: Path, validate: bool) -> None:
    """The durable floor (``validate`` False): aiohttp + uvloop reading the body and appending it to a log
    file, answering 200 after the group-commit fdatasync, without parsing. The validating floor
    (``validate`` True): the same, plus msgspec decoding of the checked fields, Segment's checks and an
    enrichment patch stored beside the raw body. ``workers`` processes share one listening socket; each
    writes its own file ``floor-<pid>.log``."""
    sock = socket.create_server(("127.0.0.1", port), backlog=2048)
    for _ in range(workers - 1):
        if os.fork() == 0:
            break
    _install_uvloop()
    from aiohttp import web

    directory.mkdir(parents=True, exist_ok=True)
    calls = {"track": "track", "identify": "identify", "page": "page", "screen": "screen", "group": "group",
             "alias": "alias", "batch": None}
    check = _validator() if validate else None
    ok = web.Response  # answers are built per request (aiohttp responses are not reusable)
    state: dict[str, Any] = {}

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        call = request.match_info["call"]
        if call not in calls:
            return ok(status=404, body=b'{"success":false,"code":"not_found","message":"unknown endpoint"}',
                      content_type="application/json")
        if check is None:
            records = [(FLOOR_BODY, body)]
        else:
            status, detail, _ = check(body, calls[call])
            if status != 200:
                return ok(status=status, body=b'{"success":false,"code":"%s","message":"rejected"}' % detail.encode(),
                          content_type="application/json")
            records = [(FLOOR_BODY, body), (FLOOR_PATCH, detail)]
        try:
            await state["log"].append(records)
        except OSError:
            return ok(status=503, body=b'{"success":false,"code":"storage_unavailable","message":"retry later"}',
                      content_type="application/json")
        return ok(body=b'{"success":true}', content_type="application/json")

    async def start(app: web.Application) -> None:
        state["log"] = GroupCommitLog(directory / f"floor-{os.getpid()}.log")
        state["task"] = asyncio.get_running_loop().create_task(state["log"].run())

    app = web.Application(client_max_size=2 * 1024 * 1024)
    app.on_startup.append(start)
    _ready_route(app)
    app.router.add_post("/v1/{call}", handle)
    web.run_app(app, sock=sock, access_log=None, print=None)


def serve_receiver(port: int, keep_bodies: bool = False) -> None:
    """A fast batching webhook receiver: parses each body (a JSON array, or one object), counts events
    and distinct messageIds, and records the arrival time of each messageId (time.time() when the
    body was read). GET /stats, GET /arrivals, POST /reset. With ``keep_bodies`` it also keeps every
    body it received, in memory, until ``POST /dump?path=FILE`` writes them there (one per line) and
    stops keeping: what trackrelay delivered, to post again as a baseline."""
    _install_uvloop()
    import orjson
    from aiohttp import web

    state: dict[str, Any] = {}
    kept: list[bytes] | None = [] if keep_bodies else None

    def reset() -> None:
        state.update(events=0, requests=0, first=None, last=None, arrivals={})

    reset()

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        now = time.time()
        if kept is not None:
            kept.append(body)
        data = orjson.loads(body)
        events = data if isinstance(data, list) else [data]
        arrivals = state["arrivals"]
        for ev in events:
            arrivals.setdefault(ev.get("messageId"), now)
        state["events"] += len(events)
        state["requests"] += 1
        if state["first"] is None:
            state["first"] = now
        state["last"] = now
        return web.Response(body=b'{"ok":true}', content_type="application/json")

    async def stats(request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps({
            "events": state["events"], "requests": state["requests"], "unique": len(state["arrivals"]),
            "first": state["first"], "last": state["last"],
        }), content_type="application/json")

    async def arrivals(request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(state["arrivals"]), content_type="application/json")

    async def do_reset(request: web.Request) -> web.Response:
        reset()
        return web.Response(text="ok")

    async def dump(request: web.Request) -> web.Response:
        nonlocal kept
        bodies, kept = kept or [], None
        await asyncio.to_thread(Path(request.query["path"]).write_bytes, b"\n".join(bodies) + b"\n")
        return web.Response(text=str(len(bodies)))

    app = web.Application(client_max_size=50 * 1024 * 1024)
    _ready_route(app)
    app.router.add_route("*", "/hook", hook)
    app.router.add_get("/stats", stats)
    app.router.add_get("/arrivals", arrivals)
    app.router.add_post("/reset", do_reset)
    app.router.add_post("/dump", dump)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


async def _load(url: str, per: int, run_id: str, connections: int, duration: float | None,
                total_requests: int | None, out: Path, retry_after: bool = False) -> None:
    """Closed-loop load like wrk's: ``connections`` workers each POST, wait for the answer, repeat,
    until ``duration`` elapses or ``total_requests`` were sent. Writes wrk-like JSON to ``out``, plus
    the latency of the 200s alone (``ok_*_us``) and the count of 429/503 answers (``shed``). With
    ``retry_after`` a worker answered 429/503 waits the Retry-After seconds first, as the SDKs do."""
    import aiohttp

    path = "/v1/track" if per == 1 else "/v1/batch"
    lat: list[float] = []
    lat_ok: list[float] = []
    ok = other = errors = shed = 0
    counter = 0
    start = time.monotonic()
    deadline = start + duration if duration else None

    def body() -> bytes | None:
        nonlocal counter
        if total_requests is not None and counter >= total_requests:
            return None
        counter += 1
        return sample_body(per, f"{run_id}-{counter}")

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal ok, other, errors, shed
        while deadline is None or time.monotonic() < deadline:
            data = body()
            if data is None:
                return
            t0 = time.monotonic()
            wait = 0.0
            try:
                async with session.post(url + path, data=data, headers={"Content-Type": "application/json"}) as r:
                    await r.read()
                    if r.status == 200:
                        ok += 1
                        lat_ok.append(time.monotonic() - t0)
                    else:
                        other += 1
                        if r.status in (429, 503):
                            shed += 1
                            if retry_after:
                                with contextlib.suppress(ValueError):
                                    wait = float(r.headers.get("Retry-After", "1"))
            except (TimeoutError, aiohttp.ClientError, OSError):
                errors += 1
                continue
            lat.append(time.monotonic() - t0)
            if wait and (deadline is None or time.monotonic() + wait < deadline):
                await asyncio.sleep(wait)

    conn = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=60)) as session:
        await asyncio.gather(*(worker(session) for _ in range(connections)))
    elapsed = time.monotonic() - start
    await asyncio.to_thread(out.write_text, json.dumps({
        "requests": ok + other, "duration_us": int(elapsed * 1e6), "ok": ok, "other": other, "status": other,
        "connect": errors, "read": 0, "write": 0, "timeout": 0,
        "p50_us": int(percentile(lat, 50) * 1e6), "p90_us": int(percentile(lat, 90) * 1e6),
        "p99_us": int(percentile(lat, 99) * 1e6), "max_us": int(max(lat, default=0) * 1e6),
        "mean_us": (sum(lat) / len(lat) * 1e6) if lat else 0.0,
        "shed": shed, "ok_p50_us": int(percentile(lat_ok, 50) * 1e6) if lat_ok else 0,
        "ok_p99_us": int(percentile(lat_ok, 99) * 1e6) if lat_ok else 0,
        "ok_max_us": int(max(lat_ok, default=0) * 1e6),
    }))


async def _paced(url: str, rate: float, duration: float, run_id: str, senders: int, out: Path) -> None:
    """Open-loop load: single track events at ``rate`` per second for ``duration`` seconds (event i is
    due at start + i/rate; ``senders`` concurrent workers). Records, per messageId, the wall-clock
    time its 200 came back."""
    import aiohttp

    prefix, suffix = event_template()
    single_prefix = f'{{"writeKey":"{WRITE_KEY}",' + prefix[1:]
    total = int(rate * duration)
    acked: dict[str, float] = {}
    send_lat: list[float] = []
    failures = 0
    late = 0
    nxt = 0
    start = time.monotonic() + 0.2

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal nxt, failures, late
        while True:
            i = nxt
            if i >= total:
                return
            nxt += 1
            due = start + i / rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.05:
                late += 1
            mid = f"{run_id}-{i}"
            t0 = time.monotonic()
            try:
                async with session.post(url + "/v1/track", data=(single_prefix + mid + suffix).encode(),
                                        headers={"Content-Type": "application/json"}) as r:
                    await r.read()
                    if r.status == 200:
                        acked[mid] = time.time()
                        send_lat.append(time.monotonic() - t0)
                    else:
                        failures += 1
            except (TimeoutError, aiohttp.ClientError, OSError):
                failures += 1

    conn = aiohttp.TCPConnector(limit=senders)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=30)) as session:
        await asyncio.gather(*(worker(session) for _ in range(senders)))
    elapsed = time.monotonic() - start
    await asyncio.to_thread(out.write_text, json.dumps({
        "sent": total, "acked": len(acked), "failures": failures, "late": late, "elapsed": elapsed,
        "ingest_p50_ms": percentile(send_lat, 50) * 1000, "ingest_p99_ms": percentile(send_lat, 99) * 1000,
        "acked_at": acked,
    }))


async def _post_bodies(url: str, bodies_file: Path, concurrency: int, out: Path) -> None:
    """POST pre-built JSON bodies (one per line in ``bodies_file``) with ``concurrency`` in flight."""
    import aiohttp

    bodies = (await asyncio.to_thread(bodies_file.read_bytes)).split(b"\n")
    bodies = [b for b in bodies if b]
    idx = 0
    errors = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal idx, errors
        while idx < len(bodies):
            data = bodies[idx]
            idx += 1
            async with session.post(url, data=data, headers={"Content-Type": "application/json"}) as r:
                await r.read()
                if r.status != 200:
                    errors += 1

    start = time.monotonic()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency),
                                     timeout=aiohttp.ClientTimeout(total=60)) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    await asyncio.to_thread(out.write_text, json.dumps({"requests": len(bodies), "errors": errors,
                                                        "elapsed": time.monotonic() - start}))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("bare", "durable", "validating", "receiver"):
        p = sub.add_parser(name)
        p.add_argument("--port", type=int, required=True)
        if name != "receiver":
            p.add_argument("--workers", type=int, default=1)
        if name in ("durable", "validating"):
            p.add_argument("--dir", type=Path, required=True, help="where the log files go")
        if name == "receiver":
            p.add_argument("--keep-bodies", action="store_true")
    p = sub.add_parser("load")
    p.add_argument("--url", required=True)
    p.add_argument("--per", type=int, default=1)
    p.add_argument("--run-id", required=True)
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--duration", type=float)
    p.add_argument("--requests", type=int)
    p.add_argument("--retry-after", action="store_true", help="on 429/503 wait Retry-After seconds, as SDKs do")
    p.add_argument("--out", type=Path, required=True)
    p = sub.add_parser("paced")
    p.add_argument("--url", required=True)
    p.add_argument("--rate", type=float, default=1000)
    p.add_argument("--duration", type=float, default=15)
    p.add_argument("--senders", type=int, default=256)
    p.add_argument("--run-id", required=True)
    p.add_argument("--out", type=Path, required=True)
    p = sub.add_parser("post-bodies")
    p.add_argument("--url", required=True)
    p.add_argument("--bodies", type=Path, required=True)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if args.cmd == "bare":
        serve_bare(args.port, args.workers)
    elif args.cmd in ("durable", "validating"):
        serve_floor(args.port, args.workers, args.dir, args.cmd == "validating")
    elif args.cmd == "receiver":
        serve_receiver(args.port, args.keep_bodies)
    else:
        _install_uvloop()
        if args.cmd == "load":
            asyncio.run(_load(args.url, args.per, args.run_id, args.connections, args.duration, args.requests, args.out,
                              args.retry_after))
        elif args.cmd == "paced":
            asyncio.run(_paced(args.url, args.rate, args.duration, args.run_id, args.senders, args.out))
        else:
            asyncio.run(_post_bodies(args.url, args.bodies, args.concurrency, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
