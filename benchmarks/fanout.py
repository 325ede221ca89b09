"""Fan-out, workload W: the bus, the raw-trio baselines and the asyncio peers.

``python -m benchmarks.fanout [--rounds N]``. The bus and both raw-trio baselines run in this
process, in interleaved rounds (each in a fresh ``trio.run``); pyee and bubus each run in a
process of their own (``benchmarks.peers_pyee``, ``benchmarks.peers_bubus``). Figures are
medians, in deliveries per second (events read by subscribers), and ratios to the raw fast
path. See :func:`pipeline._bench.fanout_bus` and :func:`pipeline._bench.fanout_raw`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from pipeline._bench import (
    FanoutResult,
    W,
    fanout_rounds,
    fanout_table_rows,
    format_table,
    median_rate,
)

from ._util import run_module, say, write_json


def measure(rounds: int = 5, slow_rounds: int = 3, peers: bool = True) -> dict[str, Any]:
    say(f"fan-out, workload W: {W.runs} runs x {W.events} events, {W.subscribers} subscribers")
    results = fanout_rounds(rounds, W, slow_rounds=slow_rounds, progress=say)
    peer_results: dict[str, dict[str, Any]] = {}
    if peers:
        say("fan-out, asyncio peers (separate processes)")
        peer_results["pyee AsyncIOEventEmitter"] = run_module(
            "benchmarks.peers_pyee", "--rounds", str(max(3, slow_rounds))
        )
        peer_results["bubus EventBus"] = run_module("benchmarks.peers_bubus", "--rounds", "3")
        peer_results["pyee EventEmitter, sync handlers (not a bus)"] = run_module(
            "benchmarks.peers_pyee", "--sync", "--rounds", str(rounds)
        )
    return {
        "workload": {"runs": W.runs, "events": W.events, "subscribers": W.subscribers},
        "rounds": {name: [_round(r) for r in rs] for name, rs in results.items()},
        "median_rate": {name: median_rate(rs) for name, rs in results.items()},
        "peers": peer_results,
        "_results": results,
    }


def _round(result: FanoutResult) -> dict[str, Any]:
    return {"deliveries": result.deliveries, "seconds": result.seconds, "rate": result.rate}


def rows(measured: dict[str, Any]) -> list[tuple[str, str, str]]:
    w = measured["workload"]
    header = (
        f"Fan-out, W = {w['runs']:,} runs x {w['events']} events, {w['subscribers']} "
        "subscribers (deliveries/s)",
        "",
        "",
    )
    return [header, *fanout_table_rows(measured["_results"], measured["peers"])]


def public(measured: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in measured.items() if not k.startswith("_")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--slow-rounds", type=int, default=3)
    parser.add_argument("--no-peers", dest="peers", action="store_false")
    args = parser.parse_args(argv)
    measured = measure(args.rounds, args.slow_rounds, args.peers)
    write_json("fanout", public(measured))
    print(format_table(rows(measured)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
