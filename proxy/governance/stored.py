"""The one place governance reads stored events (for ``trackrelay plan infer``): through the spool
port, as an operator (safe while a server runs)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

from proxy.spool import StoredEvent, open_spool


def iter_stored_events(config: Any, since: float | None = None) -> Iterator[dict[str, Any]]:
    """Events still in the spool, oldest first, each with ``_trackrelay.source``; only those
    received at or after ``since`` (epoch seconds) when given."""

    async def read() -> list[StoredEvent]:
        spool = open_spool(config.storage, role="admin")
        try:
            await spool.start()
        except FileNotFoundError:
            return []
        try:
            return await spool.events()
        finally:
            await spool.close()

    for stored in asyncio.run(read()):
        if since is not None and stored.received_at < since:
            continue
        yield {**stored.event, "_trackrelay": {"source": stored.source, "destinations": list(stored.destinations),
                                               "skipped": dict(stored.skipped)}}
