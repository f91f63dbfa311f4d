"""@segment/analytics-node, unchanged, pointed at a running trackrelay (issue 2, "Tests (real parts)").

tests/sdk/node_driver.js sends identify/track/page/screen/group/alias and 7 more tracks with flushAt=3
(so several /v1/batch requests), then two of those messages again (same messageId) in a later request, as a
client that lost the responses would (they must not be stored twice), then closeAndFlush. 3.0.0 sends the
write key in the body only, 3.1.0 body + Basic auth. The 3.0.0 run simulates a device clock one hour slow, so
the skew correction is visible.
"""

from __future__ import annotations

import json
import shutil
from datetime import timedelta

import pytest

from tests.helpers import TrackRelay
from tests.sdk_support import (
    SDK_DIR,
    assert_enriched,
    assert_shared_received_at,
    assert_stored_once,
    ensure_node_modules,
    parse_ts,
    run_json,
    wait_for_stored,
)

pytestmark = [pytest.mark.sdk, pytest.mark.timeout(180)]


@pytest.fixture(scope="session")
def node_modules():
    return ensure_node_modules()


@pytest.mark.parametrize(
    ("package", "version", "skew_ms"),
    [
        ("analytics-node-3.1", "3.1.0", 0),
        ("analytics-node-3.0", "3.0.0", -3_600_000),  # device clock one hour slow
    ],
    ids=["3.1.0", "3.0.0-slowclock"],
)
def test_node_sdk_events_stored_once_and_enriched(tmp_path, node_modules, package, version, skew_ms):
    with TrackRelay(tmp_path) as tr:
        opts = {"package": package, "host": tr.url, "writeKey": tr.write_key, "run": f"node-{version}",
                "flushAt": 3, "clockSkewMs": skew_ms}
        out = run_json(
            [shutil.which("node") or "node", str(SDK_DIR / "node_driver.js"), json.dumps(opts)],
            timeout=60, env={"NODE_PATH": str(node_modules)},
        )
        assert out["version"] == version
        assert out["errors"] == [], f"the SDK reported delivery errors: {out['errors']}\n{tr.logs()[-3000:]}"
        sent = out["sent"]
        assert len(sent) == 13
        assert {m["type"] for m in sent} == {"identify", "track", "page", "screen", "group", "alias"}
        ids = [m["messageId"] for m in sent]

        # The SDK really batched: several /v1/batch requests, each with up to flushAt events; then the two
        # resent messages (same messageIds) in a later request.
        requests = out["requests"]
        resent = out["resent"]
        assert len(resent) == 2 and set(resent) <= set(ids)
        assert all(r["url"] == tr.url + "/v1/batch" for r in requests), requests
        assert requests[-1]["events"] == resent, requests[-1]
        first_round = requests[:-1]
        assert sorted(i for r in first_round for i in r["events"]) == sorted(ids), "SDK sent something else?"
        assert len(first_round) >= 4 and max(len(r["events"]) for r in first_round) > 1

        events = wait_for_stored(tr, ids)
        stored = assert_stored_once(events, ids)
        assert len(events) == len(sent), f"{len(events) - len(sent)} unexpected extra stored events"
        for message in sent:
            assert_enriched(stored[message["messageId"]], message, ip="absent", channel="server")
            assert stored[message["messageId"]]["context"]["library"] == {
                "name": "@segment/analytics-node", "version": version}
        assert_shared_received_at(stored, [r["events"] for r in first_round])

        skew = timedelta(milliseconds=skew_ms)
        for message in sent:
            event = stored[message["messageId"]]
            original = parse_ts(event["originalTimestamp"])
            corrected = parse_ts(event["timestamp"])
            if message.get("event") == "Backfilled":
                assert abs(corrected - (original - skew)) < timedelta(seconds=10), event
            else:
                assert timedelta(0) <= parse_ts(event["receivedAt"]) - corrected < timedelta(seconds=10), event
                assert abs(original - corrected - skew) < timedelta(seconds=10), event
