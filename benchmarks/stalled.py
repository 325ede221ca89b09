"""Stalled subscriber: 7 healthy subscribers with and without an 8th that never reads.

``python -m benchmarks.stalled [--rounds N] [--block-timeout S] [--runs N]``. Workload W (see
``benchmarks._workloads``), every subscriber using the overflow policy under test; the figure
is the healthy subscribers' deliveries per second (median of the interleaved rounds) and what
the stalled one costs them. The healthy ones are checked for every event and zero drops.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from typing import Any

import pipeline as pl

from ._util import Row, format_table, say, verdict, write_json
from ._workloads import FanoutResult, W, Workload, fanout_bus, in_fresh_trio_run, median_rate

#: The most one stalled subscriber may cost the others (SPEC section 5).
TARGET = 0.10


def stalled_subscriber(
    rounds: int,
    w: Workload = W,
    *,
    block_timeout: float = 5.0,
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """For each overflow policy: the throughput of ``w.subscribers - 1`` healthy subscribers
    without and with one more that subscribes and never reads. Median of ``rounds`` interleaved
    rounds each."""
    healthy = w.subscribers - 1
    config = pl.BusConfig(max_runs=w.runs + 16, block_timeout=block_timeout)
    rows: list[dict[str, Any]] = []
    for policy in pl.Overflow:
        without: list[FanoutResult] = []
        with_: list[FanoutResult] = []
        for _ in range(rounds):
            for stalled, out in ((0, without), (1, with_)):

                async def one(policy: pl.Overflow = policy, stalled: int = stalled) -> FanoutResult:
                    return await fanout_bus(
                        w, overflow=policy, healthy=healthy, stalled=stalled, config=config
                    )

                out.append(in_fresh_trio_run(one))
        base, hit = median_rate(without), median_rate(with_)
        row = {
            "policy": policy.name,
            "block_timeout": block_timeout,
            "healthy": healthy,
            "without_stalled": base,
            "with_stalled": hit,
            "cost": 1 - hit / base,
            "seconds_without": statistics.median(r.seconds for r in without),
            "seconds_with": statistics.median(r.seconds for r in with_),
            "stalled_subscriber": with_[-1].extra["stalled"],
            "disconnects": with_[-1].extra["disconnects"],
        }
        rows.append(row)
        if progress is not None:
            progress(
                f"  {policy.name:<12} {base:>12,.0f} -> {hit:>12,.0f} deliveries/s "
                f"({-row['cost']:+.1%}; stalled one: {row['stalled_subscriber']})"
            )
    return rows


def measure(rounds: int = 3, block_timeout: float = 5.0, runs: int = W.runs) -> dict[str, Any]:
    w = Workload(runs=runs)
    say(
        f"stalled subscriber: {w.runs:,} runs x {w.events + 2} items, 7 healthy + 1 stalled, "
        f"block_timeout {block_timeout} s"
    )
    table = stalled_subscriber(rounds, w, block_timeout=block_timeout, progress=say)
    return {"rounds": rounds, "runs": runs, "block_timeout": block_timeout, "policies": table}


def rows(measured: dict[str, Any]) -> list[Row]:
    out: list[Row] = [
        (
            f"Stalled 8th subscriber, {measured['runs']:,} runs, 7 healthy "
            f"(block_timeout {measured['block_timeout']} s)",
            "",
            "",
        )
    ]
    for row in measured["policies"]:
        stalled = row["stalled_subscriber"][0] if row["stalled_subscriber"] else {}
        if row["policy"] == "BLOCK":
            target = "; by design, one block_timeout stall"
        else:
            target = f"; target < 10%: {verdict(row['cost'] < TARGET)}"
        out.append(
            (
                f"  {row['policy']}",
                f"{-row['cost']:+.1%}",
                f"{row['without_stalled']:,.0f}/s -> {row['with_stalled']:,.0f}/s{target}; "
                f"stalled one: {stalled.get('closed_reason') or 'open'}, "
                f"{stalled.get('dropped', 0):,} dropped",
            )
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--block-timeout", type=float, default=5.0)
    parser.add_argument("--runs", type=int, default=W.runs)
    args = parser.parse_args(argv)
    measured = measure(args.rounds, args.block_timeout, args.runs)
    write_json("stalled", measured)
    print(format_table(rows(measured)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
