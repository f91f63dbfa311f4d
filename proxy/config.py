"""trackrelay's configuration: YAML -> pydantic models, ``${VAR}`` / ``${VAR:-default}``
interpolation for secrets, and error reports that name the file, line and field path.

Interpolation happens on scalar values after YAML parsing, so a secret can never change the
document's structure. Destination ``settings`` are validated with the adapter's own Settings model.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    SecretStr,
    Tag,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)

from destinations import registry
from destinations.base import Adapter, DestinationSettings
from proxy.governance.models import FilterStep, TrackingPlanConfig, check_transform_spec

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    None: 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
    "t": 1000**4, "tb": 1000**4, "ki": 1024, "kib": 1024, "mi": 1024**2, "mib": 1024**2,
    "gi": 1024**3, "gib": 1024**3, "ti": 1024**4, "tib": 1024**4,
}
_DURATION_UNITS = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_size(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("expected a size such as 500KB or 10GiB")
    if isinstance(value, (int, float)):
        return int(value)
    m = _SIZE.match(str(value))
    if not m:
        raise ValueError(f"{value!r} is not a size (examples: 32768, 500KB, 10GiB)")
    unit = m.group(2).lower() if m.group(2) else None
    return int(float(m.group(1)) * _SIZE_UNITS[unit])


def format_size(n: int) -> str:
    """A byte count as messages show it: '32768 bytes (32 KiB)', in the units the README and the
    defaults use (KiB/MiB are powers of 1024, KB/MB powers of 1000)."""
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= size and n % size == 0:
            return f"{n} bytes ({n // size} {unit})"
    for unit, size in (("GB", 1000**3), ("MB", 1000**2), ("KB", 1000)):
        if n >= size and n % size == 0:
            return f"{n} bytes ({n // size} {unit})"
    return f"{n} bytes"


def parse_duration(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 250ms, 5s or 4h")
    if isinstance(value, (int, float)):
        return float(value)
    m = _DURATION.match(str(value))
    if not m:
        raise ValueError(f"{value!r} is not a duration (examples: 0.5, 250ms, 30s, 4h)")
    unit = m.group(2).lower() if m.group(2) else None
    return float(m.group(1)) * _DURATION_UNITS[unit]


def split_listen(value: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port``) -> (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r} is not host:port (example: 127.0.0.1:9108)")
    return host.strip("[]"), int(port)


def parse_retry_window(value: Any) -> float:
    """A duration, or ``forever`` (also ``infinite``, ``unlimited``): never give up."""
    if isinstance(value, str) and value.strip().lower() in ("forever", "infinite", "unlimited"):
        return float("inf")
    return parse_duration(value)


# Field types the YAML writes with units. The docs generator (proxy/docs.py) recognises them by
# their validator and shows the type and default with units.
Size = Annotated[int, BeforeValidator(parse_size)]
Duration = Annotated[float, BeforeValidator(parse_duration)]
RetryWindow = Annotated[float, BeforeValidator(parse_retry_window)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)


class TLSConfig(_Model):
    """HTTPS on the Tracking API listener. The files are read at start and again on SIGHUP or when
    either file changes (new connections get the new certificate; open ones keep theirs)."""

    cert_file: Path = Field(description="PEM certificate chain (leaf first), e.g. Let's Encrypt's fullchain.pem.")
    key_file: Path = Field(description="PEM private key of the certificate (unencrypted).")

    @field_validator("cert_file", "key_file")
    @classmethod
    def _readable(cls, v: Path) -> Path:
        if not v.is_file() or not os.access(v, os.R_OK):
            raise ValueError(f"{str(v)!r} is not a readable file")
        return v


class ServerConfig(_Model):
    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(8088, ge=0, le=65535, description="Port to listen on.")
    public_url: str | None = Field(
        None, description="How browsers reach this server (e.g. https://t.example.com); used in the settings endpoint."
    )
    cors_origins: list[str] = Field(["*"], description="Origins allowed by CORS; '*' allows any.")
    trusted_proxies: list[str] = Field(
        [], description="Peers (IPs or CIDRs) whose X-Forwarded-For / X-Forwarded-Proto are trusted."
    )
    shutdown_grace: Duration = Field(10.0, description="On SIGTERM: how long to finish in-flight requests and sends "
                                                      "before exiting.")
    workers: int = Field(
        1, ge=1, le=64,
        description="Server processes sharing the port. The first also runs delivery; the others only "
                    "ingest. Set it to the number of cores for throughput.",
    )
    allowed_hosts: list[str] = Field(
        [], description="Without public_url: the Host values (host or host:port) the settings endpoint may put "
                        "in apiHost; others get 400. Empty: the listen address only.",
    )
    cors_allow_headers: list[str] = Field(
        [], description="Request headers a browser may send besides Content-Type, Authorization and X-Retry-Count "
                        "(e.g. custom headers set in analytics.js deliveryStrategy.config.headers).",
    )
    keepalive_timeout: Duration = Field(75.0, gt=0, description="Close a connection idle this long between requests.")
    header_timeout: Duration = Field(
        10.0, gt=0, description="Close a connection whose request line and headers take longer than this to arrive.")
    body_timeout: Duration = Field(
        30.0, gt=0, description="Answer 408 when a request body takes longer than this to arrive (after its headers).")
    max_connections: int = Field(
        4096, ge=1, description="Open client connections per process; more are answered 503 and closed. Lowered to "
                                "fit the open-files limit (RLIMIT_NOFILE), which is raised at start where allowed.",
    )
    max_inflight_requests: int = Field(
        256, ge=0, description="Ingest requests handled at once per process; more are answered 429 with Retry-After "
                               "at once. 0: no bound.",
    )
    overload_retry_after: int = Field(2, ge=1, le=300, description="Retry-After (seconds) of that 429.")
    metrics_listen: str | None = Field(
        None, description="host:port serving /metrics instead of the public port (e.g. 127.0.0.1:9108).")
    tls: TLSConfig | None = Field(
        None,
        description="Serve HTTPS with this certificate and key (mobile SDKs and analytics-next <= 1.83 in "
                    "batching mode only speak https). Default: plain HTTP, for a sidecar behind a "
                    "TLS-terminating ingress or load balancer.",
    )
    unknown_write_key: Literal["reject", "accept_and_drop"] = Field(
        "reject",
        description="A request with a write key no source has: 'reject' answers 400 "
                    "{\"code\": \"invalid_write_key\"}, the one status every Segment SDK drops without "
                    "retrying (a 401 is retried forever by analytics-swift's default mode), and the client "
                    "logs the error; 'accept_and_drop' answers 200 {\"success\": true} and drops the events, "
                    "as Segment's own API does, so nothing shows on the client. Both are counted in "
                    "trackrelay_events_refused_total / trackrelay_events_dropped_total with "
                    "reason unknown_write_key.",
    )

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, v: list[str]) -> list[str]:
        for item in v:
            ipaddress.ip_network(item, strict=False)
        return v

    @field_validator("metrics_listen")
    @classmethod
    def _listen(cls, v: str | None) -> str | None:
        if v is not None:
            split_listen(v)
        return v

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts(cls, v: list[str]) -> list[str]:
        for h in v:
            if not h or any(c in h for c in "/ @?#"):
                raise ValueError(f"{h!r} is not a host or host:port")
        return [h.lower() for h in v]

    @field_validator("cors_allow_headers")
    @classmethod
    def _header_names(cls, v: list[str]) -> list[str]:
        for h in v:
            if not re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+", h):
                raise ValueError(f"{h!r} is not a header name")
            if h.lower() in ("cookie", "cookie2"):
                raise ValueError("Cookie is never allowed: Segment's clients send no credentials")
        return v


class _StorageCommon(_Model):
    path: Path = Field(Path("./data"), description="Directory of the spool's files (the embedded backend's log and "
                       "delivery state; with jetstream only the instance lock).")
    dedup_window: Duration = Field(
        86400.0, description="An event whose (source, messageId) was accepted within this window is answered 200 and "
                             "not stored again (browsers resend when a response is lost).")
    dedup_memory: Size = Field(
        64 * 1024 * 1024,
        description="Memory for the dedup index (16 bytes per remembered id: 64MiB remembers 4 million). When more "
                    "distinct ids arrive within dedup_window than fit, the effective window shrinks "
                    "(trackrelay_dedup_window_seconds shows it); memory never grows past this.",
    )


class EmbeddedStorage(_StorageCommon):
    """The default: an append-only, CRC-framed segment log under ``path`` plus SQLite for delivery state."""

    engine: Literal["embedded"] = Field(
        "embedded", description="Where events are stored: `embedded` (files under `path`) or `jetstream` (a NATS "
                                "JetStream cluster shared by every instance).")
    max_bytes: Size = Field(10 * 1024**3, description="Spool size on disk at which ingest answers 429 with Retry-After "
                                                      "instead of growing.")
    durability: Literal["full", "normal"] = Field(
        "full", description="full: fdatasync before every answer (no accepted event lost on power loss); normal: "
                            "the OS writes back within seconds (a SIGKILL still loses nothing, a power cut may)."
    )
    retention: Duration = Field(
        600.0, description="How long delivered events stay in the spool (for inspection); freed early near max_bytes."
    )
    segment_bytes: Size | None = Field(
        None, description="Size of one log segment file (default: max_bytes/16, between 64KiB and 64MiB). "
                          "Space is freed a segment at a time.",
    )


class JetStreamTLS(_Model):
    ca_file: Path | None = Field(None, description="CA bundle that signs the NATS servers' certificates.")
    cert_file: Path | None = Field(None, description="Client certificate (mutual TLS).")
    key_file: Path | None = Field(None, description="Client certificate's key.")


class JetStreamSettings(_Model):
    servers: list[str] = Field(["nats://127.0.0.1:4222"], min_length=1, description="NATS server URLs of the cluster.")
    stream: str = Field("trackrelay", pattern=r"^[A-Za-z0-9_-]+$",
                        description="Name prefix of the streams and consumers trackrelay creates.")
    replicas: int = Field(3, ge=1, le=5, description="Stream replicas (quorum writes: 200 only after the PubAck).")
    max_bytes: Size = Field(50 * 1024**3, description="Quota of the event stream; when it is full ingest answers "
                                                      "429 with Retry-After.")
    credentials: Path | None = Field(None, description="A NATS .creds file.")
    user: str | None = Field(None, description="User name (with password).")
    password: SecretStr | None = Field(None, description="Password, e.g. ${NATS_PASSWORD}.")
    token: SecretStr | None = Field(None, description="Auth token, e.g. ${NATS_TOKEN}.")
    tls: JetStreamTLS | None = Field(None, description="TLS to the NATS servers.")
    connect_timeout: Duration = Field(5.0, gt=0, description="How long to wait for a connection at start.")
    publish_timeout: Duration = Field(
        10.0, gt=0, description="Longest wait for a PubAck (leader elections take 5-12 s); then 503 + Retry-After.")
    max_inflight: int = Field(256, ge=1, le=65536,
                              description="Requests being published per instance (waiting for, or in, one "
                                          "of its 8 concurrent publishes, which carry the requests that "
                                          "queued up together); more wait (within publish_timeout).")
    ack_wait: Duration = Field(
        60.0, ge=1, description="How long a leased event stays with an instance that stopped answering (crashed) "
                                "before the cluster hands it to another one; live instances extend it while they work.")
    duplicate_window: Duration = Field(
        120.0, ge=1, description="JetStream's own duplicate window (Nats-Msg-Id): a publish retried within it is "
                                 "stored once. Must exceed publish_timeout. The (source, messageId) window is "
                                 "storage.dedup_window.")

    def __repr_args__(self) -> Any:  # server URLs may carry user:password@: never in a repr
        for name, value in super().__repr_args__():
            if name == "servers":
                value = [re.sub(r"//[^@/]*@", "//***@", u) for u in value]
            yield name, value


class JetStreamStorage(_StorageCommon):
    """Scale-out: every instance shares one replicated NATS JetStream."""

    engine: Literal["jetstream"] = Field(description="`jetstream`: events live in a NATS JetStream cluster.")
    jetstream: JetStreamSettings = Field(default_factory=JetStreamSettings, description="The JetStream cluster.")
    retention: Duration = Field(600.0, description="How long delivered events stay in the stream (for inspection).")

    @property
    def max_bytes(self) -> int:
        return self.jetstream.max_bytes


def _engine(v: Any) -> str:
    if isinstance(v, dict):
        return v.get("engine") or "embedded"
    return getattr(v, "engine", "embedded")


StorageConfig = Annotated[
    Annotated[EmbeddedStorage, Tag("embedded")] | Annotated[JetStreamStorage, Tag("jetstream")],
    Discriminator(_engine, custom_error_type="invalid_engine",
                  custom_error_message="storage.engine must be 'embedded' or 'jetstream'"),
]


class LimitsConfig(_Model):
    max_event_bytes: Size = Field(32 * 1024, description="Largest accepted event (its JSON bytes); larger ones are "
                                                         "refused with 400 (Segment's own limit: 32 KiB).")
    max_request_bytes: Size = Field(500 * 1024, description="Largest accepted request body, after decompression; "
                                                            "larger ones get 413 (Segment's own limit: 500 KiB).")
    max_batch_events: int = Field(2500, ge=1, description="Most events in one batch request.")
    max_message_id_length: int = Field(100, ge=1, description="Longest accepted messageId.")
    max_nesting_depth: int = Field(
        64, ge=2, le=512, description="Deepest nesting of objects and arrays in one event (the event itself is "
                                      "level 1); deeper events are refused with too_deeply_nested.")


class EffectiveDelivery(_Model):
    """Batching, retry and rate settings of one destination: each field, its default and its
    description are declared here once. ``DeliveryConfig`` (the ``delivery:`` blocks) is derived
    from it with every field optional; ``DestinationConfig.effective_delivery`` layers the
    destination's block over the global one over these defaults, capped by the adapter's limits."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    max_batch_events: int = Field(
        500, ge=1, description="Most events handed to the adapter at once; capped by the destination's own limit "
                               "(adapters split further where their API takes fewer per request).")
    max_batch_bytes: Size = Field(
        5 * 1024 * 1024, ge=1024, description="Most event bytes (stored JSON) per batch; capped by the destination's "
                                              "own limit.")
    flush_interval: Duration = Field(0.1, ge=0, description="How long a partial batch waits for more events.")
    concurrency: int = Field(4, ge=1, le=64, description="Batches in flight at once for this destination.")
    timeout: Duration = Field(15.0, gt=0, description="HTTP timeout of one request, from connect to the last byte of "
                                                      "the answer.")
    inflight_retries: int = Field(
        2, ge=0, le=10, description="Quick retries of a failed request (after 0.1-2 s, or a Retry-After of up to 5 s) "
                                    "before the events are rescheduled durably.")
    backoff_initial: Duration = Field(1.0, gt=0, description="First durable retry delay; later ones double (with "
                                                             "jitter) up to backoff_max. A Retry-After wins.")
    backoff_max: Duration = Field(600.0, gt=0, description="Largest durable retry delay.")
    retry_window: RetryWindow = Field(
        4 * 3600.0, description="Time since an event's first failure after which it is dead-lettered (kept with the "
                                "last response, replayable); `forever` never gives up.")
    max_requests_per_second: float | None = Field(
        None, gt=0, description="Rate limit towards the destination. Default: the destination's documented limit, "
                                "if it has one (e.g. Userpilot 10), else none.")
    probe_interval: Duration = Field(
        5.0, gt=0, description="While the destination fails (its circuit is open), one probe event is sent this often, "
                               "doubling up to probe_interval_max (a Retry-After wins); when a probe succeeds every "
                               "rescheduled event is due at once.")
    probe_interval_max: Duration = Field(30.0, gt=0, description="Longest wait between two probes.")


