"""The destination adapter contract.

An adapter turns a batch of stored Segment messages into HTTP request descriptions for one
downstream API, and (only where that API differs from the shared default) says what a response
means. Adapters are pure: no I/O, no clock, no randomness, no retry, sleep, queue or session code.
The delivery engine (proxy/delivery/) owns all of that and never knows a vendor's API.

A destination module ``destinations/<type>.py`` exposes ``ADAPTER = Adapter(...)`` and is listed
in ``destinations/registry.py``.

    Settings            pydantic model: ``type`` literal, ``endpoint`` where the API has a base URL,
                        credentials as ``SecretStr``, a description on every field, unknown keys refused
    integration_names   names that select it in a payload's ``integrations`` object
    limits              max events / bytes the engine hands to one build_requests call
                        (bytes = sum of the stored events' JSON sizes); adapters split further
                        where their API needs smaller requests
    max_requests_per_second   a vendor rate limit the engine enforces, if any
    build_requests      (messages, settings) -> Built(requests, skips, rejects, notes)
    classify            (request, response) -> Outcome; defaults to ``default_classify``

Messages are referred to by their index in the ``messages`` list passed to ``build_requests``.

Send time: adapters have no clock, but a few APIs need the moment of sending (Segment corrects
``timestamp`` with ``receivedAt - (sentAt - originalTimestamp)``). Such a request carries
``SENT_AT`` (a JSON string placeholder) in its body and ``stamps_sent_at=True``; the delivery
engine calls :func:`at_send_time` on every attempt, retries included, as the SDKs reset ``sentAt``.
"""

from __future__ import annotations

import builtins
import email.utils
import enum
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, SecretStr

T = TypeVar("T")


class DestinationSettings(BaseModel):
    """Base for every adapter's Settings: unknown keys are refused and secrets stay hidden."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    # Adapters set this to their example settings dict; the shared contract test validates it.
    example: ClassVar[dict[str, Any]] = {}


class Lazy(Protocol):
    """Makes the event on demand, as a dict or as JSON (the delivery engine's leased work)."""

    def parsed(self) -> Mapping[str, Any]: ...

    def json(self) -> bytes: ...


class Message:
    """One stored event handed to an adapter.

    ``event`` is the enriched Segment message (type, messageId, timestamp, receivedAt, context...),
    parsed on first use from the spool's bytes (or made as a dict by the spool); ``json()`` gives
    those bytes unchanged (or made as JSON by the spool), so pass-through adapters (webhook,
    console) need not parse and re-encode, and mapping ones get the dict without an encode. ``source`` is the
    trackrelay source name it arrived on; ``write_key`` is the key it arrived with (only for
    adapters that forward to another Segment-compatible collector).
    """

    __slots__ = ("_event", "_raw", "_lazy", "source", "write_key")

    def __init__(self, event: Mapping[str, Any] | None = None, source: str = "",
                 write_key: SecretStr | None = None, *, raw: bytes | None = None, lazy: Lazy | None = None) -> None:
        if event is None and raw is None and lazy is None:
            raise ValueError("a Message needs the event or its JSON")
        self._event = event
        self._raw = raw
        self._lazy = lazy if event is None and raw is None else None
        self.source = source
        self.write_key = write_key

    @property
    def event(self) -> Mapping[str, Any]:
        if self._event is None:
            if self._lazy is not None:
                self._event = self._lazy.parsed()
            else:
                self._event = orjson.loads(self._raw)  # type: ignore[arg-type]
        return self._event

    def json(self) -> bytes:
        """The event as JSON: the stored bytes when there are some."""
        if self._raw is None:
            self._raw = self._lazy.json() if self._lazy is not None else orjson.dumps(self._event)
        return self._raw

    @property
    def type(self) -> str:
        return str(self.event.get("type", ""))

    @property
    def message_id(self) -> str:
        return str(self.event.get("messageId", ""))

    def __repr__(self) -> str:
        return f"Message(source={self.source!r}, type={self.type!r}, messageId={self.message_id!r})"


_SECRET_QUERY = re.compile(
    r"([?&](?:api_secret|api_key|apikey|key|token|access_token|secret|password|sig|signature)=)[^&#]*",
    re.IGNORECASE,
)


@dataclass(frozen=True, slots=True)
class Request:
    """One outgoing HTTP call. ``messages`` are indexes into the batch given to build_requests,
    in the order the body carries them (so per-position error answers can be mapped back)."""

    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes | None
    messages: tuple[int, ...]
    # the body holds SENT_AT, to be replaced by the send time of each attempt (at_send_time)
    stamps_sent_at: bool = False

    def __repr__(self) -> str:  # headers may carry credentials: never print them
        # Some APIs only take credentials in the query string (GA4's api_secret): hide those values.
        url = _SECRET_QUERY.sub(r"\1***", self.url)
        return f"Request({self.method} {url} messages={len(self.messages)} bytes={len(self.body or b'')})"


# A JSON string no event can contain (orjson escapes control characters inside strings).
SENT_AT = b'"\x00trackrelay-sent-at\x00"'


def at_send_time(request: Request, now: float) -> Request:
    """The request as it goes out at ``now`` (epoch seconds): SENT_AT replaced by that time in ISO
    8601 UTC with milliseconds. Requests without ``stamps_sent_at`` come back unchanged. The
    delivery engine calls this right before every attempt."""
    if not request.stamps_sent_at or request.body is None:
        return request
    stamp = b'"' + time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)).encode() + \
        f".{int(now * 1000) % 1000:03d}Z".encode() + b'"'
    return Request(request.method, request.url, request.headers, request.body.replace(SENT_AT, stamp),
                   request.messages)


