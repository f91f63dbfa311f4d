from __future__ import annotations

import email.utils
import time

import pytest

from destinations.base import Request, Response, Verdict, default_classify, parse_retry_after

REQ = Request("POST", "http://x", {}, b"{}", (0, 1))


@pytest.mark.parametrize(
    "status,verdict",
    [(200, Verdict.OK), (202, Verdict.OK), (299, Verdict.OK), (408, Verdict.RETRY), (429, Verdict.RETRY),
     (500, Verdict.RETRY), (502, Verdict.RETRY), (503, Verdict.RETRY), (599, Verdict.RETRY),
     (501, Verdict.PERMANENT), (505, Verdict.PERMANENT), (400, Verdict.PERMANENT),
     (401, Verdict.PERMANENT), (404, Verdict.PERMANENT), (413, Verdict.PERMANENT), (301, Verdict.PERMANENT)],
)
def test_default_classification(status: int, verdict: Verdict) -> None:
    outcome = default_classify(REQ, Response(status, {}, b"body"))
    assert outcome.verdict is verdict
    if verdict is not Verdict.OK:
        assert f"HTTP {status}" in outcome.reason and "body" in outcome.reason


def test_retry_after_seconds_and_http_date() -> None:
    assert parse_retry_after("12") == 12
    assert parse_retry_after("0.5") == 0.5
    assert parse_retry_after("-3") == 0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
    now = time.time()
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert 28 <= parse_retry_after(date, now=now) <= 31
    out = default_classify(REQ, Response(429, {"retry-after": "4"}, b""))
    assert out.verdict is Verdict.RETRY and out.retry_after == 4
    assert default_classify(REQ, Response(400, {"Retry-After": "4"}, b"")).retry_after is None