def all_optional(model: type[BaseModel], name: str, doc: str) -> type[_Model]:
    """``model``'s fields, each optional with default None (unset), keeping its type, constraints,
    parsing and description: the override form of a settings model."""
    fields: dict[str, Any] = {}
    for field_name, info in model.model_fields.items():
        inner: Any = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
        fields[field_name] = (inner | None, Field(None, description=info.description))
    derived = create_model(name, __base__=_Model, __doc__=doc, __module__=__name__, **fields)
    derived.__defaults_model__ = model  # type: ignore[attr-defined]  # the docs show its defaults
    return derived


if TYPE_CHECKING:
    class DeliveryConfig(_Model):
        """For the type checker: the fields of EffectiveDelivery, each optional."""

        def __getattr__(self, name: str) -> Any: ...
else:
    DeliveryConfig = all_optional(
        EffectiveDelivery, "DeliveryConfig",
        "Overrides of EffectiveDelivery; a field left out (None) takes the next layer's value.")


class FilterConfig(_Model):
    """The mapping form of ``filters`` (shorthands), evaluated at ingest by proxy/routing.py."""

    types: list[Literal["track", "identify", "page", "screen", "group", "alias"]] | None = Field(
        None, description="Only these call types reach the destination."
    )
    events: list[str] | None = Field(None, description="Only track events with these names reach the destination.")
    exclude_events: list[str] = Field([], description="Track events with these names never reach it.")


