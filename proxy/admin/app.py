"""The operator console's aiohttp application: its own listener (``admin:`` in the config), never
routed from the ingest port. See the README's "Operator console" section for the API.

Auth: every page, asset and API call needs the token, as ``Authorization: Bearer <token>`` or
the session cookie the login form sets (HttpOnly, SameSite=Strict, a random session id, not the
token). Without it: 401 (pages answer 401 with the login form as their body). Tokens are
compared in constant time (hmac.compare_digest).

CSRF: a state-changing call (POST) made with the cookie must carry ``X-TrackRelay-CSRF: 1`` and,
when the browser sends an Origin, come from the console's own origin. A cross-site page can send
neither a custom header (that needs a CORS preflight, which this app never grants) nor, with
SameSite=Strict, the cookie. Bearer calls carry no ambient credential and need neither.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import secrets
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import structlog
from aiohttp import web

from proxy.admin.mask import Masker, config_secrets
from proxy.admin.observer import LIVE_FILTERS, Figures, Live, Traces
from proxy.admin.tester import Tester, TestEventError
from proxy.config import Config
from proxy.observe import TAPS
from proxy.spool import DeadQuery, Spool

log = structlog.get_logger("trackrelay.admin")

STATIC = Path(__file__).resolve().parent / "static"
COOKIE = "trackrelay_admin"
CSRF_HEADER = "X-TrackRelay-CSRF"
SESSION_SECONDS = 12 * 3600
MAX_SESSIONS = 1000
MAX_BODY = 1024 * 1024

CONSOLE: web.AppKey[Console] = web.AppKey("console")  # Console is defined below

SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # not no-referrer: with it Chromium sends "Origin: null" on the login form's POST
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
                               "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
}


def error(status: int, code: str, message: str) -> web.Response:
    return web.Response(status=status, body=orjson.dumps({"success": False, "code": code, "message": message}),
                        content_type="application/json")


def jsonr(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS),
                        content_type="application/json")


LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>trackrelay console: sign in</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><link rel="icon" href="data:,">
<style>body{font:15px system-ui,sans-serif;background:#f4f5f7;display:flex;justify-content:center;padding-top:12vh}
form{background:#fff;padding:2em;border-radius:8px;box-shadow:0 1px 4px #0002;min-width:22em}
input{width:100%;box-sizing:border-box;padding:.5em;margin:.6em 0 1em;font:inherit}
button{padding:.5em 1.4em;font:inherit}.err{color:#b00020}</style></head>
<body><form method="post" action="/login"><h1>trackrelay console</h1>
<label for="token">Admin token</label>
<input id="token" name="token" type="password" autocomplete="current-password" autofocus>
{error}<button type="submit" id="login">Sign in</button></form></body></html>"""


