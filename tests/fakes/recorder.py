"""A recording HTTP receiver with scripted answers, for delivery tests.

    rec = Recorder()                     # answers 200 by default
    rec.script = [503, 503]              # the next answers, then the default
    rec.default = (400, {}, b'{"error":"bad"}')
    rec.delay = 0.05                     # seconds before answering
    rec.blackhole = True                 # accept and never answer
    rec.answer = lambda body: 400 or None  # an answer chosen from the parsed body (None: as above)
    rec.max_body = 2048                  # a receiver's body limit: larger requests get 413 (rec.too_large)
    with FakeServer(rec.app()) as server: ...
    rec.delivered()                      # events of requests answered 2xx, in order
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web

Answer = int | tuple[int, dict[str, str], bytes]


class Recorder:
    def __init__(self) -> None:
        self.script: list[Answer] = []
        self.default: Answer = 200
        self.delay = 0.0
        self.blackhole = False
        self.answer: Any = None
        self.max_body: int | None = None
        self.too_large: list[int] = []  # sizes of the bodies refused with 413 for max_body
        self.log: list[tuple[float, int, Any]] = []  # (loop time, status answered, parsed body)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=50 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.blackhole:
            await asyncio.sleep(3600)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.max_body is not None and len(body) > self.max_body:
            self.too_large.append(len(body))
            return web.Response(status=413, text="request body too large")
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            parsed = body
        chosen = self.answer(parsed) if self.answer is not None else None
        answer = chosen if chosen is not None else (self.script.pop(0) if self.script else self.default)
        status, headers, payload = (answer, {}, b"") if isinstance(answer, int) else answer
        self.log.append((asyncio.get_running_loop().time(), status, parsed))
        return web.Response(status=status, headers=headers, body=payload)

    def delivered(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for _, status, body in list(self.log):
            if 200 <= status < 300:
                out.extend(body if isinstance(body, list) else [body])
        return out

    def delivered_ids(self) -> list[str]:
        return [e["messageId"] for e in self.delivered()]