class SourceConfig(_Model):
    name: str = Field(min_length=1, description="Source name (kept on stored events instead of the write key).")
    write_keys: list[str] = Field(min_length=1, repr=False, description="Write keys that authenticate this source.")
    tracking_plan: TrackingPlanConfig | None = Field(
        None, description="Tracking plan checked at ingest (see proxy/governance/plans.py).")

    _plan: Any = PrivateAttr(None)  # the compiled plan, set by load_config

    @field_validator("write_keys")
    @classmethod
    def _non_empty(cls, v: list[str]) -> list[str]:
        for key in v:
            if not key or not key.strip():
                raise ValueError("a write key is empty (is its ${VAR} unset?)")
        return v


def _filters_form(value: Any) -> str:
    return "steps" if isinstance(value, list) else "shorthands"


# `filters` is either the mapping of shorthands (evaluated at ingest) or a list of steps
# (evaluated in order by the delivery worker, proxy/governance/filters.py). The tags show in
# pydantic's error locations; load_config removes them.
Filters = Annotated[
    Annotated[FilterConfig, Tag("shorthands")] | Annotated[list[FilterStep], Tag("steps")],
    Discriminator(_filters_form),
]
_FILTER_TAGS = ("shorthands", "steps")


class DestinationConfig(_Model):
    name: str = Field(min_length=1, description="Unique destination name.")
    type: str = Field(description="Adapter type.")
    enabled: bool = Field(True, description="Disabled destinations get nothing.")
    sources: list[str] | None = Field(None, description="Only events from these sources (default: all).")
    # repr=False: the raw dict holds secrets; the parsed settings mask them (SecretStr)
    settings: dict[str, Any] = Field(default_factory=dict, repr=False, description="The adapter's settings.")
    delivery: DeliveryConfig = Field(default_factory=DeliveryConfig, description="Per-destination overrides.")
    filters: Filters = Field(default_factory=FilterConfig, description="Which events it gets.")
    transform: str | None = Field(
        None, description="'package.module:function' called on each event before the adapter (runs in-process).")
    transform_budget: Duration = Field(
        0.005, gt=0, description="A transform call slower than this is counted and logged.")

    _parsed: DestinationSettings | None = PrivateAttr(None)
    _transform: Any = PrivateAttr(None)  # the imported callable, set by load_config

    @field_validator("transform")
    @classmethod
    def _transform_spec(cls, v: str | None) -> str | None:
        return check_transform_spec(v)

    @property
    def route_filters(self) -> FilterConfig:
        """The shorthands routing applies at ingest: the mapping form, or none for the list form."""
        return self.filters if isinstance(self.filters, FilterConfig) else _NO_FILTERS

    @property
    def filter_steps(self) -> list[FilterStep]:
        """The list form, applied per destination by the delivery worker ([] for the mapping form)."""
        return self.filters if isinstance(self.filters, list) else []

    @field_validator("type")
    @classmethod
    def _known_type(cls, v: str) -> str:
        if v not in registry.MODULES:
            raise ValueError(f"unknown destination type {v!r}; known: {', '.join(sorted(registry.MODULES))}")
        return v

    @property
    def adapter(self) -> Adapter:
        return registry.get(self.type)

    @property
    def parsed_settings(self) -> DestinationSettings:
        if self._parsed is None:
            self._parsed = self.adapter.validate_settings(self.settings)
        return self._parsed

    def effective_delivery(self, defaults: DeliveryConfig) -> EffectiveDelivery:
        """This destination's ``delivery`` over the global ``delivery`` over EffectiveDelivery's
        defaults, capped by the adapter's batch limits, with the adapter's rate limit when none is set."""
        adapter = registry.get(self.type)
        merged: dict[str, Any] = {}
        for name in EffectiveDelivery.model_fields:
            for layer in (self.delivery, defaults):
                value = getattr(layer, name)
                if value is not None:
                    merged[name] = value
                    break
        eff = EffectiveDelivery.model_validate(merged)
        rps = eff.max_requests_per_second
        return eff.model_copy(update={
            "max_batch_events": min(eff.max_batch_events, adapter.limits.max_events),
            "max_batch_bytes": min(eff.max_batch_bytes, adapter.limits.max_bytes),
            "max_requests_per_second": adapter.max_requests_per_second if rps is None else rps,
        })