class Console:
    """Shared state of the console: taps, traces, figures, sessions, replay jobs."""

    def __init__(self, config: Config, main: web.Application) -> None:
        assert config.admin is not None
        self.config = config
        self.admin = config.admin
        self.main = main
        self.token = self.admin.token.get_secret_value().strip().encode()
        self.masker = Masker(config_secrets(config))
        self.tester = Tester(config, self.masker)
        self.traces = Traces(self.masker, self.admin.trace_events, self.admin.trace_age, self.admin.trace_attempts)
        self.figures = Figures()
        self.live = Live(self.masker, self.admin.live_queue)
        self.sessions: dict[str, float] = {}
        self.jobs: dict[str, dict[str, Any]] = {}
        self._job_ids = itertools.count(1)
        self._sampler: asyncio.Task | None = None

    @property
    def spool(self) -> Spool:
        from proxy.app import SPOOL

        return self.main[SPOOL]

    @property
    def engine(self) -> Any:
        from proxy.app import ENGINE

        return self.main.get(ENGINE)

    def enabled(self) -> list[str]:
        return [d.name for d in self.config.destinations if d.enabled]

    # -- taps -------------------------------------------------------------------------------------

    _LISTENERS = (("stored", ("traces", "figures")), ("refused", ("figures",)),
                  ("attempted", ("traces", "figures")), ("settled", ("traces", "figures")))

    def _listeners(self) -> list[tuple[list, Any]]:
        return [(getattr(TAPS, tap), getattr(getattr(self, owner), tap))
                for tap, owners in self._LISTENERS for owner in owners]

    async def start(self, app: web.Application) -> None:
        for listeners, fn in self._listeners():
            listeners.append(fn)
        self._sampler = asyncio.create_task(self._sample())

    async def stop(self, app: web.Application) -> None:
        self.live.close_all()
        for listeners, fn in self._listeners():
            if fn in listeners:
                listeners.remove(fn)
        if self._sampler is not None:
            self._sampler.cancel()

    async def _sample(self) -> None:
        while True:
            try:
                self.figures.sample(await self.spool.stats(self.enabled()))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("admin_stats_failed", error=repr(exc))
            await asyncio.sleep(10)

    # -- auth -------------------------------------------------------------------------------------

    def check_token(self, given: str) -> bool:
        return hmac.compare_digest(given.strip().encode(), self.token)

    def new_session(self) -> str:
        now = time.time()
        for sid, exp in list(self.sessions.items()):
            if exp < now:
                del self.sessions[sid]
        while len(self.sessions) >= MAX_SESSIONS:
            self.sessions.pop(next(iter(self.sessions)))
        sid = secrets.token_urlsafe(32)
        self.sessions[sid] = now + SESSION_SECONDS
        return sid

    def valid_session(self, sid: str | None) -> bool:
        if not sid:
            return False
        for known, exp in self.sessions.items():  # constant time per comparison; few sessions
            if hmac.compare_digest(known.encode(), sid.encode()) and exp > time.time():
                return True
        return False

    def auth(self, request: web.Request) -> str | None:
        """'bearer', 'cookie' or None."""
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value and self.check_token(value):
            return "bearer"
        if self.valid_session(request.cookies.get(COOKIE)):
            return "cookie"
        return None


def same_origin(request: web.Request) -> bool:
    origin = request.headers.get("Origin")
    if origin is None:  # same-origin GETs and older browsers send none; SameSite=Strict still holds
        return True
    try:
        parts = urlsplit(origin)
    except ValueError:
        return False
    return parts.netloc.lower() == request.host.lower()


def login_page(message: str = "", status: int = 401) -> web.Response:
    err = f'<p class="err" id="login-error">{message}</p>' if message else ""
    return web.Response(status=status, text=LOGIN_PAGE.replace("{error}", err), content_type="text/html",
                        headers={"WWW-Authenticate": 'Bearer realm="trackrelay console"'})


@web.middleware
async def guard(request: web.Request, handler: Any) -> web.StreamResponse:
    console: Console = request.app[CONSOLE]
    try:
        if request.path == "/login" and request.method == "POST":
            response: web.StreamResponse = await login(request)
        else:
            how = console.auth(request)
            if how is None:
                if request.path.startswith("/api/") or request.method != "GET":
                    response = error(401, "unauthorized",
                                     "the admin token is required (Authorization: Bearer, or sign in)")
                    response.headers["WWW-Authenticate"] = 'Bearer realm="trackrelay console"'
                else:
                    response = login_page()
            elif request.method not in ("GET", "HEAD") and how == "cookie" and (
                    request.headers.get(CSRF_HEADER) != "1" or not same_origin(request)):
                response = error(403, "csrf", f"a state-changing call with the session cookie needs the {CSRF_HEADER} "
                                 "header from the console's own origin")
            else:
                response = await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(exc.status, "http_error")
        response = error(exc.status, code, exc.reason or "error")
    except (asyncio.CancelledError, ConnectionError):
        raise
    except Exception as exc:
        log.exception("admin_error", path=request.path, error=type(exc).__name__)
        response = error(500, "internal_error", "internal error")
    if not response.prepared:
        for k, v in SECURITY_HEADERS.items():
            response.headers.setdefault(k, v)
    return response


