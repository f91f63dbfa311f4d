"""The NATS JetStream backend of the spool port (``storage.engine: jetstream``): any number of
trackrelay instances share one replicated JetStream; an instance keeps no state of its own.

What it creates (``P`` = ``storage.jetstream.stream``), idempotently at start (create, or update
when the config differs; several instances starting at once converge on the same config):

- ``P_EVENTS`` (subject ``P.events``): the requests' :mod:`proxy.spool.records` payloads. At most
  PUBLISH_LANES publishes are in flight per instance; the requests that arrive while they wait for
  their PubAck go out together in the next message, a :func:`~proxy.spool.records.bundle` of their
  records (one request alone is its record as it is). Each message has a ``Nats-Msg-Id``, so a
  publish retried after a timeout is stored once (JetStream's duplicate window,
  ``duplicate_window``, two minutes); every request in it is answered after its PubAck. Limits retention, discard new,
  ``max_bytes``: full -> 429. :meth:`maintain` purges what every active destination has acked,
  after ``retention`` (at once when the stream is over 80 % full).
- ``P_IDS`` (``P.ids``): the dedup hashes (8 bytes each) of the items stored, kept for
  ``dedup_window``. After a request's event PubAck (never before: a request answered 503 must not
  make its resend a duplicate) its hashes join the next ids message of the instance, which carries
  those of every request stored meanwhile (a group commit); the request is answered once that
  message has its PubAck too. Every instance tails it into its bounded in-memory index (see
  :mod:`.dedup`): a resend of (source, messageId) is dropped on whichever instance it lands.
- ``P_RETRY``: durable retries. A retry due later is a *scheduled message* (server >= 2.12:
  ``Nats-Schedule: @at T`` on ``P.sched.<dest>.<id>``); the server publishes it onto
  ``P.due.<dest>`` at T, so a retry waiting hours holds no consumer slot. On 2.10/2.11 it is published
  onto ``P.due.<dest>`` at once and a lease that finds it early NAKs it with the remaining delay
  (it then holds a slot of the *retry* consumer only; new events are never blocked by it).
- ``P_DEAD`` (``P.dead.<dest>``): dead letters, one message each; the id is its stream sequence.
  Replay publishes it back onto ``P.due.<dest>`` (due now, attempts reset) and deletes it.
- Per destination two durable pull consumers shared by every instance: ``P_<dest>`` on the events
  (created with deliver policy *new*: a destination seen for the first time starts at the end) and
  ``P_<dest>_retry`` on its due retries. A message is acked only once each of its items routed to
  the destination is settled (delivered / skipped, or its retry or dead letter has a PubAck); an
  instance extends the ack deadline (``+WPI``) of what it holds every ``ack_wait``/3, so only a dead
  instance's work moves to another one.

Change notification: a core NATS message on ``P.notify`` after appends (one per ids message)
and replays (every instance hears it); ``wait`` also returns every second so retries that became due are found.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import hashlib
import math
import re
import ssl
import struct
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import structlog

from proxy.spool import records
from proxy.spool.base import (
    Append,
    AppendResult,
    DeadLetter,
    DeadQuery,
    DestinationStats,
    Disposition,
    Item,
    Progress,
    Refusal,
    Settlement,
    Spool,
    SpoolFull,
    SpoolRefused,
    SpoolUnavailable,
    Stats,
    StoredEvent,
    Work,
)
from proxy.spool.jetstream.dedup import DedupIndex, pack_ids, unpack_ids

log = structlog.get_logger("trackrelay.spool.jetstream")

MIN_VERSION = (2, 10, 0)
SCHEDULES_VERSION = (2, 12, 0)
ERR_FULL = 10077          # "maximum bytes exceeded" (discard new)
ERR_STREAM_NOT_FOUND = 10059
ERR_CONSUMER_NOT_FOUND = 10014
ERR_STREAM_EXISTS = 10058
ERR_NO_MESSAGE = 10037
ERR_NO_PEERS = 10005      # "no suitable peers for placement": a peer the meta leader sees as offline
_U32 = struct.Struct("<I")
_NS = 1_000_000_000
POLL = 1.0                # wait() returns at least this often (retries that became due)
PURGE_EVERY = 5.0
# Event publishes: at most PUBLISH_LANES messages in flight per instance; requests that arrive while
# all wait for their PubAck go out together in the next message, up to GROUP_RECORDS records and
# GROUP_BYTES (NATS' default max_payload is 1 MiB). One message per request costs ~100 µs of
# client CPU (benchmarks/scale.py): grouping is what makes single-event requests cheap.
PUBLISH_LANES = 8
GROUP_RECORDS = 64
GROUP_BYTES = 512 * 1024
# A pull of the event stream asks for about this many bytes, as a message count from the sizes seen
# so far (not the pull's max_bytes: nats-server may answer its 409 before the last messages it sent,
# which then wait for ack_wait): it must arrive within the pull's timeout and the pending limit.
PULL_BYTES = 8 * 1024 * 1024
_CLOSING = "the JetStream spool is closing"
IDS_MAX = 65536           # hashes per ids message (512 KiB, within NATS' default 1 MiB max_payload)
SAMPLE = 200              # records read for the cheap stats() estimates (the gauges read them every 5 s)


class JetStreamRefused(SpoolRefused, SpoolUnavailable):
    """The cluster cannot be used at all (server too old, JetStream off, unreachable at start, bad
    credentials): serve refuses to start with this message (exit status 2)."""


def _version(text: str) -> tuple[int, int, int]:
    nums = [int(n) for n in re.findall(r"\d+", text.split("-")[0])[:3]]
    return tuple((nums + [0, 0, 0])[:3])  # type: ignore[return-value]


def safe_url(url: str) -> str:
    """A server URL without its user info (nats://user:pass@host -> nats://host)."""
    return re.sub(r"//[^@/]*@", "//", url)


def token_of(name: str) -> str:
    """A destination name as one NATS subject token / consumer name part."""
    if re.fullmatch(r"[A-Za-z0-9_-]{1,48}", name):
        return name
    digest = hashlib.blake2b(name.encode(), digest_size=4).hexdigest()
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)[:40] + "-" + digest


def _pack(meta: dict[str, Any], payload: bytes) -> bytes:
    head = orjson.dumps(meta)
    return _U32.pack(len(head)) + head + payload


def _unpack(body: bytes) -> tuple[dict[str, Any], bytes]:
    (n,) = _U32.unpack_from(body, 0)
    return orjson.loads(body[4:4 + n]), body[4 + n:]


def _one_item(bundle: records.Bundle, position: int, raw: bytes) -> bytes:
    """A record holding only item ``position`` of a message (for its retry or dead letter)."""
    rec, pos = bundle.locate(position)
    h = rec.header
    _length, dedup, route, index, mid = h.items[pos]
    req = Append(source=h.source, key_index=h.key_index, received_at=h.received_at,
                 items=[Item(raw, dedup, 0, index, mid, rec.violations_of(pos))], routes=[rec.routes[route]],
                 client_ip=h.client_ip,
                 short_path=h.short_path, call_type=h.call_type, sent_at=h.sent_at, context=h.context,
                 integrations=h.integrations, enriched=h.enriched)
    return records.encode(req)


