"""The gateway benchmark runs on a tiny workload: a client process, a few clients, a few
hundred events and a few idle connections, and every figure comes back positive and sane.

Like ``tests/test_benchmarks.py``: ``measure()`` runs its own ``trio.run``s, so this test is
synchronous; figures are not held to their targets, only checked to be measured.
"""

from __future__ import annotations

import pytest

pytest.importorskip("wsproto")

from benchmarks import gateway
from benchmarks._util import format_table

TINY = {
    "single_events": 300,
    "fanout_clients": 3,
    "fanout_events": 200,
    "idle": 20,
    "latency_clients": 4,
    "latency_rate": 200.0,
    "latency_seconds": 0.4,
}


def test_the_gateway_benchmark_measures_every_figure_on_a_tiny_workload() -> None:
    measured = gateway.measure(**TINY)
    single, fanout = measured["single"], measured["fanout"]
    assert (single["clients"], single["received"]) == (1, 300)
    assert (fanout["clients"], fanout["received"]) == (3, 600)
    for r in (single, fanout):
        assert r["dropped"] == 0
        assert r["frames_read"] >= r["received"]  # plus the run's start and chat frames
        assert r["frames_per_second"] > 0
        assert r["events_per_second_emitted"] > 0
        assert 0 < r["seconds"] < 30
        assert r["server_cpu_us_per_frame"] > 0
        assert r["gateway"]["slow_consumer_closes"] == 0

    idle = measured["idle"]
    assert idle["connections"] == 20
    # RSS over 20 connections can stay flat when earlier tests left freed memory to reuse.
    assert 0 <= idle["bytes_per_connection"] < 1_000_000

    latency = measured["latency"]
    assert latency["samples"] == latency["events"] == 80
    assert latency["dropped"] == 0
    assert 0 < latency["p50_ms"] <= latency["p99_ms"] <= latency["max_ms"] < 1_000

    table = format_table(gateway.rows(measured))
    for target in ("target >= 15,000/s", "target <= 20,000 B", "target < 10 ms"):
        assert target in table


def test_unknown_sizes_are_refused() -> None:
    with pytest.raises(TypeError, match="unknown sizes"):
        gateway.measure(clients=3)
