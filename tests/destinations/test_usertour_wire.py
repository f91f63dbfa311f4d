"""Usertour through a running trackrelay: Segment batch in, Usertour API v2 calls out (contract fake)."""

from __future__ import annotations

from tests.fakes.base import FakeServer
from tests.fakes.usertour import make_app
from tests.helpers import TrackRelay

TOKEN = "utp_wire_token"
DELIVERY = {"flush_interval": 0.05, "backoff_initial": 0.05, "backoff_max": 0.5}


def test_identify_group_track_reach_usertour(tmp_path) -> None:
    with FakeServer(make_app(TOKEN, "proj1", "env1")) as fake:
        destination = {"name": "ut", "type": "usertour", "delivery": DELIVERY,
                       "settings": {"api_token": TOKEN, "project_id": "proj1", "environment_id": "env1",
                                    "endpoint": fake.url}}
        with TrackRelay(tmp_path, destinations=[destination]) as tr:
            batch = [
                {"type": "identify", "userId": "u-7",
                 "traits": {"email": "u7@example.com", "created_at": "2026-01-01T00:00:00Z"}},
                {"type": "group", "userId": "u-7", "groupId": "co-1", "traits": {"name": "Co One", "plan": "team"},
                 "integrations": {"Usertour": {"membership": {"role": "owner"}}}},
                {"type": "track", "userId": "u-7", "event": "Report Exported", "properties": {"format": "csv"},
                 "context": {"groupId": "co-1"}},
                {"type": "track", "userId": "u-7", "event": "Profile Edited", "context": {"groupId": "co-1"},
                 "integrations": {"Usertour": {"userOnly": True}}},
                {"type": "page", "userId": "u-7", "name": "Home"},
                {"type": "alias", "userId": "u-7", "previousId": "anon"},
            ]
            status, body, _ = tr.post("/v1/batch", {"writeKey": tr.write_key, "batch": batch})
            assert status == 200, body
            fake.wait_for(lambda _: len(fake.app["events"]) >= 2, timeout=20)

    app = fake.app
    assert app["users"]["u-7"] == {"email": "u7@example.com", "signed_up_at": "2026-01-01T00:00:00Z"}
    assert app["companies"]["co-1"] == {"name": "Co One", "plan": "team"}
    assert app["memberships"][("co-1", "u-7")] == {"role": "owner"}
    events = {e["codeName"]: e for e in app["events"]}
    assert set(events) == {"Report_Exported", "Profile_Edited"}  # page and alias skipped
    assert events["Report_Exported"]["companyId"] == "co-1"
    assert events["Report_Exported"]["attributes"] == {"format": "csv"}
    assert events["Profile_Edited"]["companyId"] is None  # userOnly
    for request in fake.snapshot():
        assert request.headers["Authorization"] == f"Bearer {TOKEN}"
