"""Hostile clients against a real server process (issue 11, HTTP layer): timeouts, the connection
bound, client disconnects, admission control, what parser errors leak, CORS, the settings
endpoint's Host, and /metrics on its own address. Raw sockets where a client must misbehave.

No test asserts how fast anything happens; they assert that a timeout fired (the server closed
the connection or answered 408) or which status came back."""

from __future__ import annotations

import base64
import re
import resource
import select
import socket
import time
import urllib.request

import orjson
import pytest

from proxy.server import FD_RESERVE, plan_connections
from tests.fakes.base import free_port
from tests.helpers import WRITE_KEY, TrackRelay

WAIT = 30.0  # the most any test waits for a timeout configured at 1 s (a loaded machine is slow)


# --- raw HTTP ------------------------------------------------------------------------------------


def connect(tr: TrackRelay) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", tr.port), timeout=WAIT)
    return s


def read_until_closed(s: socket.socket, timeout: float = WAIT) -> bytes:
    """Everything the server sends until it closes the connection (or ``timeout``)."""
    s.settimeout(timeout)
    out = b""
    try:
        while chunk := s.recv(65536):
            out += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        raise AssertionError(f"the server did not close the connection in {timeout}s; got {out[:200]!r}") from None
    return out


def closed_by_server(s: socket.socket, timeout: float = WAIT) -> bool:
    ready, _, _ = select.select([s], [], [], timeout)
    if not ready:
        return False
    try:
        return s.recv(65536) == b""
    except ConnectionResetError:
        return True


