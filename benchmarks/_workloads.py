"""Workload W through the bus and through the hand-written raw-trio fan-out it is measured
against, each checking what every subscriber received before it reports a figure.

Workload W is ``runs`` runs of ``events`` agent events fanned out to ``subscribers`` counting
subscribers. Each run also carries a start and an end item (the bus publishes them as lifecycle
events; the raw baseline sends them too), so each subscriber receives ``runs * (events + 2)``
items. The clock runs from the first run's start until the last subscriber has read its last
expected item; each subscriber then reads on until its end, so one extra item fails the check.

Only the public API is used: ``pipeline`` (as ``pl``) and trio.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import AsyncIterable, Awaitable, Callable, Sequence
from typing import Any, Protocol, cast

import attrs
import trio
import trio.testing

import pipeline as pl

__all__ = [
    "DELTA",
    "FanoutResult",
    "W",
    "Workload",
    "fanout_bus",
    "fanout_raw",
    "has_batches",
    "in_fresh_trio_run",
    "median_rate",
]

#: The payload of every workload-W agent event (the bus copies it; the raw baseline does not).
DELTA: dict[str, Any] = {"delta": " tok"}


@attrs.frozen
class Workload:
    """``runs`` runs of ``events`` agent events (plus a start and an end item each), fanned out
    to ``subscribers``."""

    runs: int = 1_000
    events: int = 100
    subscribers: int = 8

    @property
    def per_subscriber(self) -> int:
        return self.runs * (self.events + 2)

    @property
    def seq_sum(self) -> int:
        """The sum of the seqs one subscriber sees: 1..events+2 for every run."""
        n = self.events + 2
        return self.runs * n * (n + 1) // 2


W = Workload()


@attrs.frozen
class FanoutResult:
    """One measured round: ``deliveries`` items read by subscribers in ``seconds``."""

    name: str
    deliveries: int
    seconds: float
    #: What else the round observed (drops, disconnects, ...), for the JSON results.
    extra: dict[str, Any] = attrs.field(factory=dict)

    @property
    def rate(self) -> float:
        return self.deliveries / self.seconds


def median_rate(results: Sequence[FanoutResult]) -> float:
    return statistics.median(r.rate for r in results)


def in_fresh_trio_run(fn: Callable[[], Awaitable[FanoutResult]]) -> FanoutResult:
    """One round in a ``trio.run`` of its own, after a ``gc.collect()``."""
    gc.collect()
    return trio.run(fn)


class _Batched(Protocol):
    """``Subscription.batches()``: everything queued at once, as a non-empty list."""

    def batches(self) -> AsyncIterable[Sequence[pl.Event]]: ...


def has_batches() -> bool:
    """Whether this version of the bus has ``Subscription.batches()``."""
    return hasattr(pl.Subscription, "batches")


# ---- the bus ---------------------------------------------------------------------------------


@attrs.define
class _Reader:
    """One counting subscriber's tally."""

    expected: int
    count: int = 0
    seq_sum: int = 0
    #: perf_counter() when it read its last expected item.
    reached: float | None = None
    closed_reason: str | None = None
    dropped: int = 0


async def _read_each(sub: pl.Subscription, reader: _Reader) -> None:
    expected = reader.expected
    n = total = 0
    async for event in sub:
        n += 1
        total += event.seq
        if n == expected:
            reader.reached = time.perf_counter()
    reader.count, reader.seq_sum = n, total


async def _read_batches(sub: pl.Subscription, reader: _Reader) -> None:
    expected = reader.expected
    n = total = 0
    async for batch in cast(_Batched, sub).batches():
        for event in batch:
            total += event.seq
        n += len(batch)
        if n >= expected and reader.reached is None:
            reader.reached = time.perf_counter()
    reader.count, reader.seq_sum = n, total


async def _bus_reader(
    bus: pl.Bus,
    reader: _Reader,
    overflow: pl.Overflow,
    batches: bool,
    *,
    task_status: trio.TaskStatus[None],
) -> None:
    async with bus.subscribe(overflow=overflow) as sub:
        task_status.started()
        await (_read_batches if batches else _read_each)(sub, reader)
        reader.closed_reason = sub.closed_reason
        reader.dropped = sub.statistics().dropped


async def _stalled_reader(
    bus: pl.Bus,
    overflow: pl.Overflow,
    done: trio.Event,
    out: list[dict[str, Any]],
    *,
    task_status: trio.TaskStatus[None],
) -> None:
    """Subscribe and never read, until ``done``."""
    async with bus.subscribe(overflow=overflow) as sub:
        task_status.started()
        await done.wait()
        out.append({"dropped": sub.statistics().dropped, "closed_reason": sub.closed_reason})


