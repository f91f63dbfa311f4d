"""Building requests the way ingest does, and leasing/settling in a few words, for the cases."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from proxy.spool.base import Append, Disposition, Item, Route, Settlement, Spool, Work, dedup_hash

BIG = 1 << 30


def ev(mid: str | None, **fields: Any) -> dict[str, Any]:
    """A track event with ``messageId`` ``mid`` (none when None: ingest generates one)."""
    event: dict[str, Any] = {"type": "track", "event": "Clicked", "userId": "u1", "properties": {"n": 1}}
    if mid is not None:
        event["messageId"] = mid
    event.update(fields)
    return event


def req(*events: dict[str, Any], source: str = "web", dests: Sequence[str] = ("A",),
        routes: Sequence[Route] | None = None, route_of: Sequence[int] | None = None,
        received_at: float | None = None, **fields: Any) -> Append:
    """An Append as ingest builds it: raw JSON per item, dedup hash of (source, messageId), a route
    per item (``route_of[i]`` indexes ``routes``; default: one route to ``dests``), and a generated
    messageId (``api-<uuid>``) for an item sent without one."""
    routes = list(routes) if routes is not None else [Route(tuple(dests))]
    items = []
    for i, event in enumerate(events):
        mid = event.get("messageId")
        generated = None
        if not mid:
            generated = mid = f"api-{uuid.uuid4()}"
        items.append(Item(orjson.dumps(event), dedup_hash(source, mid), route_of[i] if route_of else 0, i, generated))
    return Append(source=source, key_index=0, received_at=time.time() if received_at is None else received_at,
                  items=items, routes=routes, **fields)


async def lease_all(spool: Spool, dest: str, *, new: bool = True, max_events: int = 10_000) -> list[Work]:
    return await spool.lease(dest, max_events, BIG, new=new)


def mids(works: Iterable[Work]) -> list[str | None]:
    return [w.message_id for w in works]


async def settle(spool: Spool, dest: str, works: Iterable[Work], disposition: Disposition = Disposition.DELIVERED,
                 **fields: Any) -> None:
    await spool.settle(dest, [Settlement(w, disposition, **fields) for w in works])


async def deliver_all(spool: Spool, dest: str) -> list[str | None]:
    """Lease and deliver until nothing is due; the message ids delivered, in lease order."""
    out: list[str | None] = []
    while works := await lease_all(spool, dest):
        out += mids(works)
        await settle(spool, dest, works)
    return out
