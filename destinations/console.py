"""Console: write each event as one JSON line to stdout, for trying trackrelay out.

No HTTP API: the adapter describes a write to the ``stdout:`` pseudo-URL and the delivery engine's
stdout transport performs it (adapters never do I/O). Every call type is printed unchanged, one
JSON object per line; a batch becomes one write of newline-separated lines.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import Field

from destinations.base import Adapter, BatchLimits, Built, DestinationSettings, Message, Request


class Settings(DestinationSettings):
    type: Literal["console"] = Field("console", description="Adapter type.")
    stream: Literal["stdout", "stderr"] = Field("stdout", description="Which standard stream to write to.")

    example = {"type": "console"}


def build_requests(messages: Sequence[Message], settings: Settings) -> Built:
    if not messages:
        return Built()
    body = b"".join(m.json() + b"\n" for m in messages)
    return Built(requests=[Request("WRITE", f"{settings.stream}:", {}, body, tuple(range(len(messages))))])


ADAPTER = Adapter(
    type="console",
    settings=Settings,
    build_requests=build_requests,
    forwards_json=True,
    integration_names=("Console",),
    limits=BatchLimits(max_events=500, max_bytes=5_000_000),
    description="Print events as JSON lines on stdout.",
)
