"""Per-destination transforms: a Python callable ``package.module:function`` that receives an
event (a dict) and returns an event, a list of events, or None.

A transform runs in the server process, with the server's privileges and inside the delivery
worker's event loop: it must not block (no network calls, no sleeping). It gets a private copy of
the event, so changing it in place is safe. Calls slower than the destination's
``transform_budget`` are counted (``trackrelay_transform_slow_total``) and logged (at most once a
minute per destination); an exception dead-letters the event with the traceback.
"""

from __future__ import annotations

import copy
import importlib
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import structlog

from proxy.governance.models import CALL_TYPES

log = structlog.get_logger("trackrelay.transform")
MAX_TRACEBACK = 8000
SLOW_LOG_INTERVAL = 60.0


class TransformImportError(Exception):
    pass


def load_transform(spec: str, base_dir: Path | None = None) -> Callable[[dict], Any]:
    """Import ``package.module:function``. The config file's directory is searched after the
    installed packages (appended to sys.path), so a transform can live next to the config in Git."""
    module_name, _, attr = spec.partition(":")
    if base_dir is not None and str(base_dir) not in sys.path:
        sys.path.append(str(base_dir))
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:  # the user's module may raise anything while importing
        raise TransformImportError(_import_problem(module_name, exc)) from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise TransformImportError(f"module {module_name!r} has no attribute {attr!r}") from None
    if not callable(obj):
        raise TransformImportError(f"{spec!r} is not callable")
    return obj


def _import_problem(module_name: str, exc: BaseException) -> str:
    if isinstance(exc, ModuleNotFoundError) and exc.name and module_name.startswith(exc.name):
        return (f"cannot import {module_name!r}: no module {exc.name!r} (install it, or put it next to the "
                "config file)")
    where = ""
    if isinstance(exc, SyntaxError) and exc.filename:
        where = f" ({exc.filename}:{exc.lineno})"
    else:
        frames = traceback.extract_tb(exc.__traceback__)
        if frames:
            where = f" ({frames[-1].filename}:{frames[-1].lineno})"
    return f"cannot import {module_name!r}: {type(exc).__name__}: {exc}{where}"


@dataclass(slots=True)
class TransformResult:
    events: list[dict]         # [] means dropped by the transform
    error: str | None = None   # the traceback (or what was wrong with the result): dead-letter


class Transform:
    def __init__(self, spec: str, fn: Callable[[dict], Any], budget: float, destination: str) -> None:
        self.spec = spec
        self.fn = fn
        self.budget = budget
        self.destination = destination
        self.slow = 0
        self._last_slow_log = 0.0

    def run(self, event: dict) -> TransformResult:
        try:
            private = orjson.loads(orjson.dumps(event))
        except (TypeError, orjson.JSONDecodeError):  # not plain JSON (cannot come from ingest, but be safe)
            private = copy.deepcopy(event)
        started = time.perf_counter()
        try:
            out = self.fn(private)
        except Exception:
            return TransformResult([], _clip_traceback(traceback.format_exc()))
        finally:
            elapsed = time.perf_counter() - started
            if elapsed > self.budget:
                self._slow(elapsed)
        return _normalise(out, event.get("messageId"))

    def _slow(self, elapsed: float) -> None:
        self.slow += 1
        from proxy.metrics import METRICS

        METRICS.transform_slow.labels(self.destination).inc()
        now = time.monotonic()
        if now - self._last_slow_log >= SLOW_LOG_INTERVAL or self.slow == 1:
            self._last_slow_log = now
            log.warning("transform_slow", destination=self.destination, transform=self.spec,
                        elapsed_ms=round(elapsed * 1000, 2), budget_ms=round(self.budget * 1000, 2),
                        slow_total=self.slow)


def _clip_traceback(text: str) -> str:
    return text if len(text) <= MAX_TRACEBACK else "…" + text[-(MAX_TRACEBACK - 1):]


def _normalise(out: Any, message_id: Any) -> TransformResult:
    if out is None:
        return TransformResult([])
    if isinstance(out, dict):
        items = [out]
    elif isinstance(out, (list, tuple)):
        items = list(out)
    else:
        return TransformResult([],
                               f"the transform returned {type(out).__name__}; expected a dict, a list of dicts or None")
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            return TransformResult([], f"the transform returned a {type(item).__name__} at index {i}; expected a dict")
        if item.get("type") not in CALL_TYPES:
            return TransformResult([], f"the transform returned an event without a valid type at index {i} "
                                       f"(got {item.get('type')!r}; one of {', '.join(CALL_TYPES)})")
        try:
            orjson.dumps(item)
        except TypeError as exc:
            return TransformResult([], f"the transform returned an event that is not JSON at index {i}: {exc}")
    if len(items) > 1:
        # the messageId is the vendors' dedup key: several events out of one must not share it
        seen: set[Any] = set()
        for n, item in enumerate(items):
            mid = item.get("messageId")
            if mid in seen or (mid is None and message_id is not None):
                item["messageId"] = f"{mid if mid is not None else message_id}:{n}"
            seen.add(item.get("messageId"))
    return TransformResult(items)
