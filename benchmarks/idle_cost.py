"""Cost of a live idle run: memory per run with 10,000 runs parked in their bodies.

``python -m benchmarks.idle_cost [--parked N]``. Measured with tracemalloc around public calls
only (``bus.start_run`` of N bodies parked on an event), after ``gc.collect()``, with the
default config (idle timeout armed). Two variants: a run that has published only its start,
and a run with a session key that emitted one assistant delta (its chat projection
allocated). A bare trio task parked the same way is shown for reference, and the memory must
come back once the runs end.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tracemalloc
from collections.abc import Callable
from typing import Any

import trio

import pipeline as pl

from ._util import Row, format_table, say, verdict, write_json

PARKED = 10_000
TARGET = 4096


async def idle_cost(parked: int = PARKED, *, emit_first: bool = False) -> dict[str, Any]:
    """Traced bytes per live run with ``parked`` runs parked in their bodies. With
    ``emit_first`` each run has a session key and emitted one assistant delta first."""
    started_here = not tracemalloc.is_tracing()
    if started_here:
        tracemalloc.start()
    try:
        gate = trio.Event()
        context = pl.RunContext(session_key="main") if emit_first else None

        async def body(run: pl.Run) -> None:
            if emit_first:
                await run.emit("assistant", {"text": "Hello", "delta": "Hello"})
            await gate.wait()

        async with pl.open_bus(pl.BusConfig(max_runs=parked + 16)) as bus:
            # Warm up: whatever is allocated once (code objects, caches) is not per-run.
            for _ in range(64):
                await bus.start_run(body, context=context)
            gate.set()
            await _until(lambda: bus.statistics().live_runs == 0)
            gate = trio.Event()
            before = _traced()
            for _ in range(parked):
                await bus.start_run(body, context=context)
            assert bus.statistics().live_runs == parked
            during = _traced()
            gate.set()
            await _until(lambda: bus.statistics().live_runs == 0)
            after = _traced()
            outcomes = dict(bus.statistics().runs_by_outcome)
        assert outcomes.get("ok") == parked + 64, outcomes
        bare_before, bare_during = await _bare_tasks(parked)
    finally:
        if started_here:
            tracemalloc.stop()
    return {
        "parked": parked,
        "emit_first": emit_first,
        "bytes_per_run": (during - before) / parked,
        "bytes_left_after_end": after - before,
        "bare_task_bytes": (bare_during - bare_before) / parked,
    }


async def _bare_tasks(parked: int) -> tuple[int, int]:
    """Traced bytes before and while ``parked`` bare trio tasks wait on an Event."""
    async with trio.open_nursery() as nursery:
        gate = trio.Event()
        for _ in range(64):
            nursery.start_soon(gate.wait)
        gate.set()
        await trio.lowlevel.checkpoint()
        gate = trio.Event()
        before = _traced()
        for _ in range(parked):
            nursery.start_soon(gate.wait)
        await trio.lowlevel.checkpoint()
        during = _traced()
        gate.set()
    return before, during


def _traced() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


async def _until(predicate: Callable[[], bool]) -> None:
    """Poll ``predicate`` (a condition on counters, which signal nothing) for up to 30 s."""
    with trio.fail_after(30):
        while not predicate():  # noqa: ASYNC110  # nothing to wait on but the counters
            await trio.sleep(0.001)


def measure(parked: int = PARKED) -> dict[str, Any]:
    say(f"live idle runs: {parked:,} parked")
    plain = trio.run(idle_cost, parked)
    chat = trio.run(lambda: idle_cost(parked, emit_first=True))
    return {"parked": parked, "target_bytes": TARGET, "plain": plain, "chat": chat}


def rows(measured: dict[str, Any]) -> list[Row]:
    plain, chat = measured["plain"], measured["chat"]
    return [
        (f"Live idle run, {measured['parked']:,} parked (tracemalloc)", "", ""),
        (
            "  bytes per run, start published only",
            f"{plain['bytes_per_run']:,.0f} B",
            f"target <= {TARGET:,} B: {verdict(plain['bytes_per_run'] <= TARGET)}",
        ),
        (
            "  bytes per run, session key + 1 delta",
            f"{chat['bytes_per_run']:,.0f} B",
            f"target <= {TARGET:,} B: {verdict(chat['bytes_per_run'] <= TARGET)}",
        ),
        ("  a bare trio task parked on an Event", f"{plain['bare_task_bytes']:,.0f} B", ""),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--parked", type=int, default=PARKED)
    args = parser.parse_args(argv)
    measured = measure(args.parked)
    write_json("idle_cost", measured)
    print(format_table(rows(measured)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
