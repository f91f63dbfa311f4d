"""The memory backend in the conformance suite: one MemoryStore per test is its durable storage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from proxy.spool.base import Spool
from proxy.spool.memory import MemorySpool, MemoryStore
from tests.spool.harness import Harness, register


@register
class MemoryHarness(Harness):
    name = "memory"

    def __init__(self, tmp_path: Path) -> None:
        super().__init__(tmp_path)
        self.store = MemoryStore()

    def make(self, **settings: Any) -> Spool:
        return MemorySpool(self.store, **settings)
