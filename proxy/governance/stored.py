"""The one place governance reads stored events (for ``trackrelay plan infer``).

Today a thin wrapper over the embedded spool's reader; the storage port will provide the real
iterator (by source and time, without loading everything), and only this function changes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from proxy.enrich import parse_ts


def iter_stored_events(config: Any, since: float | None = None) -> Iterator[dict[str, Any]]:
    """Events still in the spool, oldest first, each with ``_trackrelay.source``; only those
    received at or after ``since`` (epoch seconds) when given."""
    from proxy.spool.sqlite import DB_NAME, read_all_events

    if not (Path(config.storage.path) / DB_NAME).exists():
        return iter(())
    events = read_all_events(config.storage.path)

    def gen() -> Iterator[dict[str, Any]]:
        for event in events:
            if since is not None:
                received = parse_ts(event.get("receivedAt"))
                if received is None or received.timestamp() < since:
                    continue
            yield event
    return gen()
