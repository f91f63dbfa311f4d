"""Run an aiohttp app on 127.0.0.1 in a background thread, recording every request.

Works from sync tests and from tests that drive a trackrelay subprocess alike:

    fake = FakeServer(make_app()).start()   # or: with FakeServer(app) as fake:
    fake.url            # "http://127.0.0.1:PORT"
    fake.requests       # list[Recorded] in arrival order (all requests, accepted or not)
    fake.wait_for(lambda reqs: len(reqs) >= 3, timeout=10)
"""

from __future__ import annotations

import asyncio
import gzip
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from destinations.base import Request, Response


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    status: int = 0
    at: float = field(default_factory=time.monotonic)

    def json(self) -> Any:
        data = self.body
        if self.headers.get("Content-Encoding", "").lower() == "gzip":
            data = gzip.decompress(data)
        return orjson.loads(data)


FAKE_KEY: web.AppKey = web.AppKey("fake", object)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakeServer:
    def __init__(self, app: web.Application, port: int | None = None) -> None:
        self.app = app
        self.port = port or free_port()
        self.requests: list[Recorded] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._ready = threading.Event()
        app.middlewares.insert(0, self._record)
        app[FAKE_KEY] = self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @web.middleware
    async def _record(self, request: web.Request, handler: Callable) -> web.StreamResponse:
        body = await request.read()
        rec = Recorded(request.method, request.path, dict(request.query), dict(request.headers), body)
        with self._lock:
            self.requests.append(rec)
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            rec.status = exc.status
            raise
        rec.status = response.status
        return response

    def start(self) -> FakeServer:
        self._thread = threading.Thread(target=self._run, name=f"fake:{self.port}", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fake server did not start")
        return self

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        self._runner = web.AppRunner(self.app, access_log=None)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        self._loop.run_until_complete(site.start())
        self._ready.set()
        self._loop.run_forever()
        # handlers still waiting (a black-holed request) are cancelled, not left pending
        pending = asyncio.all_tasks(self._loop)
        for task in pending:
            task.cancel()
        self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()

    def stop(self) -> None:
        if self._loop and self._thread:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def __enter__(self) -> FakeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def snapshot(self) -> list[Recorded]:
        with self._lock:
            return list(self.requests)

    def wait_for(self, predicate: Callable[[list[Recorded]], bool], timeout: float = 20.0) -> list[Recorded]:
        deadline = time.monotonic() + timeout
        while True:
            snap = self.snapshot()
            if predicate(snap):
                return snap
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not met within {timeout}s; {len(snap)} requests recorded")
            time.sleep(0.05)


def json_error(status: int, payload: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(payload), content_type="application/json", headers=headers)


def send(request: Request, url: str | None = None) -> Response:
    """Send a built request as it is, to ``url`` (default: its own URL), and return the answer as a
    delivery worker would see it (error statuses included). Like delivery, it stamps the send time
    into requests that carry destinations.base.SENT_AT."""
    from destinations.base import at_send_time

    request = at_send_time(request, time.time())
    http = urllib.request.Request(url or request.url, data=request.body, headers=dict(request.headers),
                                  method=request.method)
    try:
        with urllib.request.urlopen(http, timeout=10) as r:
            return Response(r.status, dict(r.headers), r.read())
    except urllib.error.HTTPError as e:
        return Response(e.code, dict(e.headers), e.read())
