"""The embedded backend in the conformance suite: one spool directory per test is its durable storage;
a crash drops the instance as SIGKILL would (threads stopped, files closed, nothing saved or synced)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from proxy.spool.base import Spool
from tests.spool.harness import Harness, register


@register
class EmbeddedHarness(Harness):
    name = "embedded"
    caveats = frozenset({"approximate_backlog"})

    def __init__(self, tmp_path: Path) -> None:
        super().__init__(tmp_path)
        self.path = tmp_path / "spool"

    def make(self, **settings: Any) -> Spool:
        from proxy.config import EmbeddedStorage
        from proxy.spool.embedded import EmbeddedSpool

        return EmbeddedSpool(EmbeddedStorage(path=self.path, **settings), role="main")

    async def crash(self, spool: Spool) -> None:
        await super().crash(spool)
        s: Any = spool
        if s._thread is not None:  # the writer finishes what it holds, as the kernel finishes a write()
            s._queue.put(None)
            s._thread.join()
        s._closed = True
        for part in (s.log, s.state, s.index):
            if part is not None:
                part.close()
        if s.journal is not None and s.journal._fd is not None:
            os.close(s.journal._fd)  # not synced
        os.close(s._instance_fd)  # the kernel drops the lock of a dead process
