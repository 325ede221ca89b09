"""Fan-out, workload W: the bus against hand-written raw trio, and the asyncio peers.

``python -m benchmarks.fanout [--rounds N] [--runs N] [--subscribers 8,32] [--no-peers]``.
For 8 and for 32 subscribers, in one process, rounds alternate: the bus read per event, the
raw-trio baseline, the bus read with ``sub.batches()`` (each in a fresh ``trio.run``). The raw
baseline is one memory channel per subscriber with ``send_nowait`` / ``receive_nowait`` and
the same items per run (see ``benchmarks._workloads.fanout_raw``); both bus variants are
compared with it. A ratio is the median over rounds of (bus rate / raw rate of the same
round). pyee and bubus each run in a process of their own (``benchmarks.peers_pyee``,
``benchmarks.peers_bubus``) on the 8-subscriber workload. Figures are deliveries per second
(events read by subscribers).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from ._util import Row, format_table, run_module, say, verdict, write_json
from ._workloads import (
    FanoutResult,
    Workload,
    fanout_bus,
    fanout_raw,
    has_batches,
    in_fresh_trio_run,
    median_rate,
)

#: The targets of issue 10 / SPEC section 5: minimum (bus rate / raw rate), by subscribers.
TARGETS: dict[int, dict[str, float]] = {
    8: {"bus": 0.65, "bus_batches": 0.9},
    32: {"bus": 1.0, "bus_batches": 1.5},
}
SUBSCRIBERS = (8, 32)
NO_BATCHES = "n/a (no batches())"


def alternate(
    rounds: int,
    w: Workload,
    *,
    slow_rounds: int = 0,
    progress: Callable[[str], None] | None = None,
) -> dict[str, list[FanoutResult]]:
    """``rounds`` rounds of bus (per event), raw, bus (batches, when the bus has them), in that
    order; the slow raw baseline (``await send``) in the first ``slow_rounds``."""
    variants: dict[str, Callable[[], Awaitable[FanoutResult]]] = {
        "bus": lambda: fanout_bus(w),
        "raw": lambda: fanout_raw(w),
    }
    if has_batches():
        variants["bus_batches"] = lambda: fanout_bus(w, batches=True)
    variants["raw_slow"] = lambda: fanout_raw(w, fast=False)
    results: dict[str, list[FanoutResult]] = {name: [] for name in variants}
    for i in range(rounds):
        for name, fn in variants.items():
            if name == "raw_slow" and i >= slow_rounds:
                continue
            result = in_fresh_trio_run(fn)
            results[name].append(result)
            if progress is not None:
                progress(
                    f"  {w.subscribers} subscribers, round {i + 1}/{rounds} "
                    f"{result.name:<24} {result.rate:>12,.0f} deliveries/s"
                )
    return {name: rs for name, rs in results.items() if rs}


def paired_ratio(bus: list[FanoutResult], raw: list[FanoutResult]) -> float:
    """The median of (bus rate / raw rate) over the rounds both ran."""
    return statistics.median(b.rate / r.rate for b, r in zip(bus, raw, strict=False))


def measure(
    rounds: int = 7,
    *,
    runs: int = 1_000,
    subscribers: tuple[int, ...] = SUBSCRIBERS,
    slow_rounds: int = 3,
    peers: bool = True,
    quick_peers: bool = False,
) -> dict[str, Any]:
    """Every fan-out figure; ``_results`` keeps the rounds for :func:`rows`."""
    configs: dict[str, Any] = {}
    all_results: dict[str, dict[str, list[FanoutResult]]] = {}
    for count in subscribers:
        w = Workload(runs=runs, subscribers=count)
        say(f"fan-out: {w.runs:,} runs x {w.events + 2} items, {count} subscribers")
        results = alternate(
            rounds, w, slow_rounds=slow_rounds if count == subscribers[0] else 0, progress=say
        )
        raw = results["raw"]
        config: dict[str, Any] = {
            "workload": {"runs": w.runs, "items_per_run": w.events + 2, "subscribers": count},
            "median_rate": {name: median_rate(rs) for name, rs in results.items()},
            "ratio": {name: paired_ratio(rs, raw) for name, rs in results.items()},
            "targets": TARGETS.get(count, {}),
            "rounds": {name: [_round(r) for r in rs] for name, rs in results.items()},
        }
        configs[str(count)] = config
        all_results[str(count)] = results
    peer_results: dict[str, dict[str, Any]] = {}
    if peers:
        say("fan-out, asyncio peers (separate processes, 8 subscribers)")
        # Quick: one round each, pyee on 200 runs (its rate hardly depends on the count).
        pyee = ["--runs", "200", "--rounds", "1"] if quick_peers else ["--rounds", "3"]
        bubus = ["--rounds", "1" if quick_peers else "3"]
        sync = ["--rounds", "1" if quick_peers else str(rounds)]
        peer_results["pyee AsyncIOEventEmitter"] = run_module("benchmarks.peers_pyee", *pyee)
        peer_results["bubus EventBus"] = run_module("benchmarks.peers_bubus", *bubus)
        peer_results["pyee EventEmitter, sync handlers (not a bus)"] = run_module(
            "benchmarks.peers_pyee", "--sync", *sync
        )
    return {
        "batches": has_batches(),
        "subscribers": configs,
        "peers": peer_results,
        "_results": all_results,
    }


def _round(result: FanoutResult) -> dict[str, Any]:
    return {"deliveries": result.deliveries, "seconds": result.seconds, "rate": result.rate}


LABELS = {
    "bus": "bus, per event",
    "bus_batches": "bus, batches()",
    "raw": "raw trio, a channel per subscriber, nowait",
    "raw_slow": "raw trio, the same with await send/receive",
}


def rows(measured: dict[str, Any]) -> list[Row]:
    out: list[Row] = []
    configs: dict[str, Any] = measured["subscribers"]
    for key, config in configs.items():
        w = config["workload"]
        results: dict[str, list[FanoutResult]] = measured["_results"][key]
        out.append(
            (
                f"Fan-out, {w['runs']:,} runs x {w['items_per_run']} items, {key} subscribers "
                f"(deliveries/s, median of {len(results['raw'])} alternating rounds)",
                "",
                "",
            )
        )
        for name in ("raw", "bus", "bus_batches", "raw_slow"):
            target = config["targets"].get(name)
            if name not in results:
                if name == "bus_batches":
                    note = f"target >= {target}x" if target is not None else ""
                    out.append((f"  {LABELS[name]}", NO_BATCHES, note))
                continue
            rate, ratio = config["median_rate"][name], config["ratio"][name]
            note = f"{ratio:.2f}x raw"
            if target is not None:
                note += f"; target >= {target}x: {verdict(ratio >= target)}"
            out.append((f"  {LABELS[name]}", f"{rate:,.0f}/s", note))
    out += peer_rows(measured)
    return out


def peer_rows(measured: dict[str, Any]) -> list[Row]:
    peers: dict[str, dict[str, Any]] = measured["peers"]
    first = next(iter(measured["subscribers"].values()), None)
    if not peers or first is None:
        return []
    raw = first["median_rate"]["raw"]
    bus = first["median_rate"]["bus"]
    out: list[Row] = [("Asyncio peers (own processes), 8 subscribers", "", "")]
    for name, peer in peers.items():
        if "error" in peer:
            out.append((f"  {name}", "n/a", str(peer["error"])))
            continue
        rate = peer["median_rate"]
        note = f"{rate / raw:.3f}x raw; {peer['workload']}, median of {peer['rounds']}"
        if "not a bus" not in name:
            note += f"; bus ahead: {verdict(bus > rate)}"
        out.append((f"  {name}", f"{rate:,.0f}/s", note))
    return out


def public(measured: dict[str, Any]) -> dict[str, Any]:
    """``measured`` without the in-memory rounds, for JSON."""
    return {k: v for k, v in measured.items() if not k.startswith("_")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--runs", type=int, default=1_000)
    parser.add_argument("--slow-rounds", type=int, default=3)
    parser.add_argument(
        "--subscribers",
        type=lambda text: tuple(int(n) for n in text.split(",")),
        default=SUBSCRIBERS,
        help="comma-separated subscriber counts (default 8,32)",
    )
    parser.add_argument("--no-peers", dest="peers", action="store_false")
    args = parser.parse_args(argv)
    measured = measure(
        args.rounds,
        runs=args.runs,
        subscribers=args.subscribers,
        slow_rounds=args.slow_rounds,
        peers=args.peers,
    )
    write_json("fanout", public(measured))
    print(format_table(rows(measured)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
