"""``trackrelay plan infer``: write a starting tracking plan from the events a source sent."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def cmd_plan_infer(args: argparse.Namespace) -> int:
    from proxy.cli import _load, _since
    from proxy.governance.infer import infer_plan, plan_yaml
    from proxy.governance.stored import iter_stored_events

    config = _load(args.config)
    if args.source not in {s.name for s in config.sources}:
        print(f"no source {args.source!r} in {args.config} (sources: "
              f"{', '.join(s.name for s in config.sources)})", file=sys.stderr)
        return 2
    since = _since(args.since)
    events = (e for e in iter_stored_events(config, since)
              if (e.get("_trackrelay") or {}).get("source") == args.source)
    plan, counts = infer_plan(events)
    if not counts and not plan.get("identify") and not plan.get("group"):
        print(f"no stored events from source {args.source!r}"
              + (f" since {args.since}" if args.since else "") + "; nothing to infer", file=sys.stderr)
        return 1
    header = (f"Tracking plan inferred by `trackrelay plan infer` from source {args.source!r}"
              + (f" (events since {args.since})" if args.since else "")
              + f" on {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC.\n"
              "A draft: review the types and `required` lists before enforcing it.")
    text = plan_yaml(plan, counts, header)
    if args.output:
        Path(args.output).write_text(text)
        print(f"wrote {args.output}: {len(plan['events'])} track event(s)"
              + (", identify" if "identify" in plan else "") + (", group" if "group" in plan else ""),
              file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def check_summary(config) -> str:
    """Extra lines for `trackrelay check`: what governance each source and destination has."""
    lines = []
    for s in config.sources:
        if s.tracking_plan is not None and s._plan is not None:
            p = s._plan
            lines.append(f"  source {s.name}: tracking plan with {len(p.plan.events)} event(s)"
                         f"{', identify' if p.plan.identify else ''}{', group' if p.plan.group else ''}; "
                         f"unplanned events: {p.unplanned_events}, violations: {p.on_violation}")
    for d in config.destinations:
        parts = []
        if d.filter_steps:
            parts.append(f"{len(d.filter_steps)} filter step(s): {', '.join(step.kind for step in d.filter_steps)}")
        if d.transform:
            parts.append(f"transform {d.transform} (imported)")
        if parts:
            lines.append(f"  destination {d.name}: " + "; ".join(parts))
    return "".join(f"\n{line}" for line in lines)


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    plan = sub.add_parser("plan", help="tracking plans")
    psub = plan.add_subparsers(dest="action", required=True)
    infer = psub.add_parser("infer", help="write a starting plan from the events a source sent")
    infer.add_argument("--config", required=True)
    infer.add_argument("--source", required=True, help="source name")
    infer.add_argument("--since", help="ISO time or a duration ago (e.g. 24h); default: every stored event")
    infer.add_argument("--output", "-o", help="write the plan to this file (default: stdout)")
    infer.set_defaults(func=cmd_plan_infer)
    from proxy.governance.blocked import add_subcommands as add_blocked_commands

    add_blocked_commands(psub)
