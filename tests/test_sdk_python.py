"""segment-analytics-python, unchanged, pointed at a running trackrelay (issue 2, "Tests (real parts)").

Each pinned version lives in its own pip --target dir (.cache/sdk/python-<v>) and runs
tests/sdk/python_driver.py in a subprocess: identify/track/page/screen/group/alias in one request, then a
batch of 10 events in a second one (anonymous ids, a back-dated timestamp, a client-supplied context.ip,
context.direct), then two of those messages again (same messageId) in a later request, as a client that
lost the responses would: they must not be stored twice. 2.2.x sends the write key as Basic auth only,
2.3.x in the body only, 2.4.x both; gzip on and off.
Some runs simulate a device clock that is off, so the skew correction is visible.
"""

from __future__ import annotations

import json
import sys
from datetime import timedelta

import pytest

from tests.helpers import TrackRelay
from tests.sdk_support import (
    SDK_DIR,
    assert_enriched,
    assert_shared_received_at,
    assert_stored_once,
    parse_ts,
    python_sdk,
    requests_by_sent_at,
    run_json,
    wait_for_stored,
)

pytestmark = [pytest.mark.sdk, pytest.mark.timeout(180)]

VERSIONS = ("2.4.0", "2.3.6", "2.2.3")


@pytest.fixture(scope="session")
def python_sdks() -> dict[str, str]:
    """Each pinned segment-analytics-python in its own --target dir (installed once, reused from .cache/sdk)."""
    return {version: str(python_sdk(version)) for version in VERSIONS}


@pytest.mark.parametrize(
    ("version", "gzip", "skew"),
    [
        ("2.4.0", True, 0),
        ("2.4.0", False, 5400),  # device clock 90 min fast
        ("2.3.6", True, -2700),  # device clock 45 min slow
        ("2.3.6", False, 0),
        ("2.2.3", False, 0),  # older: Basic auth header only, no writeKey in the body
    ],
    ids=["2.4.0-gzip", "2.4.0-plain-fastclock", "2.3.6-gzip-slowclock", "2.3.6-plain", "2.2.3-plain"],
)
def test_python_sdk_events_stored_once_and_enriched(tmp_path, python_sdks, version, gzip, skew):
    with TrackRelay(tmp_path) as tr:
        opts = {"host": tr.url, "write_key": tr.write_key, "gzip": gzip, "run": f"py-{version}",
                "clock_skew_seconds": skew}
        out = run_json(
            [sys.executable, str(SDK_DIR / "python_driver.py"), json.dumps(opts)],
            timeout=90, env={"PYTHONPATH": python_sdks[version]},
        )
        assert out["version"] == version
        assert out["errors"] == [], f"the SDK reported delivery errors: {out['errors']}\n{tr.logs()[-3000:]}"
        sent = out["sent"]
        assert len(sent) == 16
        assert {m["type"] for m in sent} == {"identify", "track", "page", "screen", "group", "alias"}
        ids = [m["messageId"] for m in sent]
        assert len(out["resent"]) == 2 and set(out["resent"]) <= set(ids)

        events = wait_for_stored(tr, ids)
        stored = assert_stored_once(events, ids)
        assert len(events) == len(sent), f"{len(events) - len(sent)} unexpected extra stored events"

        for message in sent:
            direct = (message.get("context") or {}).get("direct") is True
            assert_enriched(stored[message["messageId"]], message, ip="peer" if direct else "absent", channel="server")
            assert stored[message["messageId"]]["context"]["library"] == {"name": "analytics-python",
                                                                          "version": version}

        # At least two requests (one per flush; the SDK's consumer may split a flush in two), one of them a
        # real multi-event batch; the events of each request share one receivedAt.
        groups = requests_by_sent_at(stored.values())
        assert len(groups) >= 2 and max(len(g) for g in groups) >= 5, f"unexpected request grouping: {groups}"
        assert_shared_received_at(stored, groups)

        # Skew correction: timestamps land on the server's clock whatever the device clock says.
        for message in sent:
            event = stored[message["messageId"]]
            original = parse_ts(event["originalTimestamp"])
            corrected = parse_ts(event["timestamp"])
            if message.get("event") == "Backfilled":
                # explicit past timestamp: the offset to the client's sentAt is kept, the skew removed
                assert abs(corrected - (original - timedelta(seconds=skew))) < timedelta(seconds=10), event
            else:
                received = parse_ts(event["receivedAt"])
                assert timedelta(0) <= received - corrected < timedelta(seconds=10), event
                assert abs(original - corrected - timedelta(seconds=skew)) < timedelta(seconds=10), event
