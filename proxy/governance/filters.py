"""The list form of a destination's ``filters`` and its ``transform``, applied by the delivery
worker to each enriched event just before the adapter's build_requests.

Steps run in order; the first that stops an event names itself in the skip reason
(``filter:<n>:<kind>``, n counted from 1 as in the YAML list). Field controls never change the
caller's dict: the containers along a removed path are copied (several destinations may share
one decoded event).

Sampling is deterministic: the value of ``by`` (default ``userId``; an event without one falls
back to ``anonymousId``, then to ``messageId``) is hashed with BLAKE2b into one of 10,000 buckets,
and buckets below ``percent * 100`` pass. A user is therefore all in or all out, the same users
are in on every destination and every server (set ``seed`` to draw an independent sample), and
raising ``percent`` only adds users.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any, Literal

from proxy.governance.expr import compile_expression, parse_path, path_getter
from proxy.governance.models import FilterStep
from proxy.governance.transform import Transform, load_transform

SKIP_TRANSFORM = "transform"
BUCKETS = 10_000
SAMPLE_CACHE = 65_536


class Applied:
    """The result for one event.

    - ``outcome == "deliver"``: hand ``events`` (1 or more; a transform may return several) to
      build_requests;
    - ``"skip"``: settle the event as skipped with ``skip`` as the reason (``filter:2:drop``,
      ``filter:3:sample``, ``transform``);
    - ``"dead"``: the transform raised or returned something unusable; dead-letter the event with
      ``error`` (the traceback) as the reason, no retry.

    ``dropped_fields`` is the tuple of removed field paths (for the console trace and event tester).
    A plain slotted class rather than a dataclass: it is built once per event and destination.
    """

    __slots__ = ("events", "skip", "error", "dropped_fields")

    def __init__(self, events: list[dict], skip: str | None = None, error: str | None = None,
                 dropped_fields: tuple[str, ...] = ()) -> None:
        self.events = events
        self.skip = skip
        self.error = error
        self.dropped_fields = dropped_fields

    @property
    def outcome(self) -> Literal["deliver", "skip", "dead"]:
        if self.error is not None:
            return "dead"
        return "skip" if self.skip is not None else "deliver"

    def __repr__(self) -> str:
        return (f"Applied(outcome={self.outcome!r}, events={len(self.events)}, skip={self.skip!r}, "
                f"dropped_fields={self.dropped_fields!r}{', error=...' if self.error else ''})")


# A check returns True to let the event through; an edit returns the (possibly copied) event.
_Check = Callable[[dict], Any]
_Edit = Callable[[dict, list[str]], dict]


def sample_bucket(value: str, seed: str = "") -> int:
    digest = hashlib.blake2b(value.encode("utf-8", "surrogatepass"), digest_size=8,
                             key=seed.encode()[:64]).digest()
    return int.from_bytes(digest, "big") % BUCKETS


def _sample_check(percent: float, by: str, seed: str) -> _Check:
    threshold = round(percent * 100)
    get = path_getter(parse_path(by))
    fallback_anonymous = by == "userId"
    cache: dict[str, bool] = {}  # the same users come back: skip the hash (bounded, cleared when full)

    def check(e: dict) -> bool:
        if threshold >= BUCKETS:
            return True
        v = get(e)
        if (v is None or v == "") and fallback_anonymous:
            v = e.get("anonymousId")
        if v is None or v == "":
            v = e.get("messageId")
            if v is None:
                return False
        key = v if v.__class__ is str else str(v)
        hit = cache.get(key)
        if hit is None:
            if len(cache) >= SAMPLE_CACHE:
                cache.clear()
            hit = cache[key] = sample_bucket(key, seed) < threshold
        return hit
    return check


def _copy_chain(event: dict, parents: tuple[str, ...]) -> tuple[dict, dict]:
    """(new top, the copied container at ``parents``) with every container on the way copied."""
    top = dict(event)
    node = top
    for seg in parents:
        child = dict(node[seg])
        node[seg] = child
        node = child
    return top, node


def _drop_fields_edit(paths: list[str]) -> _Edit:
    parsed = [(text, parse_path(text)) for text in paths]

    def edit(event: dict, dropped: list[str]) -> dict:
        for text, path in parsed:
            node: Any = event
            for seg in path[:-1]:
                node = node.get(seg) if node.__class__ is dict else None
            if node.__class__ is dict and path[-1] in node:
                event, node = _copy_chain(event, path[:-1])
                del node[path[-1]]
                dropped.append(text)
        return event
    return edit


def _keep_fields_edit(spec: dict[str, list[str]]) -> _Edit:
    sections = [(text, parse_path(text), frozenset(keys)) for text, keys in spec.items()]

    def edit(event: dict, dropped: list[str]) -> dict:
        for text, path, keep in sections:
            node: Any = event
            for seg in path:
                node = node.get(seg) if node.__class__ is dict else None
            if node.__class__ is not dict:
                continue
            removed = [k for k in node if k not in keep]
            if removed:
                event, parent = _copy_chain(event, path[:-1])
                parent[path[-1]] = {k: v for k, v in node.items() if k in keep}
                dropped.extend(f"{text}.{k}" for k in removed)
        return event
    return edit


def _compile_step(step: FilterStep) -> tuple[str, _Check | None, _Edit | None]:
    """The step's (kind, check, edit). Each step has exactly its kind's field set (FilterStep
    validates that), hence the asserts: they tell the type checker, they cannot fail."""
    kind = step.kind
    if kind == "drop":  # the apply loop negates (one Python call less than a `not` wrapper)
        assert step.drop is not None
        return kind, compile_expression(step.drop.if_).fn, None
    if kind == "allow":
        assert step.allow is not None
        return kind, compile_expression(step.allow.if_).fn, None
    if kind == "sample":
        s = step.sample
        assert s is not None
        return kind, _sample_check(s.percent, s.by, s.seed), None
    if kind == "types":
        assert step.types is not None
        types = frozenset(step.types)
        return kind, (lambda e: e.get("type") in types), None
    if kind == "events":
        assert step.events is not None
        names = frozenset(step.events)
        return kind, (lambda e: e.get("type") != "track" or e.get("event") in names), None
    if kind == "exclude_events":
        assert step.exclude_events is not None
        excluded = frozenset(step.exclude_events)
        return kind, (lambda e: e.get("type") != "track" or e.get("event") not in excluded), None
    if kind == "drop_fields":
        assert step.drop_fields is not None
        return kind, None, _drop_fields_edit(step.drop_fields)
    if kind == "keep_fields":
        assert step.keep_fields is not None
        return kind, None, _keep_fields_edit(step.keep_fields)
    raise AssertionError(kind)


class DestinationPipeline:
    """A destination's filter steps and transform, compiled once per worker."""

    def __init__(self, destination: str, steps: list[FilterStep], transform: Transform | None = None) -> None:
        self.destination = destination
        # (skip reason, check: the event passes when true, edit, drop: the event passes when false)
        self._steps: list[tuple[str, _Check | None, _Edit | None, bool]] = []
        for n, step in enumerate(steps, 1):
            kind, check, edit = _compile_step(step)
            self._steps.append((f"filter:{n}:{kind}", check, edit, kind == "drop"))
        self.transform = transform
        self.reasons = tuple(r for r, _, _, _ in self._steps) + ((SKIP_TRANSFORM,) if transform else ())

    @classmethod
    def from_config(cls, dest: Any) -> DestinationPipeline:
        """From a ``DestinationConfig``; reuses the transform load_config imported."""
        transform = None
        if dest.transform:
            fn = dest._transform if dest._transform is not None else load_transform(dest.transform)
            transform = Transform(dest.transform, fn, dest.transform_budget, dest.name)
        return cls(dest.name, dest.filter_steps, transform)

    @property
    def active(self) -> bool:
        """False when there is nothing to apply (the caller may skip ``apply``)."""
        return bool(self._steps) or self.transform is not None

    def apply(self, event: dict) -> Applied:
        """Run the steps, then the transform, on one enriched event (never changed in place)."""
        dropped: list[str] = []
        for reason, check, edit, drop in self._steps:
            if check is not None:
                if (not check(event)) if not drop else check(event):
                    return Applied([], reason, None, tuple(dropped))
            elif edit is not None:
                event = edit(event, dropped)
        fields = tuple(dropped) if dropped else ()
        if self.transform is None:
            return Applied([event], None, None, fields)
        result = self.transform.run(event)
        if result.error is not None:
            return Applied([], None, result.error, fields)
        if not result.events:
            return Applied([], SKIP_TRANSFORM, None, fields)
        return Applied(result.events, None, None, fields)