async def login(request: web.Request) -> web.Response:
    console: Console = request.app[CONSOLE]
    if not same_origin(request):
        return error(403, "csrf", "sign in from the console's own page")
    try:
        form = await request.post()
    except Exception:
        return login_page("Could not read the form.")
    token = form.get("token")
    if not isinstance(token, str) or not console.check_token(token):
        log.info("admin_login_failed", remote=request.remote)
        return login_page("Wrong token.")
    response = web.Response(status=303, headers={"Location": "/"})
    response.set_cookie(COOKIE, console.new_session(), httponly=True, samesite="Strict", path="/",
                        max_age=SESSION_SECONDS, secure=request.secure)
    log.info("admin_login", remote=request.remote)
    return response


async def logout(request: web.Request) -> web.Response:
    console: Console = request.app[CONSOLE]
    console.sessions.pop(request.cookies.get(COOKIE, ""), None)
    response = jsonr({"success": True})
    response.del_cookie(COOKIE, path="/")
    return response


# -- pages ----------------------------------------------------------------------------------------

_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".txt": "text/plain",
          ".LICENSE": "text/plain"}


async def index(request: web.Request) -> web.Response:
    return web.Response(body=(STATIC / "index.html").read_bytes(), content_type="text/html")


async def static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    path = STATIC / name
    if "/" in name or name.startswith(".") or not path.is_file() or path.suffix not in _TYPES:
        raise web.HTTPNotFound()
    return web.Response(body=path.read_bytes(), content_type=_TYPES[path.suffix], charset="utf-8")


# -- API ------------------------------------------------------------------------------------------


async def api_info(request: web.Request) -> web.Response:
    console: Console = request.app[CONSOLE]
    c = console.config
    return jsonr({
        "sources": [s.name for s in c.sources],
        "destinations": [{"name": d.name, "type": d.type, "enabled": d.enabled} for d in c.destinations],
        "trace": {"events": console.admin.trace_events, "age": console.admin.trace_age,
                  "attempts": console.admin.trace_attempts},
        "engine": c.storage.engine if hasattr(c.storage, "engine") else None,
        "workers": c.server.workers,
    })


async def api_stats(request: web.Request) -> web.Response:
    console: Console = request.app[CONSOLE]
    exact = request.query.get("exact") in ("1", "true")
    stats = await console.spool.stats(console.enabled(), exact=exact)
    console.figures.sample(stats)
    return jsonr({
        "spool": stats.as_dict(), "series": console.figures.series(),
        "live": {"watchers": len(console.live.watchers),
                 "dropped": console.live.dropped_total + sum(w.dropped for w in console.live.watchers)},
        "traces": {"kept": len(console.traces.index), "evicted": console.traces.evicted,
                   "max": console.admin.trace_events},
    })


async def api_live(request: web.Request) -> web.StreamResponse:
    console: Console = request.app[CONSOLE]
    filters = {k: v for k, v in request.query.items() if k in LIVE_FILTERS and v}
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                           "X-Accel-Buffering": "no", **{k: v for k, v in SECURITY_HEADERS.items()
                                                                          if k != "Cache-Control"}})
    await response.prepare(request)
    watcher = console.live.watch(filters)
    reported = 0
    try:
        await response.write(b": connected\n\nevent: hello\ndata: " + orjson.dumps({"filters": filters}) + b"\n\n")
        while not watcher.closed:
            try:
                item = await asyncio.wait_for(watcher.queue.get(), 15.0)
            except TimeoutError:
                item = ...
            if watcher.dropped != reported:
                reported = watcher.dropped
                await response.write(b"event: dropped\ndata: " + orjson.dumps({"dropped": reported}) + b"\n\n")
            if item is None:
                break
            if item is ...:
                await response.write(b": keep-alive\n\n")
                continue
            await response.write(b"event: item\ndata: " + orjson.dumps(item) + b"\n\n")
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        console.live.unwatch(watcher)
    return response


