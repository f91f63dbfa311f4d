"""server.tls: HTTPS on the Tracking API with a certificate made in the test, real SDKs over https, and
certificate reload (SIGHUP and file change; new connections get the new certificate)."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import ssl
import sys
import uuid

import pytest

from tests.helpers import TrackRelay
from tests.sdk_support import (
    SDK_DIR,
    assert_enriched,
    assert_stored_once,
    ensure_node_modules,
    python_sdk,
    run_json,
    wait_for_stored,
    wait_until,
)
from tests.tls_support import make_ca, make_leaf, peer_serial


@pytest.fixture
def certs(tmp_path):
    ca = make_ca(tmp_path)
    cert, key = tmp_path / "fullchain.pem", tmp_path / "privkey.pem"
    serial = make_leaf(ca, cert, key)
    return ca, cert, key, serial


def https_server(tmp_path, certs, **server):
    ca, cert, key, _ = certs
    return TrackRelay(tmp_path, server={"tls": {"cert_file": str(cert), "key_file": str(key)}, **server},
                      tls_ca=ca.path)


def event(mid: str) -> dict:
    return {"type": "track", "event": "E", "userId": "u", "messageId": mid}


def test_https_answers_and_plain_http_gets_no_answer(tmp_path, certs):
    with https_server(tmp_path, certs) as tr:
        assert tr.url.startswith("https://")
        for mid in ("tls-1", "tls-2"):
            status, body, _ = tr.post("/v1/track", {**event(mid), "writeKey": tr.write_key})
            assert (status, body) == (200, {"success": True})
        # the settings endpoint tells analytics.js to use https
        status, settings, _ = tr.get(f"/v1/projects/{tr.write_key}/settings")
        assert status == 200 and settings["integrations"]["Segment.io"]["protocol"] == "https"
        # a client speaking plain HTTP to the TLS port never gets an HTTP answer
        with socket.create_connection(("127.0.0.1", tr.port), timeout=5) as s:
            s.sendall(b"POST /v1/track HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
            try:
                reply = s.recv(100)
            except (ConnectionResetError, TimeoutError):
                reply = b""
        assert not reply.startswith(b"HTTP/")
        # a client that does not trust the CA refuses the certificate
        with pytest.raises(ssl.SSLCertVerificationError):
            with socket.create_connection(("127.0.0.1", tr.port), timeout=5) as raw:
                ssl.create_default_context().wrap_socket(raw, server_hostname="127.0.0.1")
        assert {e["messageId"] for e in tr.spool_events()} >= {"tls-1", "tls-2"}


@pytest.mark.sdk
@pytest.mark.timeout(240)
def test_python_sdk_over_https(tmp_path, certs):
    target = python_sdk("2.4.0")
    with https_server(tmp_path, certs) as tr:
        opts = {"host": tr.url, "write_key": tr.write_key, "gzip": True, "run": "py-tls", "clock_skew_seconds": 0}
        out = run_json([sys.executable, str(SDK_DIR / "python_driver.py"), json.dumps(opts)], timeout=90,
                       env={"PYTHONPATH": str(target), "REQUESTS_CA_BUNDLE": str(certs[0].path)})
        assert out["errors"] == [], f"the SDK reported delivery errors: {out['errors']}\n{tr.logs()[-3000:]}"
        ids = [m["messageId"] for m in out["sent"]]
        assert len(ids) == 16
        stored = assert_stored_once(wait_for_stored(tr, ids), ids)
        for message in out["sent"]:
            direct = (message.get("context") or {}).get("direct") is True
            assert_enriched(stored[message["messageId"]], message, ip="peer" if direct else "absent", channel="server")


@pytest.mark.sdk
@pytest.mark.timeout(180)
def test_node_sdk_over_https(tmp_path, certs):
    node_modules = ensure_node_modules()
    with https_server(tmp_path, certs) as tr:
        opts = {"package": "analytics-node-3.1", "host": tr.url, "writeKey": tr.write_key, "run": "node-tls",
                "flushAt": 3, "clockSkewMs": 0}
        out = run_json([shutil.which("node") or "node", str(SDK_DIR / "node_driver.js"), json.dumps(opts)],
                       timeout=60, env={"NODE_PATH": str(node_modules), "NODE_EXTRA_CA_CERTS": str(certs[0].path)})
        assert out["errors"] == [], f"the SDK reported delivery errors: {out['errors']}\n{tr.logs()[-3000:]}"
        assert all(r["url"] == tr.url + "/v1/batch" for r in out["requests"]), out["requests"]
        ids = [m["messageId"] for m in out["sent"]]
        assert len(ids) == 13
        stored = assert_stored_once(wait_for_stored(tr, ids), ids)
        for message in out["sent"]:
            assert_enriched(stored[message["messageId"]], message, ip="absent", channel="server")


def test_sighup_and_file_change_reload_the_certificate(tmp_path, certs):
    ca, cert, key, first = certs
    with https_server(tmp_path, certs) as tr:
        assert peer_serial("127.0.0.1", tr.port, ca.path) == first
        # a keep-alive connection opened before the renewal
        held = ssl.create_default_context(cafile=str(ca.path)).wrap_socket(
            socket.create_connection(("127.0.0.1", tr.port), timeout=10), server_hostname="127.0.0.1")

        # renewal written in place, then SIGHUP: the next new connection sees the new certificate
        second = make_leaf(ca, cert, key)
        tr.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: peer_serial("127.0.0.1", tr.port, ca.path) == second, 10, "the SIGHUP reload")
        assert tr.proc.poll() is None, "SIGHUP must not stop the server"
        # the connection opened before keeps its certificate and still works
        held_serial = int(held.getpeercert()["serialNumber"], 16)
        assert held_serial == first
        body = json.dumps({**event("held-conn"), "writeKey": tr.write_key}).encode()
        held.sendall(b"POST /v1/track HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        assert held.recv(200).startswith(b"HTTP/1.1 200")
        held.close()

        # replaced by rename (certbot/cert-manager style), no signal: picked up by the file watcher
        third_cert, third_key = tmp_path / "new.pem", tmp_path / "new.key"
        third = make_leaf(ca, third_cert, third_key)
        third_key.replace(key)
        third_cert.replace(cert)
        wait_until(lambda: peer_serial("127.0.0.1", tr.port, ca.path) == third, 15, "the file-change reload")

        # a broken renewal (key of another certificate) keeps the working certificate, and says why
        other_cert, other_key = tmp_path / "other.pem", tmp_path / "other.key"
        make_leaf(ca, other_cert, other_key)
        other_key.replace(key)
        tr.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "tls_reload_failed" in tr.logs(), 10, "the failed reload to be logged")
        assert peer_serial("127.0.0.1", tr.port, ca.path) == third
        status, body, _ = tr.post("/v1/track", {**event("after-reloads"), "writeKey": tr.write_key})
        assert status == 200
        assert {"held-conn", "after-reloads"} <= {e["messageId"] for e in tr.spool_events()}
        assert "PRIVATE KEY" not in tr.logs()


@pytest.mark.timeout(120)
def test_workers_serve_https_and_reload_on_file_change(tmp_path, certs):
    ca, cert, key, first = certs
    with https_server(tmp_path, certs, workers=2) as tr:
        wait_until(lambda: len(tr.worker_pids()) == 1, 20, "the ingest worker")
        mids = [f"w-{uuid.uuid4()}" for _ in range(20)]
        for mid in mids:  # one connection each: the kernel spreads them over both processes
            status, _, _ = tr.post("/v1/track", {**event(mid), "writeKey": tr.write_key})
            assert status == 200
        second = make_leaf(ca, cert, key)
        # every process watches the files; 20 new connections in a row must all see the new certificate
        wait_until(lambda: all(peer_serial("127.0.0.1", tr.port, ca.path) == second for _ in range(20)), 20,
                   "every worker to reload")
        assert first != second
        assert set(mids) <= {e["messageId"] for e in tr.spool_events()}


def test_a_certificate_that_does_not_load_stops_serve_with_a_clear_message(tmp_path, certs):
    ca, cert, key, _ = certs
    key.write_text("-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n")
    tr = https_server(tmp_path, certs)
    with pytest.raises(RuntimeError, match="server.tls: cannot load"):
        tr.start(timeout=15)
    assert tr.proc.wait(10) != 0


@pytest.mark.timeout(120)
def test_sighup_to_the_main_process_reloads_every_worker_too(tmp_path, certs):
    ca, cert, key, first = certs
    with https_server(tmp_path, certs, workers=2) as tr:
        wait_until(lambda: len(tr.worker_pids()) == 1, 20, "the ingest worker")
        make_leaf(ca, cert, key)
        tr.proc.send_signal(signal.SIGHUP)
        # the main process and its worker each log a reload triggered by the signal (not by polling)
        wait_until(lambda: tr.logs().count('"trigger": "SIGHUP"') >= 2, 15, "both processes to reload on SIGHUP")
