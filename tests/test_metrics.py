"""observe_many reaches into prometheus-client's Histogram child (it has no weighted observe): it
must leave exactly what the same number of ``observe`` calls leaves, in the exposition too, and in
multiprocess mode (values kept in files) as in one process."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from proxy.metrics import observe_many

BUCKETS = (0.01, 0.1, 1, 10)
AMOUNTS = [(0.0, 3), (0.01, 2), (0.05, 7), (1.0, 1), (9.99, 4), (10.0, 1), (11.5, 5), (3600.0, 2)]


def samples(text: bytes) -> list[bytes]:
    """The histogram's sample lines (not the _created timestamp, not other metrics)."""
    return sorted(line for line in text.splitlines()
                  if line.startswith(b"latency_seconds") and not line.startswith(b"latency_seconds_created"))


def exposition(weighted: bool) -> bytes:
    registry = CollectorRegistry()
    hist = Histogram("latency_seconds", "test", ["destination"], registry=registry, buckets=BUCKETS)
    child = hist.labels("hook")
    for amount, count in AMOUNTS:
        if weighted:
            observe_many(child, amount, count)
        else:
            for _ in range(count):
                child.observe(amount)
    return generate_latest(registry)


def test_observe_many_equals_repeated_observe() -> None:
    weighted = exposition(True)
    assert samples(weighted) == samples(exposition(False))
    assert b'latency_seconds_count{destination="hook"} 25.0' in weighted
    assert b'latency_seconds_bucket{destination="hook",le="0.01"} 5.0' in weighted
    assert b'latency_seconds_bucket{destination="hook",le="10.0"} 18.0' in weighted


def test_observe_many_in_multiprocess_mode(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import os, sys
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = sys.argv[1]
        from prometheus_client import CollectorRegistry, Histogram, generate_latest, multiprocess
        from proxy.metrics import observe_many
        hist = Histogram("latency_seconds", "test", ["destination"], buckets={BUCKETS!r})
        for amount, count in {AMOUNTS!r}:
            if sys.argv[2] == "weighted":
                observe_many(hist.labels("hook"), amount, count)
            else:
                for _ in range(count):
                    hist.labels("hook").observe(amount)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        sys.stdout.buffer.write(generate_latest(registry))
    """)
    out = []
    for mode in ("weighted", "repeated"):
        directory = tmp_path / mode
        directory.mkdir()
        out.append(subprocess.run([sys.executable, "-c", script, str(directory), mode], check=True,
                                  capture_output=True, cwd=Path(__file__).resolve().parent.parent).stdout)
    assert samples(out[0]) == samples(out[1])
    assert b'latency_seconds_count{destination="hook"} 25.0' in out[0]


@pytest.mark.parametrize("count", [1, 1000])
def test_sum_is_amount_times_count(count: int) -> None:
    registry = CollectorRegistry()
    child = Histogram("h", "t", ["d"], registry=registry, buckets=BUCKETS).labels("x")
    observe_many(child, 0.5, count)
    assert registry.get_sample_value("h_sum", {"d": "x"}) == pytest.approx(0.5 * count)
    assert registry.get_sample_value("h_bucket", {"d": "x", "le": "1.0"}) == count
    assert registry.get_sample_value("h_bucket", {"d": "x", "le": "0.1"}) == 0
