"""Overload benchmark: trackrelay at the normal connection count, then at 10x, with admission control.

One trackrelay process (durability full, no destinations, the default server.max_inflight_requests
unless --max-inflight is given) gets, one after another on the same spool:
  normal    the Python load generator (benchmarks/common.py load) with --connections (64) single
            track events, closed loop
  overload  the same with --factor (10) times as many connections
Answers 429/503 make that load-generator connection wait the Retry-After seconds, as Segment's
SDKs do (analytics-next 1.84+, analytics-node 3.1+, analytics-python 2.4 honour it).
With --unbounded the same two runs are repeated on a fresh server with max_inflight_requests: 0,
for comparison.

Reported per run: requests/s answered 200, 429s, p50/p99/max latency of the 200s only, peak RSS
(VmHWM) of the server; and whether every event answered 200 is in the spool (the count of stored
events, stored_events(), must be >= the 200s). Targets (reported, never asserted): the overload
p99 of accepted requests < 10x the normal p99; peak RSS under overload < 1.5x the normal peak;
nothing answered 200 lost.

    .venv/bin/python benchmarks/overload.py [--duration 10] [--connections 64] [--factor 10] [--keep]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    PYTHON,
    CpuMeter,
    Procs,
    code_version,
    machine,
    spool_stats,
    start_trackrelay,
    tree_status,
)


def stored_events(config: Path) -> int:
    """Events committed to the spool, from `trackrelay spool stats --json` (common.spool_stats)."""
    return int(spool_stats(config)["events"])


def load(url: str, workdir: Path, run_id: str, connections: int, duration: float) -> dict[str, Any]:
    out = workdir / f"{run_id}.json"
    subprocess.run([PYTHON, str(Path(__file__).resolve().parent / "common.py"), "load", "--url", url,
                    "--per", "1", "--run-id", run_id, "--connections", str(connections),
                    "--duration", str(duration), "--retry-after", "--out", str(out)],
                   check=True, timeout=duration + 180)
    return json.loads(out.read_text())


def run_server(procs: Procs, workdir: Path, name: str, args: argparse.Namespace,
               max_inflight: int | None) -> list[dict[str, Any]]:
    data_dir = workdir / f"data-{name}"
    server: dict[str, Any] = {}
    if max_inflight is not None:
        server["max_inflight_requests"] = max_inflight
    proc, url = start_trackrelay(procs, workdir, name, data_dir, [], server=server)
    results = []
    ok_total = 0
    try:
        warm = load(url, workdir, f"w{name}", args.connections, args.warmup)
        ok_total += warm["ok"]
        for phase, conns in (("normal", args.connections), ("overload", args.connections * args.factor)):
            with CpuMeter(proc.pid) as cpu:
                res = load(url, workdir, f"{phase}-{name}", conns, args.duration)
            ok_total += res["ok"]
            mem = tree_status(proc.pid)
            secs = res["duration_us"] / 1e6
            row = {
                "server": name, "phase": phase, "connections": conns, "ok_rps": res["ok"] / secs,
                "ok": res["ok"], "shed": res["shed"], "other": res["other"] - res["shed"], "errors": res["connect"],
                "p50_ms": res["ok_p50_us"] / 1000, "p99_ms": res["ok_p99_us"] / 1000,
                "max_ms": res["ok_max_us"] / 1000, "hwm": mem.get("VmHWM", 0), "rss": mem.get("VmRSS", 0),
                "cpu_server": cpu.server, "cpu_loadgen": cpu.loadgen, "cpu_other": cpu.other,
            }
            results.append(row)
            print(f"  {name:10} {phase:8} {conns:5} conns  {row['ok_rps']:7.0f} ok/s  429s {row['shed']:6}  "
                  f"other {row['other']:4}  errors {row['errors']:4}  200s p50 {row['p50_ms']:7.2f} ms  "
                  f"p99 {row['p99_ms']:8.2f} ms  max {row['max_ms']:8.2f} ms  peak RSS {row['hwm'] / 2**20:6.1f} MB  "
                  f"cores: server {cpu.server:.2f} loadgen {cpu.loadgen:.2f} other {cpu.other:.2f}", flush=True)
    finally:
        procs.stop(proc)
    stored = stored_events(proc.config)  # type: ignore[attr-defined]
    for row in results:
        row["stored"], row["ok_total"] = stored, ok_total
    print(f"  {name:10} spool: {stored} events stored, {ok_total} answered 200 "
          f"({'OK' if stored >= ok_total else 'LOST ' + str(ok_total - stored)})", flush=True)
    if not args.keep:
        shutil.rmtree(data_dir, ignore_errors=True)
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per measured run")
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--connections", type=int, default=64, help="the normal connection count")
    ap.add_argument("--factor", type=int, default=10, help="overload = factor x connections")
    ap.add_argument("--max-inflight", type=int, help="server.max_inflight_requests (default: the server's)")
    ap.add_argument("--unbounded", action="store_true", help="also run with max_inflight_requests: 0")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="trackrelay-bench-overload-"))
    procs = Procs()
    started = time.monotonic()
    print(f"overload benchmark — Python load generator, single track events, {args.connections} then "
          f"{args.connections * args.factor} connections, {args.duration:.0f} s each; work dir {workdir}", flush=True)
    print(f"code: {code_version()}; machine: {machine()}", flush=True)
    results: list[dict[str, Any]] = []
    try:
        results += run_server(procs, workdir, "bounded", args, args.max_inflight)
        if args.unbounded:
            results += run_server(procs, workdir, "unbounded", args, 0)
    finally:
        procs.close()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    print()
    print("Summary (latency of the requests answered 200 only; 429s are answered at once)")
    header = (f"{'server':11}{'phase':9}{'conns':>6}{'ok/s':>8}{'429s':>8}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}"
              f"{'peak RSS':>10}{'cores srv/gen/other':>21}")
    print(header)
    print("-" * len(header))
    for r in results:
        print(f"{r['server']:11}{r['phase']:9}{r['connections']:6}{r['ok_rps']:8.0f}{r['shed']:8}{r['p50_ms']:9.2f}"
              f"{r['p99_ms']:9.2f}{r['max_ms']:9.2f}{r['hwm'] / 2**20:8.1f}MB"
              f"{r['cpu_server']:9.2f}/{r['cpu_loadgen']:.2f}/{r['cpu_other']:.2f}")
    print("Targets:")
    for name in dict.fromkeys(r["server"] for r in results):
        normal = next(r for r in results if r["server"] == name and r["phase"] == "normal")
        over = next(r for r in results if r["server"] == name and r["phase"] == "overload")
        x = over["p99_ms"] / normal["p99_ms"] if normal["p99_ms"] else float("inf")
        m = over["hwm"] / normal["hwm"] if normal["hwm"] else float("inf")
        print(f"  {name:10} overload p99 of 200s < 10 x normal p99: {x:.1f} x ({over['p99_ms']:.1f} vs "
              f"{normal['p99_ms']:.1f} ms)  {'met' if x < 10 else 'MISSED'}")
        print(f"  {name:10} peak RSS under overload < 1.5 x normal: {m:.2f} x ({over['hwm'] / 2**20:.0f} vs "
              f"{normal['hwm'] / 2**20:.0f} MB)  {'met' if m < 1.5 else 'MISSED'}")
        print(f"  {name:10} nothing answered 200 lost: {over['stored']} stored >= {over['ok_total']} answered 200  "
              f"{'met' if over['stored'] >= over['ok_total'] else 'MISSED'}")
    print("'other' cores well above 0 means something else used the machine and the figures are depressed.")
    print(f"(total {time.monotonic() - started:.0f} s; {machine()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