_NO_FILTERS = FilterConfig()


class AdminConfig(_Model):
    """The operator console (proxy/admin/): its own listener, never the ingest port."""

    host: str = Field("127.0.0.1", description="Address of the console's listener (keep it private).")
    port: int = Field(8089, ge=0, le=65535, description="Port of the console's listener.")
    token: SecretStr = Field(
        repr=False, description="Token every page and API call needs (Authorization: Bearer, or the login form's "
                                "cookie), e.g. ${TRACKRELAY_ADMIN_TOKEN}; at least 16 characters.")
    trace_events: int = Field(
        5000, ge=0, description="Recent events whose trace (routing, attempts, outcomes) is kept in memory.")
    trace_age: float = Field(3600.0, gt=0, description="Traces older than this are dropped.")
    trace_attempts: int = Field(20, ge=1, description="Delivery attempts kept per event (the latest).")
    live_queue: int = Field(
        500, ge=1, description="Live-view items buffered per watcher; a slower watcher loses (and is told the count).")

    @field_validator("token")
    @classmethod
    def _token_length(cls, v: SecretStr) -> SecretStr:
        if len(v.get_secret_value().strip()) < 16:
            raise ValueError("the admin token must have at least 16 characters (is its ${VAR} unset?)")
        return v

    @field_validator("trace_age", mode="before")
    @classmethod
    def _age(cls, v: Any) -> float:
        return parse_duration(v)


