"""A real trackrelay server with the operator console enabled, a GA4 contract fake and a webhook
receiver (tests/fakes/recorder.py) that can be told to refuse, plus small HTTP helpers."""

from __future__ import annotations

import base64
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson

from tests.fakes import ga4
from tests.fakes.base import FakeServer, free_port
from tests.fakes.recorder import Recorder
from tests.helpers import WRITE_KEY, TrackRelay

ADMIN_TOKEN = "admin-token-for-tests-0123456789"
GA4_SECRET = "mp-secret-value-1"
HOOK_SECRET = "hook-signing-secret-42"
HOOK_HEADER = "hook-header-credential-77"
SECRETS = {"write key": WRITE_KEY, "GA4 api_secret": GA4_SECRET, "webhook shared secret": HOOK_SECRET,
           "webhook header": HOOK_HEADER, "admin token": ADMIN_TOKEN,
           "write key, base64": base64.b64encode(f"{WRITE_KEY}:".encode()).decode().rstrip("=")}


class Console:
    def __init__(self, tr: TrackRelay, port: int, ga4: FakeServer, hook: Recorder) -> None:
        self.tr = tr
        self.port = port
        self.ga4 = ga4
        self.hook = hook

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def call(self, method: str, path: str, body: Any = None, *, token: str | None = ADMIN_TOKEN,
             headers: dict[str, str] | None = None, base: str | None = None) -> tuple[int, bytes, dict[str, str]]:
        hdrs = dict(headers or {})
        if token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else orjson.dumps(body)
            hdrs.setdefault("Content-Type", "application/json")
        req = urllib.request.Request((base or self.url) + path, data=data, headers=hdrs, method=method)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, r.read(), dict(r.headers)
        except urllib.error.HTTPError as e:
            return e.code, e.read(), dict(e.headers)

    def json(self, method: str, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
        status, raw, _ = self.call(method, path, body, **kw)
        return status, orjson.loads(raw) if raw else None

    def wait(self, predicate, timeout: float = 20.0, what: str = "condition"):  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}\n{self.tr.logs()[-3000:]}")
            time.sleep(0.1)

    def trace(self, message_id: str) -> dict[str, Any] | None:
        status, data = self.json("GET", f"/api/trace/{message_id}")
        return data if status == 200 else None


@contextmanager
def console_server(tmp_path, **admin: Any) -> Iterator[Console]:
    hook = Recorder()
    with FakeServer(ga4.make_app(api_secret=GA4_SECRET)) as ga4_fake, FakeServer(hook.app()) as hook_server:
        port = free_port()
        destinations = [
            {"name": "ga4", "type": "ga4", "settings": {"measurement_id": "G-ABC123XYZ", "api_secret": GA4_SECRET,
                                                        "endpoint": ga4_fake.url}},
            {"name": "hook", "type": "webhook",
             "settings": {"url": hook_server.url + "/events", "shared_secret": HOOK_SECRET,
                          "headers": {"X-Api-Credential": HOOK_HEADER, "X-Plain": f"v={HOOK_HEADER}"}},
             # a refusal (4xx) dead-letters at once; short flush so tests move quickly
             "delivery": {"flush_interval": "50ms"}},
        ]
        with TrackRelay(tmp_path, destinations=destinations, delivery={"flush_interval": "50ms"},
                        extra={"admin": {"host": "127.0.0.1", "port": port, "token": ADMIN_TOKEN, **admin}}) as tr:
            console = Console(tr, port, ga4_fake, hook)
            console.wait(lambda: console.call("GET", "/api/info")[0] == 200, 10, "the console listener")
            yield console
