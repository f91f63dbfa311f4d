"""Configuration models for destination filter steps, transforms and tracking plans (the YAML
shapes); proxy/config.py embeds them. Expressions are compiled while the config is validated, so
a malformed one is reported by ``trackrelay check`` with its line and column."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from proxy.governance.expr import ExpressionError, compile_expression, parse_path

CALL_TYPES = ("track", "identify", "page", "screen", "group", "alias")
STEP_KINDS = ("drop", "allow", "sample", "drop_fields", "keep_fields", "types", "events", "exclude_events")
Action = Literal["allow", "flag", "block"]
_DOTTED = r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*"
TRANSFORM_SPEC = re.compile(rf"^{_DOTTED}:{_DOTTED}$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True, populate_by_name=True)


def _condition(text: str) -> str:
    try:
        compile_expression(text)
    except ExpressionError as exc:
        raise PydanticCustomError(
            "expression", "{message} (column {column} in: {text})",
            {"message": exc.message, "column": exc.column, "text": text},
        ) from None
    return text


def _field_path(text: str) -> str:
    try:
        parse_path(text)
    except ExpressionError as exc:
        raise PydanticCustomError("field_path", "{message} (column {column}): {text}",
                                  {"message": exc.message, "column": exc.column, "text": text}) from None
    return text


Condition = Annotated[str, AfterValidator(_condition)]
FieldPath = Annotated[str, AfterValidator(_field_path)]


class ConditionStep(_Model):
    if_: Condition = Field(alias="if", description="The condition (see the expression syntax).")


class SampleStep(_Model):
    percent: float = Field(ge=0, le=100, description="Share of the values of `by` that pass, 0-100 (0.01 steps).")
    by: FieldPath = Field("userId", description="Field whose value decides; userId falls back to anonymousId.")
    seed: str = Field("", max_length=64,
                      description="Changes which values are in the sample (default: same everywhere).")


class FilterStep(_Model):
    """One item of the list form of ``filters``: exactly one of the keys."""

    drop: ConditionStep | None = Field(None, description="Skip the event when the condition holds.")
    allow: ConditionStep | None = Field(None, description="Skip the event unless the condition holds.")
    sample: SampleStep | None = Field(None, description="Deterministic sampling by a field's value.")
    drop_fields: list[FieldPath] | None = Field(None, description="Remove these fields.")
    keep_fields: dict[FieldPath, list[str]] | None = Field(
        None, description="For each object (e.g. properties), keep only the listed keys.")
    types: list[Literal["track", "identify", "page", "screen", "group", "alias"]] | None = Field(
        None, description="Only these call types pass.")
    events: list[str] | None = Field(None, description="Only track events with these names pass (other calls pass).")
    exclude_events: list[str] | None = Field(None, description="Track events with these names are skipped.")

    @model_validator(mode="before")
    @classmethod
    def _one_key(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            raise PydanticCustomError("filter_step", "a filter step is a mapping with one key: {kinds}",
                                      {"kinds": ", ".join(STEP_KINDS)})
        unknown = [k for k in data if k not in STEP_KINDS]
        if unknown:
            raise PydanticCustomError("filter_step", "unknown filter {name}; one of: {kinds}",
                                      {"name": repr(str(unknown[0])), "kinds": ", ".join(STEP_KINDS)})
        if len(data) != 1:
            raise PydanticCustomError(
                "filter_step", "a filter step has exactly one key, found {found}; write each as its own list item",
                {"found": ", ".join(map(str, data)) or "none"})
        return data

    @property
    def kind(self) -> str:
        for name in STEP_KINDS:
            if getattr(self, name) is not None:
                return name
        raise AssertionError("validated step without a kind")


class TrackingPlanConfig(_Model):
    """A source's tracking plan: a file, or the same keys inline."""

    file: Path | None = Field(None, description="Plan file (YAML or JSON), relative to the config file.")
    events: dict[str, dict[str, Any] | None] | None = Field(
        None, description="Track event name -> JSON Schema of its properties (null: any properties).")
    identify: dict[str, Any] | None = Field(None, description="JSON Schema of identify traits.")
    group: dict[str, Any] | None = Field(None, description="JSON Schema of group traits.")
    unplanned_events: Action = Field("allow", description="Track events the plan does not name: allow, flag or block.")
    on_violation: Action = Field("flag", description="Events that break their schema: allow, flag or block.")

    @model_validator(mode="after")
    def _file_or_inline(self) -> TrackingPlanConfig:
        inline = self.events is not None or self.identify is not None or self.group is not None
        if self.file is not None and inline:
            raise ValueError("give either `file` or the plan inline (events/identify/group), not both")
        return self


def check_transform_spec(v: str | None) -> str | None:
    if v is not None and not TRANSFORM_SPEC.match(v):
        raise PydanticCustomError("transform_spec", "{spec} is not 'package.module:function'", {"spec": repr(v)})
    return v

