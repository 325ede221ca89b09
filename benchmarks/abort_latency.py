"""Abort latency: from ``RunHandle.abort()`` to the terminal event reaching a subscriber.

Two clocks: *readable* (the event can be read from a subscription: the bus's part) and *seen*
(a subscriber task reading every event has it: adds that task's turn in trio's scheduler
among 1,000 emitting runs, and garbage collection).

``python -m benchmarks.abort_latency [--samples N]``. 1,000 live runs emit assistant deltas;
one subscriber reads everything; each aborted run is replaced. Two loads: *paced* (each run
emits every 100 ms, 10,000 events/s in all, a third of what this machine's trio can wake
1,000 sleeping tasks for) and *saturated* (each run emits in a loop with only a checkpoint in
between, so the router's inbox stays full). Only the public API is used.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from typing import Any

import trio

import pipeline as pl

from ._util import Row, format_table, say, verdict, write_json
from ._workloads import DELTA

LIVE = 1_000
PACED = 0.1


async def abort_latency(
    live: int = 1_000, samples: int = 1_000, *, period: float | None = 0.1
) -> dict[str, Any]:
    """Time from ``RunHandle.abort()`` to the run's terminal event reaching a subscriber, with
    ``live`` runs emitting assistant deltas, each every ``period`` seconds (``None``: in a
    loop with only a checkpoint between emits, which saturates the bus).

    Two clocks stop per abort: ``readable`` when the terminal event can be read from a
    subscription (the bus's part: abort routes it itself unless a subscriber is full), and
    ``seen`` when a subscriber task that reads every event (BLOCK) has it, which adds that
    task's wait for its turn in trio's scheduler among the emitting runs, and any garbage
    collection in between. Each aborted run is replaced by a new one, so ``live`` runs stay
    live. It checks that every aborted run's terminal event arrived exactly once; aborts that
    ended otherwise than ``"aborted"`` are counted and reported (``not_aborted``), since that
    is a bus bug the figure must not hide.
    """
    data = DELTA

    async def body(run: pl.Run) -> None:
        emit = run.emit
        if period is None:
            checkpoint = trio.lowlevel.checkpoint
            while True:
                await emit("assistant", data)
                await checkpoint()
        else:
            await trio.sleep(period * (hash(run.id) % 1000) / 1000)
            while True:
                await emit("assistant", data)
                await trio.sleep(period)

    pending: dict[str, float] = {}
    latencies: list[float] = []
    readable: list[float] = []
    arrived = trio.Event()
    terminals = 0
    wrong: list[Any] = []

    async def watcher(bus: pl.Bus, *, task_status: trio.TaskStatus[None]) -> None:
        nonlocal arrived, terminals
        async with bus.subscribe() as sub:
            task_status.started()
            async for event in sub:
                if event.stream == "lifecycle" and event.data.get("phase") in ("end", "error"):
                    t0 = pending.pop(event.run_id, None)
                    if t0 is not None:
                        latencies.append(time.perf_counter() - t0)
                        terminals += 1
                        if not event.data.get("aborted"):
                            wrong.append(dict(event.data))
                        arrived.set()

    deliveries = 0
    statuses: dict[str, int] = {}
    config = pl.BusConfig(max_runs=live + samples + 16)
    async with pl.open_bus(config) as bus, trio.open_nursery() as nursery:
        await nursery.start(watcher, bus)
        handles = [await bus.start_run(body) for _ in range(live)]
        await trio.sleep(max(0.2, 2 * (period or 0)))
        before = bus.statistics().events_published
        started = time.perf_counter()
        for i in range(samples):
            handle = handles[i % live]
            arrived = trio.Event()
            async with bus.subscribe(run_id=handle.id, streams=["lifecycle"]) as probe:
                pending[handle.id] = t0 = time.perf_counter()
                handle.abort("bench")
                try:
                    terminal = probe.receive_nowait()
                except trio.WouldBlock:
                    terminal = await probe.receive()
                readable.append(time.perf_counter() - t0)
                assert terminal.data["phase"] == "end", terminal
            await arrived.wait()
            outcome = await handle.wait()
            statuses[outcome.status] = statuses.get(outcome.status, 0) + 1
            handles[i % live] = await bus.start_run(body)
            await trio.sleep(0.001 * (i % 3))
        seconds = time.perf_counter() - started
        deliveries = bus.statistics().events_published - before
        assert bus.statistics().live_runs >= live
        nursery.cancel_scope.cancel()
    assert terminals == samples, (terminals, samples)
    assert not pending, pending
    ordered = sorted(latencies)
    ordered_readable = sorted(readable)
    return {
        "live": live,
        "samples": samples,
        "period": period,
        "events_per_second": deliveries / seconds,
        "readable_p50_ms": _percentile(ordered_readable, 0.50) * 1000,
        "readable_p99_ms": _percentile(ordered_readable, 0.99) * 1000,
        "readable_max_ms": ordered_readable[-1] * 1000,
        "p50_ms": _percentile(ordered, 0.50) * 1000,
        "p99_ms": _percentile(ordered, 0.99) * 1000,
        "max_ms": ordered[-1] * 1000,
        "outcomes": statuses,
        "not_aborted": len(wrong),
        "not_aborted_example": wrong[0] if wrong else None,
    }


def _percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of sorted values."""
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


def measure(samples: int = 1_000, live: int = LIVE, paced: float = PACED) -> dict[str, Any]:
    say(f"abort latency: {live:,} live runs, {samples:,} aborts, paced ({paced} s)")
    paced_result = trio.run(lambda: abort_latency(live, samples, period=paced))
    say(f"abort latency: {live:,} live runs, {samples:,} aborts, saturated")
    saturated = trio.run(lambda: abort_latency(live, samples, period=None))
    return {"live": live, "paced": paced_result, "saturated": saturated}


def rows(measured: dict[str, Any]) -> list[Row]:
    out: list[Row] = [
        (f"Abort -> terminal event at a subscriber, {measured['live']:,} live runs", "", "")
    ]
    for name in ("paced", "saturated"):
        r = measured[name]
        label = f"every {r['period']} s" if r["period"] is not None else "in a loop"
        note = f"{r['samples']:,} aborts; runs emit {label}, {r['events_per_second']:,.0f} events/s"
        if r["not_aborted"]:
            note += f"; {r['not_aborted']} ended as {r['outcomes']} (bus bug)"
        out.append((f"  {name}: readable p50", f"{r['readable_p50_ms']:.3f} ms", note))
        out.append(
            (
                f"  {name}: readable p99",
                f"{r['readable_p99_ms']:.3f} ms",
                f"target < 1 ms: {verdict(r['readable_p99_ms'] < 1)}; "
                f"max {r['readable_max_ms']:.1f} ms",
            )
        )
        out.append((f"  {name}: seen p50", f"{r['p50_ms']:.3f} ms", "by the subscriber task"))
        out.append((f"  {name}: seen p99", f"{r['p99_ms']:.3f} ms", f"max {r['max_ms']:.1f} ms"))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=1_000)
    parser.add_argument("--live", type=int, default=LIVE)
    args = parser.parse_args(argv)
    measured = measure(args.samples, args.live)
    write_json("abort_latency", measured)
    print(format_table(rows(measured)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
