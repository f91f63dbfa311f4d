"""Shared helpers for the real-client tests (tests/test_sdk_*.py).

- python_sdk(version): segment-analytics-python pinned versions, each pip-installed into its own --target dir
  under .cache/sdk/ (gitignored, reused when present), so 2.3.x and 2.4.x never share an interpreter.
- ensure_node_modules(): tests/sdk/node_modules from the committed package-lock.json (npm ci) if missing.
- run_json(cmd, ...): run a driver script with a timeout, parse the JSON object it prints, fail with its output.
- wait_for_stored(tr, ids): poll the spool until every messageId is stored (no fixed sleeps).
- assert_enriched(...): the ingest enrichment rules every real client's events must satisfy once stored.
- PageServer: a static server on another port (another origin than trackrelay) for the browser test.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.fakes.base import FakeServer

ROOT = Path(__file__).resolve().parent.parent
SDK_DIR = ROOT / "tests" / "sdk"
NODE_MODULES = SDK_DIR / "node_modules"
CACHE_DIR = ROOT / ".cache" / "sdk"
CHROMIUM = os.environ.get("TRACKRELAY_CHROMIUM", "/usr/bin/chromium")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# The loopback address every local client connects from (context.ip for browser/direct traffic).
LOOPBACK_IP = "127.0.0.1"
# Fields no stored event may keep.
FORBIDDEN_STORED_FIELDS = ("writeKey",)


# --------------------------------------------------------------------------- waiting and running


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll predicate() until it returns something truthy; return it. Fail with `what` on timeout."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # keep polling, report the last error on timeout
            last_exc = exc
        if time.monotonic() >= deadline:
            extra = f" (last error: {last_exc!r})" if last_exc else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}{extra}")
        time.sleep(interval)


def run_json(cmd: list[str], *, timeout: float, env: dict[str, str] | None = None, cwd: Path = ROOT) -> dict:
    """Run a driver; it must exit 0 and print one JSON object as its last stdout line."""
    try:
        proc = subprocess.run(
            cmd, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(
            f"{cmd[:2]} timed out after {timeout}s\nstdout:\n{exc.stdout}\nstderr:\n{exc.stderr}"
        ) from None
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    if proc.returncode != 0 or not lines:
        raise AssertionError(
            f"{cmd[:2]} exited {proc.returncode}\nstdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
        )
    try:
        return json.loads(lines[-1])
    except json.JSONDecodeError:
        raise AssertionError(f"{cmd[:2]} printed no JSON result\nstdout:\n{proc.stdout[-4000:]}") from None


# --------------------------------------------------------------------------- installing the clients


def python_sdk(version: str) -> Path:
    """pip install segment-analytics-python==version into .cache/sdk/python-<version> (once) and return it."""
    target = CACHE_DIR / f"python-{version}"
    marker = target / ".trackrelay-installed"
    if marker.exists():
        return target
    if target.exists():
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-compile",
         "--target", str(target), f"segment-analytics-python=={version}"],
        capture_output=True, text=True, timeout=240,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"pip install segment-analytics-python=={version} failed:\n{proc.stdout}\n{proc.stderr}")
    marker.write_text(version + "\n")
    return target


def ensure_node_modules() -> Path:
    """tests/sdk/node_modules installed from the committed lockfile (make install-test normally did this)."""
    node = shutil.which("node")
    npm = shutil.which("npm")
    if not node or not npm:
        message = "node/npm not found on PATH"
        if IN_CI:
            pytest.fail(message + " (CI must run the real-client tests)")
        pytest.skip(message)
    wanted = ["analytics-node-3.0", "analytics-node-3.1", "analytics-next-1.84", "analytics-next-1.83",
              "playwright-core"]
    if not all((NODE_MODULES / name / "package.json").exists() for name in wanted):
        proc = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=SDK_DIR, capture_output=True, text=True, timeout=300,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"npm ci in tests/sdk failed:\n{proc.stdout}\n{proc.stderr}")
    return NODE_MODULES


def require_chromium() -> str:
    """Debian's chromium: missing means skip locally, but FAIL under CI (CI must run the browser test)."""
    if Path(CHROMIUM).exists():
        return CHROMIUM
    message = f"{CHROMIUM} not found (apt-get install chromium)"
    if IN_CI:
        pytest.fail(message + "; CI=true, so the browser test may not be skipped")
    pytest.skip(message)


# --------------------------------------------------------------------------- the spool


