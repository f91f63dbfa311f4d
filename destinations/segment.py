"""Segment (or any Segment-compatible collector): forward events to the Tracking API batch endpoint.

API: POST {endpoint}/v1/batch with {"batch": [...], "sentAt": ...}; docs:
https://segment.com/docs/connections/sources/catalog/libraries/server/http-api/ . Auth: HTTP Basic
with the write key as user and an empty password. ``write_key: passthrough`` forwards each event
with the key it arrived with (the first-party proxy case): events are grouped by key.
Hosts: US https://api.segment.io, EU https://events.eu1.segmentapis.com; ``endpoint`` takes any
Segment-compatible collector (another trackrelay included).

Limits (Segment's): 32 KB per event (larger events are dead-lettered, not sent to fail), 500 KB
and 2,500 events per request.

Routing: like analytics.js's own Segment.io hop, ``integrations.All: false`` does not stop an event
from reaching Segment (it selects Segment's downstream destinations); only an explicit
``"Segment": false`` (or the destination's own name) does.

Mapping: every call type is forwarded with its messageId and context (Segment dedups on messageId).
``receivedAt`` is dropped: the collector sets its own.

Event time across a delivery delay: Segment computes ``timestamp = receivedAt - (sentAt -
originalTimestamp)``, an item's own ``sentAt`` winning over the batch's. Forwarding the client's
values would shift every event by the time it waited here (an event delivered 2 h late after an
outage would land 2 h late). So each item goes out with ``originalTimestamp`` = trackrelay's
corrected ``timestamp`` (already on the server clock) and no ``sentAt`` of its own, and the batch
``sentAt`` is the moment of each attempt (``destinations.base.SENT_AT``, stamped by delivery):
Segment's correction then yields the original event time whatever the delay, up to the network
transit time. The device-clock ``originalTimestamp`` is not forwarded (Segment's formula needs
the server-clock one). Responses: shared default classification.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Literal

from pydantic import AnyHttpUrl, Field, SecretStr

from destinations.base import (
    SENT_AT,
    Adapter,
    BatchLimits,
    Built,
    DestinationSettings,
    Message,
    Reject,
    Request,
    chunk_by_limits,
    json_body,
)

MAX_EVENT_BYTES = 32 * 1024
MAX_REQUEST_BYTES = 500 * 1024
MAX_EVENTS = 2500
REGIONS = {"us": "https://api.segment.io", "eu": "https://events.eu1.segmentapis.com"}


class Settings(DestinationSettings):
    type: Literal["segment"] = Field("segment", description="Adapter type.")
    write_key: SecretStr = Field(
        description="Write key of the Segment source to forward to, or `passthrough` to forward each event with the "
                    "key it arrived with."
    )
    region: Literal["us", "eu"] = Field("us", description="Segment region, used when `endpoint` is not set.")
    endpoint: AnyHttpUrl | None = Field(
        None, description="Base URL of the collector (default: the region's Segment API host)."
    )
    max_request_bytes: int = Field(
        MAX_REQUEST_BYTES, ge=10_000, le=MAX_REQUEST_BYTES, description="Upper bound on a request body."
    )

    example = {"type": "segment", "write_key": "sk_live_forward_key"}

    @property
    def base_url(self) -> str:
        return str(self.endpoint).rstrip("/") if self.endpoint else REGIONS[self.region]

    @property
    def passthrough(self) -> bool:
        return self.write_key.get_secret_value() == "passthrough"


def _basic(key: str) -> str:
    return "Basic " + base64.b64encode(f"{key}:".encode()).decode()


def build_requests(messages: Sequence[Message], settings: Settings) -> Built:
    built = Built()
    by_key: dict[str, list[tuple[int, bytes]]] = {}
    for i, msg in enumerate(messages):
        if settings.passthrough:
            if msg.write_key is None:
                built.rejects.append(Reject(i, "write_key is passthrough but the event's source key is unknown"))
                continue
            key = msg.write_key.get_secret_value()
        else:
            key = settings.write_key.get_secret_value()
        event = {k: v for k, v in msg.event.items() if k not in ("receivedAt", "sentAt")}
        if isinstance(event.get("timestamp"), str) and event["timestamp"]:
            event["originalTimestamp"] = event["timestamp"]
        encoded = json_body(event)
        if len(encoded) > MAX_EVENT_BYTES:
            built.rejects.append(Reject(i, f"event is {len(encoded)} bytes; Segment accepts at most {MAX_EVENT_BYTES}"))
            continue
        by_key.setdefault(key, []).append((i, encoded))
    url = settings.base_url + "/v1/batch"
    for key, items in by_key.items():
        for chunk in chunk_by_limits(items, MAX_EVENTS, settings.max_request_bytes - 100):
            body = b'{"batch":[' + b",".join(b for _, b in chunk) + b'],"sentAt":' + SENT_AT + b"}"
            headers = {"Content-Type": "application/json", "Authorization": _basic(key)}
            built.requests.append(Request("POST", url, headers, body, tuple(i for i, _ in chunk), stamps_sent_at=True))
    return built


ADAPTER = Adapter(
    type="segment",
    settings=Settings,
    build_requests=build_requests,
    integration_names=("Segment", "Segment.io (forward)"),
    limits=BatchLimits(max_events=MAX_EVENTS, max_bytes=MAX_REQUEST_BYTES),
    description="Forward events to Segment's Tracking API or any Segment-compatible collector.",
    honours_all=False,
)
