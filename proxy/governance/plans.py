"""Tracking plans per source: JSON Schemas for track events' properties and identify / group
traits, checked at ingest.

Validated with jsonschema-rs (a maintained Rust implementation with a PyPI wheel), compiled once
at load. Measured on the benchmark's 11-property order schema with two products, one core of a
loaded 2-core machine: jsonschema-rs ``is_valid`` ~2.8 µs per event, fastjsonschema's generated
function ~7.6-30 µs, jsonschema's cached Draft7Validator.is_valid ~150 µs. jsonschema-rs also
lists every violation of an invalid event (fastjsonschema stops at the first) and checks the
schemas against the meta-schema at load with the path of the problem, which load_config turns
into a file line. Draft-07 is Segment Protocols' dialect; ``$ref`` to anything outside the plan
is refused (``offline``), and ``default`` values are never written into events.

Violations have Segment Protocols' shape: ``{"type", "field", "description"}``, with types
``Unplanned`` (an event the plan does not name), ``Required``, ``Type``, ``Format``, ``Enum``,
``Pattern``, ``Unplanned Property`` (``additionalProperties: false``) and the JSON Schema keyword,
title-cased, for the rest.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import jsonschema_rs
import orjson
import yaml

from proxy.governance.models import TrackingPlanConfig

Action = Literal["allow", "flag", "block"]
_SEVERITY = {"allow": 0, "flag": 1, "block": 2}
_TYPES = {"required": "Required", "type": "Type", "format": "Format", "enum": "Enum", "const": "Enum",
          "pattern": "Pattern", "additionalProperties": "Unplanned Property"}
PLAN_KEYS = ("events", "identify", "group")
MAX_DESCRIPTION = 300


class PlanError(ValueError):
    """A plan that cannot be compiled: ``loc`` is the key path inside the plan."""

    def __init__(self, loc: tuple[Any, ...], message: str) -> None:
        self.loc = loc
        self.message = message
        super().__init__(f"{'.'.join(map(str, loc)) or '(top)'}: {message}")


@dataclass(frozen=True, slots=True)
class Violation:
    type: str
    field: str
    description: str

    def as_dict(self) -> dict[str, str]:
        return {"type": self.type, "field": self.field, "description": self.description}


@dataclass(slots=True)
class PlanDecision:
    """What to do with an event: ``allow`` (deliver as is; violations may still be listed when the
    plan says allow), ``flag`` (deliver with ``context.violations``), ``block`` (do not deliver;
    keep it in the blocked store with its violations). The HTTP answer is 200 in every case."""

    action: Action
    violations: list[Violation] = field(default_factory=list)

    def annotate(self, event: dict) -> None:
        """Put the violations at ``context.violations`` (in place), as Segment Protocols does."""
        context = event.get("context")
        if not isinstance(context, dict):
            context = event["context"] = {}
        context["violations"] = [v.as_dict() for v in self.violations]


ALLOW = PlanDecision("allow", [])


class _Schema:
    """One compiled schema."""

    __slots__ = ("schema", "validator", "is_valid")

    def __init__(self, schema: dict[str, Any], loc: tuple[Any, ...]) -> None:
        if not isinstance(schema, dict):
            raise PlanError(loc, "a schema is a mapping (JSON Schema draft-07)")
        dialect = schema.get("$schema")
        if dialect is not None and "draft-07" not in str(dialect):
            raise PlanError(loc + ("$schema",), "plans use JSON Schema draft-07; remove $schema or use draft-07")
        try:
            self.validator = jsonschema_rs.Draft7Validator(schema, validate_formats=True, offline=True)
        except jsonschema_rs.ValidationError as exc:  # the schema breaks the meta-schema, or a $ref
            raise PlanError(loc + tuple(exc.instance_path), f"invalid JSON Schema: {exc.message}") from None
        except ValueError as exc:
            raise PlanError(loc, f"invalid JSON Schema: {exc}") from None
        self.schema = schema
        self.is_valid = self.validator.is_valid

    def violations(self, data: Any, prefix: str) -> list[Violation]:
        if self.is_valid(data):
            return []
        out: list[Violation] = []
        seen: set[tuple[str, str]] = set()
        for err in self.validator.iter_errors(data):
            for v in _from_error(err, prefix):
                if (v.type, v.field) not in seen:
                    seen.add((v.type, v.field))
                    out.append(v)
        return out


def _clip(text: str) -> str:
    return text if len(text) <= MAX_DESCRIPTION else text[:MAX_DESCRIPTION - 1] + "…"


def _from_error(err: jsonschema_rs.ValidationError, prefix: str) -> list[Violation]:
    base = ".".join([prefix, *(str(p) for p in err.instance_path)])
    keyword = str(getattr(err.kind, "name", "") or "invalid")
    kind = _TYPES.get(keyword, keyword[:1].upper() + keyword[1:])
    if keyword == "required":
        name = getattr(err.kind, "property", None)
        return [Violation("Required", f"{base}.{name}", f"{base}.{name} is required")]
    if keyword == "additionalProperties":
        extra = getattr(err.kind, "unexpected", None) or []
        if extra:
            return [Violation(kind, f"{base}.{k}", f"{base}.{k} is not in the plan") for k in extra]
    return [Violation(kind, base, _clip(f"{base}: {err.message}"))]


class TrackingPlan:
    """A compiled plan: the schemas by call (track events by name)."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        if not isinstance(data, Mapping):
            raise PlanError((), "a tracking plan is a mapping with events, identify and group")
        unknown = [k for k in data if k not in PLAN_KEYS]
        if unknown:
            raise PlanError((unknown[0],), f"unknown key; a plan has {', '.join(PLAN_KEYS)}")
        events = data.get("events") or {}
        if not isinstance(events, Mapping):
            raise PlanError(("events",), "events is a mapping of event name -> JSON Schema of its properties")
        self.events: dict[str, _Schema | None] = {}
        for name, schema in events.items():
            self.events[str(name)] = None if schema is None else _Schema(schema, ("events", name))
        self.identify = _Schema(data["identify"], ("identify",)) if data.get("identify") is not None else None
        self.group = _Schema(data["group"], ("group",)) if data.get("group") is not None else None