async def api_trace(request: web.Request) -> web.Response:
    console: Console = request.app[CONSOLE]
    mid = request.match_info["message_id"]
    trace = console.traces.get(mid)
    if trace is None:
        return error(404, "not_found", f"no recent event with messageId {mid!r} (the console keeps the last "
                     f"{console.admin.trace_events} events for {console.admin.trace_age:g} s, in this process)")
    return jsonr(trace)


async def api_recent(request: web.Request) -> web.Response:
    console: Console = request.app[CONSOLE]
    try:
        limit = max(1, min(500, int(request.query.get("limit", "50"))))
    except ValueError:
        return error(400, "invalid_limit", "limit must be a number")
    return jsonr({"messageIds": console.traces.recent(limit)})


async def _json_body(request: web.Request) -> Any:
    data = await request.read()
    if len(data) > MAX_BODY:
        raise TestEventError("request_too_large", f"at most {MAX_BODY} bytes")
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise TestEventError("invalid_json", f"the body is not valid JSON: {exc}") from None


async def api_test_event(request: web.Request) -> web.Response:
    console: Console = request.app[CONSOLE]
    try:
        body = await _json_body(request)
        if not isinstance(body, dict) or "event" not in body:
            raise TestEventError("invalid_request", 'send {"event": {...}, "destination"?: name, "source"?: name, '
                                 '"send"?: true}')
        source, destination = body.get("source"), body.get("destination")
        for name, value in (("source", source), ("destination", destination)):
            if value is not None and not isinstance(value, str):
                raise TestEventError("invalid_request", f"{name} must be a string")
        if body.get("send") is True:
            if not destination:
                raise TestEventError("invalid_request", "sending needs one destination")
            engine = console.engine
            if engine is None or engine.session is None:
                raise TestEventError("not_running", "delivery is not running in this process")
            dest = next(d for d in console.config.destinations if d.name == destination) \
                if any(d.name == destination for d in console.config.destinations) else None
            timeout = dest.effective_delivery(console.config.delivery).timeout if dest is not None else 10.0
            result = await console.tester.send(body["event"], destination, engine.transport, source=source,
                                               timeout=timeout)
            log.info("admin_test_event_sent", destination=destination)
        else:
            result = console.tester.plan(body["event"], source=source, destination=destination)
    except TestEventError as exc:
        return error(400, exc.code, console.masker.text(exc.message) or "")
    return jsonr({"success": True, **result})


def _query(request: web.Request, body: dict[str, Any] | None = None) -> DeadQuery:
    q = body if body is not None else dict(request.query)
    dest = q.get("destination") or None
    ids = q.get("ids") or ()
    if isinstance(ids, str):
        ids = [i for i in ids.split(",") if i]
    if not isinstance(ids, (list, tuple)) or not all(isinstance(i, (str, int)) for i in ids):
        raise TestEventError("invalid_ids", "ids must be a list of dead-letter ids")

    def ts(name: str) -> float | None:
        v = q.get(name)
        if v in (None, ""):
            return None
        try:
            return float(v)
        except (TypeError, ValueError):
            raise TestEventError(f"invalid_{name}", f"{name} must be epoch seconds") from None

    limit = q.get("limit")
    try:
        lim = None if limit in (None, "") else max(1, min(10000, int(limit)))
    except (TypeError, ValueError):
        raise TestEventError("invalid_limit", "limit must be a number") from None
    if dest is not None and not isinstance(dest, str):
        raise TestEventError("invalid_destination", "destination must be a string")
    return DeadQuery(dest, ts("since"), ts("until"), tuple(str(i) for i in ids), lim)


async def api_dead_letters(request: web.Request) -> web.Response:
    console: Console = request.app[CONSOLE]
    try:
        query = _query(request)
    except TestEventError as exc:
        return error(400, exc.code, exc.message)
    if query.limit is None:
        query = DeadQuery(query.destination, query.since, query.until, query.ids, 200)
    rows, total = await console.spool.dead_letters(query)
    m = console.masker
    return jsonr({"total": total, "dead_letters": [
        {"id": r.id, "destination": r.destination, "at": r.at, "attempts": r.attempts, "status": r.status,
         "reason": m.text(r.reason), "source": r.source, "message_id": r.message_id} for r in rows]})


