"""The durable spool behind one port (proxy/spool/base.py). ``open_spool`` picks the backend from
``storage.engine``; nothing outside this package knows how events are stored."""

from __future__ import annotations

from typing import Any

from proxy.spool.base import (
    Append,
    AppendResult,
    DeadLetter,
    DeadQuery,
    Disposition,
    Item,
    Refusal,
    Route,
    Settlement,
    Spool,
    SpoolBusy,
    SpoolFull,
    SpoolRefused,
    SpoolUnavailable,
    Stats,
    StoredEvent,
    Work,
    dedup_hash,
    dedup_key,
    dedup_prefix,
)

__all__ = [
    "Append", "AppendResult", "DeadLetter", "DeadQuery", "Disposition", "Item", "Refusal", "Route",
    "Settlement", "Spool", "SpoolBusy", "SpoolFull", "SpoolRefused", "SpoolUnavailable", "Stats", "StoredEvent", "Work",
    "dedup_hash", "dedup_key", "dedup_prefix",
    "open_spool", "upgrade",
]


def open_spool(storage: Any, *, role: str = "main") -> Spool:
    """The backend ``storage.engine`` names, for ``role`` "main", "ingest" or "admin" (see Spool)."""
    engine = getattr(storage, "engine", "embedded")
    if engine == "embedded":
        from proxy.spool.embedded import EmbeddedSpool

        return EmbeddedSpool(storage, role=role)
    if engine == "jetstream":
        from proxy.spool.jetstream import JetStreamSpool

        return JetStreamSpool(storage, role=role)
    raise ValueError(f"unknown storage engine {engine!r}")


def upgrade(storage: Any) -> dict[str, int] | None:
    """Convert a spool written by an older release to this one's layout, if it needs it (the
    server does this itself at start); the counts of what was converted, or None."""
    if getattr(storage, "engine", "embedded") != "embedded":
        return None
    from pathlib import Path

    from proxy.spool.embedded import EmbeddedSpool, migrate

    if not migrate.needed(Path(storage.path)):
        return None
    spool = EmbeddedSpool(storage, role="admin")
    spool.claim_for_upgrade()
    try:
        return migrate.migrate(Path(storage.path), storage)
    finally:
        spool.release()