@dataclass(frozen=True, slots=True)
class Skip:
    """A message this destination does not take (unsupported call, missing identity the API
    needs...). Counted as skipped with the reason; not an error, never retried."""

    index: int
    reason: str


@dataclass(frozen=True, slots=True)
class Reject:
    """A message the API would refuse (over a vendor limit, invalid field). It goes to the dead
    letters with the reason instead of being sent to fail."""

    index: int
    reason: str


@dataclass(frozen=True, slots=True)
class Note:
    """A message that IS sent, but changed to fit the API's documented limits (e.g. GA4's 200
    items per event: the first 200 go out). ``reason`` says what was cut or changed; the delivery
    engine counts it (by destination) and logs it with the messageId, so no change is silent."""

    index: int
    reason: str


class SkipMessage(Exception):
    """Raised by an adapter's per-message mapping for a message the API cannot take; the text is
    the skip reason (the build loop turns it into a Skip)."""


class RejectMessage(Exception):
    """Raised by an adapter's per-message mapping for a message the API would refuse; the text is
    the dead-letter reason (the build loop turns it into a Reject)."""


@dataclass(slots=True)
class Built:
    requests: list[Request] = field(default_factory=list)
    skips: list[Skip] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    # messages sent in a modified form (truncated to a vendor limit...): see Note
    notes: list[Note] = field(default_factory=list)

    def note(self, index: int, reason: str) -> None:
        self.notes.append(Note(index, reason))

    def attempt(self, index: int, fn: Callable[..., T], *args: Any) -> T | None:
        """``fn(*args)`` for message ``index``; a SkipMessage or RejectMessage it raises is recorded
        as that message's Skip or Reject and None is returned."""
        try:
            return fn(*args)
        except SkipMessage as exc:
            self.skips.append(Skip(index, str(exc)))
        except RejectMessage as exc:
            self.rejects.append(Reject(index, str(exc)))
        return None


class Verdict(enum.Enum):
    OK = "ok"
    RETRY = "retry"
    PERMANENT = "permanent"


