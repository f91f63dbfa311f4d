"""The aiohttp application: routes, CORS and error middlewares, startup and shutdown.

Every response, errors included, carries CORS headers (a browser that cannot read a response
re-sends the event), and every error is JSON ``{"success": false, "code", "message"}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from urllib.parse import urlsplit

import orjson
import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from proxy.config import Config
from proxy.delivery.engine import DeliveryEngine
from proxy.ingest import Ingest, error
from proxy.metrics import METRICS
from proxy.routing import Router
from proxy.server import BodyTimeout
from proxy.spool import Spool, open_spool
from proxy.workers import Supervisor, commit_notifier

log = structlog.get_logger("trackrelay.app")

SPOOL = web.AppKey("spool", Spool)
SUPERVISOR = web.AppKey("supervisor", Supervisor)
ENGINE = web.AppKey("engine", DeliveryEngine)
INGEST = web.AppKey("ingest", Ingest)
CONFIG = web.AppKey("config", Config)

# the request headers Segment's browser clients send (analytics-next 1.84+: Authorization, and
# X-Retry-Count on retries); server.cors_allow_headers adds more
ALLOW_HEADERS = ("Content-Type", "Authorization", "X-Retry-Count")
EXPOSE_HEADERS = "Retry-After, X-RateLimit-Reset"


def cors_headers(config: Config, request: web.Request) -> dict[str, str]:
    """The origin is echoed when allowed. Access-Control-Allow-Credentials only for an origin
    listed by name: "*" lets any page send events, but never with the browser's credentials
    (Segment's clients send none)."""
    origins = config.server.cors_origins
    origin = request.headers.get("Origin")
    headers = {"Access-Control-Expose-Headers": EXPOSE_HEADERS}
    if origin and origin in origins:
        headers["Access-Control-Allow-Origin"] = origin
        headers["Access-Control-Allow-Credentials"] = "true"
        headers["Vary"] = "Origin"
    elif origin and "*" in origins:
        headers["Access-Control-Allow-Origin"] = origin
        headers["Vary"] = "Origin"
    elif "*" in origins:
        headers["Access-Control-Allow-Origin"] = "*"
    return headers


class Admission:
    """The ingest requests a process is handling now, bounded by server.max_inflight_requests.
    The gauge is published by the maintenance tick and at each scrape, not per request."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.inflight = 0

    def publish(self) -> None:
        METRICS.inflight_requests.set(self.inflight)


ADMISSION = web.AppKey("admission", Admission)


def make_middlewares(config: Config, admission: Admission) -> list:
    retry_after = str(config.server.overload_retry_after)
    limit = admission.limit

    @web.middleware
    async def ingress(request: web.Request, handler) -> web.StreamResponse:
        """CORS, every error as our JSON, and admission: at most server.max_inflight_requests
        ingest requests at once (per process); beyond it, 429 with Retry-After at once, so SDKs
        back off instead of queueing behind the spool. (One middleware: each costs per request.)"""
        try:
            method = request.method
            if method == "OPTIONS":
                response: web.StreamResponse = preflight(config, request)
            elif limit and method == "POST" and request.path.startswith("/v1/"):
                if admission.inflight >= limit:
                    METRICS.requests_rejected.labels("overloaded").inc()
                    response = error(429, "overloaded", "the server is busy; retry later",
                                     headers={"Retry-After": retry_after, "X-RateLimit-Reset": retry_after})
                else:
                    admission.inflight += 1
                    try:
                        response = await handler(request)
                    finally:
                        admission.inflight -= 1
            else:
                response = await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            code = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(exc.status, "http_error")
            status = 400 if exc.status == 413 else exc.status
            response = error(status, code, exc.reason or "error")
        except (asyncio.CancelledError, KeyboardInterrupt):
            raise
        except BodyTimeout as exc:  # proxy.server: the body did not arrive in time
            METRICS.requests_rejected.labels("request_timeout").inc()
            log.info("request_timeout", path=request.path, timeout=exc.seconds)
            response = error(408, "request_timeout", str(exc))
            response.force_close()
        except ConnectionError:  # the client went away: not an error of ours, nobody reads an answer
            METRICS.client_disconnects.inc()
            log.debug("client_disconnected", path=request.path)
            response = error(400, "client_disconnected", "the client closed the connection")
            response.force_close()
        except web.RequestPayloadError as exc:  # malformed chunked body; its text quotes the body
            METRICS.requests_rejected.labels("invalid_body").inc()
            log.info("request_rejected", code="invalid_body", error=type(exc.__cause__ or exc).__name__,
                     path=request.path)
            response = error(400, "invalid_body", "the request body is malformed (transfer encoding)")
            response.force_close()
        except Exception as exc:  # ours, never the client's fault
            log.exception("unhandled_error", path=request.path, error=repr(exc))
            response = error(500, "internal_error", "internal error")
        for k, v in cors_headers(config, request).items():
            if k == "Vary" and "Vary" in response.headers:
                response.headers["Vary"] = f"{response.headers['Vary']}, {v}"
            else:
                response.headers.setdefault(k, v)
        return response

    return [ingress]


def preflight(config: Config, request: web.Request) -> web.Response:
    """Allows the headers Segment's clients send (and server.cors_allow_headers), whatever the
    browser asks for: a requested header outside the list is not allowed (Cookie never is)."""
    allow = list(ALLOW_HEADERS) + [h for h in config.server.cors_allow_headers
                                   if h.lower() not in (a.lower() for a in ALLOW_HEADERS)]
    return web.Response(status=204, headers={
        "Access-Control-Allow-Methods": "POST, GET, OPTIONS",
        "Access-Control-Allow-Headers": ", ".join(allow),
        "Access-Control-Max-Age": "86400",
    })


_LOOPBACK = ("127.0.0.1", "::1", "localhost", "0.0.0.0", "::")


def settings_hosts(config: Config) -> list[tuple[str, int | None]]:
    """The (hostname, port or None for any) pairs the settings endpoint accepts in Host without
    public_url: server.allowed_hosts, or else the listen address (and, listening on loopback or
    on every address, the loopback names) with the listen port."""
    if config.server.allowed_hosts:
        return [_split_host(h) or (h, None) for h in config.server.allowed_hosts]
    host, port = config.server.host.lower(), config.server.port
    names = {host.strip("[]")}
    if host.strip("[]") in _LOOPBACK:
        names |= {"127.0.0.1", "::1", "localhost"}
    return [(n, port) for n in sorted(names)]


def _split_host(value: str) -> tuple[str, int | None] | None:
    try:
        parts = urlsplit("//" + value)
        return (parts.hostname or "", parts.port)
    except ValueError:
        return None


async def settings_handler(request: web.Request) -> web.Response:
    config = request.app[CONFIG]
    ingest = request.app[INGEST]
    key = request.match_info["write_key"]
    if key not in ingest.keys:
        return error(404, "not_found", "unknown write key")
    if config.server.public_url:
        parts = urlsplit(config.server.public_url)
        protocol, host = parts.scheme or "https", parts.netloc + parts.path.rstrip("/")
    else:
        protocol = request.scheme
        if ingest.is_trusted(request.remote) and request.headers.get("X-Forwarded-Proto"):
            protocol = request.headers["X-Forwarded-Proto"].split(",")[0].strip()
        # the answer is cacheable: a Host an attacker chose must not end up in a shared cache
        host = request.headers.get("Host", "").strip().lower()
        given = _split_host(host)
        if not given or not any(given[0] == name and (port is None or given[1] == port)
                                for name, port in settings_hosts(config)):
            METRICS.requests_rejected.labels("host_not_allowed").inc()
            return error(400, "host_not_allowed", "this Host is not in server.allowed_hosts; "
                         "set server.public_url or server.allowed_hosts",
                         headers={"Vary": "Host", "Cache-Control": "no-store"})
    api_host = host + "/v1"
    body = {
        "integrations": {
            "Segment.io": {
                "apiKey": key,
                "apiHost": api_host,
                "protocol": protocol,
                "unbundledIntegrations": [],
                "addBundledMetadata": True,
                "maybeBundledConfigIds": {},
                "versionSettings": {"version": "4.4.7", "componentTypes": ["browser"]},
            }
        },
        "plan": {"track": {"__default": {"enabled": True, "integrations": {}}},
                 "identify": {"__default": {"enabled": True}},
                 "group": {"__default": {"enabled": True}}},
        "edgeFunction": {},
        "analyticsNextEnabled": True,
        "middlewareSettings": {},
        "enabledMiddleware": {},
        "metrics": {"sampleRate": 0, "host": api_host},
        "legacyVideoPluginsEnabled": False,
        "remotePlugins": [],
    }
    return web.Response(body=orjson.dumps(body), content_type="application/json",
                        headers={"Cache-Control": "public, max-age=60", "Vary": "Host"})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    spool = request.app[SPOOL]
    engine = request.app.get(ENGINE)
    problems = spool.problems()  # e.g. the last commit failed (disk full): ingest cannot take events
    if engine is not None:
        problems += engine.problems()
    if SUPERVISOR in request.app:
        problems += request.app[SUPERVISOR].problems()
    if problems:
        return web.json_response({"status": "not ready", "problems": problems}, status=503)
    return web.json_response({"status": "ready", "spool_full": spool.refusal() is not None})


async def update_gauges(app: web.Application) -> None:
    app[ADMISSION].publish()
    spool, engine = app[SPOOL], app.get(ENGINE)
    if engine is None:
        return
    stats = await spool.stats(engine.active_destinations())
    METRICS.spool_bytes.set(stats.bytes)
    for name in engine.active_destinations():
        d = stats.destinations.get(name)
        if d is not None:
            METRICS.backlog.labels(name).set(d.backlog)
            METRICS.retry_queue.labels(name).set(d.retries)
    window = stats.extra.get("dedup_window_seconds")
    if window is not None:
        METRICS.dedup_window.set(window)


async def metrics_handler(request: web.Request) -> web.Response:
    await update_gauges(request.app)
    return web.Response(body=METRICS.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})


def create_metrics_app(main: web.Application) -> web.Application:
    """GET /metrics alone, for server.metrics_listen (the main app then has no /metrics)."""
    metrics_app = web.Application()

    async def handler(request: web.Request) -> web.Response:
        await update_gauges(main)
        return web.Response(body=METRICS.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    metrics_app.router.add_get("/metrics", handler)
    return metrics_app


async def maintenance(app: web.Application) -> None:
    """Every second: the spool frees what every destination has settled and refreshes its size
    (an ingest worker re-reads it so it answers 429 when the spool is full); every 5 s the delivery
    process refreshes the gauges (a scrape may reach an ingest worker, which only reads them)."""
    spool, engine = app[SPOOL], app.get(ENGINE)
    ticks = 0
    while True:
        await asyncio.sleep(1.0)
        ticks += 1
        try:
            app[ADMISSION].publish()
            await spool.maintain(engine.active_destinations() if engine is not None else [])
            if engine is not None and ticks % 5 == 0:
                await update_gauges(app)
        except Exception as exc:
            log.error("maintenance_failed", error=repr(exc))


def create_app(config: Config, *, role: str = "main", config_path: str | None = None,
               sock: socket.socket | None = None, notify_fd: int | None = None) -> web.Application:
    """The server. ``role`` "main" runs ingest, delivery and maintenance, and with
    ``server.workers`` > 1 (given ``config_path`` and the listening ``sock``) starts and watches
    the ingest workers; "ingest" is such a worker: ingest only, reporting commits on ``notify_fd``."""
    limit = config.limits.max_request_bytes
    # Bodies are decompressed by ingest itself, with a cap, so a gzip bomb is refused cheaply.
    admission = Admission(config.server.max_inflight_requests)
    app = web.Application(middlewares=make_middlewares(config, admission), client_max_size=limit + limit // 10 + 1024,
                          handler_args={"auto_decompress": False})
    app[CONFIG] = config
    app[ADMISSION] = admission
    spool = open_spool(config.storage, role=role)
    if notify_fd is not None:
        spool.on_commit = commit_notifier(notify_fd)
    app[SPOOL] = spool
    app[INGEST] = ingest = Ingest(config, spool, Router(config.destinations))
    engine = None
    if role == "main":
        app[ENGINE] = engine = DeliveryEngine(config, spool)
    supervisor = None
    if role == "main" and config.server.workers > 1 and sock is not None and config_path is not None:
        app[SUPERVISOR] = supervisor = Supervisor(config_path, config.server.workers - 1, sock, spool,
                                                  config.server.shutdown_grace)

    app.router.add_route("POST", "/v1/{call}", ingest.handle)
    app.router.add_get("/v1/projects/{write_key}/settings", settings_handler)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    if not config.server.metrics_listen:  # else served by create_metrics_app on its own address
        app.router.add_get("/metrics", metrics_handler)

    async def lifecycle(app: web.Application):
        await spool.start()
        if engine is not None:
            await engine.start()
            configured = set(engine.active_destinations())
            for name in await spool.known_destinations():
                if name not in configured:
                    log.warning("spool_state_of_unconfigured_destination", destination=name,
                                hint=f"trackrelay spool forget --config <file> {name}")
        if supervisor is not None:
            await supervisor.start()
            from proxy.tls import RELOADER

            if RELOADER in app:  # a SIGHUP reloads the certificate in every process
                app[RELOADER].on_sighup.append(supervisor.forward_sighup)
        task = asyncio.create_task(maintenance(app))
        log.info("started", role=role, destinations=[d.name for d in config.destinations if d.enabled],
                 sources=[s.name for s in config.sources], spool=str(config.storage.path),
                 workers=config.server.workers if role == "main" else None)
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if supervisor is not None:  # the workers' last commits reach delivery before it stops
            await supervisor.stop()
        if engine is not None:
            await engine.stop(config.server.shutdown_grace)
        await spool.close()
        log.info("stopped", role=role)

    app.cleanup_ctx.append(lifecycle)
    return app
