"""A trackrelay-like process on the JetStream spool, for the failure tests: appends batches of
events as fast as the spool takes them and writes every acknowledged messageId to a file (one per
line, flushed after each PubAck), until SIGTERM; or (``--drain``) leases and delivers everything
for destination A, writing every leased messageId.

    python -m tests.spool.jetstream_driver append PREFIX OUT URL... [--name N]
    python -m tests.spool.jetstream_driver drain PREFIX OUT URL...
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

from proxy.spool.base import SpoolFull, SpoolUnavailable
from tests.spool.harness_jetstream import storage
from tests.spool.support import deliver_all, ev, req


async def _append(prefix: str, out: Path, urls: list[str], name: str) -> None:
    from proxy.spool.jetstream import JetStreamSpool

    spool = JetStreamSpool(storage(urls, prefix, out.parent, max_bytes=512 * 1024 * 1024,
                                   dedup_memory=8 * 1024 * 1024), role="ingest")
    await spool.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    n = 0
    with out.open("a") as f:
        async def one(i: int) -> None:
            ids = [f"{name}-{i}-{k}" for k in range(10)]
            try:
                await spool.append(req(*(ev(m) for m in ids)))
            except (SpoolUnavailable, SpoolFull):
                return  # answered 503/429: the client sends it again later, nothing was acknowledged
            f.write("\n".join(ids) + "\n")
            f.flush()

        while not stop.is_set():
            await asyncio.gather(*(one(n + j) for j in range(8)))
            n += 8
    await spool.close()


async def _drain(prefix: str, out: Path, urls: list[str]) -> None:
    from proxy.spool.jetstream import JetStreamSpool

    spool = JetStreamSpool(storage(urls, prefix, out.parent, max_bytes=512 * 1024 * 1024,
                                   dedup_memory=8 * 1024 * 1024), role="main")
    await spool.start()
    await spool.attach(["A"])
    with out.open("a") as f:
        idle = 0
        while idle < 3:
            got = await deliver_all(spool, "A")
            f.write("".join(f"{m}\n" for m in got))
            idle = 0 if got else idle + 1
            await asyncio.sleep(0.3)
    await spool.close()


def main() -> None:
    mode, prefix, out, *rest = sys.argv[1:]
    name = "p"
    if "--name" in rest:
        i = rest.index("--name")
        name = rest[i + 1]
        rest = rest[:i] + rest[i + 2:]
    if mode == "append":
        asyncio.run(_append(prefix, Path(out), rest, name))
    else:
        asyncio.run(_drain(prefix, Path(out), rest))


if __name__ == "__main__":
    main()
