"""Which destinations get a message: enabled, listening to its source, allowed by the event's
``integrations`` object (Segment semantics) and by the destination's filters.

Segment rules (segment-docs connections/spec/common.md "Integrations"): ``All`` defaults to true
and applies when no key names the destination; an explicit key wins over ``All``; ``false``
disables, ``true`` or an options object enables. Keys match an adapter's Segment display names
and aliases or the destination's own ``name``. The ``Segment.io`` key (added by analytics.js to
every event) is ignored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from proxy.config import DestinationConfig

SKIP_SOURCE = "source_not_listed"
SKIP_INTEGRATIONS = "disabled_by_integrations"
SKIP_TYPE_FILTER = "filtered_by_type"
SKIP_EVENT_FILTER = "filtered_by_event"


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    keys: tuple[str, ...]  # names that select it in an integrations object
    sources: frozenset[str] | None
    types: frozenset[str] | None
    events: frozenset[str] | None
    exclude_events: frozenset[str]
    honours_all: bool


class Router:
    def __init__(self, destinations: Sequence[DestinationConfig]) -> None:
        self.routes = [
            Route(
                name=d.name,
                keys=(d.name, *d.adapter.integration_names),
                sources=frozenset(d.sources) if d.sources is not None else None,
                types=frozenset(d.route_filters.types) if d.route_filters.types is not None else None,
                events=frozenset(d.route_filters.events) if d.route_filters.events is not None else None,
                exclude_events=frozenset(d.route_filters.exclude_events),
                honours_all=d.adapter.honours_all,
            )
            for d in destinations
            if d.enabled
        ]
        self._all_names = tuple(r.name for r in self.routes)

    def route(self, source: str, event: Mapping[str, Any]) -> tuple[list[str], dict[str, str]]:
        """(destination names that get the event, {destination: why it was skipped})."""
        integrations = event.get("integrations")
        if not self.routes:
            return [], {}
        if not integrations and not any(r.sources or r.types or r.events or r.exclude_events for r in self.routes):
            return list(self._all_names), {}
        if not isinstance(integrations, Mapping):
            integrations = {}
        default = integrations.get("All") is not False
        etype = event.get("type")
        name = event.get("event")
        targets: list[str] = []
        skipped: dict[str, str] = {}
        for r in self.routes:
            if r.sources is not None and source not in r.sources:
                skipped[r.name] = SKIP_SOURCE
                continue
            enabled = default if r.honours_all else True
            for key in r.keys:
                value = integrations.get(key)
                if value is not None:  # `integrations[key] ?? integrations.All`, as analytics-core
                    enabled = value is not False
                    break
            if not enabled:
                skipped[r.name] = SKIP_INTEGRATIONS
                continue
            if r.types is not None and etype not in r.types:
                skipped[r.name] = SKIP_TYPE_FILTER
                continue
            if etype == "track" and (name in r.exclude_events or (r.events is not None and name not in r.events)):
                skipped[r.name] = SKIP_EVENT_FILTER
                continue
            targets.append(r.name)
        return targets, skipped
