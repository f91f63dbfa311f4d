"""Webhooks: POST (or PUT/PATCH) each Segment message as JSON to a URL of yours.

API: whatever the receiver is. Auth: optional extra headers (e.g. a bearer token) and an optional
shared secret: each request then carries ``X-Signature``, the hex HMAC-SHA1 of the exact body bytes
keyed with the secret, as Segment's webhook destination signs. The receiver recomputes it over the
raw body and compares in constant time.

Mapping: every call type (identify, track, page, screen, group, alias) is sent unchanged, as the
stored Segment message (enriched: receivedAt, timestamp, messageId, context.ip). One message per
request (body: the message object) or, with ``batch_size`` > 1, a JSON array of up to
``batch_size`` messages and ``max_bytes`` bytes.

Limits: the receiver's, as ``max_bytes`` declares them: no request body is larger, single-event
requests included. An event that alone is over it (as a body, or as a one-element array when
batching) is dead-lettered with its size (Reject) rather than sent for the receiver to refuse or cut.

Responses: shared default (2xx ok; 408/429/5xx retried honouring Retry-After; other 4xx permanent).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from typing import Literal

from pydantic import AnyHttpUrl, Field, SecretStr

from destinations.base import (
    Adapter,
    BatchLimits,
    Built,
    DestinationSettings,
    Message,
    Reject,
    Request,
    chunk_by_limits,
    json_array,
)


class Settings(DestinationSettings):
    type: Literal["webhook"] = Field("webhook", description="Adapter type.")
    url: AnyHttpUrl = Field(description="Where to send the events.")
    method: Literal["POST", "PUT", "PATCH"] = Field("POST", description="HTTP method.")
    headers: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="Extra request headers (values are treated as secrets: they never reach logs).",
    )
    batch_size: int = Field(
        1, ge=1, le=1000,
        description="1 sends one event per request with the event object as body; more sends a JSON array of up to "
                    "this many events.",
    )
    max_bytes: int = Field(
        1_000_000, ge=1024, le=20_000_000,
        description="Upper bound on every request body, in bytes (the array of a batch, or the one event when "
                    "batch_size is 1). An event larger than this on its own is dead-lettered with its size.",
    )
    shared_secret: SecretStr | None = Field(
        None, description="If set, each request carries X-Signature: hex HMAC-SHA1 of the body bytes keyed with this "
                          "secret."
    )

    example = {"type": "webhook", "url": "http://127.0.0.1:9000/hook", "batch_size": 10,
               "shared_secret": "s3cr3t", "headers": {"Authorization": "Bearer abc"}}


def sign(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha1).hexdigest()


def build_requests(messages: Sequence[Message], settings: Settings) -> Built:
    built = Built()
    overhead = 0 if settings.batch_size == 1 else 2  # the brackets of a one-element array
    encoded = []
    for i, m in enumerate(messages):
        body = m.json()
        if len(body) + overhead > settings.max_bytes:
            built.rejects.append(Reject(i, f"event is {len(body) + overhead} bytes as a request body; this webhook's "
                                           f"max_bytes is {settings.max_bytes}"))
        else:
            encoded.append((i, body))
    if settings.batch_size == 1:
        chunks = [[(i, body)] for i, body in encoded]
    else:
        chunks = chunk_by_limits(encoded, settings.batch_size, settings.max_bytes)
    for chunk in chunks:
        body = chunk[0][1] if settings.batch_size == 1 else json_array([b for _, b in chunk])
        headers = {"Content-Type": "application/json"}
        headers.update({k: v.get_secret_value() for k, v in settings.headers.items()})
        if settings.shared_secret is not None:
            headers["X-Signature"] = sign(settings.shared_secret.get_secret_value(), body)
        built.requests.append(
            Request(settings.method, str(settings.url), headers, body, tuple(i for i, _ in chunk))
        )
    return built


ADAPTER = Adapter(
    type="webhook",
    settings=Settings,
    build_requests=build_requests,
    forwards_json=True,
    integration_names=("Webhooks", "Webhook", "Webhooks (Actions)"),
    limits=BatchLimits(max_events=1000, max_bytes=20_000_000),
    description="POST events as JSON to a URL, optionally signed (X-Signature HMAC-SHA1).",
)
