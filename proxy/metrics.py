"""Counters and gauges for every outcome (Prometheus exposition at GET /metrics).

Reasons are short codes (bounded label values); free-text details go to the log line instead.

With ``server.workers`` > 1 the serve command sets PROMETHEUS_MULTIPROC_DIR before this module is
imported, so prometheus-client keeps every process's values in files there and any process can
answer a scrape with the sum over all of them (prometheus-client's multiprocess mode). The gauges
are set by the delivery process only; ``mostrecent`` reports its latest value.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.events_received = Counter("trackrelay_events_received", "Events received, valid or not.", ["source"],
                                       registry=r)
        self.events_stored = Counter("trackrelay_events_stored", "Events committed to the spool.", ["source"],
                                     registry=r)
        self.events_rejected = Counter("trackrelay_events_rejected", "Events refused at ingest.", ["source", "reason"],
                                       registry=r)
        self.requests_rejected = Counter("trackrelay_requests_rejected", "Requests answered with an error.", ["code"],
                                         registry=r)
        self.events_refused = Counter("trackrelay_events_refused",
                                      "Events in requests refused as a whole (answered 4xx), by reason.",
                                      ["reason"], registry=r)
        self.events_dropped = Counter("trackrelay_events_dropped", "Events answered 200 but not stored on purpose, "
                                      "by reason (server.unknown_write_key: accept_and_drop).", ["reason"], registry=r)
        self.circuit_open = Gauge("trackrelay_destination_circuit_open", "1 while the destination fails and only "
                                  "probes are sent to it.", ["destination"], registry=r, multiprocess_mode="mostrecent")
        self.batch_splits = Counter("trackrelay_destination_batch_splits", "Batched requests refused as a whole and "
                                    "split to find the refused messages.", ["destination"], registry=r)
        self.events_modified = Counter("trackrelay_events_modified", "Events a destination's adapter changed to fit "
                                       "the API's documented limits (e.g. GA4 items cut at 200), by destination.",
                                       ["destination"], registry=r)
        self.duplicates = Counter("trackrelay_events_duplicate", "Events dropped as duplicates (source, messageId).",
                                  ["source"], registry=r)
        self.skipped = Counter("trackrelay_events_skipped", "Events a destination did not get.",
                               ["destination", "reason"], registry=r)
        self.delivered = Counter("trackrelay_events_delivered", "Events delivered.", ["destination"], registry=r)
        self.retried = Counter("trackrelay_events_retried", "Events rescheduled for a later attempt.", ["destination"],
                               registry=r)
        self.dead_lettered = Counter("trackrelay_events_dead_lettered", "Events moved to the dead letters.",
                                     ["destination", "reason"], registry=r)
        self.requests_sent = Counter("trackrelay_destination_requests", "HTTP requests to destinations by result.",
                                     ["destination", "result"], registry=r)
        self.delivery_latency = Histogram(
            "trackrelay_delivery_latency_seconds", "receivedAt to delivery.", ["destination"], registry=r,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600),
        )
        self.backlog = Gauge("trackrelay_destination_backlog_events", "Events routed to the destination and not "
                             "settled yet (estimated from the log's bytes; `trackrelay spool stats --exact` counts).",
                             ["destination"], registry=r, multiprocess_mode="mostrecent")
        self.retry_queue = Gauge("trackrelay_destination_retry_events", "Events waiting for a durable retry.",
                                 ["destination"], registry=r, multiprocess_mode="mostrecent")
        self.dedup_window = Gauge("trackrelay_dedup_window_seconds", "How long a (source, messageId) is remembered at "
                                  "least: storage.dedup_window, or less when storage.dedup_memory fills first.",
                                  registry=r, multiprocess_mode="mostrecent")
        self.spool_bytes = Gauge("trackrelay_spool_bytes", "Spool size on disk.", registry=r,
                                 multiprocess_mode="mostrecent")
        self.open_connections = Gauge("trackrelay_open_connections", "Client connections open now (all processes).",
                                      registry=r, multiprocess_mode="livesum")
        self.inflight_requests = Gauge("trackrelay_inflight_requests",
                                       "Ingest requests being handled now (all processes).",
                                       registry=r, multiprocess_mode="livesum")
        self.connections_refused = Counter(
            "trackrelay_connections_refused", "Connections answered 503 and closed: server.max_connections reached.",
            registry=r)
        self.connection_timeouts = Counter(
            "trackrelay_connection_timeouts",
            "Connections closed (idle, header) or requests answered 408 (body) on a timeout.",
            ["phase"], registry=r)
        self.client_disconnects = Counter(
            "trackrelay_client_disconnects", "Requests whose client went away before the answer.", registry=r)
        self.transform_slow = Counter("trackrelay_transform_slow",
                                      "Transform calls slower than the destination's transform_budget.",
                                      ["destination"], registry=r)
        self.plan_violations = Counter("trackrelay_plan_violations",
                                       "Events that broke their source's tracking plan, by the action taken.",
                                       ["source", "action"], registry=r)

    def exposition(self) -> bytes:
        if not MULTIPROCESS:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)


def observe_many(histogram: Histogram, amount: float, count: int) -> None:
    """``count`` observations of ``amount`` on a labelled Histogram child, at the cost of one
    (prometheus-client has no weighted observe; delivery observes a whole request's events, which
    share one receivedAt, at once). It updates the same sum and bucket values ``observe`` does;
    tests/test_metrics.py holds it equal to ``count`` calls of ``observe``."""
    histogram._sum.inc(amount * count)
    for i, bound in enumerate(histogram._upper_bounds):
        if amount <= bound:
            histogram._buckets[i].inc(count)
            break


METRICS = Metrics()
