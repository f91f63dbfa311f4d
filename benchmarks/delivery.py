"""Delivery benchmark: drain rate from a pre-filled spool, end-to-end latency at a steady rate, and
memory with a large backlog for a dead destination.

(a) drain  — N events (default 200,000) are ingested through the real HTTP path (100-event
    batches) while the webhook destination points at a *black hole*: a loopback socket that
    listens but never accepts, so the worker's first requests hang (timeout 600 s) and nothing is
    resolved — no event is delivered, rescheduled or dead-lettered, and the destination's cursor
    stays at the start. trackrelay is stopped with SIGTERM (shutdown grace 1 s: the hung requests
    are cancelled, their events stay in the spool). The receiver is started and trackrelay is
    restarted on the same spool with the same destination (only the URL changed to the receiver's),
    so it drains a full spool from its cursor: pure draining, no ingest running at the same time.
    Destination: webhook batch_size 500; delivery max_batch_events 500, concurrency 4.
    Baseline: the same events, in the same JSON arrays (the receiver keeps the bodies trackrelay
    delivered), POSTed straight to the same receiver by a Python aiohttp client (4 in flight) — the
    ceiling the receiver and this machine set. Spool figures come only from `trackrelay spool stats
    --json` (common.spool_stats); the benchmark never reads spool files.
(b) latency — with the receiver up, a paced generator posts single track events at 1,000/s for
    15 s; it records when each 200 came back, the receiver records when each messageId arrived;
    latency = arrival − 200. Same destination settings as (a), flush_interval at its default
    (0.1 s) — the figure the target is judged on; then once more with flush_interval 0.05 s, to
    show what that knob does.
(c) backlog — the destination's port is closed (receiver down: connection refused, default
    backoff); 1,000,000 events are ingested in 100-event batches; the server's VmRSS and VmHWM are
    read after the fill, and again after restarting trackrelay on that backlog.

Targets (issue 10): drain >= 0.8 x its baseline; p99 <= 110 ms; RSS with the 1M backlog <= 150 MB.
Load generators and the receiver are separate processes; everything is on 127.0.0.1. Targets are
reported, never asserted (exit status 0 either way).

    .venv/bin/python benchmarks/delivery.py [--drain-events 200000] [--backlog-events 1000000] [--keep]
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    PYTHON,
    CpuMeter,
    Procs,
    code_version,
    free_port,
    http_get,
    machine,
    percentile,
    proc_cpu,
    proc_status,
    spool_stats,
    start_helper,
    start_trackrelay,
)

COMMON = str(Path(__file__).resolve().parent / "common.py")
DELIVERY = {"max_batch_events": 500, "concurrency": 4}
TARGET_DRAIN = 0.8  # x the baseline's events/s
TARGET_P99_MS = 110  # end-to-end p99 at 1,000 events/s: no worse than before the storage rework (~110 ms)
TARGET_RSS = 150 * 2**20  # with the 1M-event backlog


def hook(url: str, **delivery: Any) -> dict[str, Any]:
    return {"name": "hook", "type": "webhook", "settings": {"url": url, "batch_size": 500},
            "delivery": {**DELIVERY, **delivery}}


def fill(url: str, workdir: Path, events: int, run_id: str, connections: int = 8) -> dict[str, Any]:
    """Ingest exactly ``events`` events (100 per request) through the HTTP API."""
    out = workdir / f"fill-{run_id}.json"
    requests = events // 100
    subprocess.run([PYTHON, COMMON, "load", "--url", url, "--per", "100", "--run-id", run_id,
                    "--connections", str(connections), "--requests", str(requests), "--out", str(out)],
                   check=True, timeout=600)
    res = json.loads(out.read_text())
    res["events_ok"] = res["ok"] * 100
    return res


def stats(receiver: str) -> dict[str, Any]:
    return json.loads(http_get(receiver + "/stats", 5)[1])


def reset(receiver: str) -> None:
    urllib.request.urlopen(urllib.request.Request(receiver + "/reset", data=b"", method="POST"), timeout=5).read()


def wait_events(receiver: str, target: int, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    st = stats(receiver)
    while st["unique"] < target and time.monotonic() < deadline:
        time.sleep(0.05)
        st = stats(receiver)
    return st


def mb(n: int | None) -> str:
    return "? MB" if n is None else f"{n / 2**20:.1f} MB"


def spool(proc: Any) -> dict[str, Any]:
    """The spool's stats after ``proc`` (a trackrelay started by start_trackrelay) stopped, from
    ``trackrelay spool stats --json``, plus the webhook destination's counts as ``hook``; if the command
    fails, the error is printed and every figure is None, so the other figures are still taken."""
    try:
        stats = spool_stats(proc.config)
    except RuntimeError as exc:
        print(f"  spool stats failed: {exc}", flush=True)
        stats = {"events": None, "bytes": None, "destinations": {}}
    stats["hook"] = {"backlog": None, "retries": None, "dead": None, **stats["destinations"].get("hook", {})}
    return stats


# ---------------------------------------------------------------------------------------------


def drain(procs: Procs, workdir: Path, n: int) -> dict[str, Any]:
    data = workdir / "data-drain"
    hole = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    hole.bind(("127.0.0.1", 0))
    hole.listen(1024)  # never accepted: requests to it hang
    hole_url = f"http://127.0.0.1:{hole.getsockname()[1]}/hook"
    server = {"shutdown_grace": 1}
    try:
        t1, url = start_trackrelay(procs, workdir, "drain-fill", data,
                                   [hook(hole_url, timeout=600, inflight_retries=0)], server)
        t0 = time.monotonic()
        f = fill(url, workdir, n, "drain")
        fill_s = time.monotonic() - t0
        rc = procs.stop(t1)
    finally:
        hole.close()
    before = spool(t1)
    print(f"  (a) filled {before['events']} events in {fill_s:.1f} s ({f['events_ok'] / fill_s:,.0f} events/s through "
          f"ingest while the destination hung); stopped with SIGTERM (exit {rc}); hook: backlog "
          f"{before['hook']['backlog']}, retries {before['hook']['retries']}, dead {before['hook']['dead']}",
          flush=True)
    stored = before["events"] if before["events"] is not None else f["events_ok"]

    # the receiver keeps what it receives: the baseline posts exactly those bodies again
    rproc, receiver = start_helper(procs, workdir, "receiver", "--keep-bodies")
    r_cpu0 = proc_cpu(rproc.pid)
    t2, url = start_trackrelay(procs, workdir, "drain", data, [hook(receiver + "/hook")], server)
    spawned, ready = t2.spawned_at, time.time()
    with CpuMeter(t2.pid) as cpu:
        st = wait_events(receiver, stored, 240)
    r_cores = (proc_cpu(rproc.pid) - r_cpu0) / max(1e-9, time.time() - ready)
    mem = proc_status(t2.pid)
    procs.stop(t2)
    after = spool(t2)
    steady = st["unique"] / (st["last"] - st["first"]) if st["last"] and st["last"] > st["first"] else 0.0
    from_ready = st["unique"] / (st["last"] - ready) if st["last"] else 0.0
    from_spawn = st["unique"] / (st["last"] - spawned) if st["last"] else 0.0
    print(f"  (a) drained {st['unique']} distinct events ({st['events']} received, {st['requests']} requests): "
          f"{steady:,.0f} events/s first→last receipt, {from_ready:,.0f}/s from /readyz, {from_spawn:,.0f}/s from "
          f"process start; cores: trackrelay {cpu.server:.2f}, receiver {r_cores:.2f}, "
          f"other {max(0, cpu.other - r_cores):.2f}; "
          f"after: hook backlog {after['hook']['backlog']}, retries {after['hook']['retries']}, dead "
          f"{after['hook']['dead']}, peak RSS {mb(mem.get('VmHWM', 0))}", flush=True)

    # Baseline: the same events, in the same arrays trackrelay sent, posted straight to the receiver.
    bodies = workdir / "bodies.ndjson"
    urllib.request.urlopen(urllib.request.Request(f"{receiver}/dump?path={bodies}", data=b"", method="POST"),
                           timeout=120).read()
    reset(receiver)
    res_path = workdir / "baseline.json"
    r_cpu0 = proc_cpu(rproc.pid)
    t0 = time.time()
    subprocess.run([PYTHON, COMMON, "post-bodies", "--url", receiver + "/hook", "--bodies", str(bodies),
                    "--concurrency", "4", "--out", str(res_path)], check=True, timeout=300)
    r_cores_b = (proc_cpu(rproc.pid) - r_cpu0) / max(1e-9, time.time() - t0)
    bst = stats(receiver)
    base = json.loads(res_path.read_text())
    base_rate = bst["unique"] / (bst["last"] - bst["first"]) if bst["last"] and bst["last"] > bst["first"] else 0.0
    print(f"  (a) baseline: the same {bst['unique']} events posted directly: {base_rate:,.0f} events/s first→last "
          f"receipt ({bst['unique'] / base['elapsed']:,.0f}/s by the client, {base['errors']} errors); "
          f"receiver cores {r_cores_b:.2f}", flush=True)
    procs.stop(rproc)
    return {"events": stored, "delivered": st["unique"], "received": st["events"], "steady": steady,
            "from_ready": from_ready, "from_spawn": from_spawn, "baseline": base_rate,
            "retry_after": after["hook"]["retries"], "dead_after": after["hook"]["dead"], "cpu_server": cpu.server,
            "cpu_receiver": r_cores, "cpu_other": max(0.0, cpu.other - r_cores),
            "fill_rate": f["events_ok"] / fill_s, "hwm": mem.get("VmHWM", 0)}


def latency(procs: Procs, workdir: Path, rate: float, duration: float, flush_interval: float | None,
            label: str) -> dict[str, Any]:
    data = workdir / f"data-latency-{label}"
    rproc, receiver = start_helper(procs, workdir, "receiver")
    extra = {} if flush_interval is None else {"flush_interval": flush_interval}
    tr, url = start_trackrelay(procs, workdir, f"latency-{label}", data, [hook(receiver + "/hook", **extra)])
    out = workdir / f"paced-{label}.json"
    with CpuMeter(tr.pid) as cpu:
        subprocess.run([PYTHON, COMMON, "paced", "--url", url, "--rate", str(rate), "--duration", str(duration),
                        "--senders", "256", "--run-id", f"lat{label}", "--out", str(out)], check=True,
                       timeout=duration + 120)
    sent = json.loads(out.read_text())
    acked: dict[str, float] = sent["acked_at"]
    st = wait_events(receiver, len(acked), 30)
    arrivals = orjson.loads(http_get(receiver + "/arrivals", 30)[1])
    procs.stop(tr)
    procs.stop(rproc)
    lat = [(arrivals[m] - t) * 1000 for m, t in acked.items() if m in arrivals]
    missing = sum(1 for m in acked if m not in arrivals)
    res = {"label": label, "flush_interval": flush_interval, "sent": sent["sent"], "acked": len(acked),
           "delivered": len(lat), "missing": missing, "failures": sent["failures"], "late": sent["late"],
           "rate": sent["sent"] / sent["elapsed"], "p50": percentile(lat, 50), "p90": percentile(lat, 90),
           "p99": percentile(lat, 99), "max": max(lat, default=float("nan")),
           "ingest_p50": sent["ingest_p50_ms"], "ingest_p99": sent["ingest_p99_ms"],
           "cpu_server": cpu.server, "cpu_other": cpu.other, "received": st["events"]}
    print(f"  (b) [{label}] {res['acked']}/{res['sent']} answered 200 at {res['rate']:.0f} events/s "
          f"({res['late']} sent >50 ms late), {res['delivered']} delivered, {missing} missing; "
          f"200→receipt p50 {res['p50']:.1f} ms, p90 {res['p90']:.1f} ms, p99 {res['p99']:.1f} ms, "
          f"max {res['max']:.1f} ms; "
          f"ingest (send→200) p50 {res['ingest_p50']:.1f} ms p99 {res['ingest_p99']:.1f} ms; "
          f"cores: trackrelay {cpu.server:.2f}, other {cpu.other:.2f}", flush=True)
    return res


def backlog(procs: Procs, workdir: Path, n: int) -> dict[str, Any]:
    data = workdir / "data-backlog"
    dead_url = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there: connection refused
    tr, url = start_trackrelay(procs, workdir, "backlog", data, [hook(dead_url)])
    samples: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.5):
            samples.append(proc_status(tr.pid).get("VmRSS", 0))

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    t0 = time.monotonic()
    try:
        f = fill(url, workdir, n, "backlog")
    finally:
        stop.set()
        th.join()
    fill_s = time.monotonic() - t0
    time.sleep(5)
    after_fill = proc_status(tr.pid)
    procs.stop(tr)
    counts = spool(tr)
    # Restart on the backlog: what a process holding a 1M-event backlog needs, without the ingest load.
    tr2, _ = start_trackrelay(procs, workdir, "backlog-restart", data, [hook(dead_url)])
    time.sleep(10)
    restarted = proc_status(tr2.pid)
    procs.stop(tr2)
    counts2 = spool(tr2)
    res = {"events": counts["events"] if counts["events"] is not None else f["events_ok"], "fill_s": fill_s,
           "fill_rate": f["events_ok"] / fill_s,
           "rss": after_fill.get("VmRSS", 0), "hwm": after_fill.get("VmHWM", 0),
           "rss_restart": restarted.get("VmRSS", 0), "hwm_restart": restarted.get("VmHWM", 0),
           "backlog": counts2["hook"]["backlog"], "retry": counts2["hook"]["retries"], "dead": counts2["hook"]["dead"],
           "disk": counts2["bytes"],
           "rss_max_sampled": max(samples, default=0)}
    print(f"  (c) {res['events']} events stored in {fill_s:.1f} s ({res['fill_rate']:,.0f} events/s), spool "
          f"{mb(res['disk'])} on disk; after the fill: VmRSS {mb(res['rss'])}, VmHWM {mb(res['hwm'])}; "
          f"restarted on the backlog, 10 s later: VmRSS {mb(res['rss_restart'])}, VmHWM {mb(res['hwm_restart'])}; "
          f"hook: backlog {res['backlog']}, retries {res['retry']}, dead-lettered {res['dead']}", flush=True)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--drain-events", type=int, default=200_000)
    ap.add_argument("--backlog-events", type=int, default=1_000_000)
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--latency-seconds", type=float, default=15.0)
    ap.add_argument("--flush-variant", type=float, default=0.05,
                    help="also measure latency with this delivery.flush_interval (0 to skip)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (configs, logs, spools)")
    ap.add_argument("--only", choices=["drain", "latency", "backlog"], action="append")
    args = ap.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="trackrelay-bench-delivery-"))
    procs = Procs()
    started = time.monotonic()
    print(f"delivery benchmark — work dir {workdir}", flush=True)
    print(f"code: {code_version()}; machine: {machine()}", flush=True)
    parts = args.only or ["drain", "latency", "backlog"]
    d = lat = lat2 = b = None
    try:
        if "drain" in parts:
            d = drain(procs, workdir, args.drain_events)
        if "latency" in parts:
            lat = latency(procs, workdir, args.rate, args.latency_seconds, None, "default")
            if args.flush_variant:
                lat2 = latency(procs, workdir, args.rate, args.latency_seconds, args.flush_variant,
                               f"flush{args.flush_variant:g}")
        if "backlog" in parts:
            b = backlog(procs, workdir, args.backlog_events)
    finally:
        procs.close()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    print()
    print("Summary (durability full; webhook batch_size 500, delivery max_batch_events 500, concurrency 4)")
    rows: list[tuple[str, str, str, str]] = []
    if d:
        x = d["steady"] / d["baseline"] if d["baseline"] else 0.0
        rows.append(("(a) drain from a pre-filled spool", f"{d['steady']:,.0f} events/s", "", ""))
        rows.append(("    baseline: same arrays posted directly", f"{d['baseline']:,.0f} events/s", "(ceiling)", ""))
        rows.append(("    drain / baseline", f"{x:.2f} x", f">= {TARGET_DRAIN} x baseline",
                     "met" if x >= TARGET_DRAIN else "MISSED"))
        rows.append(("    same, from /readyz to last receipt", f"{d['from_ready']:,.0f} events/s", "", ""))
        rows.append(("    peak RSS of trackrelay while draining", mb(d["hwm"]), "(no target)", ""))
        rows.append(("    delivered / stored", f"{d['delivered']} / {d['events']}", "all",
                     "ok" if d["delivered"] == d["events"] else "MISSING EVENTS"))
    if lat:
        ok = lat["p99"] <= TARGET_P99_MS
        rows.append((f"(b) latency 200→receipt at {lat['rate']:.0f} ev/s, p50", f"{lat['p50']:.1f} ms", "", ""))
        rows.append(("    p99", f"{lat['p99']:.1f} ms", f"<= {TARGET_P99_MS} ms", "met" if ok else "MISSED"))
        rows.append(("    delivered / answered 200", f"{lat['delivered']} / {lat['acked']}", "all",
                     "ok" if lat["missing"] == 0 else "MISSING EVENTS"))
    if lat2:
        rows.append((f"    with flush_interval {lat2['flush_interval']:g} s: p50 / p99",
                     f"{lat2['p50']:.1f} / {lat2['p99']:.1f} ms", "(for comparison)", ""))
    if b:
        limit = f"<= {TARGET_RSS // 2**20} MB"
        rows.append((f"(c) RSS with {b['events']:,} events backlog (dead dest), VmRSS", mb(b["rss"]), limit,
                     "met" if b["rss"] <= TARGET_RSS else "MISSED"))
        rows.append(("    peak during the fill (VmHWM)", mb(b["hwm"]), limit,
                     "met" if b["hwm"] <= TARGET_RSS else "MISSED"))
        rows.append(("    restarted on the backlog: VmRSS / VmHWM", f"{mb(b['rss_restart'])} / {mb(b['hwm_restart'])}",
                     limit, "met" if b["hwm_restart"] <= TARGET_RSS else "MISSED"))
        rows.append(("    spool on disk (spool stats bytes)", mb(b["disk"]), "", ""))
    w = max(len(r[0]) for r in rows) + 2 if rows else 40
    print(f"{'':{w}}{'measured':>20}  {'target':20}")
    for name, value, target, verdict in rows:
        print(f"{name:{w}}{value:>20}  {target:20}{verdict}")
    print(f"(total {time.monotonic() - started:.0f} s; {machine()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
