"""Command line: ``trackrelay serve | check | test-event | dead-letters list|show|replay |
spool stats|events|migrate|forget | plan infer|blocked | docs``.

Every command that reads or changes stored data goes through the spool port (proxy/spool/), and is
safe while a server runs on the same spool."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

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
        print(f"invalid configuration ({len(exc.problems)} problem{'s' if len(exc.problems) != 1 else ''}):",
              file=sys.stderr)
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


METRICS_PREFIX = "trackrelay-metrics-"


def _remove_stale_metrics_dirs() -> None:
    """Metrics directories of servers that died without cleaning up (SIGKILL): their files would
    otherwise pile up in the temp directory, one set per killed run."""
    tmp = Path(tempfile.gettempdir())
    for path in tmp.glob(METRICS_PREFIX + "*"):
        pid = path.name[len(METRICS_PREFIX):].split("-", 1)[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except PermissionError:
            pass  # another user's live process


def cmd_serve(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if args.host:
        config.server.host = args.host
    if args.port is not None:
        config.server.port = args.port
    _server_setup(config)
    sock = None
    metrics_dir = None
    if config.server.workers > 1:
        from proxy.workers import listen_socket

        # before proxy.metrics is imported anywhere: every process keeps its values in files there
        _remove_stale_metrics_dirs()
        metrics_dir = tempfile.mkdtemp(prefix=f"{METRICS_PREFIX}{os.getpid()}-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        sock = listen_socket(config.server.host, config.server.port)
    from proxy import server, tls
    from proxy.app import create_app, create_metrics_app

    app = create_app(config, role="main", config_path=args.config, sock=sock)
    from proxy.app import SPOOL
    from proxy.spool import SpoolRefused, SpoolUnavailable

    try:
        app[SPOOL].claim()  # one server per spool: a second one would deliver every event again
    except SpoolRefused as exc:
        print(exc, file=sys.stderr)
        return 2
    ssl_context = tls.attach(app, config)
    metrics_app = create_metrics_app(app) if config.server.metrics_listen else None
    extra = []
    if config.admin is not None:  # the operator console, on its own listener (main process only)
        from proxy.admin import create_admin_app

        extra.append((create_admin_app(config, app), config.admin.host, config.admin.port))
    try:
        if sock is not None:
            server.run(app, config, sock=sock, ssl_context=ssl_context, metrics_app=metrics_app, extra_sites=extra)
        else:
            server.run(app, config, host=config.server.host, port=config.server.port, ssl_context=ssl_context,
                       metrics_app=metrics_app, extra_sites=extra)
    except (SpoolRefused, SpoolUnavailable) as exc:  # at start (e.g. the JetStream cluster is unusable)
        print(f"trackrelay: not starting: {exc}", file=sys.stderr)
        return 2
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

    from proxy import tls
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
    from proxy import server

    server.run(app, config, sock=sock, ssl_context=tls.attach(app, config))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    config = _load(args.config)
    from proxy.governance.cli import check_summary

    print(f"{args.config}: OK — {len(config.sources)} source(s), "
          f"{sum(1 for d in config.destinations if d.enabled)} enabled destination(s)"
          + "".join(f"\n  {d.name} ({d.type}){'' if d.enabled else ' [disabled]'}" for d in config.destinations)
          + check_summary(config))
    stale = _run(config, _orphans, config, missing_ok=True)
    for name in stale or ():
        print(f"  note: the spool keeps delivery state for {name!r}, which is not in this config; "
              f"`trackrelay spool forget --config {args.config} {name}` removes it")
    return 0


def _run(config: Config, fn, *args, missing_ok: bool = False):  # type: ignore[no-untyped-def]
    """Open the spool as an operator (role admin: no appends, safe beside a running server), run
    ``await fn(spool, *args)``, close it."""
    import asyncio

    from proxy.spool import SpoolRefused, open_spool

    if not structlog.is_configured():  # a backend's warnings go to stderr, never into stdout's output
        setup_logging("warning", "console")

    async def main():  # type: ignore[no-untyped-def]
        spool = open_spool(config.storage, role="admin")
        try:
            await spool.start()
        except FileNotFoundError:
            if missing_ok:
                return None
            print(f"no spool at {config.storage.path}", file=sys.stderr)
            sys.exit(1)
        except SpoolRefused as exc:
            if missing_ok:
                print(f"  note: the spool was not read: {exc}", file=sys.stderr)
                return None
            print(exc, file=sys.stderr)
            sys.exit(2)
        try:
            return await fn(spool, *args)
        finally:
            await spool.close()
    return asyncio.run(main())


async def _orphans(spool, config: Config) -> list[str]:  # type: ignore[no-untyped-def]
    from proxy.governance.blocked import blocked_destination

    configured = {d.name for d in config.destinations if d.enabled}
    configured |= {blocked_destination(s.name) for s in config.sources if s.tracking_plan is not None}
    return [name for name in await spool.known_destinations() if name not in configured]


def _ts(value: float) -> str:
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _since(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return time.time() - parse_duration(value)


def _query(args: argparse.Namespace, limit: int | None = None):  # type: ignore[no-untyped-def]
    from proxy.spool import DeadQuery

    return DeadQuery(getattr(args, "destination", None), _since(getattr(args, "since", None)),
                     _since(getattr(args, "until", None)), tuple(str(i) for i in getattr(args, "ids", None) or ()),
                     limit)


def cmd_dead_list(args: argparse.Namespace) -> int:
    async def run(spool):  # type: ignore[no-untyped-def]
        return await spool.dead_letters(_query(args, args.limit))
    rows, total = _run(_load(args.config), run)
    if args.json:
        for r in rows:
            print(orjson.dumps({"id": int(r.id) if r.id.isdigit() else r.id, "destination": r.destination, "at": r.at,
                                "attempts": r.attempts, "status": r.status, "message_id": r.message_id,
                                "reason": r.reason}).decode())
        return 0
    print(f"{'ID':>6}  {'DESTINATION':<18} {'AT (UTC)':<19}  {'TRIES':>5}  {'STATUS':>6}  {'MESSAGE ID':<38} REASON")
    for r in rows:
        print(f"{r.id:>6}  {r.destination:<18} {_ts(r.at):<19}  {r.attempts:>5}  "
              f"{r.status if r.status is not None else '-':>6}  {(r.message_id or '')[:38]:<38} {r.reason[:80]}")
    print(f"{total} dead letter(s){' (showing ' + str(len(rows)) + ')' if total > len(rows) else ''}")
    return 0


def cmd_dead_show(args: argparse.Namespace) -> int:
    async def run(spool):  # type: ignore[no-untyped-def]
        return await spool.dead_letter(str(args.id))
    dl = _run(_load(args.config), run)
    if dl is None:
        print(f"no dead letter {args.id}", file=sys.stderr)
        return 1
    out = {"id": int(dl.id) if dl.id.isdigit() else dl.id, "destination": dl.destination, "at": _ts(dl.at),
           "attempts": dl.attempts, "status": dl.status, "reason": dl.reason, "response": dl.response,
           "source": dl.source, "message_id": dl.message_id, "event": orjson.loads(dl.event) if dl.event else None}
    print(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())
    return 0


def cmd_dead_replay(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    config = _load(args.config)
    known = [d.name for d in config.destinations if d.enabled]

    async def run(spool):  # type: ignore[no-untyped-def]
        query = _query(args)
        _, total = await spool.dead_letters(query)
        with tqdm(total=total, unit="event", desc="replaying", disable=args.quiet) as bar:
            replayed = await spool.replay(query, known, bar.update)
        return total, replayed
    total, replayed = _run(config, run)
    skipped = total - replayed
    if not replayed:
        print("nothing to replay" + (f" ({skipped} for destinations not enabled in this config)" if skipped else ""))
        return 0
    print(f"{replayed} event(s) put back on their destination's queue"
          + (f"; {skipped} left (destination not enabled in this config)" if skipped else ""))
    return 0


def cmd_spool_stats(args: argparse.Namespace) -> int:
    config = _load(args.config)
    names = [d.name for d in config.destinations if d.enabled]

    async def run(spool):  # type: ignore[no-untyped-def]
        return await spool.stats(names, exact=args.exact or args.json)
    stats = _run(config, run).as_dict()
    if args.json:
        print(orjson.dumps(stats).decode())
        return 0
    print(f"engine {stats['engine']}: {stats['events']} event(s), {stats['bytes']:,} of {stats['max_bytes']:,} bytes"
          + (" (FULL: ingest answers 429)" if stats["full"] else ""))
    for name, d in stats["destinations"].items():
        oldest = _ts(d["oldest_undelivered"]) if d["oldest_undelivered"] else "-"
        print(f"  {name:<20} backlog {d['backlog']:>9}  retries {d['retries']:>7}  dead {d['dead']:>7}  "
              f"oldest undelivered {oldest}")
    return 0


def cmd_spool_events(args: argparse.Namespace) -> int:
    async def run(spool):  # type: ignore[no-untyped-def]
        return await spool.events(args.limit)
    for ev in _run(_load(args.config), run):
        print(orjson.dumps({**ev.event, "_trackrelay": {"source": ev.source, "destinations": list(ev.destinations),
                                                        "skipped": dict(ev.skipped)}}).decode())
    return 0


def cmd_spool_migrate(args: argparse.Namespace) -> int:
    from proxy.spool import SpoolBusy, upgrade

    config = _load(args.config)
    try:
        counts = upgrade(config.storage)
    except SpoolBusy as exc:
        print(exc, file=sys.stderr)
        return 2
    if counts is None:
        print(f"{config.storage.path}: nothing to migrate")
        return 0
    print(f"{config.storage.path}: migrated " + ", ".join(f"{v} {k}" for k, v in counts.items())
          + "; the old file is kept beside it as spool.db.v0-migrated (delete it once you are satisfied)")
    return 0


def cmd_spool_forget(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if args.destination in {d.name for d in config.destinations if d.enabled} and not args.force:
        print(f"{args.destination!r} is an enabled destination in {args.config}; use --force to reset it anyway",
              file=sys.stderr)
        return 2

    async def run(spool):  # type: ignore[no-untyped-def]
        return await spool.forget(args.destination)
    removed = _run(config, run)
    print(f"{args.destination}: cursor and {removed} retr{'y' if removed == 1 else 'ies'} removed (dead letters kept)")
    return 0


def cmd_docs(args: argparse.Namespace) -> int:
    from proxy import docs

    path = Path(args.readme)
    try:
        current = docs.write(path, check=args.check)
    except (OSError, ValueError) as exc:
        print(f"{path}: {exc}", file=sys.stderr)
        return 2
    if args.check and not current:
        print(f"{path} differs from the settings models: {docs.FIX}", file=sys.stderr)
        return 1
    print(f"{path}: {'up to date' if current else 'rewritten'}")
    return 0


def cmd_test_event(args: argparse.Namespace) -> int:
    """The event tester's dry run (the console's POST /api/test-event): per destination, the exact
    request(s) it would get for the event, or why none. Nothing is sent."""
    from proxy.admin.tester import Tester, TestEventError

    config = _load(args.config)
    try:
        data = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    except OSError as exc:
        print(f"cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return 2
    try:
        result = Tester(config).plan(data, source=args.source, destination=args.destination)
    except TestEventError as exc:
        print(f"{exc.code}: {exc.message}", file=sys.stderr)
        return 2
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    return 0 if all(e["valid"] for e in result["events"]) else 1


def add_letter_commands(sub: Any, scope: tuple[str, str, str], listing: tuple[Any, str], replay: tuple[Any, str],
                        show: tuple[Any, str]) -> None:
    """``list``, ``replay`` and ``show`` subcommands over a set of letters (the dead letters, the
    events a tracking plan blocked): ``scope`` is the (long, short, help) of the option that narrows
    them, the others are (function, help)."""
    for name, (fn, hlp) in (("list", listing), ("replay", replay)):
        p = sub.add_parser(name, help=hlp)
        p.add_argument("--config", required=True)
        p.add_argument(scope[0], scope[1], help=scope[2])
        p.add_argument("--since", help="ISO time or a duration ago (e.g. 2h)")
        p.add_argument("--until", help="ISO time or a duration ago")
        p.set_defaults(func=fn)
        if name == "list":
            p.add_argument("--limit", type=int, default=100)
            p.add_argument("--json", action="store_true", help="one JSON object per line")
        else:
            p.add_argument("ids", nargs="*", type=int, help="only these ids")
            p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p = sub.add_parser("show", help=show[1])
    p.add_argument("--config", required=True)
    p.add_argument("id", type=int)
    p.set_defaults(func=show[0])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trackrelay", description="Segment-compatible event proxy and router.")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the server")
    serve.add_argument("--config", required=True)
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.set_defaults(func=cmd_serve)

    check = sub.add_parser("check", help="validate a configuration file")
    check.add_argument("--config", required=True)
    check.set_defaults(func=cmd_check)

    dead = sub.add_parser("dead-letters", help="inspect and replay dead letters")
    add_letter_commands(
        dead.add_subparsers(dest="action", required=True), ("--destination", "-d", "only this destination"),
        (cmd_dead_list, "list dead letters"), (cmd_dead_replay, "put dead letters back on their destination's queue"),
        (cmd_dead_show, "show one dead letter with its event and last response"))

    spool = sub.add_parser("spool", help="inspect and maintain the spool")
    ssub = spool.add_subparsers(dest="action", required=True)
    p = ssub.add_parser("stats", help="sizes, backlogs, retries and dead letters per destination")
    p.add_argument("--config", required=True)
    p.add_argument("--exact", action="store_true", help="count backlogs (reads the whole log) instead of estimating")
    p.add_argument("--json", action="store_true", help="one JSON object (exact counts)")
    p.set_defaults(func=cmd_spool_stats)
    p = ssub.add_parser("events", help="stored events as delivery sees them (enriched), one JSON object per line")
    p.add_argument("--config", required=True)
    p.add_argument("--limit", type=int, default=None)
    p.set_defaults(func=cmd_spool_events)
    p = ssub.add_parser("migrate", help="convert a spool written before 0.2 (spool.db) to the segment log")
    p.add_argument("--config", required=True)
    p.set_defaults(func=cmd_spool_migrate)
    p = ssub.add_parser("forget", help="remove the cursor and retries of a destination no longer configured")
    p.add_argument("--config", required=True)
    p.add_argument("destination")
    p.add_argument("--force", action="store_true", help="even if the destination is in the config")
    p.set_defaults(func=cmd_spool_forget)
    docs = sub.add_parser("docs", help="write the configuration reference into README.md from the settings models")
    docs.add_argument("--readme", default="README.md")
    docs.add_argument("--check", action="store_true", help="only compare; exit 1 when README.md is out of date")
    docs.set_defaults(func=cmd_docs)
    p = sub.add_parser("test-event", help="dry run: the request(s) each destination would get for an event")
    p.add_argument("--config", required=True)
    p.add_argument("--destination", "-d", help="only this destination")
    p.add_argument("--source", help="as if sent to this source (default: the first)")
    p.add_argument("file", help="a JSON file with one Segment event (or a batch); - reads stdin")
    p.set_defaults(func=cmd_test_event)
    from proxy.governance.cli import add_subcommands as add_plan_commands

    add_plan_commands(sub)
    return parser


# Internal subcommands: started by trackrelay itself, never shown in --help. argparse has no way to
# hide a subcommand (help=SUPPRESS prints "==SUPPRESS=="), so they are parsed apart from the public ones.
INTERNAL_COMMANDS = ("ingest-worker",)


def build_internal_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trackrelay", add_help=False)
    sub = parser.add_subparsers(dest="command", required=True)
    worker = sub.add_parser("ingest-worker", help="an ingest worker process (started by serve; not for direct use)")
    worker.add_argument("--config", required=True)
    worker.add_argument("--host", required=True)
    worker.add_argument("--port", type=int, required=True)
    worker.add_argument("--notify-fd", type=int, required=True)
    worker.add_argument("--index", type=int, default=1)
    worker.set_defaults(func=cmd_ingest_worker)
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_internal_parser() if argv[:1] and argv[0] in INTERNAL_COMMANDS else build_parser()
    args = parser.parse_args(argv)
    sys.exit(args.func(args))
