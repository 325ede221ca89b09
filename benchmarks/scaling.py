"""Fan-out cost follows matching subscribers: S subscribers, each on a session of its own.

``python -m benchmarks.scaling [--rounds N] [--runs N] [--sessions 10,100,1000,10000]``.
S subscribers each subscribe with ``bus.subscribe(session_key=f"s{i}")``; ``runs`` runs are
spread over the S sessions (run i has ``RunContext(session_key=f"s{i % S}")``, so the chat
projection runs too), each emitting 100 assistant deltas. Every event therefore matches
exactly one subscriber, whatever S is. The figure is deliveries per second (median of the
rounds, which alternate over the S values), and the target is that S = 10,000 delivers at
least half as fast as S = 10. Each subscriber checks that it read only its own session's
events; together they must have read every published event exactly once.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from typing import Any

import attrs
import trio

import pipeline as pl

from ._util import Row, format_table, say, verdict, write_json
from ._workloads import DELTA, FanoutResult, in_fresh_trio_run

SESSIONS = (10, 100, 1_000, 10_000)
TARGET = 0.5


@attrs.define
class _SessionReader:
    key: str
    count: int = 0
    foreign: int = 0
    #: perf_counter() when it read an event that can end a run's events (not an agent delta).
    last: float | None = None
    closed_reason: str | None = None


async def _read_session(
    bus: pl.Bus, reader: _SessionReader, *, task_status: trio.TaskStatus[None]
) -> None:
    key = reader.key
    n = foreign = 0
    async with bus.subscribe(session_key=key) as sub:
        task_status.started()
        async for event in sub:
            n += 1
            if event.session_key != key:
                foreign += 1
            # A run's last events are its lifecycle end and the chat final, never a delta.
            if event.stream != "assistant":
                reader.last = time.perf_counter()
        reader.closed_reason = sub.closed_reason
    reader.count, reader.foreign = n, foreign


async def sessions_bus(sessions: int, runs: int = 1_000, events: int = 100) -> FanoutResult:
    """``runs`` runs over ``sessions`` sessions, one subscriber per session; the clock stops
    when the last subscriber has read the last event of its last run."""
    config = pl.BusConfig(max_runs=runs + 16, max_subscribers=sessions + 16)
    readers = [_SessionReader(f"s{i}") for i in range(sessions)]
    contexts = [pl.RunContext(session_key=reader.key) for reader in readers]

    async def body(run: pl.Run) -> None:
        emit = run.emit
        for _ in range(events):
            await emit("assistant", DELTA)

    async with pl.open_bus(config) as bus, trio.open_nursery() as nursery:
        for reader in readers:
            await nursery.start(_read_session, bus, reader)
        start = time.perf_counter()
        handles = [
            await bus.start_run(body, run_id=f"r{i}", context=contexts[i % sessions])
            for i in range(runs)
        ]
        for handle in handles:
            outcome = await handle.wait()
            assert outcome.status == "ok", outcome
        await bus.aclose()
        stats = bus.statistics()
    deliveries = sum(r.count for r in readers)
    assert deliveries == stats.events_published, (deliveries, stats.events_published)
    assert stats.drops == 0, stats
    assert all(r.foreign == 0 for r in readers), "a subscriber read another session's event"
    assert all(r.closed_reason == pl.BUS_CLOSED for r in readers)
    busy = [r for r in readers if r.count]
    assert len(busy) == min(sessions, runs), "a session with runs delivered nothing"
    seconds = max(r.last for r in busy if r.last is not None) - start
    return FanoutResult(f"bus, S = {sessions:,}", deliveries, seconds, {"sessions": sessions})


def measure(
    rounds: int = 3, *, runs: int = 1_000, sessions: tuple[int, ...] = SESSIONS
) -> dict[str, Any]:
    say(f"scaling: {runs:,} runs over S sessions, one subscriber each, S = {sessions}")
    results: dict[int, list[FanoutResult]] = {s: [] for s in sessions}
    for i in range(rounds):
        for s in sessions:
            result = in_fresh_trio_run(functools.partial(sessions_bus, s, runs))
            results[s].append(result)
            say(f"  round {i + 1}/{rounds} S = {s:>6,}  {result.rate:>12,.0f} deliveries/s")
    rates = {s: statistics.median(r.rate for r in rs) for s, rs in results.items()}
    low, high = min(sessions), max(sessions)
    return {
        "runs": runs,
        "rounds": rounds,
        "median_rate": {str(s): rate for s, rate in rates.items()},
        "all_rates": {str(s): [r.rate for r in rs] for s, rs in results.items()},
        "ratio": rates[high] / rates[low],
        "ratio_of": [low, high],
        "target": TARGET,
    }


def rows(measured: dict[str, Any]) -> list[Row]:
    low, high = measured["ratio_of"]
    out: list[Row] = [
        (
            f"Subscribers on their own sessions, {measured['runs']:,} runs spread over S "
            f"(deliveries/s, median of {measured['rounds']})",
            "",
            "",
        )
    ]
    base = measured["median_rate"][str(low)]
    for s, rate in measured["median_rate"].items():
        out.append((f"  S = {int(s):,}", f"{rate:,.0f}/s", f"{rate / base:.3f}x S = {low:,}"))
    ratio = measured["ratio"]
    out.append(
        (
            f"  S = {high:,} / S = {low:,}",
            f"{ratio:.3f}x",
            f"target >= {measured['target']}x: {verdict(ratio >= measured['target'])}",
        )
    )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=1_000)
    parser.add_argument(
        "--sessions",
        type=lambda text: tuple(int(s) for s in text.split(",")),
        default=SESSIONS,
        help="comma-separated S values (default 10,100,1000,10000)",
    )
    args = parser.parse_args(argv)
    measured = measure(args.rounds, runs=args.runs, sessions=args.sessions)
    write_json("scaling", measured)
    print(format_table(rows(measured)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
