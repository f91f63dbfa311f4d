"""The configuration reference in README.md, generated from the pydantic models.

``trackrelay docs`` (``make docs``) rewrites every block between a pair of markers

    <!-- BEGIN GENERATED: <name> -->
    ...
    <!-- END GENERATED: <name> -->

with what :func:`blocks` renders: ``config-reference`` (every top-level section of ``Config``) and
``destination-<type>`` (each adapter's Settings). A field's name, type, default, whether it is
required, whether it is a secret (``SecretStr``) and its description come from the model, so the
descriptions are the user docs. ``trackrelay docs --check`` (and tests/test_docs.py) fail when
README.md differs from what this writes.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import AnyUrl, BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from destinations import registry
from proxy import config as cfg

MARKER = re.compile(r"(<!-- BEGIN GENERATED: (?P<name>[a-z0-9-]+) -->\n)(?P<body>.*?)"
                    r"(<!-- END GENERATED: (?P=name) -->)", re.DOTALL)
FIX = "run `make docs` (or `trackrelay docs`) and commit README.md"


_UNITS: dict[Callable[[Any], Any], str] = {
    cfg.parse_size: "size", cfg.parse_duration: "duration", cfg.parse_retry_window: "duration"}


def _units(validator: Callable[[Any], Any] | None) -> str | None:
    return _UNITS.get(validator) if validator is not None else None


def _unit_of(annotation: Any, metadata: list[Any]) -> str | None:
    for m in metadata:
        unit = _units(getattr(m, "func", None))
        if unit:
            return unit
    if typing.get_origin(annotation) is Annotated:
        return _unit_of(None, list(annotation.__metadata__))
    for arg in typing.get_args(annotation) if _is_union(annotation) else ():
        unit = _unit_of(arg, [])
        if unit:
            return unit
    return None


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (Union, types.UnionType)


def type_name(annotation: Any, metadata: list[Any] | None = None) -> str:
    """A field's type as the YAML writes it."""
    unit = _unit_of(annotation, metadata or [])
    if typing.get_origin(annotation) is Annotated:
        return unit or type_name(typing.get_args(annotation)[0])
    if _is_union(annotation):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        names = [type_name(a) for a in args]
        return " or ".join(dict.fromkeys(names))
    if unit:
        return unit
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return " \\| ".join(f"`{v}`" for v in typing.get_args(annotation))
    if origin in (list, tuple, set, frozenset):
        items = typing.get_args(annotation)
        return f"list of {type_name(items[0])}" if items else "list"
    if origin in (dict, typing.Mapping) or annotation is dict:
        kv = typing.get_args(annotation)
        return f"mapping of {type_name(kv[0])} to {type_name(kv[1])}" if kv else "mapping"
    if isinstance(annotation, type):
        if issubclass(annotation, SecretStr):
            return "string"
        if issubclass(annotation, BaseModel):
            return "mapping"
        if issubclass(annotation, AnyUrl):
            return "URL"
        if issubclass(annotation, bool):
            return "boolean"
        if issubclass(annotation, int):
            return "integer"
        if issubclass(annotation, float):
            return "number"
        if issubclass(annotation, str):
            return "string"
        if issubclass(annotation, Path):
            return "path"
    return "any"


def is_secret(annotation: Any) -> bool:
    if isinstance(annotation, type) and issubclass(annotation, SecretStr):
        return True
    return any(is_secret(a) for a in typing.get_args(annotation))


def _format_duration(seconds: float) -> str:
    if seconds == float("inf"):
        return "forever"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= max(size, 1 if unit != "d" else 2 * 86400) and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    if seconds < 1 and round(seconds * 1000, 6) == int(round(seconds * 1000, 6)):
        return f"{int(round(seconds * 1000))}ms"
    return f"{seconds:g}s"


def _format_size(n: int) -> str:
    for unit, size in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024),
                       ("TB", 1000**4), ("GB", 1000**3), ("MB", 1000**2), ("KB", 1000)):
        if n >= size and n % size == 0:
            return f"{n // size}{unit}"
    return str(n)


