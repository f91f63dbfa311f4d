"""In-process taps on what ingest and delivery do, for the operator console (live events, event
traces) and anything else that wants to watch. A tap with no listener costs one truth test;
listeners run on the event loop and must be quick and never raise (they are isolated anyway:
an exception in a listener is logged and the listener removed)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import structlog

log = structlog.get_logger("trackrelay.observe")

# ingest: (append, result, every item's raw JSON by batch index) after a request's events are durable
Stored = Callable[[Any, Any, Sequence[bytes]], None]
# ingest: (status, code, message, source or None) for a request refused as a whole
Refused = Callable[[int, str, str, "str | None"], None]
# delivery: (destination, request, response or None, error text or None, outcome, messageIds, attempt number, epoch)
Attempted = Callable[[str, Any, Any, "str | None", Any, Sequence["str | None"], int, float], None]
# delivery: (destination, settlements) once outcomes are recorded in the spool
Settled = Callable[[str, Sequence[Any]], None]


class Taps:
    def __init__(self) -> None:
        self.stored: list[Stored] = []
        self.refused: list[Refused] = []
        self.attempted: list[Attempted] = []
        self.settled: list[Settled] = []

    def emit(self, listeners: list[Any], *args: Any) -> None:
        for fn in list(listeners):
            try:
                fn(*args)
            except Exception as exc:  # a broken listener must not break ingest or delivery
                log.error("observer_failed", observer=repr(fn), error=repr(exc))
                listeners.remove(fn)


TAPS = Taps()
