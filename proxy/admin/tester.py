"""The event tester: what every destination would get for one pasted Segment event, without sending
(``POST /api/test-event`` and ``trackrelay test-event``), and the explicit one-destination send.

The event goes the way a real one does: the spec checks (proxy.spec.check), the same enrichment
(proxy.enrich: receivedAt, messageId, timestamp correction, channel...), routing (proxy.routing.Router:
enabled, sources, integrations object, filter shorthands), the destination's filter steps and
transform (proxy.governance.filters.DestinationPipeline, as delivery applies them), then the
adapter's build_requests with the parsed settings from the config. Every request shown is masked
(proxy.admin.mask)."""

from __future__ import annotations

import copy
import gzip
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from destinations.base import Message, Request, Response, Verdict, at_send_time, body_excerpt
from proxy import spec
from proxy.admin.mask import Masker, config_secrets
from proxy.config import Config, DestinationConfig
from proxy.enrich import batch_sent_at, enrich, iso_epoch, merge_batch_fields
from proxy.routing import Router

Transport = Callable[[Request, float], Awaitable[Response]]


class TestEventError(ValueError):
    """The input is not something to test (not JSON, no event, unknown source or destination)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def render_request(req: Request, masker: Masker) -> dict[str, Any]:
    body: Any = None
    if req.body is not None:
        data = req.body
        encoding = next((v for k, v in req.headers.items() if k.lower() == "content-encoding"), "")
        if encoding.lower() == "gzip":
            try:
                data = gzip.decompress(data)
            except (OSError, EOFError):
                pass
        try:
            body = masker.json(orjson.loads(data)) if len(data) <= 1 << 20 else masker.body(data)
        except orjson.JSONDecodeError:
            body = masker.body(data)
    return {"method": req.method, "url": masker.url(req.url), "headers": masker.headers(req.headers), "body": body}


def render_response(resp: Response, masker: Masker) -> dict[str, Any]:
    return {"status": resp.status, "headers": masker.headers(resp.headers),
            "body": masker.text(body_excerpt(resp.body, 4000))}


def parse_input(payload: Any) -> list[dict[str, Any]]:
    """One event, a ``{"batch": [...]}`` body (batch-level context/integrations merged), or a list."""
    if isinstance(payload, (bytes, str)):
        try:
            payload = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            raise TestEventError("invalid_json", f"the event is not valid JSON: {exc}") from None
    if isinstance(payload, list):
        items = payload
    elif isinstance(payload, dict) and isinstance(payload.get("batch"), list):
        items = [copy.deepcopy(i) for i in payload["batch"]]
        for item in items:
            if isinstance(item, dict):
                merge_batch_fields(item, payload)
    elif isinstance(payload, dict):
        items = [payload]
    else:
        raise TestEventError("invalid_event", "paste a Segment event (a JSON object) or a batch")
    if not items:
        raise TestEventError("invalid_event", "the batch is empty")
    if len(items) > 100:
        raise TestEventError("invalid_event", "at most 100 events at a time")
    return items


class Tester:
    def __init__(self, config: Config, masker: Masker | None = None) -> None:
        self.config = config
        self.masker = masker or Masker(config_secrets(config))
        self.router = Router(config.destinations)
        self._pipelines: dict[str, Any] = {}

    def _source(self, name: str | None) -> str:
        names = [s.name for s in self.config.sources]
        if name is None:
            return names[0]
        if name not in names:
            raise TestEventError("unknown_source", f"no source {name!r} (sources: {', '.join(names)})")
        return name

    def _destinations(self, name: str | None) -> list[DestinationConfig]:
        enabled = [d for d in self.config.destinations if d.enabled]
        if name is None:
            return enabled
        chosen = [d for d in enabled if d.name == name]
        if not chosen:
            raise TestEventError("unknown_destination", f"no enabled destination {name!r} "
                                 f"(enabled: {', '.join(d.name for d in enabled) or 'none'})")
        return chosen

    def _pipeline(self, dest: DestinationConfig) -> Any:
        if dest.name not in self._pipelines:
            from proxy.governance.filters import DestinationPipeline

            self._pipelines[dest.name] = DestinationPipeline.from_config(dest)
        return self._pipelines[dest.name]

    def enrich(self, item: Any, now: float) -> dict[str, Any]:
        """The item checked and enriched as ingest + delivery would see it; raises spec.Invalid."""
        event = spec.check(copy.deepcopy(item), None, self.config.limits.max_message_id_length)
        return enrich(event, now, iso_epoch(now), batch_sent_at(event) if "sentAt" in event else None, None, False)

    def plan(self, payload: Any, *, source: str | None = None, destination: str | None = None,
             now: float | None = None) -> dict[str, Any]:
        """The dry run: per event, its enriched form and per destination the requests or the reason
        it gets none. Nothing is sent."""
        now = time.time() if now is None else now
        src = self._source(source)
        dests = self._destinations(destination)
        write_keys = next(s.write_keys for s in self.config.sources if s.name == src)
        out = []
        for item in parse_input(payload):
            try:
                event = self.enrich(item, now)
            except spec.Invalid as exc:
                out.append({"valid": False, "code": exc.reason, "message": exc.message,
                            "event": self.masker.json(item) if isinstance(item, dict) else None})
                continue
            targets, skipped = self.router.route(src, event)
            per_dest = []
            for d in dests:
                per_dest.append(self._one(d, event, src, write_keys[0], targets, skipped, now))
            out.append({"valid": True, "event": self.masker.json(event), "destinations": per_dest})
        return {"source": src, "events": out}

    def _one(self, d: DestinationConfig, event: dict[str, Any], source: str, write_key: str,
             targets: list[str], skipped: dict[str, str], now: float) -> dict[str, Any]:
        base: dict[str, Any] = {"destination": d.name, "type": d.type}
        if d.name not in targets:
            return {**base, "decision": "skipped", "stage": "routing", "reason": skipped.get(d.name, "not routed")}
        events = [event]
        pipeline = self._pipeline(d)
        if pipeline.active:
            applied = pipeline.apply(event)
            if applied.outcome == "skip":
                return {**base, "decision": "skipped", "stage": "filters", "reason": applied.skip}
            if applied.outcome == "dead":
                return {**base, "decision": "rejected", "stage": "transform", "reason": self.masker.text(applied.error)}
            events = applied.events
        from pydantic import SecretStr

        messages = [Message(e, source, SecretStr(write_key)) for e in events]
        try:
            built = d.adapter.build_requests(messages, d.parsed_settings)
        except Exception as exc:  # an adapter bug: shown, not a 500
            return {**base, "decision": "error", "stage": "adapter",
                    "reason": self.masker.text(f"adapter error: {exc!r}")}
        if built.rejects:
            return {**base, "decision": "rejected", "stage": "adapter",
                    "reason": self.masker.text("; ".join(r.reason for r in built.rejects))}
        if built.skips and not built.requests:
            return {**base, "decision": "skipped", "stage": "adapter",
                    "reason": self.masker.text("; ".join(s.reason for s in built.skips))}
        result = {**base, "decision": "send",
                  "requests": [render_request(at_send_time(r, now), self.masker) for r in built.requests]}
        if built.notes:
            result["notes"] = [self.masker.text(n.reason) for n in built.notes]
        return result

    async def send(self, payload: Any, destination: str, transport: Transport, *, source: str | None = None,
                   timeout: float = 10.0) -> dict[str, Any]:
        """Send the event for real to one destination (through the delivery engine's transport), and
        return each request with its response and what the adapter makes of it."""
        dest = self._destinations(destination)[0]
        items = parse_input(payload)
        if len(items) != 1:
            raise TestEventError("invalid_event", "send one event at a time")
        item = items[0]
        if isinstance(item, dict) and not item.get("messageId"):  # the same id in what is shown and what is sent
            item = {**item, "messageId": f"api-{uuid.uuid4()}"}
        now = time.time()
        plan = self.plan(item, source=source, destination=destination, now=now)
        entry = plan["events"][0]
        if not entry["valid"]:
            return {**plan, "sent": []}
        decision = entry["destinations"][0]
        if decision["decision"] != "send":
            return {**plan, "sent": []}
        src = plan["source"]
        event = self.enrich(item, now)
        pipeline = self._pipeline(dest)
        events = pipeline.apply(event).events if pipeline.active else [event]
        from pydantic import SecretStr

        write_key = next(s.write_keys for s in self.config.sources if s.name == src)[0]
        built = dest.adapter.build_requests([Message(e, src, SecretStr(write_key)) for e in events],
                                            dest.parsed_settings)
        sent = []
        for req in built.requests:
            shown = render_request(at_send_time(req, time.time()), self.masker)
            try:
                resp = await transport(req, timeout)
            except Exception as exc:
                sent.append({"request": shown, "error": self.masker.text(f"{type(exc).__name__}: {exc}"),
                             "outcome": "retry"})
                continue
            try:
                outcome = dest.adapter.classify(req, resp)
                verdict, reason = outcome.verdict, outcome.reason
            except Exception as exc:
                verdict, reason = (Verdict.RETRY if resp.status >= 500 else Verdict.PERMANENT), repr(exc)
            sent.append({"request": shown, "response": render_response(resp, self.masker),
                         "outcome": verdict.value, "reason": self.masker.text(reason)})
        return {**plan, "sent": sent}
