"""`trackrelay spool ...` and `check` against a real spool: stats, events, destinations removed
from the config (reported, forgotten), migrate, and stale metrics directories of killed servers."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import orjson
import yaml

from tests.helpers import ROOT, WRITE_KEY, TrackRelay

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "spool_v0" / "spool.db"


def cli(config: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "proxy", *args, "--config", str(config)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def hook(name: str) -> dict:
    return {"name": name, "type": "webhook", "settings": {"url": f"http://127.0.0.1:9/{name}"},
            "delivery": {"backoff_initial": 600}}


def test_stats_events_and_forgetting_a_removed_destination(tmp_path):
    tr = TrackRelay(tmp_path, destinations=[hook("keep"), hook("gone")])
    with tr:
        assert tr.post("/v1/batch", {"writeKey": WRITE_KEY, "batch": [
            {"type": "track", "event": "E", "userId": "u", "messageId": f"c-{i}"} for i in range(5)]})[0] == 200
        # safe while the server runs: the CLI goes through the port as an operator
        out = cli(tr.config_path, "spool", "stats", "--json")
        assert out.returncode == 0, out.stderr
        stats = orjson.loads(out.stdout)
        assert stats["engine"] == "embedded" and stats["events"] == 5 and stats["bytes"] > 0
        assert set(stats["destinations"]) == {"keep", "gone"}
        events = [orjson.loads(line) for line in cli(tr.config_path, "spool", "events").stdout.splitlines()]
        assert [e["messageId"] for e in events] == [f"c-{i}" for i in range(5)]
        assert events[0]["receivedAt"] and events[0]["_trackrelay"]["destinations"] == ["keep", "gone"]
    config = yaml.safe_load(tr.config_path.read_text())
    config["destinations"] = [hook("keep")]
    tr.config_path.write_text(yaml.safe_dump(config))
    out = cli(tr.config_path, "check")
    assert out.returncode == 0 and "'gone', which is not in this config" in out.stdout, out.stdout
    assert cli(tr.config_path, "spool", "forget", "keep").returncode == 2, "an enabled destination needs --force"
    out = cli(tr.config_path, "spool", "forget", "gone")
    assert out.returncode == 0 and "gone: cursor and" in out.stdout, out.stderr
    assert "not in this config" not in cli(tr.config_path, "check").stdout
    with tr:  # and the server starts without complaining about it
        assert '"spool_state_of_unconfigured_destination"' not in tr.logs()


def test_spool_migrate_converts_a_v0_spool_and_then_has_nothing_to_do(tmp_path):
    tr = TrackRelay(tmp_path, destinations=[hook("retry"), hook("dead")])
    tr.data_dir.mkdir(parents=True)
    shutil.copy(FIXTURE, tr.data_dir / "spool.db")
    out = cli(tr.config_path, "spool", "migrate")
    assert out.returncode == 0 and "migrated" in out.stdout, out.stderr
    assert (tr.data_dir / "spool.db.v0-migrated").exists() and not (tr.data_dir / "spool.db").exists()
    assert "nothing to migrate" in cli(tr.config_path, "spool", "migrate").stdout
    stats = orjson.loads(cli(tr.config_path, "spool", "stats", "--json").stdout)
    assert stats["events"] == 13 and stats["destinations"]["dead"]["dead"] == 13
    assert stats["destinations"]["retry"]["retries"] == 4


def test_a_killed_servers_metrics_directory_is_removed_at_the_next_start(tmp_path):
    # a directory as a SIGKILLed server with server.workers > 1 leaves it: its pid no longer runs
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = Path(tempfile.mkdtemp(prefix=f"trackrelay-metrics-{dead.pid}-"))
    (stale / "counter_1.db").write_bytes(b"x" * 100)
    mine = Path(tempfile.mkdtemp(prefix=f"trackrelay-metrics-{os.getpid()}-"))  # a live process's: kept
    try:
        with TrackRelay(tmp_path, server={"workers": 2}):
            assert not stale.exists()
            assert mine.exists()
    finally:
        shutil.rmtree(stale, ignore_errors=True)
        shutil.rmtree(mine, ignore_errors=True)