class LoggingConfig(_Model):
    level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")
    format: Literal["json", "console"] = Field("json", description="json lines or human-readable.")


class Config(_Model):
    server: ServerConfig = Field(default_factory=ServerConfig, description="The Tracking API listener.")
    storage: StorageConfig = Field(
        default_factory=EmbeddedStorage,
        description="Where accepted events are kept until every destination has them.")
    limits: LimitsConfig = Field(
        default_factory=LimitsConfig,
        description="What ingest accepts; larger or deeper input is refused with a 4xx JSON error.")
    sources: list[SourceConfig] = Field(
        min_length=1, description="Who may send events: a list of sources, each with its own write keys.")
    delivery: DeliveryConfig = Field(
        default_factory=DeliveryConfig,
        description="Batching, retries and rate for every destination; a destination's own `delivery:` wins key "
                    "by key. Every key is optional.")
    destinations: list[DestinationConfig] = Field(
        default_factory=list, description="Where events go: a list of destinations, each with its adapter's "
                                          "`settings` (see [Destinations](#destinations)).")
    logging: LoggingConfig = Field(default_factory=LoggingConfig, description="Logs go to stderr, one line per event.")
    admin: AdminConfig | None = Field(
        None, description="The operator console, on its own listener (never the ingest port); absent: disabled.")

    @model_validator(mode="after")
    def _cross_checks(self, info: ValidationInfo) -> Config:
        # load_config reports these itself, each at its own line, together with the field errors
        if not (info.context or {}).get("cross_checked"):
            problems = cross_reference(self.model_dump(include={"sources", "destinations"}))
            if problems:
                raise ValueError("; ".join(msg for _, msg in problems))
        return self


