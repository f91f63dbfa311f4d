"""Helpers for the container tests: podman calls and a trackrelay container on a volume.

These tests run only through `make test-image` (tests/image/run.sh), which builds the images and
exports TRACKRELAY_IMAGE, TRACKRELAY_APP_IMAGE and the podman configuration (CONTAINERS_CONF,
CONTAINERS_STORAGE_CONF)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fakes.base import free_port

IMAGE = os.environ.get("TRACKRELAY_IMAGE", "")
APP_IMAGE = os.environ.get("TRACKRELAY_APP_IMAGE", "")
WRITE_KEY = "image-test-write-key"
# slirp4netns gives the container the host's loopback at 10.0.2.2, so the recording receiver
# stays on the host's 127.0.0.1 and the published port is bound to 127.0.0.1 only.
NETWORK = "slirp4netns:allow_host_loopback=true"
HOST_FROM_CONTAINER = "10.0.2.2"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if IMAGE and APP_IMAGE:
        return
    skip = pytest.mark.skip(reason="container tests: run them with `make test-image` (builds the images)")
    for item in items:
        if "tests/image/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(skip)


def podman(*args: str, check: bool = True, timeout: float = 120,
           input: str | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout, input=input)
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} -> {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def inspect(name: str, template: str) -> str:
    return podman("inspect", "--format", template, name).stdout.strip()


def http(method: str, url: str, body: Any = None, auth: str | None = WRITE_KEY,
         timeout: float = 10) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if auth is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{auth}:".encode()).decode()
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            payload = r.read()
            return r.status, json.loads(payload) if payload else None
    except urllib.error.HTTPError as e:
        payload = e.read()
        try:
            return e.code, json.loads(payload)
        except ValueError:
            return e.code, payload


class Container:
    """A trackrelay container from the image under test, its spool on a named volume, its config
    mounted at /etc/trackrelay/trackrelay.yaml, published on 127.0.0.1:PORT."""

    def __init__(self, tmp_path: Path, receiver_port: int, *, shutdown_grace: str = "5s",
                 delivery: dict[str, Any] | None = None) -> None:
        tag = uuid.uuid4().hex[:8]
        self.name = f"trackrelay-test-{tag}"
        self.volume = f"trackrelay-test-{tag}"
        self.port = free_port()
        self.config_path = tmp_path / "trackrelay.yaml"
        config = {
            "server": {"host": "0.0.0.0", "port": 8088, "shutdown_grace": shutdown_grace},
            "storage": {"path": "/data", "retention": "1h"},
            "sources": [{"name": "web", "write_keys": ["${WEB_WRITE_KEY}"]}],
            "destinations": [{
                "name": "hook", "type": "webhook", "enabled": True,
                "settings": {"url": f"http://{HOST_FROM_CONTAINER}:{receiver_port}/hook", "batch_size": 20},
                "delivery": {"timeout": 5, "backoff_initial": 0.2, "backoff_max": 1, **(delivery or {})},
            }],
        }
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.config_path.chmod(0o644)
        podman("volume", "create", self.volume)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def run(self, timeout: float = 60) -> Container:
        podman("rm", "-f", "--ignore", self.name)
        podman("run", "-d", "--name", self.name, "--network", NETWORK,
               "-p", f"127.0.0.1:{self.port}:8088", "-v", f"{self.volume}:/data",
               "-v", f"{self.config_path}:/etc/trackrelay/trackrelay.yaml:ro",
               "-e", f"WEB_WRITE_KEY={WRITE_KEY}", IMAGE)
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if inspect(self.name, "{{.State.Running}}") != "true":
                raise AssertionError(f"container exited:\n{self.logs()[-4000:]}")
            try:
                if http("GET", self.url + "/readyz", auth=None, timeout=2)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.25)
        raise AssertionError(f"trackrelay not ready in {timeout}s:\n{self.logs()[-4000:]}")

    def logs(self) -> str:
        result = podman("logs", self.name, check=False)
        return result.stdout + result.stderr

    def exec(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return podman("exec", self.name, *cmd, check=check)

    def remove(self) -> None:
        podman("rm", "-f", "--ignore", "--time", "0", self.name, check=False)
        podman("volume", "rm", "-f", self.volume, check=False)
