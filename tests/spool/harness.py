"""The spool conformance suite's harness interface and registry. Every case in tests/spool/ runs
once per registered backend, through the ``harness`` fixture (tests/spool/conftest.py).

A backend joins the suite with a module ``tests/spool/harness_<name>.py`` that defines a
:class:`Harness` subclass decorated with :func:`register`. Import an optional engine lazily (in ``make``;
``unavailable`` says why it cannot run, e.g. no nats-server binary), so a missing engine skips that
backend's cases with a reason; an import error in a harness module itself breaks the suite, on
purpose (a bug must not read as a skip). The interface, which is all a case may use besides the port itself:

    class Harness:
        name: str                      # the backend's name, also the fixture's parameter id
        caveats: frozenset[str]        # documented deviations a case may consult (see CAVEATS)
        small_max_bytes: int           # a max_bytes the "full" case can fill with ~1 KB events
        def __init__(self, tmp_path: Path) -> None: ...   # one durable storage per test
        @classmethod
        def unavailable(cls) -> str | None: ...          # why the backend cannot run here, or None
        async def open(self, **settings) -> Spool: ...   # a new, started instance, role "main", on
                                                          # the same durable storage; after
                                                          # ``await spool.close()`` this is a restart.
                                                          # settings: max_bytes, dedup_window, retention
                                                          # (seconds), overriding the harness defaults
        async def crash(self, spool: Spool) -> None: ...  # abandon an instance without closing or
                                                          # settling (a SIGKILL); the next open() recovers
        async def cleanup(self) -> None: ...             # end of test: close what is still open

Settings are not sticky: each ``open`` gets the defaults plus what it is given.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from proxy.spool.base import Spool

CAVEATS = {
    # a backend listing one of these does not guarantee the figure exactly; cases relax that check
    "approximate_backlog": "DestinationStats.backlog is an estimate",
    "no_oldest_undelivered": "DestinationStats.oldest_undelivered may be None",
    "no_expedite": "expedite() cannot move retries forward (returns 0; they stay due when they were)",
}


class Harness:
    name = "?"
    caveats: frozenset[str] = frozenset()
    small_max_bytes = 256 * 1024
    defaults: dict[str, Any] = {}

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.opened: list[Spool] = []
        self.abandoned: list[Spool] = []

    @classmethod
    def unavailable(cls) -> str | None:
        return None

    async def open(self, **settings: Any) -> Spool:
        spool = self.make(**{**self.defaults, **settings})
        await spool.start()
        self.opened.append(spool)
        return spool

    def make(self, **settings: Any) -> Spool:
        """A new, not yet started instance on this harness's storage (for subclasses)."""
        raise NotImplementedError

    async def crash(self, spool: Spool) -> None:
        self.opened.remove(spool)
        self.abandoned.append(spool)

    async def close(self, spool: Spool) -> None:
        await spool.close()
        if spool in self.opened:
            self.opened.remove(spool)

    async def restart(self, spool: Spool, **settings: Any) -> Spool:
        await self.close(spool)
        return await self.open(**settings)

    async def cleanup(self) -> None:
        for spool in list(self.opened):
            await self.close(spool)


HARNESSES: dict[str, type[Harness]] = {}


def register(cls: type[Harness]) -> type[Harness]:
    HARNESSES[cls.name] = cls
    return cls


def load() -> dict[str, type[Harness]]:
    """Every backend's harness module (tests/spool/harness_<name>.py) imported, and the registry."""
    for path in sorted(Path(__file__).parent.glob("harness_*.py")):
        importlib.import_module(f"tests.spool.{path.stem}")
    return HARNESSES