def parse_ts(value: Any) -> datetime:
    """ISO-8601 as the SDKs and trackrelay write it ('...Z', '+00:00', milli- or microseconds) -> aware UTC."""
    assert isinstance(value, str) and value, f"expected an ISO timestamp string, got {value!r}"
    dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    assert dt.tzinfo is not None, f"timestamp without a timezone: {value!r}"
    return dt.astimezone(UTC)


def wait_for_stored(tr: Any, message_ids: Iterable[str], timeout: float = 15.0) -> list[dict[str, Any]]:
    """Poll tr.spool_events() until every messageId in message_ids is stored; return ALL stored events."""
    wanted = set(message_ids)
    holder: dict[str, list[dict[str, Any]]] = {}

    def done() -> bool:
        events = tr.spool_events()
        holder["events"] = events
        return wanted <= {e.get("messageId") for e in events}

    try:
        wait_until(done, timeout, f"{len(wanted)} messageIds in the spool")
    except AssertionError:
        stored = {e.get("messageId") for e in holder.get("events", [])}
        missing = sorted(wanted - stored)
        raise AssertionError(
            f"{len(missing)}/{len(wanted)} sent events never stored, e.g. {missing[:5]}\n"
            f"server log tail:\n{tr.logs()[-3000:]}"
        ) from None
    return holder["events"]


