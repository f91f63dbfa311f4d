"""Fixtures of the spool conformance suite: ``harness`` runs each case once per registered backend
(tests/spool/harness.py has the interface and the registry)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.spool.harness import Harness, load

HARNESSES = load()


@pytest.fixture(params=sorted(HARNESSES))
async def harness(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Harness]:
    cls = HARNESSES[request.param]
    reason = cls.unavailable()
    if reason:
        pytest.skip(f"{cls.name} backend unavailable: {reason}")
    h = cls(tmp_path)
    try:
        yield h
    finally:
        await h.cleanup()
