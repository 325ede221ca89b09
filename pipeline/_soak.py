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

The default, 100,000 runs, takes about 2 minutes (45 s with --no-tracemalloc)
on a 2-core machine. The full soak, a million runs, takes ten times as long:

    python -m pipeline soak --runs 1000000 --no-tracemalloc

or, from a clone of the repository, make soak.

--leaky runs the same workload through a small model of the leaking design the
bus replaces: a gateway whose per-run seq counters live in one dict keyed by
run id that is never pruned (run state otherwise dies with each run, as in the
bus).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import sys
import time
import tracemalloc
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

import attrs
import trio

from ._actor import epoch_ms
from ._bench import rss_bytes
from ._bus import Bus, open_bus
from ._config import BusConfig, RunContext
from ._event import Event
from ._run import Run

__all__ = ["add_arguments", "run"]

#: The retained-memory target: growth allowed between the sample after 1,000 runs and the last.
TARGET_BYTES = 1 << 20
#: Runs after which the baseline sample is taken.
BASELINE_RUNS = 1_000
#: The retry grace of the soak's bus: short, so that quiescence at sample points comes fast.
RETRY_GRACE = 0.05
SESSIONS = 16

# The events of one turn (module constants: the bus copies each payload it accepts).
_TEXT_1: dict[str, Any] = {"text": "Let me", "delta": "Let me"}
_TEXT_2: dict[str, Any] = {"text": "Let me look", "delta": " look"}
_TOOL_START: dict[str, Any] = {"phase": "start", "name": "search", "toolCallId": "t1"}
_TOOL_RESULT: dict[str, Any] = {
    "phase": "result",
    "name": "search",
    "toolCallId": "t1",
    "result": "3 hits",
}
_TEXT_3: dict[str, Any] = {"text": "Let me look. Found it.", "delta": ". Found it."}


class Emitter(Protocol):
    """What an agent body needs from its run (the bus's ``Run`` or the leaky model's)."""

    async def emit(self, stream: str, data: Any, *, session_key: str | None = None) -> Event: ...


async def _turn(run: Emitter, *, hang: bool = False, fail: bool = False) -> None:
    checkpoint = trio.lowlevel.checkpoint
    await run.emit("assistant", _TEXT_1)
    await run.emit("assistant", _TEXT_2)
    await checkpoint()
    await run.emit("tool", _TOOL_START)
    if hang:
        await trio.sleep_forever()
    await checkpoint()
    await run.emit("tool", _TOOL_RESULT)
    await run.emit("assistant", _TEXT_3)
    if fail:
        raise RuntimeError("model overloaded")


async def ok_turn(run: Emitter) -> None:
    await _turn(run)


async def hanging_turn(run: Emitter) -> None:
    """Waits inside its tool call until aborted."""
    await _turn(run, hang=True)


async def failing_turn(run: Emitter) -> None:
    await _turn(run, fail=True)


def kind_of(index: int) -> str:
    """The plan: per 100 runs, 2 aborted, 1 failed, 1 failed then retried, 96 plain."""
    k = index % 100
    if k in (25, 75):
        return "abort"
    if k == 10:
        return "error"
    if k == 60:
        return "retry"
    return "ok"


@attrs.define
class Plan:
    """Counts of what the plan started, to check what subscribers saw against it."""

    ok: int = 0
    error: int = 0
    retry: int = 0
    abort: int = 0

    def add(self, kind: str) -> None:
        setattr(self, kind, getattr(self, kind) + 1)

    @property
    def terminals(self) -> int:
        """Terminal lifecycle events: one per body phase (a retried run has two)."""
        return self.ok + self.error + 2 * self.retry + self.abort

    def outcomes(self) -> dict[str, int]:
        """The outcome counts the plan must end with (a retried run ends once each way)."""
        return {
            "ok": self.ok + self.retry,
            "error": self.error + self.retry,
            "aborted": self.abort,
            "timeout": 0,
        }


@attrs.define
class Drain:
    """The draining subscriber's tally."""

    events: int = 0
    terminals: int = 0
    dropped: int = 0


def _tally(drain: Drain, event: Event) -> None:
    drain.events += 1
    if event.stream == "lifecycle" and event.data.get("phase") in ("end", "error"):
        drain.terminals += 1
    elif event.stream == "dropped":
        drain.dropped += 1


