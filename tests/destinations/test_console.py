from __future__ import annotations

import orjson

from destinations.base import Message
from destinations.console import ADAPTER
from tests.fixtures.messages import ALL_CALLS


def test_one_json_line_per_event():
    built = ADAPTER.build_requests([Message(m) for m in ALL_CALLS], ADAPTER.validate_settings({}))
    [req] = built.requests
    assert req.url == "stdout:" and req.messages == tuple(range(len(ALL_CALLS)))
    lines = req.body.decode().splitlines()
    assert [orjson.loads(line) for line in lines] == ALL_CALLS
