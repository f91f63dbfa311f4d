"""Command line: ``trackrelay serve | check | dead-letters list|show|replay | plan infer``."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import orjson
import structlog

from proxy.config import Config, ConfigError, load_config, parse_duration


def setup_logging(level: str = "info", fmt: str = "json") -> None:
    lvl = getattr(logging, level.upper())
    logging.basicConfig(level=lvl, format="%(message)s", stream=sys.stderr)
    renderer = structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


def _load(path: str) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"invalid configuration ({len(exc.problems)} problem{'s' if len(exc.problems) != 1 else ''}):", file=sys.stderr)
        for p in exc.problems:
            print(f"  {p}", file=sys.stderr)
        sys.exit(2)


def _server_setup(config: Config) -> None:
    setup_logging(config.logging.level, config.logging.format)
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass


def _instance_lock(path: Path) -> None:
    """One server per spool: a second one would deliver every event again. The lock is held for
    the life of this process (the kernel drops it when the process dies, even by SIGKILL)."""
    import fcntl

    path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path / "instance.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"another trackrelay server is using the spool in {path}; stop it first "
              "(several processes on one spool: server.workers)", file=sys.stderr)
        sys.exit(2)


def cmd_serve(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if args.host:
        config.server.host = args.host
    if args.port is not None:
        config.server.port = args.port
    _server_setup(config)
    _instance_lock(Path(config.storage.path))
    sock = None
    metrics_dir = None
    if config.server.workers > 1:
        from proxy.workers import listen_socket

        # before proxy.metrics is imported anywhere: every process keeps its values in files there
        metrics_dir = tempfile.mkdtemp(prefix="trackrelay-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        sock = listen_socket(config.server.host, config.server.port)
    from aiohttp import web

    from proxy.app import create_app

    app = create_app(config, role="main", config_path=args.config, sock=sock)
    try:
        if sock is not None:
            web.run_app(app, sock=sock, access_log=None, print=None, shutdown_timeout=config.server.shutdown_grace)
        else:
            web.run_app(app, host=config.server.host, port=config.server.port, access_log=None, print=None,
                        shutdown_timeout=config.server.shutdown_grace, reuse_port=False)
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


def cmd_ingest_worker(args: argparse.Namespace) -> int:
    """An ingest worker process, started by ``serve`` when server.workers > 1 (not for direct use)."""
    import asyncio

    config = _load(args.config)
    _server_setup(config)
    structlog.contextvars.bind_contextvars(worker=args.index)
    from aiohttp import web

    from proxy.app import create_app
    from proxy.workers import listen_socket, report_ready, watch_parent

    os.set_blocking(args.notify_fd, False)
    sock = listen_socket(args.host, args.port)
    app = create_app(config, role="ingest", notify_fd=args.notify_fd)

    async def parent_watch(app: web.Application):
        watch_parent(asyncio.get_running_loop())
        yield

    async def ready(app: web.Application) -> None:  # the socket listens already: connections queue
        report_ready(args.notify_fd, args.index)

    app.cleanup_ctx.insert(0, parent_watch)
    app.on_startup.append(ready)
    web.run_app(app, sock=sock, access_log=None, print=None, shutdown_timeout=config.server.shutdown_grace)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    config = _load(args.config)
    from proxy.governance.cli import check_summary

    print(f"{args.config}: OK — {len(config.sources)} source(s), "
          f"{sum(1 for d in config.destinations if d.enabled)} enabled destination(s)"
          + "".join(f"\n  {d.name} ({d.type}){'' if d.enabled else ' [disabled]'}" for d in config.destinations)
          + check_summary(config))
    return 0


def _db(config: Config) -> sqlite3.Connection:
    from proxy.spool.sqlite import DB_NAME, connect

    if not (Path(config.storage.path) / DB_NAME).exists():
        print(f"no spool at {config.storage.path}", file=sys.stderr)
        sys.exit(1)
    return connect(Path(config.storage.path), config.storage.durability)


def _ts(value: float) -> str:
    return datetime.fromtimestamp(value, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _since(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return time.time() - parse_duration(value)


def _where(args: argparse.Namespace) -> tuple[str, list]:
    clauses, params = [], []
    if getattr(args, "destination", None):
        clauses.append("dest = ?")
        params.append(args.destination)
    since = _since(getattr(args, "since", None))
    if since is not None:
        clauses.append("at >= ?")
        params.append(since)
    until = _since(getattr(args, "until", None))
    if until is not None:
        clauses.append("at < ?")
        params.append(until)
    if getattr(args, "ids", None):
        clauses.append(f"id IN ({','.join('?' * len(args.ids))})")
        params.extend(args.ids)
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


def cmd_dead_list(args: argparse.Namespace) -> int:
    conn = _db(_load(args.config))
    where, params = _where(args)
    rows = conn.execute(
        f"SELECT id, dest, at, attempts, status, message_id, reason FROM dead{where} ORDER BY id LIMIT ?",
        (*params, args.limit)).fetchall()
    total = conn.execute(f"SELECT COUNT(*) FROM dead{where}", params).fetchone()[0]
    if args.json:
        for r in rows:
            print(orjson.dumps(dict(zip(("id", "destination", "at", "attempts", "status", "message_id", "reason"), r))).decode())
        return 0
    print(f"{'ID':>6}  {'DESTINATION':<18} {'AT (UTC)':<19}  {'TRIES':>5}  {'STATUS':>6}  {'MESSAGE ID':<38} REASON")
    for r in rows:
        print(f"{r[0]:>6}  {r[1]:<18} {_ts(r[2]):<19}  {r[3]:>5}  {r[4] if r[4] is not None else '-':>6}  "
              f"{(r[5] or '')[:38]:<38} {r[6][:80]}")
    print(f"{total} dead letter(s){' (showing ' + str(len(rows)) + ')' if total > len(rows) else ''}")
    return 0


def cmd_dead_show(args: argparse.Namespace) -> int:
    conn = _db(_load(args.config))
    row = conn.execute(
        "SELECT id, dest, at, attempts, status, reason, response, source, message_id, event FROM dead WHERE id = ?",
        (args.id,)).fetchone()
    if row is None:
        print(f"no dead letter {args.id}", file=sys.stderr)
        return 1
    out = dict(zip(("id", "destination", "at", "attempts", "status", "reason", "response", "source", "message_id"), row))
    out["at"] = _ts(out["at"])
    out["event"] = orjson.loads(row[9])
    print(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())
    return 0


def cmd_dead_replay(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    config = _load(args.config)
    conn = _db(config)
    known = {d.name for d in config.destinations if d.enabled}
    where, params = _where(args)
    ids = [r[0] for r in conn.execute(f"SELECT id, dest FROM dead{where} ORDER BY id", params) if r[1] in known]
    skipped = conn.execute(f"SELECT COUNT(*) FROM dead{where}", params).fetchone()[0] - len(ids)
    if not ids:
        print("nothing to replay" + (f" ({skipped} for destinations not enabled in this config)" if skipped else ""))
        return 0
    now = time.time()
    with tqdm(total=len(ids), unit="event", desc="replaying", disable=args.quiet) as bar:
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            marks = ",".join("?" * len(chunk))
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                "INSERT INTO retry (dest, due, attempts, first_failed, last_status, last_error, source, key_index, event) "
                f"SELECT dest, ?, 0, ?, NULL, 'replayed from dead letters', source, key_index, event FROM dead WHERE id IN ({marks})",
                (now, now, *chunk))
            conn.execute(f"DELETE FROM dead WHERE id IN ({marks})", chunk)
            conn.execute("COMMIT")
            bar.update(len(chunk))
    print(f"{len(ids)} event(s) put back on their destination's queue"
          + (f"; {skipped} left (destination not enabled in this config)" if skipped else ""))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trackrelay", description="Segment-compatible event proxy and router.")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the server")
    serve.add_argument("--config", required=True)
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.set_defaults(func=cmd_serve)

    worker = sub.add_parser("ingest-worker", help=argparse.SUPPRESS)
    worker.add_argument("--config", required=True)
    worker.add_argument("--host", required=True)
    worker.add_argument("--port", type=int, required=True)
    worker.add_argument("--notify-fd", type=int, required=True)
    worker.add_argument("--index", type=int, default=1)
    worker.set_defaults(func=cmd_ingest_worker)

    check = sub.add_parser("check", help="validate a configuration file")
    check.add_argument("--config", required=True)
    check.set_defaults(func=cmd_check)

    dead = sub.add_parser("dead-letters", help="inspect and replay dead letters")
    dsub = dead.add_subparsers(dest="action", required=True)
    for name, fn, hlp in (("list", cmd_dead_list, "list dead letters"),
                          ("replay", cmd_dead_replay, "put dead letters back on their destination's queue")):
        p = dsub.add_parser(name, help=hlp)
        p.add_argument("--config", required=True)
        p.add_argument("--destination", "-d", help="only this destination")
        p.add_argument("--since", help="ISO time or a duration ago (e.g. 2h)")
        p.add_argument("--until", help="ISO time or a duration ago")
        p.set_defaults(func=fn)
        if name == "list":
            p.add_argument("--limit", type=int, default=100)
            p.add_argument("--json", action="store_true", help="one JSON object per line")
        else:
            p.add_argument("ids", nargs="*", type=int, help="only these dead-letter ids")
            p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    show = dsub.add_parser("show", help="show one dead letter with its event and last response")
    show.add_argument("--config", required=True)
    show.add_argument("id", type=int)
    show.set_defaults(func=cmd_dead_show)

    from proxy.governance.cli import add_subcommands as add_plan_commands

    add_plan_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    sys.exit(args.func(args))
