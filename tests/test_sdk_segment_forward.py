"""End to end: the real Segment SDKs send through trackrelay's `segment` destination to a
Segment-compatible collector (a contract fake), which must get every event with its original
messageId, with the forward key or, in passthrough mode, with the key the SDK used."""

from __future__ import annotations

import json
import shutil
import sys

import pytest

from tests.fakes.base import FakeServer
from tests.fakes.segment import ACCEPTED, make_app
from tests.helpers import WRITE_KEY, TrackRelay
from tests.sdk_support import SDK_DIR, ensure_node_modules, python_sdk, run_json, wait_until

pytestmark = [pytest.mark.sdk, pytest.mark.timeout(180)]

FORWARD_KEY = "segment-forward-key"


def drive_python(tr: TrackRelay) -> list[dict]:
    out = run_json([sys.executable, str(SDK_DIR / "python_driver.py"),
                    json.dumps({"host": tr.url, "write_key": tr.write_key, "gzip": True, "run": "fwd-py"})],
                   timeout=90, env={"PYTHONPATH": str(python_sdk("2.4.0"))})
    assert out["errors"] == []
    return out["sent"]


def drive_node(tr: TrackRelay) -> list[dict]:
    ensure_node_modules()
    out = run_json([shutil.which("node") or "node", str(SDK_DIR / "node_driver.js"),
                    json.dumps({"package": "analytics-node-3.1", "host": tr.url, "writeKey": tr.write_key,
                                "run": "fwd-node"})], timeout=90)
    assert not out.get("errors"), out.get("errors")
    return out["sent"]


@pytest.mark.parametrize("mode", ["own-key", "passthrough"])
def test_sdk_events_reach_segment_with_original_message_ids(tmp_path, mode):
    with FakeServer(make_app({FORWARD_KEY, WRITE_KEY})) as fake:
        key = FORWARD_KEY if mode == "own-key" else "passthrough"
        dest = {"name": "segment", "type": "segment", "settings": {"write_key": key, "endpoint": fake.url},
                "delivery": {"flush_interval": 0.05}}
        with TrackRelay(tmp_path, destinations=[dest]) as tr:
            sent = drive_python(tr) + drive_node(tr)
            ids = {m["messageId"] for m in sent}
            accepted = fake.app[ACCEPTED]
            wait_until(lambda: ids <= {e["messageId"] for _, e in accepted}, timeout=30,
                       what="all SDK events forwarded")
            got = {e["messageId"]: (k, e) for k, e in accepted}
            expected_key = FORWARD_KEY if mode == "own-key" else WRITE_KEY
            for message in sent:
                k, event = got[message["messageId"]]
                assert k == expected_key
                assert event["type"] == message["type"]
                assert event["timestamp"] and event["originalTimestamp"]
                assert "writeKey" not in event and "receivedAt" not in event
                for field in ("userId", "anonymousId", "event", "groupId", "previousId"):
                    if message.get(field) is not None:
                        assert event[field] == message[field], field
                assert event["context"]["library"] == message["context"]["library"]
