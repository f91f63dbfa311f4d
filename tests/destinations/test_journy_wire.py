"""journy.io through a running trackrelay: Segment batch in, journy.io API calls out (contract fake)."""

from __future__ import annotations

from tests.fakes.base import FakeServer
from tests.fakes.journy import make_app
from tests.helpers import TrackRelay

KEY = "jy_wire_key"
DELIVERY = {"flush_interval": 0.05, "backoff_initial": 0.05, "backoff_max": 0.5}


def test_identify_group_track_reach_journy(tmp_path) -> None:
    with FakeServer(make_app(KEY)) as fake:
        destination = {"name": "jy", "type": "journy", "delivery": DELIVERY,
                       "settings": {"api_key": KEY, "endpoint": fake.url}}
        with TrackRelay(tmp_path, destinations=[destination]) as tr:
            batch = [
                {"type": "identify", "userId": "u-7", "traits": {"email": "u7@example.com", "plan": "pro"}},
                {"type": "group", "userId": "u-7", "groupId": "co-1",
                 "traits": {"name": "Co One", "website": "https://co.one"}},
                {"type": "track", "userId": "u-7", "event": "Report Exported",
                 "properties": {"format": "csv", "rows": 10},
                 "context": {"groupId": "co-1"}},
                {"type": "track", "userId": "u-7", "event": "Profile Edited", "context": {"groupId": "co-1"},
                 "integrations": {"Journy.io": {"userOnly": True}}},
                {"type": "screen", "userId": "u-7", "name": "Home"},
                {"type": "alias", "userId": "u-7", "previousId": "anon"},
            ]
            status, body, _ = tr.post("/v1/batch", {"writeKey": tr.write_key, "batch": batch})
            assert status == 200, body
            fake.wait_for(lambda _: len(fake.app["events"]) >= 2, timeout=20)

    app = fake.app
    assert app["users"]["u-7"] == {"plan": "pro"}
    assert app["accounts"]["co-1"] == {"name": "Co One", "website": "https://co.one"}
    assert ("co-1", "u-7") in app["members"]
    events = {e["name"]: e for e in app["events"]}
    assert set(events) == {"Report Exported", "Profile Edited"}  # screen and alias skipped
    assert events["Report Exported"]["identification"] == {"user": {"userId": "u-7"}, "account": {"accountId": "co-1"}}
    assert events["Report Exported"]["metadata"] == {"format": "csv", "rows": 10}
    assert events["Profile Edited"]["identification"] == {"user": {"userId": "u-7"}}
    upsert = next(b for p, b in app["accepted"] if p == "/accounts/upsert")
    assert upsert["identification"] == {"accountId": "co-1", "domain": "co.one"}
    for request in fake.snapshot():
        assert request.headers["X-Api-Key"] == KEY