async def api_dead_letter(request: web.Request) -> web.Response:
    console: Console = request.app[CONSOLE]
    dl = await console.spool.dead_letter(request.match_info["id"])
    if dl is None:
        return error(404, "not_found", "no such dead letter")
    m = console.masker
    try:
        event = m.json(orjson.loads(dl.event)) if dl.event else None
    except orjson.JSONDecodeError:
        event = m.body(dl.event)
    return jsonr({"id": dl.id, "destination": dl.destination, "at": dl.at, "attempts": dl.attempts,
                  "status": dl.status, "reason": m.text(dl.reason), "response": m.text(dl.response),
                  "source": dl.source, "message_id": dl.message_id, "event": event})


async def api_replay(request: web.Request) -> web.Response:
    console: Console = request.app[CONSOLE]
    try:
        body = await _json_body(request)
        if not isinstance(body, dict):
            raise TestEventError("invalid_request", 'send {"ids": [...]} or {"all": true, "destination"?: name}')
        query = _query(request, body)
        if not query.ids and body.get("all") is not True:
            raise TestEventError("invalid_request", 'name the dead letters ("ids") or say "all": true')
    except TestEventError as exc:
        return error(400, exc.code, exc.message)
    _, total = await console.spool.dead_letters(query)
    job_id = str(next(console._job_ids))
    job = console.jobs[job_id] = {"id": job_id, "total": total, "done": 0, "replayed": None, "finished": False,
                                  "error": None}
    while len(console.jobs) > 50:
        console.jobs.pop(next(iter(console.jobs)))

    def progress(n: int) -> None:
        job["done"] += n

    async def run() -> None:
        try:
            job["replayed"] = await console.spool.replay(query, console.enabled(), progress)
            log.info("admin_replay", replayed=job["replayed"], destination=query.destination, ids=len(query.ids))
        except Exception as exc:
            log.error("admin_replay_failed", error=repr(exc))
            job["error"] = "replay failed; see the server log"
        finally:
            job["finished"] = True

    task = asyncio.create_task(run())
    console.__dict__.setdefault("_tasks", set()).add(task)
    task.add_done_callback(console.__dict__["_tasks"].discard)
    await asyncio.wait({task}, timeout=2.0)  # small replays answer with their result at once
    return jsonr({"success": True, "job": dict(job)}, status=200 if job["finished"] else 202)


async def api_job(request: web.Request) -> web.Response:
    console: Console = request.app[CONSOLE]
    job = console.jobs.get(request.match_info["id"])
    if job is None:
        return error(404, "not_found", "no such job")
    return jsonr(dict(job))


def create_admin_app(config: Config, main: web.Application) -> web.Application:
    """The console for the server app ``main`` (whose spool and delivery engine it uses)."""
    app = web.Application(middlewares=[guard], client_max_size=MAX_BODY + 1024)
    console = Console(config, main)
    app[CONSOLE] = console
    app.on_startup.append(console.start)
    app.on_shutdown.append(console.stop)
    r = app.router
    r.add_get("/", index)
    r.add_get("/static/{name}", static)
    r.add_post("/logout", logout)
    r.add_get("/api/info", api_info)
    r.add_get("/api/stats", api_stats)
    r.add_get("/api/live", api_live)
    r.add_get("/api/recent", api_recent)
    r.add_get("/api/trace/{message_id}", api_trace)
    r.add_post("/api/test-event", api_test_event)
    r.add_get("/api/dead-letters", api_dead_letters)
    r.add_get("/api/dead-letters/{id}", api_dead_letter)
    r.add_post("/api/dead-letters/replay", api_replay)
    r.add_get("/api/jobs/{id}", api_job)
    return app
