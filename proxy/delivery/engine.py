"""Delivery: one worker per enabled destination leases its events from the spool, batches them,
asks the adapter for request descriptions, sends them, classifies the answers and settles every
outcome with the spool — delivered, skipped (with a reason), rescheduled durably, or dead-lettered
with the last response. Nothing here knows a vendor's API, nor how the spool stores anything.

Per destination:
- due retries come first, then new events in arrival order (the spool's lease);
- batches flush on ``max_batch_events``, ``max_batch_bytes`` or ``flush_interval``;
- up to ``concurrency`` batches are in flight; each request gets a few quick in-flight retries
  (tenacity) before a failure is rescheduled durably with exponential backoff and jitter, capped
  at ``backoff_max``, Retry-After winning; past ``retry_window`` the event is dead-lettered;
- a message that needs several requests (an import plus a profile update...) remembers which of
  them succeeded, so a retry does not send those again;
- a circuit breaker: when a batch fails as a whole (network errors, 5xx, 429), the destination's
  circuit opens: nothing is sent but one probe event every ``probe_interval`` (doubling up to
  ``probe_interval_max``, Retry-After respected), the backlog stays in the spool, so a dead
  destination costs neither memory nor the other destinations anything; the first probe that
  succeeds closes the circuit and makes every rescheduled event due at once, so catch-up runs at
  drain speed instead of waiting out each event's backoff;
- a batched request refused as a whole (400/413/422) without saying which messages were wrong is
  split in halves, down to single messages, so only the refused messages are dead-lettered;
- the spool moves a destination past an event only once it is settled, so a crash re-delivers
  (at-least-once) and never loses.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sys
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp
import orjson
import structlog
from pydantic import SecretStr
from tenacity import AsyncRetrying, RetryCallState, retry_if_result, stop_after_attempt

from destinations.base import (
    Adapter,
    Built,
    Message,
    MessageOutcome,
    Outcome,
    Request,
    Response,
    Verdict,
    body_excerpt,
)
from proxy.config import Config, DestinationConfig, EffectiveDelivery
from proxy.governance.blocked import SKIP_BLOCKED, blocked_destination, blocked_reason
from proxy.governance.filters import DestinationPipeline
from proxy.metrics import METRICS, observe_many
from proxy.observe import TAPS
from proxy.spool import Disposition, Settlement, Spool, Work

log = structlog.get_logger("trackrelay.delivery")

INFLIGHT_MAX_WAIT = 5.0  # longer Retry-After values are waited out durably, not in flight
# a batch refused with one of these, without per-message detail, is split to find the bad messages
SPLIT_STATUSES = frozenset({400, 413, 422})
_SEVERITY: dict[Verdict | None, int] = {Verdict.OK: 0, Verdict.RETRY: 1, Verdict.PERMANENT: 2}


@dataclass(slots=True)
class Result:
    verdict: Verdict | None  # None = skipped by the adapter
    reason: str = ""
    status: int | None = None
    response: str | None = None
    retry_after: float | None = None
    attempts: int = 0
    done: frozenset[str] = frozenset()  # keys of requests for this message that succeeded


@dataclass(slots=True)
class _Attempts:
    count: int = 0
    last_status: int | None = None
    last_body: str | None = None


def backoff(attempts: int, initial: float, cap: float) -> float:
    """Exponential backoff with full jitter in [base/2, base], capped."""
    base = min(cap, initial * (2 ** max(0, attempts - 1)))
    return base / 2 + random.random() * base / 2


class DestinationWorker:
    def __init__(self, dest: DestinationConfig, delivery: EffectiveDelivery, spool: Spool,
                 engine: DeliveryEngine) -> None:
        self.name = dest.name
        self.adapter: Adapter = dest.adapter
        self.settings = dest.parsed_settings
        self.d = delivery
        self.spool = spool
        self.engine = engine
        self.wake = asyncio.Event()
        self.buffer: deque[Work] = deque()
        self.buffer_since: float | None = None
        # the circuit breaker: open while the destination fails; one probe at a time then
        self.open_since: float | None = None
        self.probe_at = 0.0
        self.probe_interval = delivery.probe_interval
        self.probing = False
        self.inflight: set[asyncio.Task] = set()
        self.sem = asyncio.Semaphore(delivery.concurrency)
        self.stopping = False
        self.task: asyncio.Task | None = None
        self._next_send = 0.0
        self._rate_lock = asyncio.Lock()
        self.log = log.bind(destination=self.name, type=self.adapter.type)
        # the list form of `filters` and `transform`, compiled once; None when there are none
        pipeline = DestinationPipeline.from_config(dest)
        self.pipeline: DestinationPipeline | None = pipeline if pipeline.active else None

    # -- reading --------------------------------------------------------------------------------

    async def start(self) -> None:
        self.task = asyncio.create_task(self.run(), name=f"deliver:{self.name}")

    async def run(self) -> None:
        while not self.stopping:
            try:
                batch = await self.next_batch()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep the worker alive; the spool may be briefly busy
                self.log.error("worker_error", error=repr(exc))
                await asyncio.sleep(1.0)
                continue
            if not batch:
                continue
            await self.sem.acquire()
            if self.open_since is not None and not self.probing:
                # the destination failed while this batch waited for a slot: it goes back, and
                # only probes are sent until the destination answers again
                self.sem.release()
                self.buffer.extendleft(reversed(batch))
                if self.buffer_since is None:
                    self.buffer_since = time.monotonic()
                continue
            task = asyncio.create_task(self.deliver(batch, probe=self.probing))
            self.inflight.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        self.inflight.discard(task)
        self.sem.release()
        if not task.cancelled() and task.exception() is not None:
            self.log.error("deliver_failed", error=repr(task.exception()))

    async def next_batch(self) -> list[Work] | None:
        if self.open_since is not None:
            return await self._probe()
        room = self.d.max_batch_events - len(self.buffer)
        if room > 0:
            got = await self.spool.lease(self.name, room, self.d.max_batch_bytes)
            if got:
                self.buffer.extend(got)
        if not self.buffer:
            await self.spool.wait(self.name, 1.0)
            return None
        if self.buffer_since is None:
            self.buffer_since = time.monotonic()
        if len(self.buffer) < self.d.max_batch_events and self._buffered_bytes() < self.d.max_batch_bytes:
            remaining = self.d.flush_interval - (time.monotonic() - self.buffer_since)
            if remaining > 0 and not self.stopping:
                await self.spool.wait(self.name, remaining)
                left = self.d.flush_interval - (time.monotonic() - self.buffer_since)
                if left > 0:
                    # More was committed. At a low rate that is one request, so leasing now would
                    # read the spool once per request: let a quarter of the interval's commits
                    # gather first (the batch still leaves when the interval is up, or full).
                    await asyncio.sleep(min(left, self.d.flush_interval / 4))
                    return None  # lease what came meanwhile, then decide again
        return self._take()

    def _buffered_bytes(self) -> int:
        return sum(w.size for w in self.buffer)

    def _take(self) -> list[Work]:
        batch: list[Work] = []
        size = 0
        while self.buffer and len(batch) < self.d.max_batch_events:
            work = self.buffer[0]
            if batch and size + work.size > self.d.max_batch_bytes:
                break
            batch.append(self.buffer.popleft())
            size += work.size
        self.buffer_since = time.monotonic() if self.buffer else None
        return batch

    async def _probe(self) -> list[Work] | None:
        """Circuit open: one event, when the probe is due, and only one probe at a time."""
        now = time.time()
        if self.probing or now < self.probe_at:
            await self._sleep(1.0 if self.probing else min(self.probe_at - now, 1.0))
            return None
        if self.buffer:
            probe = [self.buffer.popleft()]
        else:
            probe = await self.spool.lease(self.name, 1, self.d.max_batch_bytes)
            if not probe and await self.spool.expedite(self.name, 1):  # the earliest retry, ahead of its time
                probe = await self.spool.lease(self.name, 1, self.d.max_batch_bytes)
        if not probe:  # nothing owed any more: nothing to probe with
            self._close_circuit(0)
            return None
        self.probing = True
        return probe

    def _open_circuit(self, retry_after: float | None) -> None:
        now = time.time()
        if self.open_since is None:
            self.open_since = now
            self.probe_interval = self.d.probe_interval
            METRICS.circuit_open.labels(self.name).set(1)
            self.log.warning("destination_failing", probe_in=self.probe_interval)
        else:
            self.probe_interval = min(self.probe_interval * 2, self.d.probe_interval_max)
        self.probe_at = now + max(self.probe_interval, retry_after or 0.0)

    def _close_circuit(self, expedited: int) -> None:
        if self.open_since is not None:
            self.log.info("destination_recovered", failing_for=round(time.time() - self.open_since, 1),
                          retries_due_now=expedited)
        self.open_since = None
        self.probe_interval = self.d.probe_interval
        METRICS.circuit_open.labels(self.name).set(0)

    async def _sleep(self, seconds: float) -> None:
        """Wait while the circuit is open: only a state change (an outcome, stop) wakes us early."""
        if seconds <= 0 or self.stopping:
            return
        self.wake.clear()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.wake.wait(), seconds)

    # -- sending --------------------------------------------------------------------------------

    async def deliver(self, batch: list[Work], probe: bool = False) -> None:
        if self.pipeline is None:
            messages = [Message(None, w.source, self.engine.write_key(w.source, w.key_index), lazy=w) for w in batch]
            results = await self.send(messages, [w.done for w in batch])
            await self.record(batch, messages, results, probe)
            return
        # filter steps and transform: each Work is skipped, dead-lettered, or becomes 1..N messages
        kept: list[Work] = []
        originals: list[Message] = []
        messages = []
        owners: list[int] = []       # messages[i] comes from kept[owners[i]]
        settled: list[Settlement] = []
        forwards = self.adapter.forwards_json
        for w in batch:
            key = self.engine.write_key(w.source, w.key_index)
            try:
                event = w.parsed()
            except (ValueError, TypeError):  # unparseable stored bytes: the adapter path records it as today
                event = None
            applied = self.pipeline.apply(event) if event is not None else None
            if applied is not None and applied.error is not None:
                METRICS.dead_lettered.labels(self.name, "transform").inc()
                self.log.warning("event_dead_lettered", message_id=w.message_id, reason="transform error",
                                 error=applied.error.strip().splitlines()[-1][:300])
                settled.append(Settlement(w, Disposition.DEAD, applied.error, attempts=w.attempts,
                                          done=w.done, first_failed=w.first_failed))
                continue
            if applied is not None and applied.skip is not None:
                METRICS.skipped.labels(self.name, applied.skip).inc()
                self.log.debug("event_skipped", message_id=w.message_id, reason=applied.skip)
                settled.append(Settlement(w, Disposition.SKIPPED, applied.skip))
                continue
            original = Message(None, w.source, key, lazy=w)
            kept.append(w)
            originals.append(original)
            if applied is None:
                messages.append(original)
                owners.append(len(kept) - 1)
                continue
            for out in applied.events:
                if out is event:
                    messages.append(original)
                    if forwards:  # encoded now: the tree can go (below)
                        w.json()
                elif forwards:
                    try:
                        messages.append(Message(None, w.source, key, raw=orjson.dumps(out)))
                    except TypeError:  # not JSON (a transform's result): the adapter path fails it as always
                        messages.append(Message(out, w.source, key))
                else:
                    messages.append(Message(out, w.source, key))
                owners.append(len(kept) - 1)
            if forwards:
                # The adapter reads only JSON: let the event's tree go now rather than keep the
                # trees of the whole batch alive while it is sent; the garbage collector would
                # trace and promote them all (measured with filters on a webhook: ~8 µs of CPU
                # per event).
                w.event = None
        if settled:
            await self.spool.settle(self.name, settled)
            if TAPS.settled:
                TAPS.emit(TAPS.settled, self.name, settled)
        if not kept:
            if probe:
                self.probing = False
            self.wake.set()
            return
        results = await self.send(messages, [kept[o].done for o in owners])
        await self.record(kept, originals, fold_results(owners, results, len(kept)), probe)

    async def send(self, messages: list[Message], done: list[frozenset[str]] | None = None) -> list[Result]:
        """Build and send the requests for ``messages``; ``done[i]`` are the keys of requests that
        already succeeded for message i in an earlier attempt: a request whose messages all did it
        is not sent again."""
        results: list[Result] = [Result(Verdict.OK) for _ in messages]
        try:
            built: Built = self.adapter.build_requests(messages, self.settings)
        except Exception as exc:  # an adapter bug must not lose events: dead-letter them, replayable
            self.log.exception("adapter_failed", error=repr(exc))
            reason = f"adapter error: {exc!r}"[:500]
            return [Result(Verdict.PERMANENT, reason) for _ in messages]
        for skip in built.skips:
            results[skip.index] = Result(None, skip.reason)
        for reject in built.rejects:
            results[reject.index] = Result(Verdict.PERMANENT, f"rejected before sending: {reject.reason}")
        for note in built.notes:  # sent, but changed to fit the API's limits: never silently
            METRICS.events_modified.labels(self.name).inc()
            self.log.info("event_modified", message_id=_message_id(messages[note.index]), reason=note.reason[:300])
        for req in built.requests:
            key = request_key(req)
            if done and req.messages and all(key in done[i] for i in req.messages):
                for i in req.messages:
                    results[i].done |= {key}
                continue
            mids = [_message_id(messages[i]) for i in req.messages] if TAPS.attempted else ()
            outcome, tries = await self.send_request(req, mids)
            if self._should_split(req, outcome, tries):
                await self._split(req, messages, done, results, tries)
                continue
            for i in req.messages:
                current = results[i]
                if current.verdict is None:
                    continue
                mo: MessageOutcome = outcome.for_message(i)
                current.attempts = max(current.attempts, tries.count)
                if mo.verdict is Verdict.OK:
                    current.done |= {key}
                if _SEVERITY[mo.verdict] > _SEVERITY[current.verdict]:
                    results[i] = Result(mo.verdict, mo.reason, tries.last_status, tries.last_body,
                                        outcome.retry_after, tries.count, current.done)
        return results

    def _should_split(self, req: Request, outcome: Outcome, tries: _Attempts) -> bool:
        return (outcome.verdict is Verdict.PERMANENT and not outcome.per_message and len(req.messages) > 1
                and tries.last_status in SPLIT_STATUSES and not self.stopping)

    async def _split(self, req: Request, messages: list[Message], done: list[frozenset[str]] | None,
                     results: list[Result], tries: _Attempts) -> None:
        """The API refused a batch as a whole without saying which messages: send each half again
        (built anew by the adapter), down to single messages, so only the refused ones fail."""
        idx = [i for i in req.messages if results[i].verdict is not None]
        self.log.info("batch_split", messages=len(idx), status=tries.last_status)
        METRICS.batch_splits.labels(self.name).inc()
        half = len(idx) // 2
        for part in (idx[:half], idx[half:]):
            sub = await self.send([messages[i] for i in part],
                                  [(done[i] if done else frozenset()) | results[i].done for i in part])
            for i, res in zip(part, sub, strict=True):
                current = results[i]
                res.attempts += max(current.attempts, tries.count)
                res.done |= current.done
                if (res.verdict is not None and current.verdict is not None
                        and _SEVERITY[current.verdict] > _SEVERITY[res.verdict]):
                    res = Result(current.verdict, current.reason, current.status, current.response,
                                 current.retry_after, res.attempts, res.done)
                results[i] = res

    async def send_request(self, req: Request, mids: Sequence[str | None] = ()) -> tuple[Outcome, _Attempts]:
        tries = _Attempts()

        def wait(state: RetryCallState) -> float:
            assert state.outcome is not None  # tenacity waits only after an attempt
            outcome: Outcome = state.outcome.result()
            if outcome.retry_after is not None:
                return outcome.retry_after
            return backoff(state.attempt_number, 0.2, 2.0)

        def should_retry(outcome: Outcome) -> bool:
            return (outcome.verdict is Verdict.RETRY and not outcome.per_message and not self.stopping
                    and (outcome.retry_after is None or outcome.retry_after <= INFLIGHT_MAX_WAIT))

        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.d.inflight_retries + 1),
            wait=wait,
            retry=retry_if_result(should_retry),
            retry_error_callback=_last_outcome,
        )
        outcome: Outcome = await retrying(self.attempt, req, tries, mids)
        return outcome, tries

    async def attempt(self, req: Request, tries: _Attempts, mids: Sequence[str | None] = ()) -> Outcome:
        await self._rate_limit()
        tries.count += 1
        started = time.monotonic()
        try:
            response = await self.engine.transport(req, self.d.timeout)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            reason = f"network error: {type(exc).__name__}: {exc}"[:300]
            tries.last_status, tries.last_body = None, reason
            METRICS.requests_sent.labels(self.name, "network_error").inc()
            self.log.info("request_failed", url=_safe_url(req.url), error=reason, attempt=tries.count)
            failed = Outcome(Verdict.RETRY, reason)
            if TAPS.attempted:
                TAPS.emit(TAPS.attempted, self.name, req, None, reason, failed, mids, tries.count, time.time())
            return failed
        tries.last_status, tries.last_body = response.status, body_excerpt(response.body, 2000)
        try:
            outcome = self.adapter.classify(req, response)
        except Exception as exc:
            self.log.exception("classify_failed", error=repr(exc))
            outcome = Outcome(Verdict.RETRY if response.status >= 500 else Verdict.PERMANENT,
                              f"HTTP {response.status} (classifier error: {exc!r})")
        METRICS.requests_sent.labels(self.name, outcome.verdict.value).inc()
        if TAPS.attempted:
            TAPS.emit(TAPS.attempted, self.name, req, response, None, outcome, mids, tries.count, time.time())
        self.log.debug("request_done", url=_safe_url(req.url), status=response.status, verdict=outcome.verdict.value,
                       messages=len(req.messages), ms=round((time.monotonic() - started) * 1000, 1))
        return outcome

    async def _rate_limit(self) -> None:
        rps = self.d.max_requests_per_second
        if not rps:
            return
        async with self._rate_lock:
            now = time.monotonic()
            wait = self._next_send - now
            self._next_send = max(now, self._next_send) + 1.0 / rps
        if wait > 0:
            await asyncio.sleep(wait)

    # -- recording outcomes ---------------------------------------------------------------------

    async def record(self, batch: list[Work], messages: list[Message], results: list[Result],
                     probe: bool = False) -> None:
        now = time.time()
        settlements: list[Settlement] = []
        delivered = 0
        retry_due: list[float] = []
        latency = METRICS.delivery_latency.labels(self.name)
        received: dict[float, int] = {}
        for work, message, res in zip(batch, messages, results, strict=True):
            attempts = work.attempts + res.attempts
            done = work.done | res.done if work.done else res.done
            if res.verdict is Verdict.RETRY:
                first = work.first_failed or now
                if now - first >= self.d.retry_window:
                    res = Result(Verdict.PERMANENT, f"retry window exceeded; last error: {res.reason}",
                                 res.status, res.response, None, res.attempts)
                else:
                    delay = max(res.retry_after or 0.0, backoff(attempts, self.d.backoff_initial, self.d.backoff_max))
                    due = now + delay
                    retry_due.append(due)
                    METRICS.retried.labels(self.name).inc()
                    self.log.info("event_retry", message_id=_message_id(message), attempts=attempts, status=res.status,
                                  reason=res.reason[:300], retry_in=round(delay, 2))
                    settlements.append(Settlement(work, Disposition.RETRY, res.reason[:2000], res.status, None, due,
                                                  attempts, done, first))
                    continue
            if res.verdict is Verdict.PERMANENT:
                reason_code = "rejected" if res.status is None else f"http_{res.status}"
                if res.reason.startswith("retry window exceeded"):
                    reason_code = "retry_window"
                METRICS.dead_lettered.labels(self.name, reason_code).inc()
                self.log.warning("event_dead_lettered", message_id=_message_id(message), attempts=attempts,
                                 status=res.status, reason=res.reason[:300])
                settlements.append(Settlement(work, Disposition.DEAD, res.reason[:2000], res.status, res.response,
                                              None, attempts, done, work.first_failed))
            elif res.verdict is None:
                METRICS.skipped.labels(self.name, "unsupported_by_destination").inc()
                self.log.info("event_skipped", message_id=_message_id(message), reason=res.reason)
                settlements.append(Settlement(work, Disposition.SKIPPED, res.reason))
            else:
                delivered += 1
                if work.received_at:  # the events of one request share it: observed together
                    received[work.received_at] = received.get(work.received_at, 0) + 1
                settlements.append(Settlement(work, Disposition.DELIVERED, attempts=attempts))
        for received_at, count in received.items():
            observe_many(latency, max(0.0, now - received_at), count)
        if delivered:
            METRICS.delivered.labels(self.name).inc(delivered)
            self.log.info("events_delivered", count=delivered, attempts=max(r.attempts for r in results))
        await self.spool.settle(self.name, settlements)
        if TAPS.settled:
            TAPS.emit(TAPS.settled, self.name, settlements)
        if probe:
            self.probing = False
        if any(r.verdict is Verdict.OK for r in results):
            if self.open_since is not None:  # the destination answers again: everything owed is due now
                self._close_circuit(await self.spool.expedite(self.name))
        elif retry_due and (probe or self.open_since is None):  # failed as a whole: stop sending, probe
            self._open_circuit(max((r.retry_after or 0.0) for r in results))
        self.wake.set()

    # -- lifecycle ------------------------------------------------------------------------------

    async def stop(self, grace: float) -> None:
        self.stopping = True
        self.spool.wake(self.name)
        self.wake.set()
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
        if self.inflight:
            done, not_done = await asyncio.wait(set(self.inflight), timeout=grace)
            for task in not_done:
                task.cancel()
            if not_done:
                await asyncio.wait(not_done, timeout=2)
                self.log.warning("shutdown_cancelled_inflight", batches=len(not_done))


def fold_results(owners: Sequence[int], results: Sequence[Result], works: int) -> list[Result]:
    """One Result per Work from the results of its messages (a transform may turn one event into
    several): ``results[i]`` belongs to Work ``owners[i]``. A Work's outcome is the worst of its
    messages' — dead (PERMANENT) over retry over delivered over skipped, so it is skipped only when
    every message was — with that message's reason, status and response, the longest Retry-After,
    the most attempts, and as ``done`` only the request keys every one of its messages got done (a
    retry then re-sends what any of them still needs). A Work with no message is skipped."""
    grouped: list[list[Result]] = [[] for _ in range(works)]
    for owner, res in zip(owners, results, strict=True):
        grouped[owner].append(res)
    rank = {None: -1, **_SEVERITY}
    out: list[Result] = []
    for group in grouped:
        if not group:
            out.append(Result(None, "no event to send"))
            continue
        if len(group) == 1:
            out.append(group[0])
            continue
        worst = max(group, key=lambda r: rank[r.verdict])
        done = frozenset.intersection(*(r.done for r in group))
        waits = [r.retry_after for r in group if r.verdict is worst.verdict and r.retry_after is not None]
        out.append(Result(worst.verdict, worst.reason, worst.status, worst.response, max(waits) if waits else None,
                          max(r.attempts for r in group), done))
    return out


def _last_outcome(state: RetryCallState) -> Outcome:
    """Out of in-flight retries: the last attempt's outcome is the request's."""
    assert state.outcome is not None
    outcome: Outcome = state.outcome.result()
    return outcome


def request_key(req: Request) -> str:
    """Names a request among a message's requests (method and URL without its query), so a retry
    can leave out the ones that already succeeded."""
    return f"{req.method} {_safe_url(req.url)}"


def _message_id(message: Message) -> str | None:
    try:
        mid = message.event.get("messageId")
    except (ValueError, TypeError):  # unparseable stored bytes: still record the outcome
        return None
    return mid if isinstance(mid, str) else None


def _safe_url(url: str) -> str:
    """The URL without its query string (some APIs take credentials there)."""
    return url.split("?", 1)[0]


class BlockedWorker:
    """Moves what ingest routed to a source's pseudo-destination ``(blocked:<source>)`` (events its
    tracking plan blocked) into that pseudo-destination's dead letters: the blocked store (see
    proxy/governance/blocked.py). Nothing is sent anywhere."""

    def __init__(self, source: str, spool: Spool) -> None:
        self.name = blocked_destination(source)
        self.spool = spool
        self.stopping = False
        self.task: asyncio.Task | None = None
        self.log = log.bind(destination=self.name)

    async def start(self) -> None:
        self.task = asyncio.create_task(self.run(), name=f"blocked:{self.name}")

    async def run(self) -> None:
        while not self.stopping:
            try:
                works = await self.spool.lease(self.name, 500, 5 * 1024 * 1024)
                if not works:
                    await self.spool.wait(self.name, 1.0)
                    continue
                settlements = [Settlement(w, Disposition.DEAD, blocked_reason(w.parsed())) for w in works]
                await self.spool.settle(self.name, settlements)
                METRICS.dead_lettered.labels(self.name, SKIP_BLOCKED).inc(len(works))
                self.log.info("events_blocked", count=len(works))
                if TAPS.settled:
                    TAPS.emit(TAPS.settled, self.name, settlements)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep going; what was leased and not settled is leased again
                self.log.error("worker_error", error=repr(exc))
                await asyncio.sleep(1.0)

    async def stop(self) -> None:
        self.stopping = True
        self.spool.wake(self.name)
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task


class DeliveryEngine:
    def __init__(self, config: Config, spool: Spool) -> None:
        self.config = config
        self.spool = spool
        self.workers = [
            DestinationWorker(d, d.effective_delivery(config.delivery), spool, self)
            for d in config.destinations if d.enabled
        ]
        # the blocked store of each source with a tracking plan (whatever its actions now: a plan
        # changed from block to flag still has its blocked events moved)
        self.blocked = [BlockedWorker(s.name, spool) for s in config.sources if s.tracking_plan is not None]
        self._keys = {s.name: [SecretStr(k) for k in s.write_keys] for s in config.sources}
        self.session: aiohttp.ClientSession | None = None

    def write_key(self, source: str, key_index: int) -> SecretStr | None:
        keys = self._keys.get(source)
        if not keys:
            return None
        return keys[key_index] if 0 <= key_index < len(keys) else keys[0]

    def active_destinations(self) -> list[str]:
        return [w.name for w in self.workers] + [b.name for b in self.blocked]

    def problems(self) -> list[str]:
        out = []
        every: list[DestinationWorker | BlockedWorker] = [*self.workers, *self.blocked]
        for w in every:
            if w.task is None:
                out.append(f"{w.name}: not started")
            elif w.task.done():
                out.append(f"{w.name}: worker stopped")
        return out

    async def start(self) -> None:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, limit_per_host=0, ttl_dns_cache=300),
            headers={"User-Agent": "trackrelay/0.1"},
            auto_decompress=True,
        )
        await self.spool.attach(self.active_destinations())
        for w in self.workers:
            await w.start()
        for b in self.blocked:
            await b.start()

    async def stop(self, grace: float) -> None:
        await asyncio.gather(*(w.stop(grace) for w in self.workers), *(b.stop() for b in self.blocked))
        if self.session is not None:
            await self.session.close()

    async def transport(self, req: Request, timeout: float) -> Response:
        from destinations.base import at_send_time  # the send time of THIS attempt (Segment's sentAt)

        req = at_send_time(req, time.time())
        if req.url in ("stdout:", "stderr:"):
            stream = sys.stdout if req.url == "stdout:" else sys.stderr
            stream.buffer.write(req.body or b"")
            stream.flush()
            return Response(200, {}, b"")
        assert self.session is not None
        async with self.session.request(
            req.method, req.url, data=req.body, headers=dict(req.headers),
            timeout=aiohttp.ClientTimeout(total=timeout), allow_redirects=False,
        ) as resp:
            body = await resp.content.read(64 * 1024)
            return Response(resp.status, dict(resp.headers), body)
