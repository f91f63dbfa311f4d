"""Config loading: interpolation, validation with file/line/path, `trackrelay check`."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from proxy.config import ConfigError, load_config, parse_duration, parse_size
from tests.helpers import ROOT


def write(tmp_path, text: str):
    path = tmp_path / "c.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_defaults_and_interpolation(tmp_path):
    path = write(tmp_path, """
        sources:
          - {name: web, write_keys: ["${WK}", "${WK2:-fallback}"]}
        destinations:
          - name: h
            type: webhook
            settings: {url: "${HOOK_URL:-http://127.0.0.1:9/x}", shared_secret: "${SECRET}"}
            delivery: {retry_window: forever, flush_interval: 50ms, max_batch_bytes: 1MiB}
    """)
    cfg = load_config(path, env={"WK": "k1", "SECRET": "s3"})
    assert cfg.sources[0].write_keys == ["k1", "fallback"]
    assert cfg.server.port == 8088 and cfg.storage.durability == "full"
    assert cfg.storage.max_bytes == 10 * 1024**3
    d = cfg.destinations[0]
    assert d.parsed_settings.shared_secret.get_secret_value() == "s3"
    eff = d.effective_delivery(cfg.delivery)
    assert eff.retry_window == float("inf") and eff.flush_interval == 0.05
    assert eff.max_batch_bytes == 1024 * 1024 and eff.retry_window > 0
    assert "s3" not in repr(cfg) and "k1" not in repr(cfg.sources[0])


def test_every_problem_is_listed_with_line_and_path(tmp_path):
    path = write(tmp_path, """
        server: {port: 99999}
        sources:
          - {name: web, write_keys: ["${MISSING}"]}
        destinations:
          - name: a
            type: webhook
            settings: {url: "not a url", bogus: 1}
          - name: a
            type: nope
    """)
    with pytest.raises(ConfigError) as err:
        load_config(path, env={})
    text = str(err.value)
    lines = text.splitlines()
    assert any("c.yaml:2: server.port" in line for line in lines), text
    assert any("c.yaml:4: sources.0.write_keys.0" in line and "MISSING" in line for line in lines), text
    assert any(":8: destinations.0.settings.url" in line for line in lines), text
    assert any(":8: destinations.0.settings.bogus" in line for line in lines), text
    assert any(":10: destinations.1.type" in line and "unknown destination type" in line for line in lines), text


def test_cross_checks_are_listed_with_field_errors_each_at_its_line(tmp_path):
    path = write(tmp_path, """
        server: {port: 99999}
        sources:
          - {name: web, write_keys: [SECRETKEY1]}
          - name: web
            write_keys:
              - other
              - SECRETKEY1
        destinations:
          - {name: h, type: console, sources: [web, ios]}
          - name: h
            type: webhook
            settings: {url: "not a url"}
    """)
    with pytest.raises(ConfigError) as err:
        load_config(path, env={})
    text = str(err.value)
    lines = text.splitlines()
    assert any("c.yaml:2: server.port" in line for line in lines), text
    assert any(":13: destinations.1.settings.url" in line for line in lines), text
    assert any(":5: sources.1.name" in line and "'web' is already used by sources.0" in line for line in lines), text
    assert any(":8: sources.1.write_keys.1" in line and "sources.0.write_keys.0" in line for line in lines), text
    assert any(":10: destinations.0.sources.1" in line and "unknown source 'ios'" in line for line in lines), text
    assert any(":11: destinations.1.name" in line and "'h' is already used" in line for line in lines), text
    assert "(top)" not in text and "SECRETKEY1" not in text


def test_cross_checks_hold_for_a_config_built_in_code():
    from pydantic import ValidationError

    from proxy.config import Config

    with pytest.raises(ValidationError, match="unknown source 'ios'"):
        Config.model_validate({"sources": [{"name": "web", "write_keys": ["k"]}],
                               "destinations": [{"name": "c", "type": "console", "sources": ["ios"]}]})


def test_tls_files_must_exist_and_unknown_write_key_policy(tmp_path):
    path = write(tmp_path, f"""
        server:
          tls: {{cert_file: {tmp_path}/missing.pem, key_file: {tmp_path}/missing.key}}
          unknown_write_key: ignore
        sources: [{{name: web, write_keys: [k]}}]
    """)
    with pytest.raises(ConfigError) as err:
        load_config(path, env={})
    lines = str(err.value).splitlines()
    assert any(":3: server.tls.cert_file" in line and "missing.pem" in line for line in lines), lines
    assert any(":3: server.tls.key_file" in line for line in lines), lines
    assert any(":4: server.unknown_write_key" in line and "'reject' or 'accept_and_drop'" in line
               for line in lines), lines
    cfg = load_config(write(tmp_path, "sources: [{name: web, write_keys: [k]}]\n"), env={})
    assert cfg.server.tls is None and cfg.server.unknown_write_key == "reject"


def test_invalid_yaml_reports_the_line(tmp_path):
    path = write(tmp_path, "sources:\n  - {name: web\n  bad: [\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "invalid YAML" in str(err.value) and "c.yaml:" in str(err.value)


def test_secret_values_never_in_errors(tmp_path):
    path = write(tmp_path, """
        sources: [{name: web, write_keys: [k]}]
        destinations:
          - {name: s, type: segment, settings: {write_key: "SUPERSECRET", region: mars}}
    """)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "SUPERSECRET" not in str(err.value) and "region" in str(err.value)


@pytest.mark.parametrize("value,expected",
                         [("500KB", 500_000), ("10GiB", 10 * 1024**3), (32768, 32768), ("1mb", 10**6)])
def test_sizes(value, expected):
    assert parse_size(value) == expected


def test_size_defaults_and_messages_use_the_readmes_units():
    from proxy.config import LimitsConfig, format_size

    limits = LimitsConfig()
    # README: "32 KiB per event, 500 KiB per request"; KB would be 32,000 / 500,000
    assert limits.max_event_bytes == parse_size("32KiB") and limits.max_request_bytes == parse_size("500KiB")
    assert format_size(limits.max_event_bytes) == "32768 bytes (32 KiB)"
    assert format_size(512_000) == "512000 bytes (500 KiB)"
    assert format_size(500_000) == "500000 bytes (500 KB)" and format_size(1001) == "1001 bytes"
    readme = (ROOT / "README.md").read_text()
    assert "max_event_bytes: 32KiB" in readme and "max_request_bytes: 500KiB" in readme


@pytest.mark.parametrize("value,expected", [("250ms", 0.25), ("4h", 14400), (3, 3.0), ("1.5s", 1.5), ("2d", 172800)])
def test_durations(value, expected):
    assert parse_duration(value) == expected


def test_check_command(tmp_path):
    ok = subprocess.run([sys.executable, "-m", "proxy", "check", "--config", str(ROOT / "config/trackrelay.yaml")],
                        capture_output=True, text=True, cwd=ROOT)
    assert ok.returncode == 0 and "OK" in ok.stdout
    bad = write(tmp_path, "sources: []\n")
    out = subprocess.run([sys.executable, "-m", "proxy", "check", "--config", str(bad)],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2 and "sources" in out.stderr


def test_help_lists_only_public_commands():
    out = subprocess.run([sys.executable, "-m", "proxy", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0
    assert "serve" in out.stdout and "check" in out.stdout and "dead-letters" in out.stdout
    assert "SUPPRESS" not in out.stdout and "ingest-worker" not in out.stdout
    # the internal command still parses (serve starts it for server.workers > 1)
    worker = subprocess.run([sys.executable, "-m", "proxy", "ingest-worker"], capture_output=True, text=True, cwd=ROOT)
    assert worker.returncode == 2 and "--notify-fd" in worker.stderr
