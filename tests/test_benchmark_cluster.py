"""The cluster benchmark runs on a tiny workload: its own redis-server, node B and a client
process, a few hundred events, and every figure comes back positive and sane.

Like ``tests/test_benchmark_gateway.py``: ``measure()`` runs its own ``trio.run``, so this
test is synchronous; figures are not held to their targets, only checked to be measured.
Without ``redis-server`` it skips locally and fails under CI (``CI=true``).
"""

from __future__ import annotations

import os
import shutil

import pytest

pytest.importorskip("wsproto")
pytest.importorskip("coredis")

from benchmarks import cluster
from benchmarks._util import format_table

TINY = {
    "events": 600,
    "per_run": 50,
    "client_events": 300,
    "latency_clients": 4,
    "latency_rate": 200.0,
    "latency_seconds": 0.4,
    "single_process": 0,
}


@pytest.fixture
def redis_installed() -> None:
    if shutil.which("redis-server") is None:
        message = "redis-server not installed: apt-get install redis-server"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


@pytest.mark.usefixtures("redis_installed")
def test_the_cluster_benchmark_measures_every_figure_on_a_tiny_workload() -> None:
    measured = cluster.measure(**TINY)
    carried, to_client = measured["carried"], measured["to_client"]
    assert (carried["received"], carried["runs"]) == (600, 12)
    assert (to_client["received"], to_client["runs"]) == (300, 6)
    for r in (carried, to_client):
        assert r["dropped"] == 0
        assert r["events_per_second"] > 0
        assert 0 < r["seconds"] < 30
    assert carried["dropped_outbound"] == 0
    assert carried["node_a_cpu_us_per_event"] > 0
    assert carried["node_b_cpu_us_per_event"] > 0
    assert carried["node_b"]["gaps"] == 0
    assert measured["node_a"]["published"] > 600
    for latency in (measured["latency_subscriber"], measured["latency_clients"]):
        assert latency["samples"] == latency["events"] == 80
        assert latency["dropped"] == 0
        assert 0 < latency["p50_ms"] <= latency["p99_ms"] <= latency["max_ms"] < 5_000
    assert "single" not in measured

    table = format_table(cluster.rows(measured))
    for target in ("target >= 15,000/s", "target < 15 ms"):
        assert target in table


def test_without_redis_the_benchmark_says_it_was_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    measured = cluster.measure(**TINY)
    assert measured == {"skipped": cluster.SKIPPED}
    assert "redis-server not installed" in format_table(cluster.rows(measured))


def test_unknown_sizes_are_refused() -> None:
    with pytest.raises(TypeError, match="unknown sizes"):
        cluster.measure(clients=3)