@dataclass(frozen=True, slots=True)
class MessageOutcome:
    verdict: Verdict
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError:
            return None

    def header(self, name: str) -> str | None:
        lname = name.lower()
        for k, v in self.headers.items():
            if k.lower() == lname:
                return v
        return None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a response means. ``verdict`` applies to every message of the request, except those
    listed in ``per_message`` (message index -> outcome) for partial successes."""

    verdict: Verdict
    reason: str = ""
    retry_after: float | None = None
    per_message: Mapping[int, MessageOutcome] | None = None

    def for_message(self, index: int) -> MessageOutcome:
        if self.per_message and index in self.per_message:
            return self.per_message[index]
        return MessageOutcome(self.verdict, self.reason)


NOT_RETRIED_5XX = frozenset({501, 505})


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds from now: delta-seconds or an HTTP date. None when absent/invalid."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


def body_excerpt(body: bytes, limit: int = 512) -> str:
    text = body[:limit].decode("utf-8", "replace")
    return text + ("…" if len(body) > limit else "")


def status_verdict(status: int) -> Verdict:
    if 200 <= status < 300:
        return Verdict.OK
    if status in (408, 429) or (500 <= status < 600 and status not in NOT_RETRIED_5XX):
        return Verdict.RETRY
    return Verdict.PERMANENT


def default_classify(request: Request, response: Response) -> Outcome:
    """Shared rule: 2xx ok; 408, 429 and 5xx except 501/505 retry (Retry-After honoured); other
    statuses (4xx, 3xx, 501, 505) are permanent."""
    verdict = status_verdict(response.status)
    if verdict is Verdict.OK:
        return Outcome(Verdict.OK)
    reason = f"HTTP {response.status}: {body_excerpt(response.body)}"
    retry_after = parse_retry_after(response.header("Retry-After")) if verdict is Verdict.RETRY else None
    return Outcome(verdict, reason, retry_after)


@dataclass(frozen=True, slots=True)
class BatchLimits:
    max_events: int = 500
    max_bytes: int = 5 * 1024 * 1024


S = TypeVar("S", bound=DestinationSettings)

# (messages, the adapter's own Settings) -> Built
BuildFn = Callable[[Sequence[Message], S], Built]
ClassifyFn = Callable[[Request, Response], Outcome]


@dataclass(frozen=True)
class Adapter(Generic[S]):
    """One destination type. Generic over its Settings model, so the type checker holds each
    adapter's ``build_requests`` to the Settings it declares (``Adapter(settings=Settings,
    build_requests=build_requests)`` infers ``Adapter[Settings]``)."""

    type: str
    settings: builtins.type[S]  # `type` is a field here
    build_requests: BuildFn[S]
    integration_names: tuple[str, ...] = ()
    limits: BatchLimits = BatchLimits()
    classify: ClassifyFn = default_classify
    description: str = ""
    # Vendor rate limit the engine enforces for this destination (requests per second), if any.
    max_requests_per_second: float | None = None
    # False for hops that forward to Segment itself: a payload's `All: false` selects Segment's
    # downstream destinations, it does not stop the event reaching Segment (as in analytics.js).
    honours_all: bool = True
    # True when build_requests reads messages only through Message.json() (it forwards the
    # event's JSON unchanged): delivery then need not keep a parsed event beside it.
    forwards_json: bool = False

    def validate_settings(self, raw: Mapping[str, Any]) -> S:
        data = dict(raw)
        data.setdefault("type", self.type)
        return self.settings.model_validate(data)


def json_body(obj: Any) -> bytes:
    """Deterministic JSON encoding for request bodies (sorted keys are NOT used: vendors see the
    field order we build, which keeps golden files readable)."""
    return orjson.dumps(obj)


def chunk_by_limits(
    items: Sequence[tuple[int, bytes]], max_events: int, max_bytes: int, overhead: int = 2
) -> list[list[tuple[int, bytes]]]:
    """Split pre-encoded items into chunks respecting an item count and a byte budget for a JSON
    array body (``overhead`` bytes for the brackets, one comma between items)."""
    chunks: list[list[tuple[int, bytes]]] = []
    current: list[tuple[int, bytes]] = []
    size = overhead
    for item in items:
        extra = len(item[1]) + (1 if current else 0)
        if current and (len(current) >= max_events or size + extra > max_bytes):
            chunks.append(current)
            current, size = [], overhead
            extra = len(item[1])
        current.append(item)
        size += extra
    if current:
        chunks.append(current)
    return chunks


def json_array(encoded: Sequence[bytes]) -> bytes:
    return b"[" + b",".join(encoded) + b"]"
