"""Config-load step for governance: compile tracking plans (inline or files) and import
transforms, reporting problems with their place (a plan file's own line, or the config key)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from proxy.governance.models import TRANSFORM_SPEC, TrackingPlanConfig
from proxy.governance.plans import PlanError, SourcePlan, TrackingPlan, read_plan_file
from proxy.governance.transform import TransformImportError, load_transform


@dataclass
class GovernanceProblem:
    loc: tuple[Any, ...]      # a path in the config, or in the plan file when ``file`` is set
    message: str
    file: str | None = None
    line: int | None = None


def load_governance(data: dict[str, Any], config: Any, base_dir: Path) -> list[GovernanceProblem]:
    """Check the raw config ``data`` (so problems are listed even when other parts are invalid)
    and attach the compiled plans and imported transforms to ``config`` when it is valid."""
    from proxy.config import _line_for

    problems: list[GovernanceProblem] = []
    raw_sources = data.get("sources")
    sources = raw_sources if isinstance(raw_sources, list) else []
    for i, src in enumerate(sources):
        if not isinstance(src, dict) or not isinstance(src.get("tracking_plan"), dict):
            continue
        loc = ("sources", i, "tracking_plan")
        raw = src["tracking_plan"]
        try:
            cfg: TrackingPlanConfig | None = TrackingPlanConfig.model_validate(raw)
        except ValidationError:
            cfg = None  # the Config model reports it; still check the plan itself
        file = raw.get("file")
        if isinstance(file, str) and file:
            path = Path(file) if Path(file).is_absolute() else base_dir / file
            try:
                plan_data, lines = read_plan_file(path)
            except OSError as exc:
                problems.append(GovernanceProblem(loc + ("file",),
                                                  f"cannot read the plan {str(path)!r}: {exc.strerror}"))
                continue
            except yaml.YAMLError as exc:
                mark = getattr(exc, "problem_mark", None)
                problems.append(GovernanceProblem((), f"invalid YAML: {getattr(exc, 'problem', None) or exc}",
                                                  str(path), mark.line + 1 if mark else None))
                continue
            try:
                plan = TrackingPlan(plan_data)
            except PlanError as exc:
                problems.append(GovernanceProblem(exc.loc, exc.message, str(path), _line_for(lines, exc.loc)))
                continue
        else:
            inline = {k: v for k, v in src["tracking_plan"].items() if k in ("events", "identify", "group")}
            try:
                plan = TrackingPlan(inline)
            except PlanError as exc:
                problems.append(GovernanceProblem(loc + exc.loc, exc.message))
                continue
        if config is not None and cfg is not None:
            target = config.sources[i]
            target._plan = SourcePlan(target.name, plan, cfg.unplanned_events, cfg.on_violation)

    raw_dests = data.get("destinations")
    dests = raw_dests if isinstance(raw_dests, list) else []
    for i, dest in enumerate(dests):
        if not isinstance(dest, dict) or not isinstance(dest.get("transform"), str):
            continue
        spec = dest["transform"]
        if not TRANSFORM_SPEC.match(spec):
            continue  # the Config model reports the format
        try:
            fn = load_transform(spec, base_dir)
        except TransformImportError as exc:
            problems.append(GovernanceProblem(("destinations", i, "transform"), str(exc)))
            continue
        if config is not None:
            config.destinations[i]._transform = fn
    return problems