@attrs.define
class Sampler:
    """Records (runs, seconds, traced, rss, blocks) at quiescent points and prints progress."""

    total: int
    every: int
    use_tracemalloc: bool
    began: float = attrs.field(factory=time.perf_counter)
    samples: list[dict[str, Any]] = attrs.field(factory=list)

    def take(self, runs: int) -> dict[str, Any]:
        gc.collect()
        elapsed = time.perf_counter() - self.began
        traced = tracemalloc.get_traced_memory()[0] if self.use_tracemalloc else None
        rss = rss_bytes()
        blocks = sys.getallocatedblocks()
        sample = {
            "runs": runs,
            "seconds": round(elapsed, 3),
            "traced": traced,
            "rss": rss,
            "blocks": blocks,
        }
        self.samples.append(sample)
        rate = runs / elapsed if elapsed else 0.0
        shown = _mib(traced) if traced is not None else "n/a"
        print(
            f"{runs:>10,} / {self.total:,} runs  {elapsed:8.1f} s  {rate:8,.0f} runs/s  "
            f"traced {shown}  RSS {_mib(rss)}  blocks {blocks:,}",
            file=sys.stderr,
            flush=True,
        )
        return sample


def _mib(n: int) -> str:
    return f"{n / (1 << 20):8.3f} MiB"


def _due(runs: int, every: int, total: int) -> bool:
    return runs in (BASELINE_RUNS, total) or (every > 0 and runs % every == 0)


async def _until(predicate: Callable[[], bool]) -> None:
    """Poll ``predicate`` (a condition on counters, which signal nothing) for up to 60 s."""
    with trio.fail_after(60):
        while not predicate():  # noqa: ASYNC110  # nothing to wait on but the counters
            await trio.sleep(0.001)


# ---- the bus ---------------------------------------------------------------------------------


async def _drain_bus(bus: Bus, drain: Drain, *, task_status: trio.TaskStatus[None]) -> None:
    async with bus.subscribe() as sub:
        task_status.started()
        async for event in sub:
            _tally(drain, event)


async def soak_bus(total: int, concurrency: int, sampler: Sampler) -> dict[str, Any]:
    config = BusConfig(max_runs=concurrency + 1024, error_retry_grace=RETRY_GRACE)
    contexts = [RunContext(session_key=f"s{k}") for k in range(SESSIONS)]
    plan = Plan()
    drain = Drain()
    slots = trio.Semaphore(concurrency)

    def limited(body: Callable[[Run], Awaitable[None]]) -> Callable[[Run], Awaitable[None]]:
        async def limited_body(run: Run) -> None:
            try:
                await body(run)
            finally:
                slots.release()

        return limited_body

    async with open_bus(config) as bus, trio.open_nursery() as nursery:
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
            if _due(runs, sampler.every, total):
                await _until(quiet)
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


# ---- the leaking design, modelled -------------------------------------------------------------


@attrs.define(eq=False)
class LeakyGateway:
    """A small, faithful model of the reference gateway's event pipeline.

    Runs are tasks whose state dies with them, as in the bus, except the seq counters: they
    live in one process-wide dict keyed by run id that nothing ever prunes (the reference's
    ``seqByRun`` map). Events go to one draining subscriber through a bounded channel.
    """

    send: trio.MemorySendChannel[Event]
    seq_by_run: dict[str, int] = attrs.field(factory=dict)
    published: int = 0

    async def publish(self, run_id: str, stream: str, data: Any, session_key: str | None) -> Event:
        seq = self.seq_by_run.get(run_id, 0) + 1
        self.seq_by_run[run_id] = seq  # never pruned: the leak
        event = Event(run_id, seq, stream, epoch_ms(), MappingProxyType(dict(data)), session_key)
        try:
            self.send.send_nowait(event)
        except trio.WouldBlock:
            await self.send.send(event)
        self.published += 1
        return event


@attrs.define(eq=False)
class LeakyRun:
    gateway: LeakyGateway
    id: str
    session_key: str | None

    async def emit(self, stream: str, data: Any, *, session_key: str | None = None) -> Event:
        return await self.gateway.publish(self.id, stream, data, session_key or self.session_key)


