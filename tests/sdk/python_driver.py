"""Drive the real segment-analytics-python client (unchanged) against a trackrelay server.

Run by tests/test_sdk_python.py in a subprocess whose PYTHONPATH holds ONE pinned SDK version
(pip --target dir), so 2.3.x and 2.4.x never share an interpreter:

    PYTHONPATH=.cache/sdk/python-2.4.0 python tests/sdk/python_driver.py '{"host": ..., "write_key": ..., "gzip": true}'

Options (JSON in argv[1]): host, write_key, gzip (bool), run (a label put into every event),
clock_skew_seconds (simulate a device clock that is off: the SDK's own `datetime` is swapped for one
whose now() is shifted, so both the events' "timestamp" and the request's "sentAt" carry the skew,
exactly as on a machine with a wrong clock; the SDK code itself is untouched).

Prints one JSON object on stdout: {"version", "sent": [message dicts as the SDK enqueued them],
"resent": [messageIds sent a second time, in a later request], "errors": [...]}. Exit code 0 even if
delivery failed; the test asserts on "errors".
"""

from __future__ import annotations

import datetime as _dt
import json
import sys


def main() -> None:
    opts = json.loads(sys.argv[1])
    skew = float(opts.get("clock_skew_seconds") or 0)

    import segment.analytics.client as client_mod
    import segment.analytics.request as request_mod
    from segment.analytics import Client
    from segment.analytics.version import VERSION

    if skew:
        real = _dt.datetime

        class SkewedDatetime(real):  # type: ignore[misc,valid-type]
            @classmethod
            def now(cls, tz=None):  # same signature as datetime.now
                d = real.now(tz) + _dt.timedelta(seconds=skew)
                # an instance of this class: the SDK checks isinstance(timestamp, <its datetime>)
                return cls(d.year, d.month, d.day, d.hour, d.minute, d.second, d.microsecond, d.tzinfo)

        client_mod.datetime = SkewedDatetime
        request_mod.datetime = SkewedDatetime

    errors: list[str] = []

    def on_error(exc, batch):  # called by the consumer thread when a batch finally fails
        errors.append(f"{type(exc).__name__}: {exc} (batch of {len(batch)})")

    client = Client(
        opts["write_key"],
        host=opts["host"],
        gzip=bool(opts.get("gzip")),
        on_error=on_error,
        max_retries=2,
        timeout=10,
        upload_interval=0.2,
    )
    run = opts.get("run", "py")
    sent: list[dict] = []

    def keep(result):
        ok, msg = result
        if not ok:
            errors.append(f"enqueue refused: {msg!r}")
        sent.append(json.loads(json.dumps(msg, default=str)))

    ctx_group = {"groupId": "g1", "run": run}
    # One of each call.
    keep(client.identify("u1", {"email": "u1@example.com", "name": "Ursula One", "plan": "pro"}, context=ctx_group))
    keep(client.track("u1", "Order Completed", {"order_id": "o1", "revenue": 10.5, "currency": "USD"},
                      context=ctx_group, integrations={"All": False, "Mixpanel": True}))
    keep(client.page("u1", "Docs", "Home", {"url": "https://example.com/docs", "path": "/docs"}, context=ctx_group))
    keep(client.screen("u1", "Mobile", "Settings", {"variant": "dark"}, context=ctx_group))
    keep(client.group("u1", "g1", {"name": "Acme", "employees": 42}, context=ctx_group))
    keep(client.alias("anon-previous-1", "u1", context=ctx_group))
    client.flush()

    # A batch of several events in one request: anonymous ids, an explicit (past) timestamp,
    # a client-supplied context.ip (must be kept), context.direct (server should fill context.ip).
    past = client_mod.datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=_dt.UTC)
    for i in range(7):
        keep(client.track(anonymous_id=f"anon-{i}", event="Item Viewed", properties={"i": i, "run": run},
                          context={"run": run}))
    keep(client.track("u2", "Backfilled", {"k": "v"}, context={"run": run}, timestamp=past))
    keep(client.track("u2", "Ip Given", context={"run": run, "ip": "203.0.113.9"}))
    keep(client.track("u2", "Direct Call", context={"run": run, "direct": True}))
    client.flush()

    # A client resending events whose 200 it never saw: the same messages (same messageId and timestamp) again,
    # in a later request. trackrelay must deduplicate them on (source, messageId).
    resent: list[str] = []
    for msg in (sent[1], sent[6]):  # two tracks: "Order Completed" (first request), "Item Viewed" (second)
        ok, _ = client.track(msg.get("userId"), msg["event"], msg.get("properties"),
                             context=msg.get("context"), message_id=msg["messageId"],
                             timestamp=client_mod.datetime.fromisoformat(msg["timestamp"]),
                             anonymous_id=msg.get("anonymousId"), integrations=msg.get("integrations"))
        if not ok:
            errors.append(f"resend of {msg['messageId']} refused")
        resent.append(msg["messageId"])
    client.flush()
    client.join()

    print(json.dumps({"version": VERSION, "sent": sent, "resent": resent, "errors": errors}))


if __name__ == "__main__":
    main()
