"""Every benchmark runs on a tiny workload and passes its own self-check, so a change that
breaks a benchmark (or what it checks) fails here rather than in ``make bench``.

Each section's ``measure()`` is what ``python -m benchmarks`` calls; it runs its own
``trio.run``, so these tests are synchronous. Figures are not checked, only that every
subscriber received exactly what it should and that the table can be printed.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import pathlib
import subprocess
import sys
from typing import Any

import pytest

from benchmarks import (
    abort_latency,
    fanout,
    idle_cost,
    portal,
    scaling,
    soak_run,
    stalled,
)
from benchmarks._util import Row, check_peer_deliveries, format_table
from benchmarks._workloads import Workload, fanout_bus, has_batches, in_fresh_trio_run
from pipeline._cli import main as pipeline_main

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _table(rows: list[Row]) -> str:
    table = format_table(rows)
    assert table.strip()
    return table


class TestFanout:
    def test_the_bus_and_raw_trio_deliver_every_item_beside_the_targets(self) -> None:
        measured = fanout.measure(1, runs=2, subscribers=(8, 32), slow_rounds=1, peers=False)
        assert {"bus", "raw", "raw_slow"} <= set(measured["subscribers"]["8"]["median_rate"])
        table = _table(fanout.rows(measured))
        assert "raw trio, a channel per subscriber" in table
        for target in ("0.65x", "0.9x", "1.0x", "1.5x"):
            assert f"target >= {target}" in table
        if not has_batches():
            assert fanout.NO_BATCHES in table

    @pytest.mark.skipif(not has_batches(), reason="Subscription.batches() not in this version")
    def test_reading_with_batches_delivers_every_item(self) -> None:
        result = in_fresh_trio_run(
            lambda: fanout_bus(Workload(runs=3, subscribers=2), batches=True)
        )
        assert result.deliveries == 2 * 3 * 102

    @pytest.mark.parametrize("module", ["benchmarks.peers_pyee", "benchmarks.peers_bubus"])
    def test_an_asyncio_peer_delivers_every_event_to_every_handler(self, module: str) -> None:
        peer: Any = importlib.import_module(module)
        if module.endswith("bubus"):
            deliveries, _ = asyncio.run(peer.one_round(2, 5, 3, 0))
        else:
            deliveries, _ = asyncio.run(peer.one_round(2, 5, 3))
            assert peer.sync_round(2, 5, 3)[0] == deliveries
        assert deliveries == 2 * 7 * 3

    def test_a_peer_that_missed_an_event_fails_its_check(self) -> None:
        with pytest.raises(AssertionError, match="handler ran"):
            check_peer_deliveries([14, 13], [56, 56], runs=2, events=5)


class TestScaling:
    def test_each_session_subscriber_reads_only_its_own_sessions_events(self) -> None:
        measured = scaling.measure(1, runs=12, sessions=(2, 5, 20))
        assert set(measured["median_rate"]) == {"2", "5", "20"}
        assert "target >= 0.5x" in _table(scaling.rows(measured))


class TestCosts:
    def test_the_idle_cost_is_measured_and_the_memory_comes_back(self) -> None:
        measured = idle_cost.measure(100)
        assert measured["plain"]["bytes_per_run"] > 0
        assert "target <= 4,096 B" in _table(idle_cost.rows(measured))

    def test_every_aborted_runs_terminal_event_arrives_once(self) -> None:
        measured = abort_latency.measure(8, live=20, paced=0.01)
        for load in ("paced", "saturated"):
            assert measured[load]["samples"] == 8
            assert measured[load]["not_aborted"] == 0
        assert "target < 1 ms" in _table(abort_latency.rows(measured))

    def test_healthy_subscribers_get_everything_beside_a_stalled_one(self) -> None:
        measured = stalled.measure(1, block_timeout=0.05, runs=4)
        assert [row["policy"] for row in measured["policies"]] == [
            "BLOCK",
            "DROP_OLDEST",
            "DROP_NEWEST",
            "DISCONNECT",
        ]
        assert "target < 10%" in _table(stalled.rows(measured))

    def test_every_emit_through_the_portal_arrives(self) -> None:
        measured = portal.measure(50)
        assert set(measured) == {"trio", "worker", "thread"}
        _table(portal.rows(measured))


class TestSoak:
    def test_the_leaky_model_keeps_one_counter_per_run_and_reports(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert soak_run.main(["--runs", "1000", "--leaky", "--no-tracemalloc"]) == 0
        assert "'aborted': 20" in capsys.readouterr().out

    def test_the_bus_soak_reports_flat_memory_when_run_as_a_module(
        self, tmp_path: pathlib.Path
    ) -> None:
        result = subprocess.run(
            [
                *(sys.executable, "-m", "benchmarks.soak_run", "--runs", "2000"),
                *("--no-tracemalloc", "--json", str(tmp_path / "soak-bus.json")),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
            cwd=ROOT,
        )
        assert "target (within 1 MiB, by RSS): met" in result.stdout
        assert "'timeout': 0" in result.stdout
        assert (tmp_path / "soak-bus.json").exists()

    def test_the_soak_default_takes_minutes_and_make_soak_runs_a_million(self) -> None:
        parser = argparse.ArgumentParser()
        soak_run.add_arguments(parser)
        assert parser.parse_args([]).runs == 100_000
        assert soak_run.__doc__ is not None
        assert "--runs 1000000" in soak_run.__doc__
        assert "make soak" in soak_run.__doc__
        makefile = (ROOT / "Makefile").read_text()
        assert "\nsoak:" in makefile
        assert "-m benchmarks.soak_run --runs 1000000" in makefile
        assert "\nbench-quick:" in makefile


class TestLayout:
    def test_no_benchmark_imports_private_pipeline_or_actors_modules(self) -> None:
        for path in (ROOT / "benchmarks").glob("*.py"):
            text = path.read_text()
            for private in ("pipeline._", "actors._", "from pipeline import _"):
                assert private not in text, f"{path.name} uses {private}"

    def test_the_library_command_line_has_no_benchmark_commands(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        for command in ("bench", "soak"):
            with pytest.raises(SystemExit) as exit_info:
                pipeline_main([command])
            assert exit_info.value.code == 2
        assert "invalid choice" in capsys.readouterr().err
