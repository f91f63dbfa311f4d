"""The blocked store of tracking plans: events a plan blocks are kept, browsable and replayable.

Design: ingest routes a blocked event to one pseudo-destination, ``(blocked:<source>)``, and to
none of the real ones (each of those gets the skip reason ``blocked_by_tracking_plan``, counted in
trackrelay_events_skipped_total); its violations travel in the stored record like a flagged
event's, so the event reads back with ``context.violations``. The delivery engine runs a tiny
worker per source with a plan that settles everything routed to the pseudo-destination as a dead
letter of it (reason ``blocked_by_tracking_plan: <violations>``). So the blocked store is made of
the spool port's own parts — append, lease, settle, dead letters — and behaves the same on every
backend: durable, at-least-once, kept until replayed (never purged by ``storage.retention``),
listed and shown like dead letters. ``trackrelay plan blocked replay`` re-routes each event at
replay time, as ingest would route it now but ignoring the plan (Spool.reroute), and puts it on the
queues of those destinations; the destinations' filter steps and transform then apply as usual.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import orjson

PREFIX = "(blocked:"
SKIP_BLOCKED = "blocked_by_tracking_plan"
MAX_REASON = 2000


def blocked_destination(source: str) -> str:
    """The pseudo-destination holding a source's blocked events."""
    return f"{PREFIX}{source})"


def blocked_source(destination: str) -> str | None:
    """The source of a pseudo-destination name, or None for a real destination."""
    if destination.startswith(PREFIX) and destination.endswith(")"):
        return destination[len(PREFIX):-1]
    return None


def blocked_reason(event: Any) -> str:
    """The dead-letter reason of a blocked event: the code and its violations, briefly."""
    violations: Any = None
    if isinstance(event, dict) and isinstance(event.get("context"), dict):
        violations = event["context"].get("violations")
    parts = [f"{v.get('type')} {v.get('field')}" for v in violations or () if isinstance(v, dict)]
    text = SKIP_BLOCKED + (": " + "; ".join(parts) if parts else "")
    return text if len(text) <= MAX_REASON else text[:MAX_REASON - 1] + "…"


# -- CLI: trackrelay plan blocked list|show|replay ---------------------------------------------------


def _sources(config: Any, args: argparse.Namespace) -> list[str] | None:
    names = [s.name for s in config.sources]
    if args.source is None:
        return names
    if args.source not in names:
        print(f"no source {args.source!r} in {args.config} (sources: {', '.join(names)})", file=sys.stderr)
        return None
    return [args.source]


async def _letters(spool: Any, sources: list[str], query: Any) -> list[Any]:
    from proxy.spool import DeadQuery

    out = []
    for source in sources:
        letters, _ = await spool.dead_letters(DeadQuery(blocked_destination(source), query.since, query.until,
                                                        query.ids, None))
        out += letters
    out.sort(key=lambda d: d.at)
    return out


def cmd_blocked_list(args: argparse.Namespace) -> int:
    from proxy.cli import _load, _query, _run, _ts

    config = _load(args.config)
    sources = _sources(config, args)
    if sources is None:
        return 2

    async def run(spool: Any) -> list[Any]:
        return await _letters(spool, sources, _query(args))
    letters = _run(config, run, missing_ok=True) or []
    shown = letters[:args.limit] if args.limit is not None else letters
    if args.json:
        for d in shown:
            print(orjson.dumps({"id": int(d.id) if d.id.isdigit() else d.id, "source": d.source, "at": d.at,
                                "message_id": d.message_id, "reason": d.reason}).decode())
        return 0
    print(f"{'ID':>6}  {'SOURCE':<14} {'AT (UTC)':<19}  {'MESSAGE ID':<38} VIOLATIONS")
    for d in shown:
        why = d.reason[len(SKIP_BLOCKED) + 2:] if d.reason.startswith(SKIP_BLOCKED + ": ") else d.reason
        print(f"{d.id:>6}  {d.source:<14} {_ts(d.at):<19}  {(d.message_id or '')[:38]:<38} {why[:90]}")
    print(f"{len(letters)} blocked event(s){' (showing ' + str(len(shown)) + ')' if len(letters) > len(shown) else ''}")
    return 0


def cmd_blocked_show(args: argparse.Namespace) -> int:
    from proxy.cli import _load, _run, _ts

    config = _load(args.config)

    async def run(spool: Any) -> Any:
        return await spool.dead_letter(str(args.id))
    d = _run(config, run, missing_ok=True)
    if d is None or blocked_source(d.destination) is None:
        print(f"no blocked event {args.id}", file=sys.stderr)
        return 1
    event = orjson.loads(d.event) if d.event else None
    violations = ((event or {}).get("context") or {}).get("violations") if isinstance(event, dict) else None
    out = {"id": int(d.id) if d.id.isdigit() else d.id, "source": d.source, "at": _ts(d.at),
           "message_id": d.message_id, "violations": violations, "event": event}
    print(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())
    return 0


def cmd_blocked_replay(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from proxy.cli import _load, _query, _run
    from proxy.routing import Router
    from proxy.spool import DeadQuery

    config = _load(args.config)
    sources = _sources(config, args)
    if sources is None:
        return 2
    router = Router(config.destinations)
    query = _query(args)

    def route(letter: Any) -> list[str]:
        try:
            event = orjson.loads(letter.event) if letter.event else None
        except orjson.JSONDecodeError:
            return []
        if not isinstance(event, dict):
            return []
        destinations, _skipped = router.route(letter.source, event)  # as ingest routes it, without the plan
        return destinations

    async def run(spool: Any) -> tuple[int, int]:
        letters = await _letters(spool, sources, query)
        moved = 0
        with tqdm(total=len(letters), unit="event", desc="replaying", disable=args.quiet) as bar:
            for source in sources:
                q = DeadQuery(blocked_destination(source), query.since, query.until, query.ids, None)
                base = moved

                def progress(n: int, base: int = base) -> None:  # n: moved so far for this source
                    bar.n = base + n
                    bar.refresh()
                moved += await spool.reroute(q, route, progress)
        return len(letters), moved
    total, moved = _run(config, run, missing_ok=True) or (0, 0)
    if not total:
        print("no blocked events to replay")
        return 0
    left = total - moved
    print(f"{moved} blocked event(s) put on the queues of the destinations they would have reached"
          + (f"; {left} left (they would reach no enabled destination)" if left else ""))
    return 0


def add_subcommands(plan_sub: Any) -> None:
    blocked = plan_sub.add_parser("blocked", help="events a tracking plan blocked: list, show, replay")
    from proxy.cli import add_letter_commands

    add_letter_commands(
        blocked.add_subparsers(dest="blocked_action", required=True), ("--source", "-s", "only this source"),
        (cmd_blocked_list, "list blocked events, oldest first"),
        (cmd_blocked_replay, "send blocked events to the destinations they would have reached (ignoring the plan)"),
        (cmd_blocked_show, "one blocked event with its violations"))
