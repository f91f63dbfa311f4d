"""Every destination type trackrelay knows. Adding a destination = one module + one line here."""

from __future__ import annotations

import importlib
from functools import cache
from typing import Any

from destinations.base import Adapter

# type -> module path. Keep sorted.
MODULES: dict[str, str] = {
    "amplitude": "destinations.amplitude",
    "console": "destinations.console",
    "customerio": "destinations.customerio",
    "ga4": "destinations.ga4",
    "journy": "destinations.journy",
    "mixpanel": "destinations.mixpanel",
    "posthog": "destinations.posthog",
    "segment": "destinations.segment",
    "userpilot": "destinations.userpilot",
    "usertour": "destinations.usertour",
    "webhook": "destinations.webhook",
}


@cache
def get(type_: str) -> Adapter[Any]:
    try:
        module = MODULES[type_]
    except KeyError:
        raise KeyError(f"unknown destination type {type_!r}; known: {', '.join(sorted(MODULES))}") from None
    adapter: Adapter[Any] = importlib.import_module(module).ADAPTER
    if adapter.type != type_:
        raise RuntimeError(f"{module} declares type {adapter.type!r}, registered as {type_!r}")
    return adapter


def all_adapters() -> list[Adapter[Any]]:
    return [get(t) for t in sorted(MODULES)]
