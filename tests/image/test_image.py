"""The container image, run with podman (`make test-image`): what a user of the image relies on.

- a track call and a batch answer 200 and reach a destination (a recording receiver on the host);
- SIGKILL of the container under load, then a new container on the same volume: every
  acknowledged messageId reaches the destination;
- SIGTERM (podman stop) ends it by itself within the grace period: PID 1 handles the signal;
- the image runs as a non-root user, has a working HEALTHCHECK, and no pip or apt lists;
- `podman kube play deploy/kubernetes/sidecar.yaml`: the app container reaches trackrelay over the
  pod's loopback, and nothing outside the pod reaches trackrelay.
Only the HTTP API, the receiver and podman are used: the spool's files are trackrelay's business."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fakes.base import FakeServer, free_port
from tests.fakes.recorder import Recorder
from tests.image.conftest import APP_IMAGE, IMAGE, WRITE_KEY, Container, http, inspect, podman

pytestmark = [pytest.mark.image, pytest.mark.timeout(600)]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def receiver():
    rec = Recorder()
    with FakeServer(rec.app()) as server:
        yield rec, server


@pytest.fixture
def container(tmp_path: Path, receiver):
    rec, server = receiver
    c = Container(tmp_path, server.port)
    yield c
    c.remove()


def event(message_id: str, **extra: Any) -> dict[str, Any]:
    return {"userId": "u1", "event": "Image Test", "messageId": message_id, "properties": {"n": 1}, **extra}


def wait_delivered(rec: Recorder, ids: set[str], timeout: float) -> set[str]:
    deadline = time.monotonic() + timeout
    while True:
        missing = ids - set(rec.delivered_ids())
        if not missing or time.monotonic() > deadline:
            return missing
        time.sleep(0.2)


def test_image_facts(tmp_path: Path) -> None:
    size = int(inspect(IMAGE, "{{.Size}}"))
    print(f"\nimage {IMAGE}: {size / 1e6:.1f} MB")
    assert inspect(IMAGE, "{{.Config.StopSignal}}") == "SIGTERM"
    assert inspect(IMAGE, "{{.Config.User}}") == "10001:10001"
    # the final image has no pip, no apt lists, no compiler
    def sh(script: str) -> str:
        return podman("run", "--rm", "--network", "none", "--entrypoint", "/bin/sh", IMAGE, "-c", script).stdout
    assert not [f for f in sh("ls /opt/trackrelay/bin").split() if f.startswith(("pip", "easy_install"))]
    assert sh("ls /var/lib/apt/lists | grep -v -e '^lock$' -e '^partial$' || true").strip() == ""
    assert sh("command -v gcc cc pip pip3 || true").strip() == ""
    assert "No module named pip" in sh("/opt/trackrelay/bin/python -m pip --version 2>&1 || true")
    assert sh("trackrelay-probe /healthz; echo $?").split()[-1] == "1"  # nothing listens: the probe says so


def test_track_and_batch_reach_the_destination(container: Container, receiver) -> None:
    rec, _ = receiver
    container.run()
    assert container.exec("id", "-u").stdout.strip() == "10001"
    assert "trackrelay" in container.exec("cat", "/proc/1/cmdline").stdout  # PID 1, no shell in between
    status, body = http("POST", container.url + "/v1/track", event("img-track-1"))
    assert (status, body) == (200, {"success": True})
    status, body = http("POST", container.url + "/v1/batch",
                        {"batch": [dict(event(f"img-batch-{i}"), type="track") for i in range(3)]})
    assert (status, body) == (200, {"success": True})
    assert not wait_delivered(rec, {"img-track-1", "img-batch-0", "img-batch-1", "img-batch-2"}, 60)
    # an unknown write key: 400 (server.unknown_write_key: reject), which no Segment SDK retries
    status, body = http("POST", container.url + "/v1/track", event("x"), auth="wrong-key")
    assert status == 400 and body["code"] == "invalid_write_key" and "wrong-key" not in body["message"], body
    # a second server on the same volume refuses to start (it would deliver everything again)
    second = podman("run", "--rm", "--network", "none", "-v", f"{container.volume}:/data",
                    "-v", f"{container.config_path}:/etc/trackrelay/trackrelay.yaml:ro",
                    "-e", f"WEB_WRITE_KEY={WRITE_KEY}", IMAGE, check=False, timeout=60)
    assert second.returncode != 0 and "another trackrelay server" in second.stderr, second
    assert http("GET", container.url + "/readyz", auth=None)[0] == 200
    podman("healthcheck", "run", container.name)  # the image's HEALTHCHECK passes


def test_sigkill_under_load_loses_nothing_acknowledged(container: Container, receiver) -> None:
    rec, _ = receiver
    rec.delay = 0.1  # a slow destination: a backlog builds up in the spool
    container.run()
    acked: set[str] = set()
    failed = 0
    stop = threading.Event()
    lock = threading.Lock()

    def load(worker: int) -> None:
        nonlocal failed
        n = 0
        while not stop.is_set():
            ids = [f"kill-{worker}-{n}-{i}" for i in range(20)]
            n += 1
            try:
                status, _ = http("POST", container.url + "/v1/batch",
                                 {"batch": [dict(event(m), type="track") for m in ids]}, timeout=5)
            except OSError:
                status = 0
            with lock:
                if status == 200:
                    acked.update(ids)
                else:
                    failed += 1
            if status != 200:
                time.sleep(0.05)

    threads = [threading.Thread(target=load, args=(w,), daemon=True) for w in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while len(acked) < 2000 and time.monotonic() < deadline:
        time.sleep(0.1)
    podman("kill", "--signal", "KILL", container.name)  # while the load goes on
    podman("wait", container.name, timeout=60)
    time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join(30)
    assert inspect(container.name, "{{.State.ExitCode}}") == "137"
    delivered_before = set(rec.delivered_ids())
    assert len(acked) >= 2000 and failed > 0, (len(acked), failed)
    assert acked - delivered_before, "everything was delivered before the kill: the test proved nothing"

    rec.delay = 0.0
    container.run()  # a new container on the same volume
    missing = wait_delivered(rec, acked, 180)
    print(f"\nacknowledged {len(acked)}, delivered before the kill {len(acked & delivered_before)}, "
          f"failed requests around the kill {failed}, missing after restart {len(missing)}")
    assert not missing, f"{len(missing)} acknowledged events never delivered, e.g. {sorted(missing)[:5]}"


def test_sigterm_stops_within_the_grace_period(container: Container, receiver) -> None:
    rec, server = receiver
    rec.blackhole = True  # in-flight deliveries never finish: the grace period must end them
    container.run()
    ids = {f"term-{i}" for i in range(10)}
    for m in sorted(ids):
        assert http("POST", container.url + "/v1/track", event(m))[0] == 200
    server.wait_for(lambda requests: len(requests) > 0, timeout=60)  # a delivery is in flight
    # podman stop: the image's STOPSIGNAL (SIGTERM), then SIGKILL after --time seconds. The grace
    # is 5 s; 25 s leave room for a loaded machine. Exit code 0 means trackrelay stopped itself.
    started = time.monotonic()
    podman("stop", "--time", "25", container.name, timeout=60)
    print(f"\npodman stop took {time.monotonic() - started:.1f} s (shutdown_grace 5 s, SIGKILL after 25 s)")
    assert inspect(container.name, "{{.State.ExitCode}}") == "0", container.logs()[-3000:]
    assert '"stopped"' in container.logs()
    rec.blackhole = False
    container.run()  # nothing accepted is lost by a graceful stop either
    assert not wait_delivered(rec, ids, 120)


# --- the sidecar pod ---------------------------------------------------------------------------

def sidecar_manifest(tmp_path: Path, app_port: int) -> tuple[Path, str, dict[str, Any]]:
    """deploy/kubernetes/sidecar.yaml with the images under test and the app's port published.
    The Secret comes back separately: podman 4.3's kube play stores a Secret document as YAML but
    reads secretKeyRef/secretRef values as a JSON map of base64 values ("secret ... is not valid
    JSON"), so the test creates it in that form with `podman secret create`; kube play then uses
    it by name."""
    docs = [d for d in yaml.safe_load_all((ROOT / "deploy/kubernetes/sidecar.yaml").read_text()) if d]
    tag = uuid.uuid4().hex[:6]
    for doc in docs:
        doc["metadata"]["name"] = f"{doc['metadata']['name']}-{tag}"
    names = {d["kind"]: d["metadata"]["name"] for d in docs}
    for doc in docs:
        if doc["kind"] != "Deployment":
            continue
        spec = doc["spec"]["template"]["spec"]
        for c in spec["containers"]:
            c["imagePullPolicy"] = "Never"
            for ref in c.get("envFrom", []):
                ref["secretRef"]["name"] = names["Secret"]
            for env in c.get("env", []):
                if "valueFrom" in env:
                    env["valueFrom"]["secretKeyRef"]["name"] = names["Secret"]
            if c["name"] == "app":
                c["image"] = APP_IMAGE
                c["ports"][0].update(hostPort=app_port, hostIP="127.0.0.1")
            else:
                c["image"] = IMAGE
        for v in spec["volumes"]:
            if "configMap" in v:
                v["configMap"]["name"] = names["ConfigMap"]
            if "persistentVolumeClaim" in v:
                v["persistentVolumeClaim"]["claimName"] = names["PersistentVolumeClaim"]
    secret = next(d for d in docs if d["kind"] == "Secret")
    docs.remove(secret)
    path = tmp_path / "sidecar.yaml"
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return path, names["Deployment"], secret


def test_sidecar_pod_with_kube_play(tmp_path: Path) -> None:
    app_port = free_port()
    path, deployment, secret = sidecar_manifest(tmp_path, app_port)
    as_json = {k: base64.b64encode(v.encode()).decode() for k, v in secret["stringData"].items()}
    podman("secret", "create", secret["metadata"]["name"], "-", input=json.dumps(as_json))
    play = podman("kube", "play", str(path), timeout=180, check=False)
    try:
        assert play.returncode == 0, play.stdout + play.stderr
        pods = podman("pod", "ps", "--filter", f"name={deployment}", "--format", "{{.Name}}").stdout.split()
        assert len(pods) == 1, pods  # replicas: 1
        pod = pods[0]
        names = podman("ps", "-a", "--filter", f"pod={pod}", "--format", "{{.Names}}").stdout.split()
        relay = next(n for n in names if n.endswith("-trackrelay"))
        app = next(n for n in names if n.endswith("-app"))
        deadline = time.monotonic() + 90
        answer: Any = None
        while time.monotonic() < deadline:
            try:  # the host reaches the app through its published port ...
                status, answer = http("GET", f"http://127.0.0.1:{app_port}/send?id=pod-1", auth=None)
                if status == 200 and answer["trackrelay_status"] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        # ... and the app reaches trackrelay over the pod's loopback
        assert answer == {"trackrelay_status": 200, "trackrelay_body": {"success": True}}, answer
        deadline = time.monotonic() + 60
        while '"pod-1"' not in podman("logs", relay).stdout and time.monotonic() < deadline:
            time.sleep(0.5)
        assert '"pod-1"' in podman("logs", relay).stdout  # the console destination printed it

        # nothing outside the pod's loopback reaches trackrelay: not the pod's own address ...
        probe = ("import socket, sys\n"
                 "def ok(host, port):\n"
                 "    try:\n"
                 "        socket.create_connection((host, port), timeout=3).close(); return 1\n"
                 "    except OSError: return 0\n"
                 "addr = socket.gethostbyname(socket.gethostname())\n"
                 "print(addr, ok('127.0.0.1', 8088), ok(addr, 8088), ok(addr, 8080))\n")
        addr, loop_ok, addr_relay, addr_app = podman("exec", app, "python3", "-c", probe).stdout.split()
        assert (loop_ok, addr_relay, addr_app) == ("1", "0", "1"), (addr, loop_ok, addr_relay, addr_app)
        # ... nor the host: only the app's port is published
        ports = podman("port", app).stdout
        assert f"127.0.0.1:{app_port}" in ports and "8088" not in ports, ports
        ips = pod_ips(pod)
        assert ips, "the pod has no address on a host network (expected kube play's bridge)"
        for ip in ips:  # the host reaches the pod's address (the app listens on all of them) ...
            socket.create_connection((ip, 8080), timeout=3).close()
            with pytest.raises(OSError):  # ... but trackrelay is not there
                socket.create_connection((ip, 8088), timeout=3).close()
        print(f"\nsidecar pod {pod}: pod address {', '.join(ips)}; app reached trackrelay on 127.0.0.1:8088")
    finally:
        podman("kube", "down", str(path), timeout=120, check=False)
        podman("secret", "rm", secret["metadata"]["name"], check=False)
        podman("volume", "prune", "-f", check=False)


def pod_ips(pod: str) -> list[str]:
    """The pod's addresses on the host's container networks (none with slirp4netns)."""
    infra = podman("pod", "inspect", "--format", "{{.InfraContainerID}}", pod).stdout.strip()
    nets = json.loads(podman("inspect", "--format", "{{json .NetworkSettings.Networks}}", infra).stdout or "{}")
    return [n["IPAddress"] for n in (nets or {}).values() if n.get("IPAddress")]
