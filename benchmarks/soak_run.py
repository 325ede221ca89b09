"""Memory soak: drive many complete runs through the bus, report the memory kept.

Each run is a small agent turn with a session key (so the chat projection
runs): assistant deltas, a tool start and result, more text, then the end. Of
every 100 runs, 2 are aborted mid-turn, 1 fails, and 1 fails and is retried
under the same run id during its retry grace. Up to --concurrency runs are live
at once; one subscriber drains every event.

At sample points (after 1,000 runs, every --sample-every runs and after the
last) the soak waits until no run is live and every event was read, runs
gc.collect(), and records the memory the process keeps: tracemalloc's traced
bytes, RSS (/proc/self/statm) and sys.getallocatedblocks(). The target: what
is kept after the last run is within 1 MiB of what was kept after 1,000 runs.
Before it reports, it checks the events drained against the events published,
that nothing was dropped, one terminal event per body phase, and the outcomes.

The default, 100,000 runs, takes about 2 minutes (45 s with --no-tracemalloc)
on a 2-core machine. The full soak, a million runs, takes ten times as long:

    python -m benchmarks.soak_run --runs 1000000 --no-tracemalloc

or make soak. python -m benchmarks.soak runs both designs, each in a fresh
process, and saves their samples for the plot.

--leaky runs the same workload through a small model of the leaking design the
bus replaces: a gateway whose per-run seq counters live in one dict keyed by
run id that is never pruned (run state otherwise dies with each run, as in the
bus).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import trio

import pipeline as pl

from ._leaky_model import soak_leaky
from ._soak_plan import (
    BASELINE_RUNS,
    SESSIONS,
    TARGET_BYTES,
    Drain,
    Plan,
    Sampler,
    failing_turn,
    hanging_turn,
    kind_of,
    mib,
    ok_turn,
    until,
)

#: The retry grace of the soak's bus: short, so that quiescence at sample points comes fast.
RETRY_GRACE = 0.05


async def _drain_bus(bus: pl.Bus, drain: Drain, *, task_status: trio.TaskStatus[None]) -> None:
    async with bus.subscribe() as sub:
        task_status.started()
        async for event in sub:
            drain.tally(event)


async def soak_bus(total: int, concurrency: int, sampler: Sampler) -> dict[str, Any]:
    """The soak's plan through the bus; checks what the drain saw against the plan."""
    config = pl.BusConfig(max_runs=concurrency + 1024, error_retry_grace=RETRY_GRACE)
    contexts = [pl.RunContext(session_key=f"s{k}") for k in range(SESSIONS)]
    plan = Plan()
    drain = Drain()
    slots = trio.Semaphore(concurrency)

    def limited(body: Callable[[pl.Run], Awaitable[None]]) -> Callable[[pl.Run], Awaitable[None]]:
        async def limited_body(run: pl.Run) -> None:
            try:
                await body(run)
            finally:
                slots.release()

        return limited_body

    async with pl.open_bus(config) as bus, trio.open_nursery() as nursery:
        await nursery.start(_drain_bus, bus, drain)

        def quiet() -> bool:
            stats = bus.statistics()
            return (
                slots.value == concurrency
                and stats.live_runs == 0
                and drain.events == stats.events_published
            )

        sampler.take(0)
        for index in range(total):
            kind = kind_of(index)
            plan.add(kind)
            context = contexts[index % SESSIONS]
            await slots.acquire()
            if kind == "ok":
                await bus.start_run(limited(ok_turn), context=context)
            elif kind == "abort":
                handle = await bus.start_run(limited(hanging_turn), context=context)
                handle.abort("user")
            elif kind == "error":
                await bus.start_run(limited(failing_turn), context=context)
            else:
                handle = await bus.start_run(limited(failing_turn), context=context)
                outcome = await handle.wait()
                assert outcome.status == "error", outcome
                await slots.acquire()
                await bus.start_run(limited(ok_turn), run_id=handle.id, context=context)
            runs = index + 1
            if sampler.due(runs):
                await until(quiet)
                sampler.take(runs)
        stats = bus.statistics()
        published = stats.events_published
        nursery.cancel_scope.cancel()
    # Every event reached the subscriber, nothing was dropped, every run ended as planned.
    assert drain.events == published, (drain, published)
    assert drain.dropped == 0, drain
    assert stats.drops == 0, stats
    assert drain.terminals == plan.terminals, (drain, plan)
    outcomes = dict(stats.runs_by_outcome)
    expected = plan.outcomes()
    assert outcomes == expected, (outcomes, expected)
    assert stats.runs_started == total, stats.runs_started
    return {"events": published, "outcomes": outcomes, "plan": attrs.asdict(plan)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--runs",
        type=int,
        default=100_000,
        help="complete runs to drive (default 100,000, about 2 minutes; the full soak is "
        "--runs 1000000)",
    )
    parser.add_argument(
        "--leaky",
        action="store_true",
        help="run the workload through a model of the leaking design (a never-pruned dict "
        "of seq counters keyed by run id) instead of the bus",
    )
    parser.add_argument(
        "--sample-every",
        type=int,
        default=None,
        metavar="K",
        help="print progress and record a memory sample every K runs (default runs/100)",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="save the samples as JSON")
    parser.add_argument(
        "--concurrency", type=int, default=64, help="runs live at once (default 64)"
    )
    parser.add_argument(
        "--no-tracemalloc",
        dest="tracemalloc",
        action="store_false",
        help="skip tracemalloc (about 3x faster); report RSS and allocated blocks only",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit 1 if the retained memory grew by more than 1 MiB (the target)",
    )


