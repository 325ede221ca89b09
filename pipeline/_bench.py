"""Quick in-process benchmarks, printed as one table.

Fan-out against raw trio, the memory of a live idle run, abort latency, and
stalled subscribers. Every benchmark checks that each subscriber received
exactly what it should before it reports a figure.

The full suite (python -m benchmarks, in a clone of the repository) reuses
these measurements and adds the asyncio peers, more rounds and the memory soak.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import attrs
import trio

from actors import Overflow

from ._bench_costs import DELTA, abort_latency, idle_cost
from ._bus import Bus, open_bus
from ._config import BusConfig, RunContext
from ._run import Run

__all__ = [
    "FanoutResult",
    "Workload",
    "abort_latency",
    "add_arguments",
    "fanout_bus",
    "fanout_raw",
    "fanout_rounds",
    "format_table",
    "idle_cost",
    "median_rate",
    "rss_bytes",
    "run",
    "stalled_subscriber",
]


@attrs.frozen
class Workload:
    """Workload W: ``runs`` runs of ``events`` agent events, fanned out to ``subscribers``.

    Each run also carries a start and an end event (the bus publishes them as lifecycle
    events; the raw baselines send them too), so each subscriber receives
    ``runs * (events + 2)`` items.
    """

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


def rss_bytes() -> int:
    """Resident set size of this process, from ``/proc/self/statm`` (0 where unavailable)."""
    try:
        with open("/proc/self/statm") as statm:
            resident = int(statm.read().split()[1])
    except (OSError, IndexError, ValueError):
        return 0
    return resident * os.sysconf("SC_PAGE_SIZE")


# ---- fan-out: the bus ------------------------------------------------------------------------


async def _bus_consumer(
    bus: Bus,
    counts: list[tuple[int, int, str | None, int, float]],
    overflow: Overflow,
    *,
    task_status: trio.TaskStatus[None],
) -> None:
    """Read every event until the bus closes; record (count, seq sum, closed reason, drops,
    time of the end)."""
    n = total = 0
    async with bus.subscribe(overflow=overflow) as sub:
        task_status.started()
        async for event in sub:
            n += 1
            total += event.seq
        ended = time.perf_counter()
        counts.append((n, total, sub.closed_reason, sub.statistics().dropped, ended))


async def _stalled_consumer(
    bus: Bus,
    overflow: Overflow,
    done: trio.Event,
    out: list[Any],
    *,
    task_status: trio.TaskStatus[None],
) -> None:
    """Subscribe and never read, until ``done``."""
    async with bus.subscribe(overflow=overflow) as sub:
        task_status.started()
        await done.wait()
        stats = sub.statistics()
        out.append({"dropped": stats.dropped, "closed_reason": sub.closed_reason})


async def fanout_bus(
    w: Workload = W,
    *,
    session_keys: bool = False,
    overflow: Overflow = Overflow.BLOCK,
    healthy: int | None = None,
    stalled: int = 0,
    config: BusConfig | None = None,
) -> FanoutResult:
    """Workload W through the bus; the clock stops when every healthy subscriber has read
    every event and seen the end of its subscription.

    Each run is started with ``await bus.start_run(...)`` (so at most one run starts at a
    time, and a body runs until the router's inbox is full); runs have no session key unless
    ``session_keys`` (then the chat projection runs and adds ``chat`` events). ``healthy``
    counting subscribers (default ``w.subscribers``) and ``stalled`` never-reading ones all
    use ``overflow``.
    """
    if healthy is None:
        healthy = w.subscribers
    if config is None:
        config = BusConfig(max_runs=max(w.runs, 1) + 16)
    events = w.events
    data = DELTA

    async def body(run: Run) -> None:
        emit = run.emit
        for _ in range(events):
            await emit("assistant", data)

    counts: list[tuple[int, int, str | None, int, float]] = []
    stalled_out: list[Any] = []
    done = trio.Event()
    async with open_bus(config) as bus, trio.open_nursery() as nursery:
        for _ in range(healthy):
            await nursery.start(_bus_consumer, bus, counts, overflow)
        for _ in range(stalled):
            await nursery.start(_stalled_consumer, bus, overflow, done, stalled_out)
        contexts = [
            RunContext(session_key=f"s{i % 8}") if session_keys else None for i in range(w.runs)
        ]
        start = time.perf_counter()
        handles = [
            await bus.start_run(body, run_id=f"r{i}", context=contexts[i]) for i in range(w.runs)
        ]
        for handle in handles:
            outcome = await handle.wait()
            assert outcome.status == "ok", outcome
        published = bus.statistics().events_published
        await bus.aclose()
        stats = bus.statistics()
        done.set()
    assert len(counts) == healthy
    seconds = max(c[4] for c in counts) - start
    expected = published if session_keys else w.per_subscriber
    for n, total, reason, dropped, _ in counts:
        assert n == expected, f"a subscriber read {n} events, expected {expected}"
        assert dropped == 0, dropped
        assert reason == "bus closed", reason
        if not session_keys:
            assert total == w.seq_sum, "a subscriber saw the wrong events"
    name = "bus" + (" (session keys)" if session_keys else "")
    extra: dict[str, Any] = {
        "events_published": published,
        "drops": stats.drops,
        "disconnects": stats.disconnects,
        "stalled": stalled_out,
    }
    return FanoutResult(name, expected * healthy, seconds, extra)


# ---- fan-out: hand-written raw trio ----------------------------------------------------------

Item = tuple[str, int, str, Any]


async def fanout_raw(w: Workload = W, *, fast: bool = True) -> FanoutResult:
    """Workload W through hand-written trio memory channels, structured like the bus.

    ``fast``: send_nowait / receive_nowait, awaiting only when a channel is full or empty (the
    bus's own discipline). Otherwise plain ``await send`` / ``async for``, which always
    yields to the scheduler. Producers are started one by one with ``nursery.start`` (as
    ``start_run`` does) and send a start item, ``events`` items and an end item each into one
    router channel (buffer 1024); one router task copies each item to 8 subscriber channels
    (buffer 256); 8 consumer tasks count. Items are tuples: no validation, no enrichment.
    """
    per_sub = w.per_subscriber
    events = w.events
    data = DELTA
    inbox_send, inbox_recv = trio.open_memory_channel[Item](1024)
    channels = [trio.open_memory_channel[Item](256) for _ in range(w.subscribers)]
    counts: list[tuple[int, int]] = []

    async def consumer(receive: trio.MemoryReceiveChannel[Item]) -> None:
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
            else:
                async for item in receive:
                    n += 1
                    total += item[1]
        counts.append((n, total))

    async def router() -> None:
        sends = [send for send, _ in channels]
        async with inbox_recv:
            if fast:
                while True:
                    try:
                        item = inbox_recv.receive_nowait()
                    except trio.WouldBlock:
                        try:
                            item = await inbox_recv.receive()
                        except trio.EndOfChannel:
                            break
                    except trio.EndOfChannel:
                        break
                    for send in sends:
                        try:
                            send.send_nowait(item)
                        except trio.WouldBlock:
                            await send.send(item)
            else:
                async for item in inbox_recv:
                    for send in sends:
                        await send.send(item)
        for send in sends:
            await send.aclose()

    async def producer(run_id: str, *, task_status: trio.TaskStatus[None]) -> None:
        send = inbox_send
        put: Callable[[Item], Awaitable[None]]
        if fast:

            async def put_nowait(item: Item) -> None:
                try:
                    send.send_nowait(item)
                except trio.WouldBlock:
                    await send.send(item)

            put = put_nowait
        else:
            put = send.send
        await put((run_id, 1, "lifecycle", data))
        task_status.started()
        seq = 1
        for _ in range(events):
            seq += 1
            await put((run_id, seq, "assistant", data))
        await put((run_id, seq + 1, "lifecycle", data))

    async with trio.open_nursery() as nursery:
        for _, receive in channels:
            nursery.start_soon(consumer, receive)
        nursery.start_soon(router)
        await trio.lowlevel.checkpoint()
        start = time.perf_counter()
        async with trio.open_nursery() as producers:
            for i in range(w.runs):
                await producers.start(producer, f"r{i}")
        await inbox_send.aclose()
    seconds = time.perf_counter() - start
    assert len(counts) == w.subscribers
    for n, total in counts:
        assert n == per_sub, f"a subscriber read {n} items, expected {per_sub}"
        assert total == w.seq_sum, "a subscriber saw the wrong items"
    return FanoutResult(
        "raw trio, nowait" if fast else "raw trio, send/receive", per_sub * w.subscribers, seconds
    )


def _round(fn: Callable[[], Any]) -> FanoutResult:
    gc.collect()
    result: FanoutResult = trio.run(fn)
    return result


def fanout_rounds(
    rounds: int,
    w: Workload = W,
    *,
    session_keys: bool = True,
    slow_rounds: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, list[FanoutResult]]:
    """Interleaved rounds of the bus, raw-fast and raw-slow fan-out (each in a fresh
    ``trio.run``); the bus with session keys too if ``session_keys``. The raw-slow baseline
    takes about ten times longer than the others, so it may run fewer rounds."""
    if slow_rounds is None:
        slow_rounds = rounds
    variants: dict[str, Callable[[], Any]] = {
        "bus": lambda: fanout_bus(w),
        "raw_fast": lambda: fanout_raw(w, fast=True),
        "raw_slow": lambda: fanout_raw(w, fast=False),
    }
    if session_keys:
        variants["bus_session"] = lambda: fanout_bus(w, session_keys=True)
    results: dict[str, list[FanoutResult]] = {name: [] for name in variants}
    for i in range(rounds):
        for name, fn in variants.items():
            if name == "raw_slow" and i >= slow_rounds:
                continue
            result = _round(fn)
            results[name].append(result)
            if progress is not None:
                progress(
                    f"  round {i + 1}/{rounds} {result.name:<24} {result.rate:>12,.0f} deliveries/s"
                )
    return {name: rs for name, rs in results.items() if rs}


def median_rate(results: Sequence[FanoutResult]) -> float:
    return statistics.median(r.rate for r in results)


# ---- stalled subscriber ----------------------------------------------------------------------


def stalled_subscriber(
    rounds: int,
    w: Workload,
    *,
    block_timeout: float = 5.0,
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """For each overflow policy: the throughput of 7 healthy subscribers without and with an
    8th that subscribes and never reads (every subscriber uses the policy). Median of
    ``rounds`` interleaved rounds each."""
    healthy = w.subscribers - 1
    config = BusConfig(max_runs=w.runs + 16, block_timeout=block_timeout)
    rows: list[dict[str, Any]] = []
    for policy in Overflow:
        without: list[FanoutResult] = []
        with_: list[FanoutResult] = []
        for _ in range(rounds):
            for stalled, out in ((0, without), (1, with_)):

                async def one(policy: Overflow = policy, stalled: int = stalled) -> FanoutResult:
                    return await fanout_bus(
                        w, overflow=policy, healthy=healthy, stalled=stalled, config=config
                    )

                out.append(_round(one))
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


# ---- the table -------------------------------------------------------------------------------


def format_table(rows: Sequence[tuple[str, str, str]]) -> str:
    """Three left/right/left aligned columns: what, figure, note."""
    width0 = max(len(r[0]) for r in rows)
    width1 = max(len(r[1]) for r in rows)
    lines = []
    for what, figure, note in rows:
        if not figure and not note:
            lines.append(f"{what}")
        else:
            lines.append(f"{what:<{width0}}  {figure:>{width1}}  {note}".rstrip())
    return "\n".join(lines)


def fanout_table_rows(
    results: dict[str, list[FanoutResult]], peers: dict[str, dict[str, Any]] | None = None
) -> list[tuple[str, str, str]]:
    """Rows for the fan-out part of a table: median deliveries/s and the ratio to raw-fast."""
    fast = median_rate(results["raw_fast"])
    labels = {
        "bus": "bus",
        "bus_session": "bus, session keys (chat projection)",
        "raw_fast": "raw trio, send_nowait/receive_nowait",
        "raw_slow": "raw trio, send/receive",
    }
    rows: list[tuple[str, str, str]] = []
    for key in ("bus", "bus_session", "raw_fast", "raw_slow"):
        if key in results:
            rate = median_rate(results[key])
            rows.append(
                (
                    f"  {labels[key]}",
                    f"{rate:,.0f}/s",
                    f"{rate / fast:.2f}x raw fast, median of {len(results[key])}",
                )
            )
    for name, peer in (peers or {}).items():
        if "error" in peer:
            rows.append((f"  {name}", "n/a", str(peer["error"])))
            continue
        rate = peer["median_rate"]
        rows.append(
            (
                f"  {name}",
                f"{rate:,.0f}/s",
                f"{rate / fast:.2f}x raw fast, median of {peer['rounds']}, {peer['workload']}",
            )
        )
    return rows


# ---- the command -----------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--rounds", type=int, default=3, help="fan-out rounds per variant (default 3)"
    )
    parser.add_argument(
        "--runs", type=int, default=W.runs, help=f"runs in the fan-out workload (default {W.runs})"
    )


def run(args: argparse.Namespace) -> int:
    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    w = Workload(runs=args.runs)
    began = time.perf_counter()
    say(f"fan-out, workload W ({w.runs} runs x {w.events} events, {w.subscribers} subscribers)")
    fan = fanout_rounds(args.rounds, w, slow_rounds=1, progress=say)
    say("idle runs")
    idle = trio.run(idle_cost, 10_000)
    say("abort latency")
    abort = trio.run(lambda: abort_latency(1_000, 300, period=0.1))
    say("stalled subscriber (block_timeout 0.5 s)")
    stalled_w = Workload(runs=max(1, w.runs // 4), events=w.events)
    stalled = stalled_subscriber(1, stalled_w, block_timeout=0.5, progress=say)

    rows: list[tuple[str, str, str]] = [
        (f"Fan-out, W = {w.runs} runs x {w.events} events, {w.subscribers} subscribers", "", "")
    ]
    rows += fanout_table_rows(fan)
    rows.append(("Live idle run (10,000 parked)", "", ""))
    rows.append(
        (
            "  memory per run",
            f"{idle['bytes_per_run']:,.0f} B",
            f"target <= 4,096 B; a bare trio task: {idle['bare_task_bytes']:,.0f} B",
        )
    )
    rows.append((f"Abort latency ({abort['live']} live runs, {abort['samples']} aborts)", "", ""))
    rows.append(
        (
            "  readable p50 / p99",
            f"{abort['readable_p50_ms']:.3f} / {abort['readable_p99_ms']:.3f} ms",
            f"in the subscription; target p99 < 1 ms; runs emit every {abort['period']} s",
        )
    )
    rows.append(
        (
            "  seen p50 / p99",
            f"{abort['p50_ms']:.3f} / {abort['p99_ms']:.3f} ms",
            "read by the subscriber task (adds its scheduling and GC)",
        )
    )
    rows.append(
        (
            f"Stalled 8th subscriber ({stalled_w.runs} runs x {stalled_w.events} events, "
            "7 healthy)",
            "",
            "",
        )
    )
    for row in stalled:
        rows.append(
            (
                f"  {row['policy']}",
                f"{-row['cost']:+.1%}",
                f"{row['without_stalled']:,.0f}/s -> {row['with_stalled']:,.0f}/s",
            )
        )
    print(format_table(rows))
    say(f"({time.perf_counter() - began:.1f} s)")
    return 0