def cross_reference(data: Mapping[str, Any]) -> list[tuple[tuple[Any, ...], str]]:
    """Checks across entries, on the raw (interpolated) document so they run even when fields
    elsewhere are invalid: unique source and destination names, each write key used once, and
    destinations' ``sources`` naming real sources. Returns (location, message) pairs; a location
    points at the offending entry. Messages never contain a write key."""
    problems: list[tuple[tuple[Any, ...], str]] = []

    def entries(field: str) -> list[tuple[int, Mapping[str, Any]]]:
        value = data.get(field)
        return [(i, e) for i, e in enumerate(value) if isinstance(e, Mapping)] if isinstance(value, list) else []

    sources = entries("sources")
    seen: dict[str, int] = {}
    for i, src in sources:
        name = src.get("name")
        if isinstance(name, str) and name:
            if name in seen:
                problems.append((("sources", i, "name"),
                                 f"source name {name!r} is already used by sources.{seen[name]}"))
            else:
                seen[name] = i
    keys: dict[str, tuple[int, int]] = {}
    for i, src in sources:
        write_keys = src.get("write_keys")
        for j, key in enumerate(write_keys if isinstance(write_keys, list) else []):
            if not isinstance(key, str) or not key.strip():
                continue
            if key in keys:
                first = keys[key]
                problems.append((("sources", i, "write_keys", j),
                                 (f"this write key is also sources.{first[0]}.write_keys.{first[1]}; a key "
                                  "must belong to one source")))
            else:
                keys[key] = (i, j)
    dests = entries("destinations")
    dseen: dict[str, int] = {}
    for i, dest in dests:
        name = dest.get("name")
        if isinstance(name, str) and name:
            if name in dseen:
                problems.append((("destinations", i, "name"),
                                 f"destination name {name!r} is already used by destinations.{dseen[name]}"))
            else:
                dseen[name] = i
        listed = dest.get("sources")
        for j, s in enumerate(listed if isinstance(listed, list) else []):
            if isinstance(s, str) and s not in seen:
                known = ", ".join(sorted(seen)) or "none"
                problems.append((("destinations", i, "sources", j), f"unknown source {s!r} (sources: {known})"))
    return problems


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