def yaml_value(value: Any, unit: str | None = None) -> str:
    """A default as the YAML would write it (sizes and durations with units)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if unit == "size" and isinstance(value, int):
        return _format_size(value)
    if unit == "duration" and isinstance(value, (int, float)):
        return _format_duration(float(value))
    if isinstance(value, Path):
        return str(value) if value.is_absolute() or str(value).startswith(".") else f"./{value}"
    if isinstance(value, BaseModel):
        return "{...}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(yaml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {yaml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str) and (value in ("", "*") or value[:1] in "{[&!%@`'\"" or ": " in value):
        return '"' + value + '"'
    return str(value)


def _default(info: FieldInfo) -> Any:
    if info.default is not PydanticUndefined:
        return info.default
    if info.default_factory is not None:
        return info.default_factory()  # type: ignore[call-arg]
    return PydanticUndefined


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _sub_model(annotation: Any) -> type[BaseModel] | None:
    """The model of a field holding one (possibly optional) nested mapping, else None."""
    if typing.get_origin(annotation) is Annotated:
        return _sub_model(typing.get_args(annotation)[0])
    if _is_union(annotation):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _sub_model(args[0]) if len(args) == 1 else None
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


HEADER = "| Key | Type | Default | Required | Secret | Description |\n|---|---|---|---|---|---|\n"


def rows(model: type[BaseModel], prefix: str = "", skip: tuple[str, ...] = (),
         expand: bool = True) -> list[str]:
    """Table rows of ``model``'s fields; nested models (``server.tls``) are listed after their
    field with dotted keys. A model derived with :func:`proxy.config.all_optional` is shown with
    the defaults of the model it came from."""
    defaults_model: type[BaseModel] = getattr(model, "__defaults_model__", model)
    out: list[str] = []
    for name, info in defaults_model.model_fields.items():
        if name in skip:
            continue
        unit = _unit_of(info.annotation, list(info.metadata))
        default = _default(info)
        required = info.is_required()
        sub = _sub_model(info.annotation) if expand else None
        if required:
            shown = "—"
        elif sub is not None and isinstance(default, BaseModel):
            shown = "see below"
        else:
            shown = f"`{yaml_value(default, unit)}`"
        description = info.description or ""
        out.append(f"| `{prefix}{name}` | {type_name(info.annotation, list(info.metadata))} | {shown} | "
                   f"{'yes' if required else ''} | {'yes' if is_secret(info.annotation) else ''} | "
                   f"{_cell(description)} |")
        if sub is not None:
            out.extend(rows(sub, f"{prefix}{name}.", expand=expand))
    return out


def table(model: type[BaseModel], **kw: Any) -> str:
    return HEADER + "\n".join(rows(model, **kw)) + "\n"


def _defaults_yaml() -> str:
    """The sections with defaults, as YAML: what a config that sets nothing means."""
    lines: list[str] = []

    def walk(model: type[BaseModel], indent: str) -> None:
        model = getattr(model, "__defaults_model__", model)
        for name, info in model.model_fields.items():
            default = _default(info)
            if default is PydanticUndefined:
                continue
            sub = _sub_model(info.annotation)
            if sub is not None and isinstance(default, BaseModel):
                lines.append(f"{indent}{name}:")
                walk(sub, indent + "  ")
            else:
                lines.append(f"{indent}{name}: {yaml_value(default, _unit_of(info.annotation, list(info.metadata)))}")

    for name in ("server", "storage", "limits", "delivery", "logging") + _extra_sections():
        lines.append(f"{name}:")
        walk(_section_model(name), "  ")
    return "\n".join(lines) + "\n"


_KNOWN = ("server", "storage", "limits", "sources", "delivery", "destinations", "logging")


def _extra_sections() -> tuple[str, ...]:
    """Top-level sections added since this was written (e.g. admin): documented the same way."""
    return tuple(n for n in cfg.Config.model_fields if n not in _KNOWN and _sub_model(
        cfg.Config.model_fields[n].annotation) is not None)


def _section_model(name: str) -> type[BaseModel]:
    if name == "storage":
        return cfg.EmbeddedStorage
    if name == "delivery":
        return cfg.EffectiveDelivery
    model = _sub_model(cfg.Config.model_fields[name].annotation)
    assert model is not None, name
    return model


# What the section's Config description does not say, before its table.
SECTION_NOTE = {
    "storage": "`engine: embedded` (the default) keeps them in files under `path`:",
    "delivery": "The defaults:",
    "sources": "Each entry:",
    "destinations": "Each entry:",
}


def config_reference() -> str:
    parts = ["Every key with its default (a file only needs `sources`, and `destinations` to send anywhere):\n",
             "```yaml\n" + _defaults_yaml() + "```\n"]
    for name in ("server", "storage", "limits", "delivery", "logging", "sources", "destinations") + _extra_sections():
        parts.append(f"#### `{name}`\n")
        info = cfg.Config.model_fields[name]
        intro = " ".join(x for x in (info.description, SECTION_NOTE.get(name)) if x)
        if intro:
            parts.append(intro + "\n")
        if name == "storage":
            parts.append(table(cfg.EmbeddedStorage))
            parts.append("\n`engine: jetstream` keeps them in a NATS JetStream cluster every instance shares "
                         "(see [Scaling out](#scaling-out)); the keys then are:\n")
            parts.append(table(cfg.JetStreamStorage))
        elif name == "sources":
            parts.append(table(cfg.SourceConfig, expand=False))
        elif name == "destinations":
            parts.append(table(cfg.DestinationConfig, expand=False))
        else:
            parts.append(table(_section_model(name)))
    return "\n".join(parts)


def destination_table(type_: str) -> str:
    adapter = registry.get(type_)
    return table(adapter.settings, prefix="", skip=("type",))


def blocks() -> dict[str, str]:
    out = {"config-reference": config_reference()}
    for adapter in registry.all_adapters():
        out[f"destination-{adapter.type}"] = destination_table(adapter.type)
    return out


def render(readme: str) -> str:
    """``readme`` with every generated block rewritten. Raises ValueError for a block the README
    lacks or one it has that nothing generates."""
    wanted = blocks()
    found = {m.group("name") for m in MARKER.finditer(readme)}
    missing = sorted(set(wanted) - found)
    unknown = sorted(found - set(wanted))
    if missing or unknown:
        raise ValueError(f"README.md markers: missing {missing or 'none'}, unknown {unknown or 'none'}; each "
                         "block is <!-- BEGIN GENERATED: name --> ... <!-- END GENERATED: name -->")
    return MARKER.sub(lambda m: m.group(1) + wanted[m.group("name")] + m.group(4), readme)


def write(path: Path, check: bool = False) -> bool:
    """Rewrite ``path``; with ``check`` only compare. True when it was already up to date."""
    text = path.read_text()
    new = render(text)
    if new == text:
        return True
    if not check:
        path.write_text(new)
    return False