def _rfc3339(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(text: str) -> float:
    # nanosecond RFC 3339 from the server
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?Z", text)
    if not m:
        return 0.0
    base = dt.datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S").replace(tzinfo=dt.UTC).timestamp()
    return base + (float(m.group(2)) if m.group(2) else 0.0)


class _NoResponders(SpoolUnavailable):
    """Nobody listens on the API subject (JetStream off for the account), as opposed to a timeout."""


class _ApiError(Exception):
    def __init__(self, code: int, err_code: int, description: str) -> None:
        super().__init__(f"{description} (JetStream {code}/{err_code})")
        self.code, self.err_code, self.description = code, err_code, description


@dataclass(eq=False, slots=True)
class _Held:
    """A JetStream message leased by this instance, not yet acked."""

    msg: Any
    seq: int
    retry: bool
    record: records.Bundle
    pending: int                  # items routed here, not yet settled
    meta: dict[str, Any] = field(default_factory=dict)
    done: bool = False
    settled: set[int] = field(default_factory=set)  # positions settled (durably)
    progress: bool = False        # a progress message exists for it (partly settled before)


@dataclass(slots=True)
class _Dest:
    name: str
    token: str
    event: asyncio.Event = field(default_factory=asyncio.Event)
    buffer: deque[tuple[_Held, int, bytes]] = field(default_factory=deque)  # fetched, not yet leased
    held: dict[tuple[bool, int], _Held] = field(default_factory=dict)
    attached: bool = False


class JetStreamSpool(Spool):
    engine = "jetstream"

    def __init__(self, storage: Any, *, role: str = "main") -> None:
        self._storage = storage
        self._cfg = storage.jetstream
        self.role = role
        p = self._cfg.stream
        self.prefix = p
        self.s_events, self.s_ids, self.s_retry, self.s_dead = f"{p}_EVENTS", f"{p}_IDS", f"{p}_RETRY", f"{p}_DEAD"
        self.s_progress = f"{p}_PROGRESS"
        self._nc: Any = None
        self._dests: dict[str, _Dest] = {}
        self._index = DedupIndex(storage.dedup_window, storage.dedup_memory)
        self._inflight = asyncio.Semaphore(self._cfg.max_inflight)
        self._tasks: list[asyncio.Task[Any]] = []
        self._subs: list[Any] = []
        self._schedules = False
        self._connected = False
        self._unavailable_until = 0.0
        self._unavailable_reason = ""
        self._full = False
        self._events_bytes = 0
        self._retry_bytes = 0
        self._samples: deque[tuple[float, int]] = deque()
        self._last_purge = 0.0
        self._loading = False
        self._closed = False
        self._started = False
        self._last_error = ""
        self._ids_queue: list[tuple[float, list[int], asyncio.Future[None]]] = []
        # records waiting for a publish lane: (payload, deadline, waiter); bounded by _inflight
        self._queued: deque[tuple[bytes, float, asyncio.Future[None]]] = deque()
        self._lanes = 0
        self._lane_tasks: set[asyncio.Task[None]] = set()
        # event-stream messages pulled so far: bytes (a bundle's largest to begin with), items
        self._pulled = (float(GROUP_BYTES), 1.0)
        self._ids_wake: asyncio.Event | None = None
        self._msg_prefix = uuid.uuid4().hex[:16] + "-"
        self._msg_seq = 0
        self._secrets = [s.get_secret_value() for s in (self._cfg.password, self._cfg.token) if s is not None]

    def __repr__(self) -> str:
        return f"JetStreamSpool(stream={self.prefix!r}, role={self.role!r})"

    def _scrub(self, text: str) -> str:
        text = safe_url(text)
        for s in self._secrets:
            if s:
                text = text.replace(s, "***")
        return text

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        import nats

        cfg = self._cfg
        opts: dict[str, Any] = dict(
            servers=list(cfg.servers), connect_timeout=cfg.connect_timeout, allow_reconnect=True,
            max_reconnect_attempts=-1, reconnect_time_wait=0.5, ping_interval=5, max_outstanding_pings=3,
            error_cb=self._on_error, disconnected_cb=self._on_disconnect, reconnected_cb=self._on_reconnect,
            closed_cb=self._on_disconnect, name=f"trackrelay-{self.role}",
        )
        if cfg.user:
            opts["user"] = cfg.user
        if cfg.password is not None:
            opts["password"] = cfg.password.get_secret_value()
        if cfg.token is not None:
            opts["token"] = cfg.token.get_secret_value()
        if cfg.credentials:
            opts["user_credentials"] = str(cfg.credentials)
        if cfg.tls is not None:
            ctx = ssl.create_default_context(cafile=str(cfg.tls.ca_file) if cfg.tls.ca_file else None)
            if cfg.tls.cert_file:
                ctx.load_cert_chain(str(cfg.tls.cert_file), str(cfg.tls.key_file) if cfg.tls.key_file else None)
            opts["tls"] = ctx
        where = ", ".join(safe_url(s) for s in cfg.servers)
        wait = cfg.connect_timeout * 2 + 1
        try:
            self._nc = await asyncio.wait_for(nats.connect(**opts), wait)
        except Exception as exc:
            why = self._last_error or self._scrub(f"{type(exc).__name__}: {exc}".rstrip(": "))
            raise JetStreamRefused(f"cannot connect to NATS at {where} within {wait:g}s ({why})") from None
        self._connected = True
        try:
            await self._check_server(where)
            await self._ensure_streams()
            if self.role == "main":
                self._subs.append(await self._nc.subscribe(f"{self.prefix}.notify", cb=self._on_notify))
                self._tasks.append(asyncio.create_task(self._keepalive(), name="jetstream-keepalive"))
            if self.role in ("main", "ingest"):
                await self._start_tail()
                self._ids_wake = asyncio.Event()
                self._tasks.append(asyncio.create_task(self._ids_flusher(), name="jetstream-ids"))
        except BaseException:
            await self._abandon()
            raise
        self._started = True
        (log.debug if self.role == "admin" else log.info)("jetstream_started", servers=where, stream=self.prefix,
                                                          role=self.role,
                 schedules=self._schedules, dedup_ids=len(self._index))

    async def _check_server(self, where: str) -> None:
        info = self._nc._server_info
        version = str(info.get("version", "0"))
        if _version(version) < MIN_VERSION:
            raise JetStreamRefused(f"NATS server {version} at {where} is older than 2.10; trackrelay's jetstream "
                                   "engine needs nats-server >= 2.10")
        try:
            # no responders: JetStream is off; a timeout may be a busy or recovering cluster: ask again
            resp = await self._patiently(lambda: self._api("$JS.API.INFO", {}), "JetStream")
        except _ApiError as exc:
            raise JetStreamRefused(f"JetStream is not available at {where}: {exc.description} (start nats-server "
                                   "with JetStream enabled: -js or jetstream {} in its config)") from None
        except SpoolUnavailable:
            raise JetStreamRefused(f"JetStream is not enabled at {where} (no answer on $JS.API; start nats-server "
                                   "with -js or jetstream {} in its config)") from None
        self._schedules = _version(version) >= SCHEDULES_VERSION
        self._account = resp

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._ids_queue and self._nc is not None and not self._nc.is_closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._flush_ids(), self._cfg.publish_timeout)
        await self._stop_publishing()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(BaseException):
                await t
        self._tasks.clear()
        self._release_ids_waiters()
        nc = self._nc
        if nc is not None and not nc.is_closed:
            # hand back what was fetched and not settled, so another instance gets it now
            for d in self._dests.values():
                for h in list(d.held.values()):
                    with contextlib.suppress(Exception):
                        await h.msg.nak()
                d.held.clear()
                d.buffer.clear()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.flush(), 2)
            with contextlib.suppress(Exception):
                await nc.close()
        self.wake()

    def _release_ids_waiters(self) -> None:
        batch, self._ids_queue = self._ids_queue, []
        for _, _, done in batch:
            if not done.done():
                done.set_result(None)

    async def _abandon(self) -> None:
        """Drop the connection without acking, NAKing or flushing anything (what a crash leaves)."""
        self._closed = True
        await self._stop_publishing()
        for t in self._tasks:
            t.cancel()
        self._tasks.clear()
        self._release_ids_waiters()
        nc = self._nc
        if nc is not None:
            with contextlib.suppress(Exception):
                if nc._transport is not None:
                    nc._transport.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.close(), 2)
        self.wake()

    async def _on_error(self, exc: Exception) -> None:
        text = self._scrub(f"{type(exc).__name__}: {exc}")
        if not self._started:  # connecting at start: the refusal names the last error, once
            self._last_error = text
            return
        log.warning("nats_error", error=text)

    async def _on_disconnect(self) -> None:
        if self._connected and not self._closed:
            log.warning("nats_disconnected")
        self._connected = False

    async def _on_reconnect(self) -> None:
        self._connected = True
        url = self._nc.connected_url
        log.info("nats_reconnected", server=safe_url(f"{url.scheme}://{url.hostname}:{url.port}") if url else "?")

    def problems(self) -> list[str]:
        # a full stream is not a readiness problem: ingest answers 429 + Retry-After, as the
        # embedded spool does, instead of the load balancer taking every instance out
        r = self.refusal()
        out = [r.message] if r is not None and r.status == 503 else []
        if self._loading:
            out.append("loading the dedup index from JetStream")
        return out

    # -- JetStream API helpers ----------------------------------------------------------------------

    async def _api(self, subject: str, body: dict[str, Any] | None, timeout: float = 5.0) -> dict[str, Any]:
        import nats.errors

        try:
            resp = await self._nc.request(subject, orjson.dumps(body) if body is not None else b"", timeout=timeout)
        except nats.errors.NoRespondersError:
            raise _NoResponders("JetStream did not answer (NoRespondersError)") from None
        except (TimeoutError, nats.errors.TimeoutError, nats.errors.ConnectionClosedError,
                nats.errors.ConnectionReconnectingError, nats.errors.OutboundBufferLimitError) as exc:
            raise SpoolUnavailable(f"JetStream did not answer ({type(exc).__name__})") from None
        data = orjson.loads(resp.data) if resp.data else {}
        err = data.get("error")
        if err:
            raise _ApiError(err.get("code", 0), err.get("err_code", 0), err.get("description", "?"))
        return data

    async def _patiently(self, call: Any, what: str) -> Any:
        """``await call()``, asked again while the cluster is electing or recovering (no answer, a
        503 from JetStream: right after a whole-cluster restart a stream can take many seconds to
        get its leader; or no peers to place replicas on while a node is restarting or briefly
        missed its heartbeat) for up to max(30 s, 3 x publish_timeout); then its error. No
        responders (JetStream off) is not asked again."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(30.0, 3 * self._cfg.publish_timeout)
        waited = False
        while True:
            try:
                return await call()
            except _ApiError as exc:
                transient = exc.code == 503 or exc.err_code == ERR_NO_PEERS or "no suitable peers" in exc.description
                if not transient or loop.time() >= deadline:
                    raise
            except (JetStreamRefused, _NoResponders):
                raise
            except (TimeoutError, SpoolUnavailable):
                if loop.time() >= deadline:
                    raise
            if not waited:
                waited = True
                log.info("jetstream_waiting", what=what)
            await asyncio.sleep(0.5)

    async def _ensure_stream(self, config: dict[str, Any]) -> None:
        name = config["name"]
        for _ in range(5):
            try:
                await self._patiently(lambda: self._api(f"$JS.API.STREAM.CREATE.{name}", config, timeout=10),
                                      f"stream {name}")
                return
            except _ApiError as exc:
                if exc.err_code != ERR_STREAM_EXISTS:
                    raise JetStreamRefused(f"cannot create stream {name}: {exc.description}") from None
            try:
                await self._patiently(lambda: self._api(f"$JS.API.STREAM.UPDATE.{name}", config, timeout=10),
                                      f"stream {name}")
                log.info("jetstream_stream_updated", stream=name)
                return
            except _ApiError as exc:
                if exc.err_code == ERR_STREAM_NOT_FOUND:
                    continue  # deleted in between: create again
                raise JetStreamRefused(f"cannot update stream {name} to trackrelay's configuration: "
                                       f"{exc.description}") from None
        raise JetStreamRefused(f"cannot create stream {name}")

    def _hard_limit(self) -> int:
        """The event stream's own limit: max_bytes (where ingest starts answering 429) plus headroom
        for the requests in flight when it is reached (10 %, at least 4 MiB, at most 1 GiB)."""
        quota = int(self._cfg.max_bytes)
        return quota + min(max(quota // 10, 4 * 1024 * 1024), 1024**3)

    async def _ensure_streams(self) -> None:
        cfg, p = self._cfg, self.prefix
        common = {"retention": "limits", "storage": "file", "num_replicas": cfg.replicas, "allow_direct": True,
                  "duplicate_window": int(cfg.duplicate_window * _NS), "max_msgs": -1, "max_msg_size": -1}
        await self._ensure_stream({**common, "name": self.s_events, "subjects": [f"{p}.events"],
                                   "discard": "new", "max_bytes": self._hard_limit(), "max_age": 0})
        await self._ensure_stream({**common, "name": self.s_ids, "subjects": [f"{p}.ids"], "discard": "old",
                                   "duplicate_window": int(min(cfg.duplicate_window, self._storage.dedup_window) * _NS),
                                   "max_bytes": int(self._storage.dedup_memory),
                                   "max_age": int(self._storage.dedup_window * _NS)})
        retry = {**common, "retention": "workqueue", "name": self.s_retry, "subjects": [f"{p}.due.*", f"{p}.sched.*.*"],
                 "discard": "old",
                 "max_bytes": -1, "max_age": 0}
        if self._schedules:
            retry["allow_msg_schedules"] = True
        await self._ensure_stream(retry)
        await self._ensure_stream({**common, "name": self.s_dead, "subjects": [f"{p}.dead.*"], "discard": "old",
                                   "max_bytes": -1, "max_age": 0})
        await self._ensure_stream({**common, "name": self.s_progress, "subjects": [f"{p}.prog.*.*"],
                                   "discard": "old", "max_bytes": -1, "max_age": 0, "max_msgs_per_subject": 1})

    async def _ensure_consumer(self, stream: str, name: str, filter_subject: str, deliver: str,
                               destination: str) -> None:
        config = {"durable_name": name, "name": name, "deliver_policy": deliver, "ack_policy": "explicit",
                  "ack_wait": int(self._cfg.ack_wait * _NS), "max_deliver": -1, "filter_subject": filter_subject,
                  "max_ack_pending": 20000, "max_waiting": 512, "replay_policy": "instant",
                  "num_replicas": 0, "metadata": {"trackrelay_destination": destination}}
        try:
            await self._patiently(lambda: self._api(f"$JS.API.CONSUMER.CREATE.{stream}.{name}",
                                                    {"stream_name": stream, "config": config, "action": ""},
                                                    timeout=10), f"consumer {name}")
        except _ApiError as exc:
            raise SpoolUnavailable(f"cannot create consumer {name} on {stream}: {exc.description}") from None

    def _dest(self, name: str) -> _Dest:
        d = self._dests.get(name)
        if d is None:
            d = self._dests[name] = _Dest(name, token_of(name))
        return d

    def _consumer(self, d: _Dest, retry: bool) -> str:
        return f"{self.prefix}_{d.token}_retry" if retry else f"{self.prefix}_{d.token}"

    async def _pull(self, stream: str, consumer: str, batch: int, timeout: float = 2.0) -> list[Any]:
        """Up to ``batch`` messages available now (no waiting for new ones)."""
        nc = self._nc
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        out: list[Any] = []
        try:
            await nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}",
                             orjson.dumps({"batch": batch, "no_wait": True}), reply=inbox)
            deadline = time.monotonic() + timeout
            while len(out) < batch:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    msg = await sub.next_msg(timeout=remaining)
                except Exception:
                    break
                status = msg.headers.get("Status") if msg.headers else None
                if status:
                    if status == "100":
                        continue
                    if status == "409" and "Leadership" in (msg.headers.get("Description") or ""):
                        break
                    break
                out.append(msg)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        return out

    async def _publish(self, subject: str, payload: bytes, headers: dict[str, str], deadline: float) -> dict[str, Any]:
        """Publish to a stream and wait for its PubAck, retrying (same Nats-Msg-Id) until ``deadline``
        (loop time). Raises SpoolFull or SpoolUnavailable."""
        import nats.errors

        loop = asyncio.get_running_loop()
        last = "no answer"
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                self._mark_unavailable(f"JetStream did not acknowledge a publish within "
                                       f"{self._cfg.publish_timeout:g}s ({last})")
                raise SpoolUnavailable(self._unavailable_reason)
            try:
                resp = await self._nc.request(subject, payload, timeout=min(remaining, 2.5), headers=headers)
            except (TimeoutError, nats.errors.TimeoutError):
                last = "timeout"
            except nats.errors.NoRespondersError:
                last = "no stream leader"
                await asyncio.sleep(min(0.25, max(0.0, deadline - loop.time())))
            except (nats.errors.ConnectionClosedError, nats.errors.ConnectionReconnectingError,
                    nats.errors.OutboundBufferLimitError, nats.errors.StaleConnectionError) as exc:
                last = type(exc).__name__
                await asyncio.sleep(min(0.25, max(0.0, deadline - loop.time())))
            else:
                data = orjson.loads(resp.data) if resp.data else {}
                err = data.get("error")
                if not err:
                    self._unavailable_until = 0.0
                    return data
                if err.get("err_code") == ERR_FULL:
                    self._full = True
                    raise SpoolFull(f"the JetStream stream is full ({err.get('description')})")
                last = str(err.get("description", "error"))
                if err.get("code") not in (503, 408):
                    self._mark_unavailable(f"JetStream refused a publish: {last}")
                    raise SpoolUnavailable(self._unavailable_reason)
                await asyncio.sleep(min(0.25, max(0.0, deadline - loop.time())))

    def _mark_unavailable(self, reason: str) -> None:
        self._unavailable_reason = reason
        self._unavailable_until = time.monotonic() + 2.0

    # -- ingest -----------------------------------------------------------------------------------

    def refusal(self) -> Refusal | None:
        if self._nc is None or not self._connected:
            return Refusal(503, "storage_unavailable", "the JetStream cluster is unreachable", 5)
        if self._unavailable_until > time.monotonic():
            return Refusal(503, "storage_unavailable", self._unavailable_reason, 5)
        if self._full:
            return Refusal(429, "spool_full", "the JetStream stream is full", 30)
        return None

    async def append(self, request: Append) -> AppendResult:
        if self.role == "admin":
            raise SpoolUnavailable("append on an admin spool")
        if self._closed:  # nothing would publish it: 503, never a wait
            raise SpoolUnavailable("the spool is closed")
        now = request.received_at
        index = self._index
        kept: list[Item] = []
        hashes: list[int] = []
        mine: set[int] = set()
        dups = 0
        for it in request.items:
            h = it.dedup
            if h in mine or index.seen(h, now):
                dups += 1
                continue
            mine.add(h)
            kept.append(it)
            hashes.append(h)
        if not kept:
            return AppendResult(0, dups)
        index.reserve(hashes)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._cfg.publish_timeout
        try:
            payload = records.encode(request, kept)
            if self._inflight.locked():  # (wait_for costs a task: only when there is a wait)
                try:
                    await asyncio.wait_for(self._inflight.acquire(), self._cfg.publish_timeout)
                except TimeoutError:
                    self._mark_unavailable("too many publishes waiting for JetStream")
                    raise SpoolUnavailable(self._unavailable_reason) from None
            else:
                await self._inflight.acquire()
            try:
                await self._publish_grouped(payload, deadline)
            finally:
                self._inflight.release()
            index.add(hashes, request.received_at)
            if self._ids_wake is not None:
                done = loop.create_future()
                self._ids_queue.append((request.received_at, hashes, done))
                self._ids_wake.set()
                await done  # never raises: a failed ids publish only weakens other instances' dedup
            self._events_bytes += len(payload) + 64
            if self._events_bytes >= int(self._cfg.max_bytes):
                self._full = True
        finally:
            index.release(hashes)
        return AppendResult(len(kept), dups)

    async def _publish_grouped(self, payload: bytes, deadline: float) -> None:
        """Store one request's record: published by one of PUBLISH_LANES concurrent publishers,
        together with the records of the requests that queued up while every lane waited for a
        PubAck (one message, one Nats-Msg-Id: a retried publish is stored once). Returns once the
        message holding it is acknowledged; raises what its publish raised."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queued.append((payload, deadline, waiter))
        if self._lanes < PUBLISH_LANES:
            self._lanes += 1
            lane = asyncio.create_task(self._publish_lane(), name="jetstream-publish")
            self._lane_tasks.add(lane)
            lane.add_done_callback(self._lane_tasks.discard)
        await waiter

    async def _publish_lane(self) -> None:
        try:
            while self._queued:
                group = [self._queued.popleft()]
                size = len(group[0][0])
                while self._queued and len(group) < GROUP_RECORDS and size + len(self._queued[0][0]) <= GROUP_BYTES:
                    item = self._queued.popleft()
                    group.append(item)
                    size += len(item[0])
                body = records.bundle([p for p, _, _ in group])
                try:
                    await self._publish(f"{self.prefix}.events", body, {"Nats-Msg-Id": self._msg_id()},
                                        min(d for _, d, _ in group))
                except BaseException as exc:
                    for _, _, waiter in group:
                        if not waiter.done():
                            waiter.set_exception(exc if isinstance(exc, Exception) else SpoolUnavailable(_CLOSING))
                    if not isinstance(exc, Exception):
                        raise
                else:
                    for _, _, waiter in group:
                        if not waiter.done():
                            waiter.set_result(None)
        finally:
            self._lanes -= 1

    async def _stop_publishing(self) -> None:
        """Cancel the publish lanes; what they held, and what still waits for one, fails with
        SpoolUnavailable (nothing of it was acknowledged)."""
        lanes = list(self._lane_tasks)
        for t in lanes:
            t.cancel()
        for t in lanes:
            with contextlib.suppress(BaseException):
                await t
        queued, self._queued = self._queued, deque()
        for _, _, waiter in queued:
            if not waiter.done():
                waiter.set_exception(SpoolUnavailable(_CLOSING))

    def _msg_id(self) -> str:
        """A Nats-Msg-Id unique across instances and restarts: this instance's random prefix and a counter."""
        self._msg_seq += 1
        return f"{self._msg_prefix}{self._msg_seq:x}"

    async def _ids_flusher(self) -> None:
        """The group commit of the ids: while one ids message waits for its PubAck, the requests
        stored meanwhile queue up and go out together in the next one, with one change
        notification (other instances' dedup learns the ids from it; see :mod:`.dedup`)."""
        assert self._ids_wake is not None
        while True:
            await self._ids_wake.wait()
            self._ids_wake.clear()
            try:
                await self._flush_ids()
            except Exception as exc:
                log.warning("dedup_ids_publish_failed", error=self._scrub(f"{type(exc).__name__}: {exc}"))

    async def _flush_ids(self) -> None:
        batch, self._ids_queue = self._ids_queue, []
        if not batch:
            return
        try:
            with contextlib.suppress(Exception):
                await self._nc.publish(f"{self.prefix}.notify", b"")
            at = min(a for a, _, _ in batch)
            hashes = [h for _, hs, _ in batch for h in hs]
            loop = asyncio.get_running_loop()
            for i in range(0, len(hashes), IDS_MAX):
                try:
                    await self._publish(f"{self.prefix}.ids", pack_ids(at, hashes[i:i + IDS_MAX]),
                                        {"Nats-Msg-Id": self._msg_id()}, loop.time() + self._cfg.publish_timeout)
                except (SpoolUnavailable,
                        SpoolFull) as exc:  # the events are stored; only other instances' dedup misses them
                    log.warning("dedup_ids_publish_failed", error=str(exc), ids=len(hashes[i:i + IDS_MAX]))
        finally:
            for _, _, done in batch:
                if not done.done():
                    done.set_result(None)

    async def _start_tail(self) -> None:
        """Fill the dedup index from P_IDS (the last dedup_window) and keep following it."""
        import nats.errors
        import nats.js.errors
        from nats.js.api import ConsumerConfig, DeliverPolicy

        info = await self._patiently(lambda: self._api(f"$JS.API.STREAM.INFO.{self.s_ids}", {}), f"stream {self.s_ids}")
        last = info["state"]["last_seq"] if info["state"]["messages"] else 0
        caught = asyncio.Event()
        if not last:
            caught.set()

        async def on_ids(msg: Any) -> None:
            try:
                at, hs = unpack_ids(msg.data)
                self._index.add(hs, at)
                if not caught.is_set() and msg.metadata.sequence.stream >= last:
                    caught.set()
            except Exception as exc:
                log.warning("dedup_ids_bad_message", error=str(exc))

        start = dt.datetime.fromtimestamp(time.time() - self._storage.dedup_window, dt.UTC)
        js = self._nc.jetstream()

        async def subscribe() -> Any:
            try:
                return await js.subscribe(
                    f"{self.prefix}.ids", stream=self.s_ids, cb=on_ids, ordered_consumer=True, idle_heartbeat=5.0,
                    config=ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_TIME,
                                          opt_start_time=start),
                    pending_msgs_limit=-1, pending_bytes_limit=64 * 1024 * 1024)
            except (nats.errors.TimeoutError, nats.js.errors.ServiceUnavailableError) as exc:
                raise SpoolUnavailable(f"JetStream did not answer ({type(exc).__name__})") from None
        sub = await self._patiently(subscribe, f"the ids of {self.s_ids}")
        self._subs.append(sub)
        self._loading = True
        try:
            await asyncio.wait_for(caught.wait(), max(30.0, self._cfg.connect_timeout))
        except TimeoutError:
            log.warning("dedup_index_incomplete", loaded=len(self._index))
        finally:
            self._loading = False

    # -- delivery ---------------------------------------------------------------------------------

    async def attach(self, destinations: Sequence[str]) -> None:
        for name in destinations:
            d = self._dest(name)
            await self._ensure_consumer(self.s_events, self._consumer(d, False), f"{self.prefix}.events", "new", name)
            await self._ensure_consumer(self.s_retry, self._consumer(d, True), f"{self.prefix}.due.{d.token}",
                                        "all", name)
            d.attached = True

    async def lease(self, destination: str, max_events: int, max_bytes: int, *, new: bool = True) -> list[Work]:
        d = self._dest(destination)
        if not d.attached:
            await self.attach([destination])
        d.event.clear()  # a notification from now on makes the next wait() return
        out: list[Work] = []
        size = 0
        max_events = max(1, max_events)
        try:
            # due retries first, earliest due first (within what one pull returns)
            now = time.time()
            due: list[tuple[tuple[float, float, int], _Held, bytes]] = []
            for msg in await self._pull(self.s_retry, self._consumer(d, True), max_events):
                seq = msg.metadata.sequence.stream
                if (True, seq) in d.held:
                    continue
                meta, payload = _unpack(msg.data)
                wait = float(meta.get("due", 0)) - now
                if wait > 0:  # early (due within a second, or no server schedules): back with the remaining delay
                    with contextlib.suppress(Exception):
                        await msg.nak(delay=wait)
                    continue
                rec = records.Bundle(payload)
                held = _Held(msg, seq, True, rec, 1, meta)
                d.held[(True, seq)] = held
                (_, raw), = rec.raw_items()
                h = rec.header_of(0)
                due.append(((float(meta.get("due", 0)), h.received_at, h.items[0][3]), held, raw))
            due.sort(key=lambda t: t[0])
            for _key, held, raw in due:
                w = self._work(held, 0, raw)
                out.append(w)
                size += w.size
            if not new or len(out) >= max_events or (out and size >= max_bytes):
                return out
            while len(out) < max_events and (not out or size < max_bytes):
                if not d.buffer:
                    if not await self._fill(d, max_events - len(out)):
                        break
                    continue
                held, pos, raw = d.buffer.popleft()
                if held.done:  # handed back after a failed settle
                    continue
                w = self._work(held, pos, raw)
                out.append(w)
                size += w.size
        except SpoolUnavailable:
            if out:
                return out
            raise
        return out

    async def _fill(self, d: _Dest, want: int) -> bool:
        """Fetch about ``want`` events' messages (a message may hold many requests' records)."""
        size, items = self._pulled  # running means per message: bytes, items
        count = max(1, min(256, math.ceil(max(want, 1) / items), int(PULL_BYTES // size)))
        msgs = await self._pull(self.s_events, self._consumer(d, False), count)
        if not msgs:
            return False
        got_bytes = sum(len(m.data) for m in msgs)
        name = d.name
        got_items = 0
        for msg in msgs:
            seq = msg.metadata.sequence.stream
            if (False, seq) in d.held:
                continue
            rec = records.Bundle(msg.data)
            got_items += len(rec)
            mine = [(i, raw) for i, raw in rec.raw_items() if name in rec.route_of(i).destinations]
            if not mine:
                with contextlib.suppress(Exception):
                    await msg.ack()
                continue
            settled: set[int] = set()
            progress = False
            if msg.metadata.num_delivered > 1:  # leased before: skip what was settled then
                got = await self._last(self.s_progress, f"{self.prefix}.prog.{d.token}.{seq}")
                if got is not None:
                    settled = set(orjson.loads(got))
                    progress = True
                    mine = [(i, raw) for i, raw in mine if i not in settled]
                if not mine:
                    await self._ack(d, _Held(msg, seq, False, rec, 0, settled=settled, progress=progress))
                    continue
            held = _Held(msg, seq, False, rec, len(mine), settled=settled, progress=progress)
            d.held[(False, seq)] = held
            for i, raw in mine:
                d.buffer.append((held, i, raw))
        n = len(msgs)
        mean = got_bytes / n  # larger messages count at once, smaller ones gradually
        self._pulled = (max(mean, 0.7 * size + 0.3 * mean), 0.7 * items + 0.3 * max(1.0, got_items / n))
        return True

    async def _last(self, stream: str, subject: str) -> bytes | None:
        try:
            data = await self._api(f"$JS.API.STREAM.MSG.GET.{stream}", {"last_by_subj": subject})
        except _ApiError as exc:
            if exc.err_code == ERR_NO_MESSAGE or exc.code == 404:
                return None
            raise SpoolUnavailable(f"JetStream: {exc.description}") from None
        return base64.b64decode(data["message"].get("data") or b"")

    async def _ack(self, d: _Dest, held: _Held) -> None:
        held.done = True
        d.held.pop((held.retry, held.seq), None)
        try:
            await held.msg.ack_sync(timeout=min(5.0, self._cfg.publish_timeout))
        except Exception as exc:
            # the outcome is recorded; the ack may still have arrived. If not, the record is leased
            # again after ack_wait, and its progress message skips what was settled
            log.warning("jetstream_ack_unconfirmed", destination=d.name, seq=held.seq, error=type(exc).__name__)
            return
        if held.progress:
            with contextlib.suppress(Exception):
                await self._api(f"$JS.API.STREAM.PURGE.{self.s_progress}",
                                {"filter": f"{self.prefix}.prog.{d.token}.{held.seq}"})

    def _work(self, held: _Held, pos: int, raw: bytes) -> Work:
        h = held.record.header_of(pos)
        meta = held.meta
        return Work(ref=(held, pos, raw), source=h.source, key_index=h.key_index, received_at=h.received_at,
                    size=len(raw), stored=(held.record, pos, raw), attempts=int(meta.get("attempts", 0)),
                    first_failed=meta.get("first_failed"), done=frozenset(meta.get("done", ())))

    async def settle(self, destination: str, settlements: Sequence[Settlement]) -> None:
        d = self._dest(destination)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._cfg.publish_timeout
        now = time.time()
        jobs: list[Any] = []
        job_keys: list[tuple[_Held, int]] = []
        finished: list[tuple[_Held, int]] = []
        seen: set[tuple[int, int]] = set()
        for s in settlements:
            held, pos, raw = s.work.ref
            if held.done or pos in held.settled or (id(held), pos) in seen:
                continue  # settled already: each outcome is recorded once
            seen.add((id(held), pos))
            if s.disposition in (Disposition.DELIVERED, Disposition.SKIPPED):
                finished.append((held, pos))
                continue
            one = _unpack(held.msg.data)[1] if held.retry else _one_item(held.record, pos, raw)
            base_id = f"{destination}:{'r' if held.retry else 'e'}{held.seq}:{pos}:{s.attempts}"
            if s.disposition is Disposition.RETRY:
                due = s.retry_at if s.retry_at is not None else now
                meta = {"destination": destination, "due": due, "attempts": s.attempts,
                        "first_failed": s.first_failed, "done": sorted(s.done), "status": s.status,
                        "reason": s.reason}
                headers = {"Nats-Msg-Id": "retry:" + base_id}
                if self._schedules and due > now + 1.0:
                    subject = f"{self.prefix}.sched.{d.token}.{uuid.uuid4().hex}"
                    headers["Nats-Schedule"] = "@at " + _rfc3339(due + 0.999)
                    headers["Nats-Schedule-Target"] = f"{self.prefix}.due.{d.token}"
                else:
                    subject = f"{self.prefix}.due.{d.token}"
            else:
                meta = {"destination": destination, "at": now, "attempts": s.attempts, "status": s.status,
                        "reason": s.reason, "response": s.response, "source": held.record.header_of(pos).source,
                        "message_id": s.work.message_id, "first_failed": s.first_failed}
                subject, headers = f"{self.prefix}.dead.{d.token}", {"Nats-Msg-Id": "dead:" + base_id}
            jobs.append(self._publish(subject, _pack(meta, one), headers, deadline))
            job_keys.append((held, pos))
        results = await asyncio.gather(*jobs, return_exceptions=True) if jobs else []
        failed: set[_Held] = set()
        error: BaseException | None = None
        for r, key in zip(results, job_keys, strict=True):
            if isinstance(r, BaseException):
                error = error or r
                failed.add(key[0])
            else:
                finished.append(key)
        touched: list[_Held] = []
        for held, pos in finished:
            if held in failed:
                continue
            held.settled.add(pos)
            held.pending -= 1
            if held not in touched:
                touched.append(held)
        partial = [h for h in touched if h.pending > 0 and not h.retry]
        if partial:  # what part of a record is settled, so a redelivery of it skips that part
            prog = await asyncio.gather(*(self._publish(
                f"{self.prefix}.prog.{d.token}.{h.seq}", orjson.dumps(sorted(h.settled)), {}, deadline)
                for h in partial), return_exceptions=True)
            for h, r in zip(partial, prog, strict=True):
                if isinstance(r, BaseException):
                    error = error or r
                    failed.add(h)
                else:
                    h.progress = True
        done = [h for h in touched if h.pending <= 0 and h not in failed]
        if done:
            await asyncio.gather(*(self._ack(d, h) for h in done))
        if failed:
            # what could not be recorded goes back to the cluster: leased again, never lost
            for held in failed:
                if not held.done:
                    held.done = True
                    d.held.pop((held.retry, held.seq), None)
                    with contextlib.suppress(Exception):
                        await held.msg.nak(delay=1.0)
            if isinstance(error, (SpoolUnavailable, SpoolFull)):
                raise SpoolUnavailable(str(error))
            if error is not None:
                raise error

    async def wait(self, destination: str, timeout: float) -> None:
        d = self._dest(destination)
        if d.buffer:
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(d.event.wait(), max(0.0, min(timeout, POLL)))

    def wake(self, destination: str | None = None) -> None:
        for d in self._dests.values():
            if destination is None or d.name == destination:
                d.event.set()

    def observe_commit(self, token: int) -> None:
        self.wake()

    async def _on_notify(self, _msg: Any) -> None:
        self.wake()

    async def _keepalive(self) -> None:
        """Extend the ack deadline of everything this instance holds (fetched, being delivered)."""
        period = max(0.5, self._cfg.ack_wait / 3)
        while True:
            await asyncio.sleep(period)
            if not self._connected:
                continue
            for d in list(self._dests.values()):
                for h in list(d.held.values()):
                    if not h.done:
                        with contextlib.suppress(Exception):
                            await h.msg.in_progress()

    # -- operators --------------------------------------------------------------------------------

    async def _get(self, stream: str, seq: int, next_by_subj: str | None = None) -> tuple[int, str, bytes,
                                                                                          float] | None:
        body: dict[str, Any] = {"seq": seq}
        if next_by_subj:
            body["next_by_subj"] = next_by_subj
        try:
            data = await self._api(f"$JS.API.STREAM.MSG.GET.{stream}", body)
        except _ApiError as exc:
            if exc.err_code in (ERR_NO_MESSAGE, 10037) or exc.code == 404:
                return None
            raise SpoolUnavailable(f"JetStream: {exc.description}") from None
        m = data["message"]
        return (m["seq"], m["subject"], base64.b64decode(m.get("data") or b""), _parse_time(m.get("time", "")))

    async def _scan(self, stream: str, subject: str, start: int = 1):  # type: ignore[no-untyped-def]
        seq = start
        while True:
            got = await self._get(stream, seq, subject)
            if got is None:
                return
            yield got
            seq = got[0] + 1

    async def _subjects(self, stream: str, pattern: str) -> dict[str, int]:
        try:
            info = await self._api(f"$JS.API.STREAM.INFO.{stream}", {"subjects_filter": pattern})
        except _ApiError as exc:
            raise SpoolUnavailable(f"JetStream: {exc.description}") from None
        return info["state"].get("subjects") or {}

    def _dead_letter(self, seq: int, data: bytes, with_event: bool) -> DeadLetter:
        meta, payload = _unpack(data)
        event = None
        if with_event:
            rec = records.Record(payload)
            (_, raw), = rec.raw_items()
            event = rec.materialize_json(0, raw)
        return DeadLetter(id=str(seq), destination=meta["destination"], at=float(meta["at"]),
                          attempts=int(meta.get("attempts", 0)), status=meta.get("status"),
                          reason=meta.get("reason", ""), response=meta.get("response"), source=meta.get("source", ""),
                          message_id=meta.get("message_id"), event=event)

    async def _dead_matching(self, query: DeadQuery) -> list[tuple[int, DeadLetter]]:
        subject = f"{self.prefix}.dead.{token_of(query.destination)}" if query.destination else f"{self.prefix}.dead.*"
        out: list[tuple[int, DeadLetter]] = []
        if query.ids:
            seqs = sorted({int(i) for i in query.ids if str(i).isdigit()})
            for seq in seqs:
                got = await self._get(self.s_dead, seq)
                if got is not None and (not query.destination or got[1] == subject):
                    out.append((seq, self._dead_letter(seq, got[2], False)))
        else:
            async for seq, _subj, data, _t in self._scan(self.s_dead, subject):
                out.append((seq, self._dead_letter(seq, data, False)))
        return [(s, dl) for s, dl in out
                if (query.destination is None or dl.destination == query.destination)
                and (query.since is None or dl.at >= query.since) and (query.until is None or dl.at <= query.until)]

    async def dead_letters(self, query: DeadQuery) -> tuple[list[DeadLetter], int]:
        found = [dl for _s, dl in await self._dead_matching(query)]
        total = len(found)
        if query.limit is not None:
            found = found[:query.limit]
        return found, total

    async def dead_letter(self, id: str) -> DeadLetter | None:
        if not str(id).isdigit():
            return None
        got = await self._get(self.s_dead, int(id))
        if got is None or not got[1].startswith(f"{self.prefix}.dead."):
            return None
        return self._dead_letter(got[0], got[2], True)

    async def replay(self, query: DeadQuery, destinations: Sequence[str], progress: Progress | None = None) -> int:
        allowed = set(destinations)
        return await self.reroute(query, lambda dl: [dl.destination] if dl.destination in allowed else [], progress)

    async def reroute(self, query: DeadQuery, route: Callable[[DeadLetter], Sequence[str]],
                      progress: Progress | None = None) -> int:
        loop = asyncio.get_running_loop()
        matching = await self._dead_matching(query)
        if query.limit is not None:
            matching = matching[:query.limit]
        n = 0
        for seq, _dl in matching:
            got = await self._get(self.s_dead, seq)
            if got is None:
                continue  # replayed by someone else meanwhile
            targets = list(dict.fromkeys(route(self._dead_letter(seq, got[2], True))))
            if not targets:
                continue
            _meta, payload = _unpack(got[2])
            for target in targets:
                due = {"destination": target, "due": time.time(), "attempts": 0, "first_failed": None,
                       "done": [], "status": None, "reason": "replayed"}
                await self._publish(f"{self.prefix}.due.{token_of(target)}", _pack(due, payload),
                                    {"Nats-Msg-Id": f"reroute:{self.prefix}:{seq}:{target}"},
                                    loop.time() + self._cfg.publish_timeout)
            with contextlib.suppress(_ApiError):
                await self._api(f"$JS.API.STREAM.MSG.DELETE.{self.s_dead}", {"seq": seq, "no_erase": True})
            n += 1
            if progress is not None:
                progress(n)
        if n:
            with contextlib.suppress(Exception):
                await self._nc.publish(f"{self.prefix}.notify", b"")
        return n

    async def _consumer_info(self, stream: str, name: str) -> dict[str, Any] | None:
        try:
            return await self._api(f"$JS.API.CONSUMER.INFO.{stream}.{name}", {})
        except _ApiError as exc:
            if exc.err_code == ERR_CONSUMER_NOT_FOUND or exc.code == 404:
                return None
            raise SpoolUnavailable(f"JetStream: {exc.description}") from None

    async def _stream_state(self, stream: str) -> dict[str, Any]:
        try:
            return (await self._api(f"$JS.API.STREAM.INFO.{stream}", {}))["state"]
        except _ApiError as exc:
            raise SpoolUnavailable(f"JetStream: {exc.description}") from None

    async def _backlog(self, name: str, info: dict[str, Any] | None, events_state: dict[str, Any],
                       sample: int | None = SAMPLE) -> tuple[int, float | None]:
        """Events routed to ``name`` in records its consumer has not acked: counted exactly up to
        ``sample`` records (all when None), estimated beyond (records x the average routed per
        record of those read)."""
        if info is None:
            return 0, None
        floor = info["ack_floor"]["stream_seq"]
        start = max(floor + 1, events_state.get("first_seq", 1))
        last = events_state.get("last_seq", 0)
        pending_records = info.get("num_pending", 0) + info.get("num_ack_pending", 0)
        if pending_records == 0 or start > last:
            return 0, None
        counted = routed = 0
        oldest: float | None = None
        seq = start
        while seq <= last and (sample is None or counted < sample):
            got = await self._get(self.s_events, seq, f"{self.prefix}.events")
            if got is None:
                break
            seq = got[0] + 1
            rec = records.Bundle(got[2])
            mine = [i for i in range(len(rec)) if name in rec.route_of(i).destinations]
            counted += 1
            routed += len(mine)
            if mine and oldest is None:
                oldest = rec.header_of(mine[0]).received_at
        if counted and seq <= last:
            routed = int(routed / counted * pending_records)
        return routed, oldest

    async def _oldest_retry(self, tok: str) -> float | None:
        """receivedAt of the first retry of the destination in stream order (due, then scheduled)."""
        out: float | None = None
        for subject in (f"{self.prefix}.due.{tok}", f"{self.prefix}.sched.{tok}.*"):
            got = await self._get(self.s_retry, 1, subject)
            if got is not None:
                at = records.Record(_unpack(got[2])[1]).header.received_at
                out = at if out is None else min(out, at)
        return out

    async def stats(self, destinations: Sequence[str] = (), *, exact: bool = False) -> Stats:
        ev = await self._stream_state(self.s_events)
        rt = await self._stream_state(self.s_retry)
        dead = await self._subjects(self.s_dead, f"{self.prefix}.dead.*")
        retry_subjects = await self._subjects(self.s_retry, ">")
        names = set(destinations) | set(await self.known_destinations())
        per: dict[str, DestinationStats] = {}
        for name in sorted(names):
            tok = token_of(name)
            info = await self._consumer_info(self.s_events, f"{self.prefix}_{tok}")
            backlog, oldest = await self._backlog(name, info, ev, None if exact else SAMPLE)
            retry_oldest = await self._oldest_retry(tok)
            if retry_oldest is not None:
                oldest = retry_oldest if oldest is None else min(oldest, retry_oldest)
            retries = retry_subjects.get(f"{self.prefix}.due.{tok}", 0) + sum(
                n for s, n in retry_subjects.items() if s.startswith(f"{self.prefix}.sched.{tok}."))
            per[name] = DestinationStats(backlog=backlog, retries=retries,
                                         dead=dead.get(f"{self.prefix}.dead.{tok}", 0),
                                         oldest_undelivered=oldest)
        self._events_bytes, self._retry_bytes = ev.get("bytes", 0), rt.get("bytes", 0)
        self._full = self._events_bytes >= int(self._cfg.max_bytes)
        return Stats(engine=self.engine, events=await self._event_count(ev, None if exact else SAMPLE),
                     bytes=ev.get("bytes", 0) + rt.get("bytes", 0), max_bytes=int(self._cfg.max_bytes),
                     full=self._full, destinations=per,
                     extra={"records": ev.get("messages", 0), "retry_messages": rt.get("messages", 0),
                            "dedup_window": self._storage.dedup_window,
                            "dedup_window_effective": self._index.effective_window, "dedup_ids": len(self._index),
                            "message_schedules": self._schedules})

    async def _event_count(self, ev: dict[str, Any], sample: int | None = SAMPLE) -> int:
        """Events (items) in the event stream: exact up to ``sample`` records (all when None),
        estimated beyond."""
        n = ev.get("messages", 0)
        if not n:
            return 0
        counted = items = 0
        async for _seq, _s, data, _t in self._scan(self.s_events, f"{self.prefix}.events", ev.get("first_seq", 1)):
            items += len(records.Bundle(data))
            counted += 1
            if sample is not None and counted >= sample:
                return int(items / counted * n)
        return items

    async def events(self, limit: int | None = None) -> list[StoredEvent]:
        out: list[StoredEvent] = []
        async for _seq, _s, data, _t in self._scan(self.s_events, f"{self.prefix}.events"):
            for se in records.Bundle(data).stored_events():
                out.append(se)
                if limit is not None and len(out) >= limit:
                    return out
        return out

    async def known_destinations(self) -> list[str]:
        names: set[str] = set()
        for stream in (self.s_events, self.s_retry):
            offset = 0
            while True:
                try:
                    page = await self._api(f"$JS.API.CONSUMER.LIST.{stream}", {"offset": offset})
                except _ApiError as exc:
                    raise SpoolUnavailable(f"JetStream: {exc.description}") from None
                for c in page.get("consumers") or []:
                    name = ((c.get("config") or {}).get("metadata") or {}).get("trackrelay_destination")
                    if name:
                        names.add(name)
                got = len(page.get("consumers") or [])
                offset += got
                if not got or offset >= page.get("total", 0):
                    break
        for subject in await self._subjects(self.s_dead, f"{self.prefix}.dead.*"):
            try:
                data = await self._api(f"$JS.API.STREAM.MSG.GET.{self.s_dead}", {"last_by_subj": subject})
                meta, _ = _unpack(base64.b64decode(data["message"]["data"]))
                names.add(meta["destination"])
            except (_ApiError, KeyError, ValueError):
                continue
        return sorted(names)

    async def forget(self, destination: str) -> int:
        tok = token_of(destination)
        subjects = await self._subjects(self.s_retry, ">")
        removed = subjects.get(f"{self.prefix}.due.{tok}", 0) + sum(
            n for s, n in subjects.items() if s.startswith(f"{self.prefix}.sched.{tok}."))
        for stream, name in ((self.s_events, f"{self.prefix}_{tok}"), (self.s_retry, f"{self.prefix}_{tok}_retry")):
            with contextlib.suppress(_ApiError):
                await self._api(f"$JS.API.CONSUMER.DELETE.{stream}.{name}", {})
        for filt in (f"{self.prefix}.due.{tok}", f"{self.prefix}.sched.{tok}.*"):
            with contextlib.suppress(_ApiError):
                await self._api(f"$JS.API.STREAM.PURGE.{self.s_retry}", {"filter": filt})
        d = self._dests.pop(destination, None)
        if d is not None:
            d.event.set()
        return removed

    # -- housekeeping -----------------------------------------------------------------------------

    async def maintain(self, active_destinations: Sequence[str]) -> None:
        try:
            ev = await self._stream_state(self.s_events)
            rt = await self._stream_state(self.s_retry)
        except SpoolUnavailable:
            return
        now = time.time()
        self._events_bytes, self._retry_bytes = ev.get("bytes", 0), rt.get("bytes", 0)
        max_bytes = int(self._cfg.max_bytes)
        used = self._events_bytes
        self._full = used >= max_bytes
        self._samples.append((now, ev.get("last_seq", 0) + 1))
        retention = self._storage.retention
        while len(self._samples) > 2 and self._samples[1][0] <= now - retention:
            self._samples.popleft()
        if self.role != "main":
            # an ingest worker (server.workers > 1) or operator knows no destinations: freeing is
            # the delivering instances' job, else it would purge events a destination still owes
            return
        if now - self._last_purge < PURGE_EVERY and used < 0.8 * max_bytes:
            return
        self._last_purge = now
        floor = ev.get("last_seq", 0) + 1
        for name in active_destinations:
            info = await self._consumer_info(self.s_events, f"{self.prefix}_{token_of(name)}")
            if info is not None:
                floor = min(floor, info["ack_floor"]["stream_seq"] + 1)
        if used < 0.8 * max_bytes:
            old = self._samples[0]
            floor = min(floor, old[1] if old[0] <= now - retention else 0)
        if floor > ev.get("first_seq", 0) and ev.get("messages", 0):
            with contextlib.suppress(_ApiError, SpoolUnavailable):
                await self._api(f"$JS.API.STREAM.PURGE.{self.s_events}", {"seq": floor})
                ev = await self._stream_state(self.s_events)
                self._events_bytes = ev.get("bytes", 0)
                self._full = self._events_bytes >= max_bytes

    async def delete_everything(self) -> None:
        """Delete every stream this prefix created (tests; an operator uses the nats CLI)."""
        for stream in (self.s_events, self.s_ids, self.s_retry, self.s_dead, self.s_progress):
            with contextlib.suppress(_ApiError, SpoolUnavailable):
                await self._api(f"$JS.API.STREAM.DELETE.{stream}", {}, timeout=10)
