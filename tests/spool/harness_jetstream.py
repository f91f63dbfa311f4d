"""The JetStream backend in the conformance suite: one real 3-node nats-server cluster for the whole
test session (tests/spool/jetstream_cluster.py), each test on its own stream prefix (its own streams
and consumers, deleted at the end)."""

from __future__ import annotations

import asyncio
import atexit
import tempfile
import uuid
from pathlib import Path
from typing import Any

from proxy.config import JetStreamStorage
from proxy.spool.base import Spool
from tests.spool.harness import Harness, register
from tests.spool.jetstream_cluster import NatsCluster, nats_server_binary

ACK_WAIT = 1.0  # a crashed instance's leases come back after this (production default: 60 s)
_cluster: NatsCluster | None = None


def shared_cluster() -> NatsCluster:
    """The session's cluster, started on first use and stopped at exit."""
    global _cluster
    if _cluster is None:
        base = Path(tempfile.mkdtemp(prefix="trackrelay-nats-"))
        _cluster = NatsCluster(base)
        _cluster.start_all()
        atexit.register(_cluster.stop_all)
    return _cluster


def storage(urls: list[str], prefix: str, tmp_path: Path, **settings: Any) -> JetStreamStorage:
    js: dict[str, Any] = {"servers": urls, "stream": prefix, "replicas": 3, "ack_wait": ACK_WAIT,
                          "publish_timeout": 15.0}
    if "max_bytes" in settings:
        js["max_bytes"] = settings.pop("max_bytes")
    return JetStreamStorage(engine="jetstream", path=tmp_path / "data", jetstream=js, **settings)


@register
class JetStreamHarness(Harness):
    name = "jetstream"
    # backlog counts the items of records not yet acked (a partly settled record counts whole) and
    # estimates past 200 records unless exact; oldest_undelivered of retries is the first one in stream order
    caveats = frozenset({"approximate_backlog", "no_expedite"})
    small_max_bytes = 256 * 1024
    defaults = {"max_bytes": 64 * 1024 * 1024, "dedup_memory": 8 * 1024 * 1024}

    def __init__(self, tmp_path: Path) -> None:
        super().__init__(tmp_path)
        self.cluster = shared_cluster()
        self.prefix = "t" + uuid.uuid4().hex[:10]

    @classmethod
    def unavailable(cls) -> str | None:
        try:
            nats_server_binary()
        except RuntimeError as exc:
            return str(exc)
        return None

    def make(self, **settings: Any) -> Spool:
        from proxy.spool.jetstream import JetStreamSpool

        return JetStreamSpool(storage(self.cluster.urls, self.prefix, self.tmp_path, **settings), role="main")

    async def crash(self, spool: Spool) -> None:
        await spool._abandon()  # type: ignore[attr-defined]
        await super().crash(spool)
        await asyncio.sleep(ACK_WAIT + 0.5)  # the cluster hands the dead instance's leases out again

    async def cleanup(self) -> None:
        await super().cleanup()
        from proxy.spool.jetstream import JetStreamSpool

        admin = JetStreamSpool(storage(self.cluster.urls, self.prefix, self.tmp_path, **self.defaults), role="admin")
        await admin.start()
        try:
            await admin.delete_everything()
        finally:
            await admin.close()