def run(args: argparse.Namespace) -> int:
    total: int = args.runs
    if total < BASELINE_RUNS:
        print(f"--runs must be at least {BASELINE_RUNS:,}", file=sys.stderr)
        return 2
    every = args.sample_every if args.sample_every is not None else max(BASELINE_RUNS, total // 100)
    design = "leaky model" if args.leaky else "bus"
    print(
        f"soak: {total:,} runs through the {design}, {args.concurrency} live at once, "
        f"tracemalloc {'on' if args.tracemalloc else 'off'}",
        file=sys.stderr,
    )
    sampler = Sampler(total, every, args.tracemalloc)
    soak = soak_leaky if args.leaky else soak_bus
    # The workload fails runs on purpose; each failure would be logged with its traceback.
    run_log = logging.getLogger("pipeline.run")
    level = run_log.level
    run_log.setLevel(logging.CRITICAL)
    if args.tracemalloc:
        tracemalloc.start()
    try:
        checked = trio.run(soak, total, args.concurrency, sampler)
    finally:
        if args.tracemalloc:
            tracemalloc.stop()
        run_log.setLevel(level)
    seconds = time.perf_counter() - sampler.began

    first = next(s for s in sampler.samples if s["runs"] == BASELINE_RUNS)
    last = sampler.samples[-1]
    print(f"\nretained memory, {design} (after gc.collect()):")
    for label, sample in ((f"after {BASELINE_RUNS:,} runs", first), (f"after {total:,}", last)):
        traced = mib(sample["traced"]).strip() if sample["traced"] is not None else "n/a"
        print(
            f"  {label:<22} tracemalloc {traced:>14}  RSS {mib(sample['rss']).strip():>14}  "
            f"blocks {sample['blocks']:,}"
        )
    growth = _growth(first, last)
    runs_between = total - BASELINE_RUNS
    for name, delta in growth.items():
        per_run = delta / runs_between if runs_between else 0.0
        if name == "blocks":
            print(f"  growth, {name:<12} {delta:+12,} blocks ({per_run:+.3f} per run)")
        else:
            print(f"  growth, {name:<12} {delta / 1024:+12,.1f} KiB  ({per_run:+.1f} B per run)")
    key = "tracemalloc" if "tracemalloc" in growth else "RSS"
    within = abs(growth[key]) <= TARGET_BYTES
    print(
        f"  target (within 1 MiB, by {key}): {'met' if within else 'NOT met'}\n"
        f"  {total:,} runs in {seconds:.1f} s ({total / seconds:,.0f} runs/s); "
        f"{checked['events']:,} events drained; outcomes {checked['outcomes']}"
    )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        result = {
            "design": "leaky" if args.leaky else "bus",
            "runs": total,
            "concurrency": args.concurrency,
            "tracemalloc": args.tracemalloc,
            "seconds": seconds,
            "growth": growth,
            "target_met": within,
            "samples": sampler.samples,
            **checked,
        }
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 1 if args.check and not within else 0


def _growth(first: dict[str, Any], last: dict[str, Any]) -> dict[str, int]:
    growth = {"RSS": last["rss"] - first["rss"], "blocks": last["blocks"] - first["blocks"]}
    if first["traced"] is not None:
        growth = {"tracemalloc": last["traced"] - first["traced"], **growth}
    return growth


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.soak_run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