def parse(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, body


def request_bytes(path: str, body: bytes, extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{extra}"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def metric(tr: TrackRelay, name: str, labels: str = "") -> float:
    status, text, _ = tr.get("/metrics")
    assert status == 200
    total = 0.0
    for line in text.decode().splitlines():
        if line.startswith(name + (("{" + labels) if labels else "")) and not line.startswith("#"):
            if labels or line.startswith(name + " ") or line.startswith(name + "{"):
                total += float(line.rsplit(" ", 1)[1])
    return total


def event(mid: str) -> bytes:
    return orjson.dumps({"writeKey": WRITE_KEY, "userId": "u1", "event": "E", "messageId": mid})


# --- timeouts ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def timeouts(tmp_path_factory):
    with TrackRelay(tmp_path_factory.mktemp("timeouts"),
                    server={"keepalive_timeout": "1s", "header_timeout": "1s", "body_timeout": "1s"}) as tr:
        yield tr


def test_slowloris_is_closed_after_the_header_timeout(timeouts):
    tr = timeouts
    before = metric(tr, "trackrelay_connection_timeouts_total", 'phase="header"')
    s = connect(tr)
    header = (b"POST /v1/track HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
              b"X-Pad: " + b"a" * 200)
    closed = False
    for i in range(len(header)):  # a byte every 0.2 s; the headers never end
        try:
            s.send(header[i:i + 1])
        except (BrokenPipeError, ConnectionResetError):
            closed = True
            break
        if closed_by_server(s, 0.2):
            closed = True
            break
    s.close()
    assert closed, "the server kept a connection whose headers never ended"
    assert metric(tr, "trackrelay_connection_timeouts_total", 'phase="header"') >= before + 1


def test_idle_connections_are_closed(timeouts):
    tr = timeouts
    idle = [connect(tr) for _ in range(30)]  # never send a byte
    kept = connect(tr)  # one request, then idle with keep-alive
    kept.sendall(request_bytes("/v1/track", event("idle-1")))
    kept.settimeout(WAIT)
    first = kept.recv(65536)
    assert parse(first)[0] == 200
    for s in idle + [kept]:
        assert closed_by_server(s), "an idle connection stayed open past keepalive_timeout"
        s.close()
    assert metric(tr, "trackrelay_connection_timeouts_total", 'phase="idle"') >= 31


@pytest.mark.parametrize("case", ["short_content_length", "slow_body", "truncated_chunked"])
def test_a_stalled_body_is_answered_408(timeouts, case):
    tr = timeouts
    body = event(f"stalled-{case}")
    s = connect(tr)
    if case == "short_content_length":  # Content-Length promises more than is sent
        s.sendall((f"POST /v1/track HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body) + 50}\r\n\r\n").encode()
                  + body)
        raw = read_until_closed(s)
    elif case == "slow_body":  # the whole body at a few bytes a second, far past body_timeout
        s.sendall((f"POST /v1/track HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n\r\n").encode())
        raw = b""
        for i in range(len(body)):
            try:
                s.send(body[i:i + 1])
            except (BrokenPipeError, ConnectionResetError):
                break
            ready, _, _ = select.select([s], [], [], 0.3)
            if ready:
                break
        assert i < len(body) - 1, "the server waited for the whole slow body"
        raw = read_until_closed(s)
    else:  # a chunked body whose last chunk never comes
        s.sendall(b"POST /v1/track HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                  + f"{len(body):x}\r\n".encode() + body + b"\r\n")
        raw = read_until_closed(s)
    s.close()
    status, headers, payload = parse(raw)
    assert status == 408
    assert headers["content-type"].startswith("application/json")
    answer = orjson.loads(payload)
    assert answer["success"] is False and answer["code"] == "request_timeout" and answer["message"]
    assert headers.get("connection", "").lower() == "close"
    assert f"stalled-{case}" not in {e["messageId"] for e in tr.spool_events()}
    assert tr.post("/v1/track", orjson.loads(event(f"after-{case}")))[0] == 200


def test_client_disconnect_is_counted_not_logged_as_an_error(tmp_path):
    with TrackRelay(tmp_path, extra={"logging": {"level": "debug", "format": "json"}}) as tr:
        before = metric(tr, "trackrelay_client_disconnects_total")
        for _ in range(5):
            s = connect(tr)
            s.sendall(b"POST /v1/batch HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5000\r\n\r\n{\"batch\":[")
            time.sleep(0.2)
            s.close()
        deadline = time.monotonic() + WAIT
        while metric(tr, "trackrelay_client_disconnects_total") < before + 5 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert metric(tr, "trackrelay_client_disconnects_total") >= before + 5
        logs = tr.logs()
        assert "client_disconnected" in logs
        assert "unhandled_error" not in logs and "Traceback" not in logs
        for line in logs.splitlines():
            if "client_disconnected" in line:
                assert orjson.loads(line)["level"] == "debug"


# --- the connection bound --------------------------------------------------------------------------


def test_connections_beyond_the_bound_are_refused_at_once(tmp_path):
    with TrackRelay(tmp_path, server={"max_connections": 10, "keepalive_timeout": "60s"}) as tr:
        held = []
        for _ in range(10):
            held.append(connect(tr))
        time.sleep(0.5)  # let the server accept them all
        extra = connect(tr)
        raw = read_until_closed(extra)
        extra.close()
        status, headers, body = parse(raw)
        assert status == 503 and headers["retry-after"]
        assert orjson.loads(body)["code"] == "too_many_connections"
        for s in held:
            s.close()
        deadline = time.monotonic() + WAIT
        while True:  # the slots free as the server sees the closes
            try:
                status = tr.post("/v1/track", orjson.loads(event("after-bound")))[0]
            except OSError:
                status = None
            if status == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert status == 200
        assert metric(tr, "trackrelay_connections_refused_total") >= 1


def test_open_files_limit_raised_at_start(tmp_path):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 2000
    if hard != resource.RLIM_INFINITY and hard < wanted + FD_RESERVE:
        pytest.skip(f"hard open-files limit {hard} too low for this test")
    resource.setrlimit(resource.RLIMIT_NOFILE, (512, hard))  # the server inherits a low soft limit
    try:
        tr = TrackRelay(tmp_path, server={"max_connections": wanted}).start()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        limits = open(f"/proc/{tr.proc.pid}/limits").read()
        row = next(line for line in limits.splitlines() if line.startswith("Max open files"))
        assert int(row.split()[3]) >= wanted + FD_RESERVE
        listening = [orjson.loads(line) for line in tr.logs().splitlines() if '"listening"' in line]
        assert listening and listening[0]["max_connections"] == wanted
    finally:
        tr.terminate()


def test_connection_bound_fits_the_open_files_limit():
    assert plan_connections(4096, 1024, 1024) == (1024, 1024 - FD_RESERVE)  # cannot raise: bound lowered
    assert plan_connections(4096, 1024, 1 << 20) == (4096 + FD_RESERVE, 4096)  # raised as needed
    assert plan_connections(100, 50000, 50000) == (50000, 100)  # never lowered
    assert plan_connections(10, 200, 200)[1] >= 1


# --- admission control -----------------------------------------------------------------------------


def test_requests_beyond_the_inflight_bound_get_429_at_once(tmp_path):
    with TrackRelay(tmp_path, server={"max_inflight_requests": 2, "overload_retry_after": 3,
                                      "cors_origins": ["*"]}) as tr:
        body = event("inflight-held")
        held = []
        for _ in range(2):  # two requests whose bodies are still coming: in flight
            s = connect(tr)
            s.sendall((f"POST /v1/track HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n\r\n").encode()
                      + body[:10])
            held.append(s)
        deadline = time.monotonic() + WAIT
        while metric(tr, "trackrelay_inflight_requests") < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert metric(tr, "trackrelay_inflight_requests") == 2
        status, answer, headers = tr.post("/v1/track", orjson.loads(event("inflight-refused")),
                                          headers={"Origin": "http://page.example"})
        assert status == 429 and answer["code"] == "overloaded" and answer["success"] is False
        assert headers["Retry-After"] == "3"
        assert "Retry-After" in headers["Access-Control-Expose-Headers"]
        assert tr.get("/healthz")[0] == 200  # only ingest routes are bounded
        for s in held:  # the held requests finish and are answered 200
            s.sendall(body[10:])
            s.settimeout(WAIT)
            assert parse(s.recv(65536))[0] == 200
            s.close()
        assert tr.post("/v1/track", orjson.loads(event("inflight-after")))[0] == 200
        ids = {e["messageId"] for e in tr.spool_events()}
        assert "inflight-after" in ids and "inflight-refused" not in ids
        assert metric(tr, "trackrelay_requests_rejected_total", 'code="overloaded"') >= 1


# --- what leaks ------------------------------------------------------------------------------------

CANARY = "leak-canary-write-key-7f3a91"
CANARY_B64 = base64.b64encode(f"{CANARY}:".encode()).decode()
CANARY_BODY = orjson.dumps({"writeKey": CANARY, "userId": "u", "event": "E"})
AUTH = f"Authorization: Basic {CANARY_B64}\r\n"

MALFORMED = {
    "header_without_colon": (f"POST /v1/track HTTP/1.1\r\nHost: x\r\n{AUTH}Broken header {CANARY}\r\n"
                             f"Content-Length: {len(CANARY_BODY)}\r\n\r\n").encode() + CANARY_BODY,
    "control_char_in_header": (f"POST /v1/track HTTP/1.1\r\nHost: x\r\n{AUTH}X-Key: {CANARY}\x01\r\n"
                               f"Content-Length: {len(CANARY_BODY)}\r\n\r\n").encode() + CANARY_BODY,
    "bad_request_line": f"GET /v1/projects/{CANARY}/settings HTTP/1.1 trailing\r\nHost: x\r\n{AUTH}\r\n".encode(),
    "bad_method": f"P{{ST /v1/track?k={CANARY} HTTP/1.1\r\nHost: x\r\n{AUTH}\r\n".encode(),
    "non_numeric_content_length": (f"POST /v1/track HTTP/1.1\r\nHost: x\r\n{AUTH}Content-Length: {CANARY}"
                                   "\r\n\r\n").encode() + CANARY_BODY,
    "smuggling_cl_and_te": (f"POST /v1/track HTTP/1.1\r\nHost: x\r\n{AUTH}Content-Length: 5\r\n"
                            "Transfer-Encoding: chunked\r\n\r\n").encode() + b"0\r\n\r\n" + CANARY_BODY,
    "bad_chunk_size": (f"POST /v1/track HTTP/1.1\r\nHost: x\r\n{AUTH}Transfer-Encoding: chunked\r\n\r\n"
                       f"{CANARY}\r\n").encode() + CANARY_BODY + b"\r\n0\r\n\r\n",
    "bad_chunk_after_data": (f"POST /v1/track HTTP/1.1\r\nHost: x\r\n{AUTH}Transfer-Encoding: chunked\r\n\r\n").encode()
                            + f"{len(CANARY_BODY):x}\r\n".encode() + CANARY_BODY + f"\r\nzz{CANARY}\r\n".encode(),
    "header_too_long": (f"POST /v1/track HTTP/1.1\r\nHost: x\r\n{AUTH}X-Big: {CANARY * 400}\r\n"
                        f"Content-Length: {len(CANARY_BODY)}\r\n\r\n").encode() + CANARY_BODY,
    "line_too_long": f"GET /v1/projects/{CANARY * 400}/settings HTTP/1.1\r\nHost: x\r\n{AUTH}\r\n".encode(),
}


@pytest.fixture(scope="module")
def leaky(tmp_path_factory):
    with TrackRelay(tmp_path_factory.mktemp("leaks"), sources=[{"name": "web", "write_keys": [CANARY]}],
                    server={"cors_origins": ["*"]}, extra={"logging": {"level": "debug", "format": "json"}}) as tr:
        yield tr


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_requests_leak_no_key(leaky, name):
    tr = leaky
    s = connect(tr)
    try:
        s.sendall(MALFORMED[name])
    except (BrokenPipeError, ConnectionResetError):
        pass
    raw = read_until_closed(s)
    s.close()
    for secret in (CANARY, CANARY_B64):
        assert secret.encode() not in raw, f"the answer to {name} quotes the request"
    status, headers, body = parse(raw)
    assert 400 <= status < 500, raw[:300]
    assert headers["content-type"].startswith("application/json")
    answer = orjson.loads(body)
    assert answer["success"] is False and answer["code"] and answer["message"]
    time.sleep(0.2)
    for line in tr.logs().splitlines():
        for secret in (CANARY, CANARY_B64):
            assert secret not in line, f"a log line quotes the request ({name}): {line[:300]}"
    assert "Traceback" not in tr.logs()


# --- CORS ------------------------------------------------------------------------------------------


def preflight(tr: TrackRelay, origin: str, requested: str) -> dict[str, str]:
    req = urllib.request.Request(tr.url + "/v1/t", method="OPTIONS", headers={
        "Origin": origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": requested})
    with urllib.request.urlopen(req) as r:
        return {k.lower(): v for k, v in r.headers.items()}


def test_cors_credentials_only_for_listed_origins_and_no_requested_header_echoed(tmp_path):
    with TrackRelay(tmp_path, server={"cors_origins": ["*", "https://app.example"],
                                      "cors_allow_headers": ["X-Custom"]}) as tr:
        any_origin = preflight(tr, "http://evil.example", "cookie, x-evil, authorization, content-type")
        assert any_origin["access-control-allow-origin"] == "http://evil.example"
        assert "access-control-allow-credentials" not in any_origin
        allowed = [h.strip().lower() for h in any_origin["access-control-allow-headers"].split(",")]
        assert {"content-type", "authorization", "x-retry-count", "x-custom"} <= set(allowed)
        assert "cookie" not in allowed and "x-evil" not in allowed
        listed = preflight(tr, "https://app.example", "authorization")
        assert listed["access-control-allow-credentials"] == "true"
        assert listed["access-control-allow-origin"] == "https://app.example"
        status, _, headers = tr.post("/v1/t", {"writeKey": WRITE_KEY, "userId": "u", "event": "E"},
                                     headers={"Origin": "http://evil.example"})
        assert status == 200 and "Access-Control-Allow-Credentials" not in headers
        assert headers["Access-Control-Allow-Origin"] == "http://evil.example"


# --- the settings endpoint's Host ------------------------------------------------------------------


def settings(tr: TrackRelay, host: str) -> tuple[int, object, dict[str, str]]:
    s = connect(tr)
    s.sendall(f"GET /v1/projects/{WRITE_KEY}/settings HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    status, headers, body = parse(read_until_closed(s))
    s.close()
    return status, orjson.loads(body), headers


def test_settings_only_for_allowed_hosts_and_vary_host(tmp_path):
    with TrackRelay(tmp_path) as tr:  # no public_url, no allowed_hosts: the listen address
        status, body, headers = settings(tr, f"127.0.0.1:{tr.port}")
        assert status == 200 and body["integrations"]["Segment.io"]["apiHost"] == f"127.0.0.1:{tr.port}/v1"
        assert "host" in headers["vary"].lower()
        status, body, headers = settings(tr, "evil.example")
        assert status == 400 and body["code"] == "host_not_allowed" and "evil.example" not in str(body)
        assert settings(tr, f"evil.example:{tr.port}")[0] == 400
        assert settings(tr, "127.0.0.1:1")[0] == 400
    (tmp_path / "allowed").mkdir()
    (tmp_path / "public").mkdir()
    with TrackRelay(tmp_path / "allowed", server={"allowed_hosts": ["t.example.com", "other.example:8443"]}) as tr:
        status, body, headers = settings(tr, "T.example.com")
        assert status == 200 and body["integrations"]["Segment.io"]["apiHost"] == "t.example.com/v1"
        assert settings(tr, "other.example:8443")[0] == 200
        assert settings(tr, "other.example")[0] == 400
        assert settings(tr, f"127.0.0.1:{tr.port}")[0] == 400
    with TrackRelay(tmp_path / "public", server={"public_url": "https://t.example.com"}) as tr:
        status, body, headers = settings(tr, "evil.example")
        assert status == 200 and body["integrations"]["Segment.io"]["apiHost"] == "t.example.com/v1"


# --- metrics off the public port -------------------------------------------------------------------


def test_metrics_listen_moves_metrics_off_the_public_port(tmp_path):
    mport = free_port()
    with TrackRelay(tmp_path, server={"metrics_listen": f"127.0.0.1:{mport}"}) as tr:
        assert tr.post("/v1/track", orjson.loads(event("metrics-1")))[0] == 200
        status, body, _ = tr.get("/metrics")
        assert status == 404 and body["success"] is False
        with urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=WAIT) as r:
            text = r.read().decode()
        assert re.search(r'^trackrelay_events_stored_total\{source="web"\} 1\.0$', text, re.M), text[:2000]
