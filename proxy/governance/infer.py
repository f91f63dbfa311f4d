"""``trackrelay plan infer``: a starting tracking plan from events seen — event names, property
types (JSON Schema draft-07), and as ``required`` the properties every occurrence carried.

A pure function over an iterable of events; the CLI feeds it stored events. The result is a
draft to review: an inferred plan describes what was sent, not what should be.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import yaml

MAX_DEPTH = 4          # nested objects described this deep; below, just "object"
MAX_PROPERTIES = 200   # per object; more are left out of the schema (and the plan allows them)
MAX_EVENTS = 2000      # distinct track event names


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, Mapping):
        return "object"
    return "string"


class _Shape:
    """What the values seen at one place looked like."""

    __slots__ = ("types", "seen", "present", "props", "items")

    def __init__(self) -> None:
        self.types: set[str] = set()
        self.seen = 0                        # objects seen here (for required)
        self.present: dict[str, int] = {}    # key -> in how many of them
        self.props: dict[str, _Shape] = {}
        self.items: _Shape | None = None

    def add(self, value: Any, depth: int = 0) -> None:
        t = _json_type(value)
        self.types.add(t)
        if t == "object" and depth < MAX_DEPTH:
            self.seen += 1
            for key, v in value.items():
                key = str(key)
                if key not in self.props and len(self.props) >= MAX_PROPERTIES:
                    continue
                self.present[key] = self.present.get(key, 0) + 1
                self.props.setdefault(key, _Shape()).add(v, depth + 1)
        elif t == "array" and depth < MAX_DEPTH:
            if self.items is None:
                self.items = _Shape()
            for v in value[:50]:
                self.items.add(v, depth + 1)

    def schema(self) -> dict[str, Any]:
        types = set(self.types)
        if {"integer", "number"} <= types:
            types.discard("integer")
        out: dict[str, Any] = {}
        if types:
            ordered = sorted(types)
            out["type"] = ordered[0] if len(ordered) == 1 else ordered
        if self.props:
            out["properties"] = {k: s.schema() for k, s in sorted(self.props.items())}
            required = sorted(k for k, n in self.present.items() if n == self.seen)
            if required:
                out["required"] = required
        if self.items is not None and self.items.types:
            out["items"] = self.items.schema()
        return out


def infer_plan(events: Iterable[Mapping[str, Any]]) -> tuple[dict[str, Any], dict[str, int]]:
    """(plan, how many times each track event was seen). The plan has the keys of a plan file:
    ``events`` (name -> schema of properties), and ``identify`` / ``group`` when such calls were seen."""
    tracks: dict[str, _Shape] = {}
    counts: dict[str, int] = {}
    identify: _Shape | None = None
    group: _Shape | None = None
    for event in events:
        etype = event.get("type")
        if etype == "track":
            name = event.get("event")
            if not isinstance(name, str) or not name:
                continue
            if name not in tracks:
                if len(tracks) >= MAX_EVENTS:
                    continue
                tracks[name] = _Shape()
            counts[name] = counts.get(name, 0) + 1
            props = event.get("properties")
            tracks[name].add(props if isinstance(props, Mapping) else {})
        elif etype == "identify":
            identify = identify or _Shape()
            traits = event.get("traits")
            identify.add(traits if isinstance(traits, Mapping) else {})
        elif etype == "group":
            group = group or _Shape()
            traits = event.get("traits")
            group.add(traits if isinstance(traits, Mapping) else {})
    plan: dict[str, Any] = {"events": {name: _object_schema(tracks[name]) for name in sorted(tracks)}}
    if identify is not None:
        plan["identify"] = _object_schema(identify)
    if group is not None:
        plan["group"] = _object_schema(group)
    return plan, counts


def _object_schema(shape: _Shape) -> dict[str, Any]:
    schema = shape.schema()
    schema["type"] = "object"
    return schema


def plan_yaml(plan: dict[str, Any], counts: dict[str, int], header: str = "") -> str:
    """The plan as a YAML plan file, with a comment saying where it came from and the counts."""
    lines = [f"# {line}" for line in header.splitlines()] if header else []
    if counts:
        lines.append("# events seen: " + ", ".join(f"{name} ({n})" for name, n in
                                                   sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:50]))
    body = yaml.safe_dump(plan, sort_keys=False, allow_unicode=True, default_flow_style=False, width=100)
    return ("\n".join(lines) + "\n" if lines else "") + body