async def fanout_bus(
    w: Workload = W,
    *,
    batches: bool = False,
    overflow: pl.Overflow = pl.Overflow.BLOCK,
    healthy: int | None = None,
    stalled: int = 0,
    config: pl.BusConfig | None = None,
) -> FanoutResult:
    """Workload W through the bus, read per event or with ``sub.batches()``.

    Runs are started one by one with ``await bus.start_run(body, run_id=...)``; each body does
    ``await run.emit("assistant", DELTA)`` ``w.events`` times. Runs have no session key, so
    this is pure fan-out (no chat projection). ``healthy`` counting subscribers (default
    ``w.subscribers``) and ``stalled`` never-reading ones all use ``overflow``. Each healthy
    subscriber must read exactly ``w.per_subscriber`` events with the right seq sum, no drops,
    and end with ``closed_reason == "bus closed"``.
    """
    if batches and not has_batches():
        raise RuntimeError("this version of pipeline has no Subscription.batches()")
    if healthy is None:
        healthy = w.subscribers
    if config is None:
        config = pl.BusConfig(max_runs=w.runs + 16, max_subscribers=healthy + stalled + 16)
    events = w.events
    data = DELTA

    async def body(run: pl.Run) -> None:
        emit = run.emit
        for _ in range(events):
            await emit("assistant", data)

    readers = [_Reader(w.per_subscriber) for _ in range(healthy)]
    stalled_out: list[dict[str, Any]] = []
    done = trio.Event()
    async with pl.open_bus(config) as bus, trio.open_nursery() as nursery:
        for reader in readers:
            await nursery.start(_bus_reader, bus, reader, overflow, batches)
        for _ in range(stalled):
            await nursery.start(_stalled_reader, bus, overflow, done, stalled_out)
        start = time.perf_counter()
        handles = [await bus.start_run(body, run_id=f"r{i}") for i in range(w.runs)]
        for handle in handles:
            outcome = await handle.wait()
            assert outcome.status == "ok", outcome
        await bus.aclose()
        stats = bus.statistics()
        done.set()
    for reader in readers:
        assert reader.count == w.per_subscriber, f"a subscriber read {reader.count} events"
        assert reader.seq_sum == w.seq_sum, "a subscriber saw the wrong events"
        assert reader.dropped == 0, reader
        assert reader.closed_reason == pl.BUS_CLOSED, reader
    seconds = max(cast(float, r.reached) for r in readers) - start
    extra: dict[str, Any] = {
        "events_published": stats.events_published,
        "drops": stats.drops,
        "disconnects": stats.disconnects,
        "stalled": stalled_out,
    }
    name = "bus, batches()" if batches else "bus, per event"
    return FanoutResult(name, w.per_subscriber * healthy, seconds, extra)


# ---- hand-written raw trio -------------------------------------------------------------------

#: (run id, seq, stream, data): what a raw producer sends. No validation, no enrichment.
Item = tuple[str, int, str, Any]


async def fanout_raw(w: Workload = W, *, fast: bool = True, buffer: int = 256) -> FanoutResult:
    """Workload W through hand-written trio memory channels: one channel per subscriber.

    The fan-out a user would write without the bus, at its cheapest: one producer task sends
    every run's items in turn (its start item, ``events`` items, its end item) to every
    subscriber's channel; one consumer task per subscriber counts. ``fast``: ``send_nowait`` /
    ``receive_nowait``, awaiting only when a channel is full or empty (the bus's own
    discipline); otherwise plain ``await send`` / ``async for``, a scheduler checkpoint per
    call. Channels hold ``buffer`` items, the bus's default subscriber buffer. Items are tuples
    ``(run_id, seq, stream, data)``: no validation, no enrichment, and no task per run.
    """
    per_sub = w.per_subscriber
    runs, events = w.runs, w.events
    data = DELTA
    channels = [trio.open_memory_channel[Item](buffer) for _ in range(w.subscribers)]
    sends = [send for send, _ in channels]
    readers = [_Reader(per_sub) for _ in range(w.subscribers)]

    async def consumer(receive: trio.MemoryReceiveChannel[Item], reader: _Reader) -> None:
        n = total = 0
        async with receive:
            if fast:
                while True:
                    try:
                        item = receive.receive_nowait()
                    except trio.WouldBlock:
                        try:
                            item = await receive.receive()
                        except trio.EndOfChannel:
                            break
                    except trio.EndOfChannel:
                        break
                    n += 1
                    total += item[1]
                    if n == per_sub:
                        reader.reached = time.perf_counter()
            else:
                async for item in receive:
                    n += 1
                    total += item[1]
                    if n == per_sub:
                        reader.reached = time.perf_counter()
        reader.count, reader.seq_sum = n, total

    async def produce_fast() -> None:
        for i in range(runs):
            run_id = f"r{i}"
            for seq in range(1, events + 3):
                item = (run_id, seq, "assistant" if 1 < seq < events + 2 else "lifecycle", data)
                for send in sends:
                    try:
                        send.send_nowait(item)
                    except trio.WouldBlock:
                        await send.send(item)

    async def produce_slow() -> None:
        for i in range(runs):
            run_id = f"r{i}"
            for seq in range(1, events + 3):
                item = (run_id, seq, "assistant" if 1 < seq < events + 2 else "lifecycle", data)
                for send in sends:
                    await send.send(item)

    async with trio.open_nursery() as nursery:
        for (_, receive), reader in zip(channels, readers, strict=True):
            nursery.start_soon(consumer, receive, reader)
        await trio.testing.wait_all_tasks_blocked()
        start = time.perf_counter()
        await (produce_fast() if fast else produce_slow())
        for send in sends:
            await send.aclose()
    for reader in readers:
        assert reader.count == per_sub, f"a subscriber read {reader.count} items"
        assert reader.seq_sum == w.seq_sum, "a subscriber saw the wrong items"
    seconds = max(cast(float, r.reached) for r in readers) - start
    name = "raw trio, nowait" if fast else "raw trio, send/receive"
    return FanoutResult(name, per_sub * w.subscribers, seconds)
