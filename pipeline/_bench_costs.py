"""Benchmark measurements of per-run costs: the memory of a live idle run, and abort latency.

Used by ``python -m pipeline bench`` and by the full suite in ``benchmarks/``.
"""

from __future__ import annotations

import gc
import math
import time
import tracemalloc
from collections.abc import Callable, Sequence
from typing import Any

import trio

from ._bus import Bus, open_bus
from ._config import BusConfig, RunContext
from ._event import LIFECYCLE
from ._run import Run

__all__ = ["DELTA", "abort_latency", "idle_cost"]

#: The payload of every workload-W agent event (the bus copies it; the raw baselines do not).
DELTA: dict[str, Any] = {"delta": " tok"}


# ---- the cost of a live idle run -------------------------------------------------------------


async def idle_cost(parked: int = 10_000, *, emit_first: bool = False) -> dict[str, Any]:
    """Memory per live run with ``parked`` runs parked in their bodies (tracemalloc, after
    ``gc.collect()``), with the default config (idle timeout armed). With ``emit_first``
    each run has a session key and emitted one assistant delta (chat projection allocated).

    Also measures a bare trio task parked the same way, for reference, and checks that the
    memory comes back once the runs end.
    """
    started_here = not tracemalloc.is_tracing()
    if started_here:
        tracemalloc.start()
    try:
        gate = trio.Event()
        context = RunContext(session_key="main") if emit_first else None

        async def body(run: Run) -> None:
            if emit_first:
                await run.emit("assistant", {"text": "Hello", "delta": "Hello"})
            await gate.wait()

        async with open_bus(BusConfig(max_runs=parked + 16)) as bus:
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
        # A bare trio task parked on an Event, for reference.
        async with trio.open_nursery() as nursery:
            bare_gate = trio.Event()
            for _ in range(64):
                nursery.start_soon(bare_gate.wait)
            bare_gate.set()
            await trio.lowlevel.checkpoint()
            bare_gate = trio.Event()
            bare_before = _traced()
            for _ in range(parked):
                nursery.start_soon(bare_gate.wait)
            await trio.lowlevel.checkpoint()
            bare_during = _traced()
            bare_gate.set()
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


def _traced() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


async def _until(predicate: Callable[[], bool]) -> None:
    """Poll ``predicate`` (a condition on counters, which signal nothing) for up to 30 s."""
    with trio.fail_after(30):
        while not predicate():  # noqa: ASYNC110  # nothing to wait on but the counters
            await trio.sleep(0.001)


# ---- abort latency ---------------------------------------------------------------------------


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

    async def body(run: Run) -> None:
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

    async def watcher(bus: Bus, *, task_status: trio.TaskStatus[None]) -> None:
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
    config = BusConfig(max_runs=live + samples + 16)
    async with open_bus(config) as bus, trio.open_nursery() as nursery:
        await nursery.start(watcher, bus)
        handles = [await bus.start_run(body) for _ in range(live)]
        await trio.sleep(max(0.2, 2 * (period or 0)))
        before = bus.statistics().events_published
        started = time.perf_counter()
        for i in range(samples):
            handle = handles[i % live]
            arrived = trio.Event()
            async with bus.subscribe(run_id=handle.id, streams=[LIFECYCLE]) as probe:
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