@dataclass
class ConfigProblem:
    file: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.path or '(top)'}: {self.message}"


class ConfigError(Exception):
    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


def _interpolate(value: Any, path: str, missing: list[str], env: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in env and env[name] != "":
                return env[name]
            if default is not None:
                return default
            missing.append(f"{path}: ${{{name}}} is not set and has no default")
            return ""

        result = _VAR.sub(sub, value)
        if result != value and _VAR.fullmatch(value.strip()) and result.lower() in ("null", "~"):
            return None
        return result
    if isinstance(value, dict):
        return {k: _interpolate(v, f"{path}.{k}" if path else str(k), missing, env) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, f"{path}.{i}", missing, env) for i, v in enumerate(value)]
    return value


def _line_index(node: yaml.Node, path: tuple[Any, ...] = (), out: dict | None = None) -> dict:
    out = {} if out is None else out
    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            k = key.value
            out[path + (k,)] = key.start_mark.line + 1
            _line_index(value, path + (k,), out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _line_index(item, path + (i,), out)
    return out


def _line_for(lines: dict, loc: tuple[Any, ...]) -> int | None:
    loc = tuple(loc)
    while loc:
        if loc in lines:
            return lines[loc]
        loc = loc[:-1]
    return lines.get(())


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    """Read, interpolate and validate a config file; raises ConfigError listing every problem."""
    env = os.environ if env is None else env
    file = str(path)
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError([ConfigProblem(file, None, "", f"cannot read: {exc.strerror}")]) from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else None
        msg = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([ConfigProblem(file, line, "", f"invalid YAML: {msg}")]) from None
    if not isinstance(raw, dict):
        raise ConfigError([ConfigProblem(file, 1, "", "the config must be a mapping")])
    lines = _line_index(node) if node is not None else {}
    missing: list[str] = []
    data = _interpolate(raw, "", missing, env)
    problems = []
    for m in missing:
        where, msg = m.split(": ", 1)
        loc = tuple(int(x) if x.isdigit() else x for x in where.split(".") if x)
        problems.append(ConfigProblem(file, _line_for(lines, loc), where, msg))
    def add(exc: ValidationError, prefix: tuple[Any, ...] = ()) -> None:
        for err in exc.errors():
            loc = prefix + tuple(err["loc"])
            if len(loc) > 3 and loc[0] == "destinations" and loc[2] == "filters" and loc[3] in _FILTER_TAGS:
                loc = loc[:3] + loc[4:]
            problems.append(ConfigProblem(file, _line_for(lines, loc), ".".join(str(x) for x in loc), err["msg"]))

    config = None
    try:
        config = Config.model_validate(data, context={"cross_checked": True})
    except ValidationError as exc:
        add(exc)
    for loc, msg in cross_reference(data):
        problems.append(ConfigProblem(file, _line_for(lines, loc), ".".join(str(x) for x in loc), msg))
    raw_dests = data.get("destinations")
    for i, dest in enumerate(raw_dests if isinstance(raw_dests, list) else []):
        if not isinstance(dest, dict) or dest.get("type") not in registry.MODULES:
            continue
        settings = dest.get("settings") or {}
        if not isinstance(settings, dict):
            continue  # already reported by the Config model
        try:
            registry.get(dest["type"]).validate_settings(settings)
        except ValidationError as exc:
            add(exc, ("destinations", i, "settings"))
    from proxy.governance.loading import load_governance

    for gp in load_governance(data, config, Path(path).resolve().parent):
        if gp.file is None:
            problems.append(ConfigProblem(file, _line_for(lines, gp.loc), ".".join(str(x) for x in gp.loc), gp.message))
        else:
            problems.append(ConfigProblem(gp.file, gp.line, ".".join(str(x) for x in gp.loc), gp.message))
    if problems or config is None:
        raise ConfigError(problems)
    return config