async def _leaky_phase(
    gateway: LeakyGateway,
    run: LeakyRun,
    body: Callable[[LeakyRun], Awaitable[None]],
    *,
    task_status: trio.TaskStatus[trio.CancelScope] = trio.TASK_STATUS_IGNORED,
) -> str:
    """One body phase with its lifecycle events; returns the outcome status."""
    await run.emit("lifecycle", {"phase": "start", "startedAt": epoch_ms()})
    status = "ok"
    error: str | None = None
    with trio.CancelScope() as scope:
        task_status.started(scope)
        try:
            await body(run)
        except Exception as exc:
            status, error = "error", str(exc)
    with trio.CancelScope(shield=True):
        if scope.cancelled_caught:
            status = "aborted"
            await run.emit("lifecycle", {"phase": "end", "aborted": True, "stopReason": "user"})
        elif status == "error":
            await run.emit("lifecycle", {"phase": "error", "error": error})
        else:
            await run.emit("lifecycle", {"phase": "end", "endedAt": epoch_ms()})
    return status


async def soak_leaky(total: int, concurrency: int, sampler: Sampler) -> dict[str, Any]:
    send, receive = trio.open_memory_channel[Event](1024)
    gateway = LeakyGateway(send)
    plan = Plan()
    drain = Drain()
    slots = trio.Semaphore(concurrency)
    outcomes = {"ok": 0, "error": 0, "aborted": 0, "timeout": 0}

    async def drainer() -> None:
        while True:
            try:
                event = receive.receive_nowait()
            except trio.WouldBlock:
                try:
                    event = await receive.receive()
                except trio.EndOfChannel:
                    return
            except trio.EndOfChannel:
                return
            _tally(drain, event)

    async def one_run(
        kind: str, run: LeakyRun, *, task_status: trio.TaskStatus[trio.CancelScope]
    ) -> None:
        try:
            if kind in ("ok", "abort"):
                body = hanging_turn if kind == "abort" else ok_turn
                outcomes[await _leaky_phase(gateway, run, body, task_status=task_status)] += 1
            else:
                status = await _leaky_phase(gateway, run, failing_turn, task_status=task_status)
                outcomes[status] += 1
                if kind == "retry":
                    # The retry resumes the run: its seq continues from the kept counter.
                    outcomes[await _leaky_phase(gateway, run, ok_turn)] += 1
        finally:
            slots.release()

    def quiet() -> bool:
        return slots.value == concurrency and receive.statistics().current_buffer_used == 0

    async with trio.open_nursery() as nursery:
        nursery.start_soon(drainer)
        sampler.take(0)
        for index in range(total):
            kind = kind_of(index)
            plan.add(kind)
            run = LeakyRun(gateway, uuid.uuid4().hex, f"s{index % SESSIONS}")
            await slots.acquire()
            scope = await nursery.start(one_run, kind, run)
            if kind == "abort":
                scope.cancel()
            runs = index + 1
            if _due(runs, sampler.every, total):
                await _until(quiet)
                sampler.take(runs)
        await send.aclose()
    assert drain.events == gateway.published, (drain, gateway.published)
    assert drain.dropped == 0, drain
    assert drain.terminals == plan.terminals, (drain, plan)
    expected = plan.outcomes()
    assert outcomes == expected, (outcomes, expected)
    assert len(gateway.seq_by_run) == total
    return {"events": drain.events, "outcomes": outcomes, "plan": attrs.asdict(plan)}


# ---- the command -----------------------------------------------------------------------------


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
    if args.tracemalloc:
        tracemalloc.start()
    sampler = Sampler(total, every, args.tracemalloc)
    soak = soak_leaky if args.leaky else soak_bus
    # The workload fails runs on purpose; each failure would be logged with its traceback.
    logging.getLogger("pipeline.run").setLevel(logging.CRITICAL)
    checked = trio.run(soak, total, args.concurrency, sampler)
    seconds = time.perf_counter() - sampler.began
    if args.tracemalloc:
        tracemalloc.stop()

    first = next(s for s in sampler.samples if s["runs"] == BASELINE_RUNS)
    last = sampler.samples[-1]
    print(f"\nretained memory, {design} (after gc.collect()):")
    for label, sample in ((f"after {BASELINE_RUNS:,} runs", first), (f"after {total:,}", last)):
        traced = _mib(sample["traced"]).strip() if sample["traced"] is not None else "n/a"
        print(
            f"  {label:<22} tracemalloc {traced:>14}  RSS {_mib(sample['rss']).strip():>14}  "
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