def assert_stored_once(events: list[dict[str, Any]], message_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Every id stored exactly once; returns {messageId: stored event}."""
    counts = Counter(e.get("messageId") for e in events)
    ids = list(message_ids)
    assert len(ids) == len(set(ids)), "the client produced duplicate messageIds?!"
    wrong = {i: counts[i] for i in ids if counts[i] != 1}
    assert not wrong, f"events not stored exactly once (messageId -> times stored): {wrong}"
    return {e["messageId"]: e for e in events if e.get("messageId") in set(ids)}


def source_of(event: dict[str, Any]) -> Any:
    """The source name trackrelay recorded for a stored event (spool_events() attaches
    ``_trackrelay = {source, destinations, skipped}``); None if the store does not expose it."""
    meta = event.get("_trackrelay")
    if isinstance(meta, dict):
        return meta.get("source")
    return None


# Tolerance of the skew-correction check: trackrelay writes receivedAt and timestamp with millisecond
# precision (truncated), while the formula is evaluated on the full-precision server clock.
TIMESTAMP_TOLERANCE = timedelta(milliseconds=2)


def assert_enriched(
    stored: dict[str, Any],
    sent: dict[str, Any],
    *,
    ip: str,
    channel: str,
    source: str = "web",
    max_delay: timedelta = timedelta(seconds=60),
) -> None:
    """The enrichment rules of issue 2 for one event the client sent (`sent`) and trackrelay stored.

    - type and messageId as sent; ids, event/name, properties/traits and every context key kept
    - receivedAt: the server's clock, close to now; version 2; channel as given
    - originalTimestamp == the client's timestamp; sentAt recorded
    - timestamp == receivedAt - (sentAt - originalTimestamp)   (TIMESTAMP_TOLERANCE for ms rounding)
    - no writeKey in the stored event; the source name recorded
    - context.ip: a client-supplied one is kept as is; otherwise ip="peer" requires the loopback
      address (browser/direct traffic) and ip="absent" requires none (server-side SDK traffic)
    """
    mid = sent["messageId"]
    where = f"stored event {mid} ({sent.get('type')} {sent.get('event') or sent.get('name') or ''})"
    assert stored.get("messageId") == mid
    assert stored.get("type") == sent["type"], f"{where}: type {stored.get('type')!r} != sent {sent['type']!r}"
    for key in ("userId", "anonymousId", "event", "name", "category", "groupId", "previousId"):
        if sent.get(key) is not None:
            assert stored.get(key) == sent[key], f"{where}: {key} {stored.get(key)!r} != sent {sent[key]!r}"
    for key in ("properties", "traits"):
        if sent.get(key):
            assert stored.get(key) == sent[key], f"{where}: {key} changed: {stored.get(key)!r} != {sent[key]!r}"
    ctx = stored.get("context")
    assert isinstance(ctx, dict), f"{where}: no context object: {ctx!r}"
    for key, value in (sent.get("context") or {}).items():
        assert ctx.get(key) == value, f"{where}: context.{key} {ctx.get(key)!r} != sent {value!r}"

    for field in FORBIDDEN_STORED_FIELDS:
        assert field not in stored, f"{where}: stored event still carries {field!r}"
    assert source_of(stored) == source, f"{where}: recorded source {source_of(stored)!r}, expected {source!r}"
    assert stored.get("channel") == channel, f"{where}: channel {stored.get('channel')!r}, expected {channel!r}"
    assert stored.get("version") == 2, f"{where}: version {stored.get('version')!r}, expected 2"

    now = datetime.now(UTC)
    received = parse_ts(stored.get("receivedAt"))
    assert now - max_delay <= received <= now + timedelta(seconds=1), f"{where}: receivedAt {received} not near now"

    original = parse_ts(stored.get("originalTimestamp"))
    assert abs(original - parse_ts(sent["timestamp"])) < timedelta(milliseconds=1), (
        f"{where}: originalTimestamp {stored.get('originalTimestamp')!r} != client timestamp {sent['timestamp']!r}"
    )
    sent_at = parse_ts(stored.get("sentAt"))
    expected = received - (sent_at - original)
    got = parse_ts(stored.get("timestamp"))
    assert abs(got - expected) <= TIMESTAMP_TOLERANCE, (
        f"{where}: timestamp {stored.get('timestamp')!r} != receivedAt - (sentAt - originalTimestamp) = "
        f"{expected.isoformat()} (receivedAt {stored.get('receivedAt')}, sentAt {stored.get('sentAt')}, "
        f"originalTimestamp {stored.get('originalTimestamp')})"
    )

    sent_ip = (sent.get("context") or {}).get("ip")
    if sent_ip is not None:
        assert ctx.get("ip") == sent_ip, f"{where}: client-supplied context.ip overwritten: {ctx.get('ip')!r}"
    elif ip == "peer":
        assert ctx.get("ip") == LOOPBACK_IP, f"{where}: context.ip {ctx.get('ip')!r}, expected {LOOPBACK_IP!r}"
    elif ip == "absent":
        assert "ip" not in ctx, f"{where}: server-side event got context.ip {ctx.get('ip')!r}"
    else:
        raise ValueError(f"ip rule {ip!r}")


def assert_shared_received_at(stored: dict[str, dict[str, Any]], groups: Iterable[Iterable[str]]) -> None:
    """Events that came in one request (each group = the messageIds of one request) share one receivedAt,
    and that request's sentAt."""
    for group in groups:
        ids = list(group)
        received = {stored[i].get("receivedAt") for i in ids}
        assert len(received) == 1, f"one request's {len(ids)} events got different receivedAt values: {received}"
        sent_at = {stored[i].get("sentAt") for i in ids}
        assert len(sent_at) == 1, f"one request's {len(ids)} events got different sentAt values: {sent_at}"


def requests_by_sent_at(stored: Iterable[dict[str, Any]]) -> list[list[str]]:
    """Group stored events by the sentAt their request carried (a request's sentAt is unique per request for
    clients that write microseconds, like segment-analytics-python)."""
    groups: dict[str, list[str]] = defaultdict(list)
    for e in stored:
        groups[str(e.get("sentAt"))].append(e["messageId"])
    return list(groups.values())


# --------------------------------------------------------------------------- the browser page origin


class PageServer(FakeServer):
    """Serves tests/sdk/browser/page.html, /config.js and an analytics-next UMD dist at
    /analytics-next/bundles/ (where the bundle looks for its lazily loaded chunks) on its own port."""

    def __init__(self, umd_dir: Path, config: dict[str, Any]) -> None:
        self.umd_dir = umd_dir
        page_dir = SDK_DIR / "browser"
        app = web.Application()

        async def page(_: web.Request) -> web.Response:
            return web.Response(body=(page_dir / "page.html").read_bytes(), content_type="text/html")

        async def page_js(_: web.Request) -> web.Response:
            return web.Response(body=(page_dir / "page.js").read_bytes(), content_type="application/javascript")

        async def config_js(_: web.Request) -> web.Response:
            return web.Response(text=f"window.__CFG = {json.dumps(config)};", content_type="application/javascript")

        async def bundle(request: web.Request) -> web.StreamResponse:
            name = request.match_info["name"]
            path = (umd_dir / name).resolve()
            # blocking is fine here: the test page's own static files, one local browser
            if path.parent != umd_dir.resolve() or not path.is_file():  # noqa: ASYNC240
                raise web.HTTPNotFound()
            return web.Response(body=path.read_bytes(), content_type="application/javascript")

        app.router.add_get("/", page)
        app.router.add_get("/page.js", page_js)
        app.router.add_get("/config.js", config_js)
        app.router.add_get("/analytics-next/bundles/{name}", bundle)
        super().__init__(app)

    def bundle_requests(self) -> list[str]:
        return [r.path for r in self.snapshot() if r.path.startswith("/analytics-next/bundles/")]