def read_plan_file(path: Path) -> tuple[dict[str, Any], dict]:
    """(plan data, line index of its keys) from a YAML or JSON file."""
    from proxy.config import _line_index

    text = path.read_text()
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    data = yaml.safe_load(text)
    return (data if data is not None else {}), (_line_index(node) if node is not None else {})


class SourcePlan:
    """A source's plan and actions. ``check`` lists violations; ``decide`` adds the action."""

    def __init__(self, source: str, plan: TrackingPlan, unplanned_events: Action = "allow",
                 on_violation: Action = "flag") -> None:
        self.source = source
        self.plan = plan
        self.unplanned_events = unplanned_events
        self.on_violation = on_violation

    @classmethod
    def compile(cls, source: str, cfg: TrackingPlanConfig, base_dir: Path | None = None) -> SourcePlan:
        if cfg.file is not None:
            path = cfg.file if cfg.file.is_absolute() or base_dir is None else base_dir / cfg.file
            data, _ = read_plan_file(path)
        else:
            data = {k: getattr(cfg, k) for k in PLAN_KEYS if getattr(cfg, k) is not None}
        return cls(source, TrackingPlan(data), cfg.unplanned_events, cfg.on_violation)

    @classmethod
    def from_config(cls, source: Any) -> SourcePlan | None:
        """The plan of a ``SourceConfig`` (compiled by load_config; compiled here otherwise), or None."""
        if source.tracking_plan is None:
            return None
        if source._plan is None:
            source._plan = cls.compile(source.name, source.tracking_plan)
        return source._plan

    def check(self, event: Mapping[str, Any]) -> list[Violation]:
        """Every violation of the plan by this (enriched) event; [] when it conforms."""
        etype = event.get("type")
        if etype == "track":
            name = event.get("event")
            if name not in self.plan.events:
                return [Violation("Unplanned", "event", _clip(f"{name!r} is not in the tracking plan"))]
            schema = self.plan.events[name]
            return [] if schema is None else schema.violations(_obj(event.get("properties")), "properties")
        if etype == "identify" and self.plan.identify is not None:
            return self.plan.identify.violations(_traits(event), "traits")
        if etype == "group" and self.plan.group is not None:
            return self.plan.group.violations(_obj(event.get("traits")), "traits")
        return []

    def decide(self, event: Mapping[str, Any]) -> PlanDecision:
        """The violations and the action the plan's settings give them (the most severe wins),
        counted in trackrelay_plan_violations_total. The event is not changed: to flag, call
        ``decision.annotate(event)`` (or store the violations yourself)."""
        violations = self.check(event)
        if not violations:
            return ALLOW
        action: Action = "allow"
        for v in violations:
            a = self.unplanned_events if v.type == "Unplanned" else self.on_violation
            if _SEVERITY[a] > _SEVERITY[action]:
                action = a
        from proxy.metrics import METRICS

        METRICS.plan_violations.labels(self.source, action).inc()
        return PlanDecision(action, violations)


def _obj(value: Any) -> Any:
    return {} if value is None else value


def _traits(event: Mapping[str, Any]) -> Any:
    traits = event.get("traits")
    if traits is None:  # analytics.js 1.x sent identify traits under context.traits
        context = event.get("context")
        traits = context.get("traits") if isinstance(context, dict) else None
    return _obj(traits)


def violations_json(violations: list[Violation]) -> bytes:
    return orjson.dumps([v.as_dict() for v in violations])
