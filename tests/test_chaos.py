"""Chaos: thousands of random runs, remote runs and subscribers, then the owner is cancelled.

Per seed, a bounded set of starters starts runs whose bodies do random things (finish, raise,
get aborted from outside, idle until the idle timeout, hang until shutdown, retry under the
same id during the retry grace), ingestors feed remote runs (some never end), subscribers
come and go (lossless readers, stalled readers under every overflow policy, readers that
crash, readers that leave midway), and at a random moment the task that owns the bus is
cancelled. Whatever happened, afterwards:

- every lossless subscriber saw, for every run start it saw, exactly one terminal event, and
  each run's events in seq order;
- every run's outcome exists and the counts by outcome match the terminal events;
- the bus holds no live run, no run actor is left in memory and no task is left running;
- the toolkit logged no failure.

A bug this found is reproduced on its own by ``TestAbortRacingTheEnd`` (an abort racing a
body's own terminal event gave subscribers two terminal events for one run).
"""

from __future__ import annotations

import gc
import logging
import random
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, contextmanager, suppress
from itertools import pairwise
from typing import Any

import attrs
import pytest
import trio
import trio.testing

import pipeline as pl
from pipeline._actor import RunActor
from pipeline.testing import is_terminal

SEEDS = [11, 22, 33]
STARTERS = 16
RUNS_PER_STARTER = 130
INGESTORS = 3
REMOTE_RUNS_PER_INGESTOR = 60
#: Subscribers that come and go while runs are under way (stalled, crashing, leaving).
TRANSIENT_SUBSCRIBERS = 24

IDLE = 2.0
GRACE = 1.0
BLOCK_TIMEOUT = 0.25
HEARTBEAT = IDLE / 4
#: Mean virtual time between two starts of one starter.
START_GAP = 0.03

CONFIG = pl.BusConfig(
    router_buffer=256,
    subscriber_buffer=64,
    block_timeout=BLOCK_TIMEOUT,
    run_idle_timeout=IDLE,
    error_retry_grace=GRACE,
    chat_delta_interval=0.05,
    shutdown_timeout=5.0,
)

SESSIONS = ["s0", "s1", "s2", None]
#: Big enough never to fill while read promptly, even when an abort flushes the router inbox.
LOSSLESS_BUFFER = 4 * 1024
STALLED_POLICIES = [pl.Overflow.BLOCK, pl.Overflow.DROP_OLDEST, pl.Overflow.DROP_NEWEST]
STALLED_POLICIES += [pl.Overflow.DISCONNECT]

EMITS: list[tuple[str, dict[str, Any]]] = [
    ("assistant", {"text": "Hel", "delta": "Hel"}),
    ("assistant", {"delta": "lo"}),
    ("assistant", {"text": "Hello world"}),
    ("thinking", {"delta": "hm"}),
    ("tool", {"phase": "start", "name": "search", "toolCallId": "t1"}),
    ("tool", {"phase": "update", "toolCallId": "t1"}),
    ("tool", {"phase": "result", "name": "search", "toolCallId": "t1"}),
    ("item", {"phase": "delta"}),
]

#: Body kinds and how often a starter picks each.
KINDS = {"ok": 45, "raise": 22, "abort": 15, "idle": 10, "hang": 3, "emit_outside": 5}


class ChaosError(Exception):
    pass


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("this exception cannot print itself")


class ReaderCrash(Exception):
    """Raised by a subscriber's own reader task: the reader's bug, not the bus's."""


def _group_failure() -> BaseException:
    return ChaosError("child crashed")  # raised by a child task: the body sees a group


FAILURES: list[tuple[str, Callable[[], BaseException]]] = [
    ("ValueError", lambda: ValueError("bad value")),
    ("RuntimeError", lambda: RuntimeError("model crashed")),
    ("KeyError", lambda: KeyError("missing")),
    ("ZeroDivisionError", lambda: ZeroDivisionError("division by zero")),
    ("ChaosError", lambda: ChaosError("chaos")),
    ("Unprintable", Unprintable),
    ("ExceptionGroup", _group_failure),
]


# ---- run bodies ----------------------------------------------------------------------------


@attrs.frozen
class Emit:
    stream: str
    data: dict[str, Any]
    session_key: str | None


@attrs.frozen
class Pause:
    seconds: float


@attrs.frozen
class Invalid:
    """An emit the bus must refuse (a body may not emit lifecycle events)."""


Step = Emit | Pause | Invalid


def script(rng: random.Random) -> list[Step]:
    steps: list[Step] = []
    for _ in range(rng.randint(0, 6)):
        roll = rng.random()
        if roll < 0.2:
            steps.append(Pause(rng.uniform(0, 0.2)))
        elif roll < 0.24:
            steps.append(Invalid())
        else:
            stream, data = rng.choice(EMITS)
            steps.append(Emit(stream, data, rng.choice([None, None, None, "s1", "s2"])))
    return steps


@attrs.define(eq=False)
class Chaos:
    """Everything one seed's workload did and saw."""

    rng: random.Random
    bus_gone: trio.Event = attrs.field(factory=trio.Event)
    #: The owner is cancelled some time after this many runs were started.
    threshold: int = 0
    threshold_reached: trio.Event = attrs.field(factory=trio.Event)
    starts: int = 0
    launched: list[Launched] = attrs.field(factory=list)
    #: Runs a stray abort (at a random run, at a random moment) may have hit.
    stray_ids: set[str] = attrs.field(factory=set)
    remote_modes: dict[str, str] = attrs.field(factory=dict)
    lossless: dict[str, Received] = attrs.field(factory=dict)
    #: How every subscription ended, noted just before it left its ``async with``.
    ended: list[Ended] = attrs.field(factory=list)
    transient_reads: list[list[pl.Event]] = attrs.field(factory=list)
    crashes: int = 0
    invalid_accepted: int = 0
    duplicates_sent: int = 0
    duplicates_accepted: int = 0
    gaps_sent: int = 0

    def child_rng(self) -> random.Random:
        return random.Random(self.rng.getrandbits(64))

    def note(self, role: str, overflow: pl.Overflow, sub: pl.Subscription) -> None:
        stats = sub.statistics()
        self.ended.append(Ended(role, overflow, sub.closed_reason, stats.delivered, stats.dropped))

    async def play(self, run: pl.Run, steps: list[Step]) -> None:
        for step in steps:
            if isinstance(step, Pause):
                await trio.sleep(step.seconds)
            elif isinstance(step, Invalid):
                try:
                    await run.emit("lifecycle", {"phase": "end"})
                except pl.InvalidEvent:
                    pass
                else:
                    self.invalid_accepted += 1
            else:
                await run.emit(step.stream, step.data, session_key=step.session_key)


@attrs.define(eq=False)
class Launched:
    """One body phase started by the workload, and what its outcome may be."""

    handle: pl.RunHandle
    kind: str
    #: The exception type name a ``raise`` body raises.
    failure: str | None = None
    #: The reason of an abort from outside that returned True.
    abort_reason: str | None = None
    #: An ``abort`` body that raises on its way out.
    raises_on_exit: bool = False


@attrs.frozen
class Received:
    events: list[pl.Event]
    closed_reason: str | None
    delivered: int
    dropped: int


@attrs.frozen
class Ended:
    role: str
    overflow: pl.Overflow
    closed_reason: str | None
    delivered: int
    dropped: int


def make_body(
    chaos: Chaos, rng: random.Random, kind: str
) -> tuple[Callable[[pl.Run], Awaitable[None]], str | None, bool]:
    """A body of ``kind``, the exception type name it raises, and whether it raises on exit."""
    steps = script(rng)
    if kind in ("ok", "emit_outside"):

        async def ok(run: pl.Run) -> None:
            await chaos.play(run, steps)

        return ok, None, False
    if kind == "raise":
        name, failure = rng.choice(FAILURES)

        async def fails(run: pl.Run) -> None:
            await chaos.play(run, steps)
            if name != "ExceptionGroup":
                raise failure()

            async def child() -> None:
                raise failure()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(child)

        return fails, name, False
    if kind in ("abort", "hang"):
        raises_on_exit = kind == "abort" and rng.random() < 0.15

        async def heartbeat(run: pl.Run) -> None:
            await chaos.play(run, steps)
            try:
                while True:
                    await trio.sleep(HEARTBEAT)
                    await run.emit("assistant", {"delta": "."})
            finally:
                if raises_on_exit:
                    raise RuntimeError("cleanup failed")

        return heartbeat, None, raises_on_exit
    assert kind == "idle"

    async def idles(run: pl.Run) -> None:
        await chaos.play(run, steps)
        await trio.sleep_forever()

    return idles, None, False


def random_context(rng: random.Random) -> pl.RunContext | None:
    if rng.random() < 0.1:
        return None
    return pl.RunContext(session_key=rng.choice(SESSIONS), control_ui_visible=rng.random() >= 0.1)


# ---- local runs ----------------------------------------------------------------------------


async def launch(
    chaos: Chaos,
    bus: pl.Bus,
    nursery: trio.Nursery,
    rng: random.Random,
    kind: str,
    run_id: str,
    *,
    retries: int = 1,
) -> None:
    body, failure, raises_on_exit = make_body(chaos, rng, kind)
    try:
        handle = await bus.start_run(body, run_id=run_id, context=random_context(rng))
    except pl.BusClosed:
        return
    item = Launched(handle, kind, failure, raises_on_exit=raises_on_exit)
    chaos.launched.append(item)
    if kind == "abort":
        nursery.start_soon(abort_later, bus, item, rng.uniform(0, IDLE / 2), rng.random() < 0.5)
    elif kind == "emit_outside":
        nursery.start_soon(emit_from_outside, bus, run_id)
    elif kind == "raise":
        roll = rng.random()
        if roll < 0.5 and retries:
            nursery.start_soon(retry_later, chaos, bus, nursery, chaos.child_rng(), item, retries)
        elif roll < 0.65:
            nursery.start_soon(abort_grace, bus, item)


async def abort_later(bus: pl.Bus, item: Launched, delay: float, through_bus: bool) -> None:
    await trio.sleep(delay)
    reason = f"stop {item.handle.id}"
    aborted = bus.abort(item.handle.id, reason=reason) if through_bus else item.handle.abort(reason)
    if aborted:
        item.abort_reason = reason
    else:
        # Nothing left to abort: the body has finished (an abort body only ends by shutdown).
        assert item.handle.outcome is not None


async def emit_from_outside(bus: pl.Bus, run_id: str) -> None:
    with suppress(pl.UnknownRun, pl.BusClosed):
        await bus.emit(run_id, "assistant", {"delta": " (from outside)"})


async def retry_later(
    chaos: Chaos,
    bus: pl.Bus,
    nursery: trio.Nursery,
    rng: random.Random,
    item: Launched,
    retries: int,
) -> None:
    """Start the run again under the same id, within the retry grace: it resumes."""
    outcome = await item.handle.wait()
    if outcome.status != "error":
        return
    await trio.sleep(rng.uniform(0, 0.6 * GRACE))
    kind = rng.choice(["ok", "ok", "raise", "abort"])
    await launch(chaos, bus, nursery, rng, kind, item.handle.id, retries=retries - 1)


async def abort_grace(bus: pl.Bus, item: Launched) -> None:
    """Abort a failed run during its retry grace: the grace ends early."""
    outcome = await item.handle.wait()
    if outcome.status == "error":
        bus.abort(item.handle.id, reason="no retry")


async def starter(
    chaos: Chaos, bus: pl.Bus, nursery: trio.Nursery, rng: random.Random, index: int
) -> None:
    kinds, weights = list(KINDS), list(KINDS.values())
    for number in range(RUNS_PER_STARTER):
        (kind,) = rng.choices(kinds, weights)
        await launch(chaos, bus, nursery, rng, kind, f"L{index}-{number}")
        chaos.starts += 1
        if chaos.starts >= chaos.threshold:
            chaos.threshold_reached.set()
        await trio.sleep(rng.expovariate(1 / START_GAP))


async def stray_aborter(chaos: Chaos, bus: pl.Bus, rng: random.Random) -> None:
    """Abort random recent runs at random moments, whatever they are doing."""
    while True:
        await trio.sleep(rng.expovariate(1 / 0.2))
        if chaos.launched:
            run_id = rng.choice(chaos.launched[-40:]).handle.id
            chaos.stray_ids.add(run_id)
            bus.abort(run_id, reason="stray")
            with suppress(pl.UnknownRun):
                bus.update_context(run_id, activity_source="chaos")


# ---- remote runs ---------------------------------------------------------------------------


REMOTE_MODES = {"end": 30, "error": 15, "aborted": 10, "never": 30, "abort": 15}
REMOTE_STATUS = {"end": "ok", "error": "error", "aborted": "aborted", "abort": "aborted"}


async def remote_run(chaos: Chaos, bus: pl.Bus, rng: random.Random, run_id: str) -> None:
    (mode,) = rng.choices(list(REMOTE_MODES), list(REMOTE_MODES.values()))
    session = rng.choice(SESSIONS)

    async def send(seq: int, stream: str, data: dict[str, Any]) -> bool:
        wire: dict[str, Any] = {"runId": run_id, "seq": seq, "stream": stream, "ts": 1}
        wire["data"] = data
        if session is not None:
            wire["sessionKey"] = session
        return await bus.ingest(wire)

    try:
        await send(1, "lifecycle", {"phase": "start", "startedAt": 1})
        chaos.remote_modes[run_id] = mode
        seq = 1
        for _ in range(rng.randint(0, 5)):
            await trio.sleep(rng.uniform(0, 0.3))
            roll = rng.random()
            if roll < 0.1:
                chaos.duplicates_sent += 1
                if await send(seq, "assistant", {"delta": "again"}):
                    chaos.duplicates_accepted += 1
                continue
            if roll < 0.2:
                chaos.gaps_sent += 1
                seq += rng.randint(2, 4)
            else:
                seq += 1
            stream, data = rng.choice(EMITS)
            await send(seq, stream, data)
            if roll > 0.9:
                chat = {"state": "delta", "message": {"role": "assistant", "content": []}}
                await send(seq, "chat", chat)
        await trio.sleep(rng.uniform(0, 0.3))
        if mode == "end":
            await send(seq + 1, "lifecycle", {"phase": "end", "startedAt": 1, "endedAt": 2})
            await send(seq + 1, "chat", {"state": "final"})
        elif mode == "error":
            error = {"phase": "error", "error": "remote failure", "errorKind": "ChaosError"}
            await send(seq + 1, "lifecycle", error)
        elif mode == "aborted":
            end = {"phase": "end", "aborted": True, "stopReason": "remote stop"}
            await send(seq + 1, "lifecycle", end)
        elif mode == "abort":
            bus.abort(run_id, reason="remote abort")
        # "never": the remote run never ends; the idle timeout (or shutdown) reclaims it.
    except pl.BusClosed:
        pass


async def ingestor(
    chaos: Chaos, bus: pl.Bus, nursery: trio.Nursery, rng: random.Random, index: int
) -> None:
    for number in range(REMOTE_RUNS_PER_INGESTOR):
        nursery.start_soon(remote_run, chaos, bus, chaos.child_rng(), f"R{index}-{number}")
        await trio.sleep(rng.expovariate(1 / 0.1))


# ---- subscribers ---------------------------------------------------------------------------


@attrs.frozen
class Lossless:
    name: str
    overflow: pl.Overflow
    session_key: str | None = None
    streams: tuple[str, ...] | None = None
    #: Reads with a pause every 50 events, so the router sometimes waits for it (BLOCK).
    sluggish: bool = False


LOSSLESS = [
    Lossless("all", pl.Overflow.BLOCK),
    Lossless("all drop-oldest", pl.Overflow.DROP_OLDEST),
    Lossless("s0", pl.Overflow.BLOCK, session_key="s0"),
    Lossless("s1 drop-oldest", pl.Overflow.DROP_OLDEST, session_key="s1"),
    Lossless("lifecycle drop-newest", pl.Overflow.DROP_NEWEST, streams=("lifecycle",)),
    Lossless("lifecycle+chat disconnect", pl.Overflow.DISCONNECT, streams=("lifecycle", "chat")),
    Lossless("all sluggish", pl.Overflow.BLOCK, sluggish=True),
]


async def read_lossless(
    chaos: Chaos, bus: pl.Bus, spec: Lossless, *, task_status: trio.TaskStatus[None]
) -> None:
    subscription = bus.subscribe(
        session_key=spec.session_key,
        streams=spec.streams,
        overflow=spec.overflow,
        buffer=64 if spec.sluggish else LOSSLESS_BUFFER,
    )
    async with subscription as sub:
        task_status.started()
        events: list[pl.Event] = []
        async for event in sub:
            events.append(event)
            if spec.sluggish and len(events) % 50 == 0:
                await trio.sleep(0.001)
        stats = sub.statistics()
        chaos.lossless[spec.name] = Received(
            events, sub.closed_reason, stats.delivered, stats.dropped
        )
        chaos.note("lossless", spec.overflow, sub)


async def stall(
    chaos: Chaos,
    bus: pl.Bus,
    overflow: pl.Overflow,
    session_key: str | None,
    *,
    task_status: trio.TaskStatus[None],
) -> None:
    """Subscribe and never read, until the bus is gone."""
    async with AsyncExitStack() as stack:
        try:
            subscription = bus.subscribe(session_key=session_key, overflow=overflow, buffer=8)
            sub = await stack.enter_async_context(subscription)
        except pl.BusClosed:
            task_status.started()
            return
        task_status.started()
        await chaos.bus_gone.wait()
        chaos.note("stalled", overflow, sub)


async def crash_reading(chaos: Chaos, bus: pl.Bus, rng: random.Random) -> None:
    """A reader whose own code raises inside its subscription block, in a nursery of its own."""
    limit = rng.randint(1, 60)
    overflow = rng.choice(list(pl.Overflow))

    async def reader() -> None:
        async with bus.subscribe(overflow=overflow, buffer=32) as sub:
            count = 0
            async for _ in sub:
                count += 1
                if count >= limit:
                    chaos.note("crashing", overflow, sub)
                    raise ReaderCrash(f"reader crashed after {count} events")
            chaos.note("crashing", overflow, sub)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
    except* ReaderCrash:
        chaos.crashes += 1
    except* pl.BusClosed:
        pass


async def read_then_leave(chaos: Chaos, bus: pl.Bus, rng: random.Random) -> None:
    """A reader that unsubscribes midway, after a random number of events or time."""
    limit = rng.randint(1, 200)
    overflow = rng.choice(list(pl.Overflow))
    seen: list[pl.Event] = []
    try:
        async with bus.subscribe(session_key=rng.choice(SESSIONS), overflow=overflow) as sub:
            with trio.move_on_after(rng.uniform(0, 2)):
                async for event in sub:
                    seen.append(event)
                    if len(seen) >= limit:
                        break
            chaos.note("leaving", overflow, sub)
    except pl.BusClosed:
        return
    chaos.transient_reads.append(seen)


async def spawn_subscribers(
    chaos: Chaos,
    bus: pl.Bus,
    inside: trio.Nursery,
    outside: trio.Nursery,
    rng: random.Random,
) -> None:
    for _ in range(TRANSIENT_SUBSCRIBERS):
        await trio.sleep(rng.expovariate(1 / 0.3))
        roll = rng.random()
        if roll < 0.4:
            overflow = rng.choice(STALLED_POLICIES)
            await outside.start(stall, chaos, bus, overflow, rng.choice(SESSIONS))
        elif roll < 0.7:
            inside.start_soon(crash_reading, chaos, bus, chaos.child_rng())
        else:
            inside.start_soon(read_then_leave, chaos, bus, chaos.child_rng())


async def cancel_owner(chaos: Chaos, owner: trio.CancelScope, rng: random.Random) -> None:
    await chaos.threshold_reached.wait()
    await trio.sleep(rng.uniform(0, 1.5 * IDLE))
    owner.cancel()


# ---- logs ----------------------------------------------------------------------------------


class Recorder(logging.Handler):
    """Keeps each record's logger, level and message, never its exception (and traceback)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[tuple[str, int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((record.name, record.levelno, record.getMessage()))


@contextmanager
def recorded_logs() -> Iterator[Recorder]:
    """Record the bus's logs. Failing bodies are logged with their tracebacks, which would
    keep the runs' frames (and their actors) alive in pytest's log capture, so ``pipeline.run``
    is recorded here only (not propagated); the toolkit's logs still propagate."""
    recorder = Recorder()
    run_log = logging.getLogger("pipeline.run")
    loggers = [logging.getLogger("actors"), logging.getLogger("pipeline"), run_log]
    for logger in loggers:
        logger.addHandler(recorder)
    run_log.propagate = False
    try:
        yield recorder
    finally:
        run_log.propagate = True
        for logger in loggers:
            logger.removeHandler(recorder)


# ---- checks --------------------------------------------------------------------------------


def status_of(terminal: pl.Event) -> str:
    """The outcome status a terminal lifecycle event stands for."""
    data = terminal.data
    if data["phase"] == "end":
        return "aborted" if data.get("aborted") else "ok"
    return "timeout" if data.get("errorKind") == "timeout" else "error"


Lives = dict[str, list[list[pl.Event]]]


def life_numbers(everything: list[pl.Event]) -> dict[int, int]:
    """``id(event) -> n`` for the n-th life of its run id (a fresh run under a used id starts
    at seq 1 again), from a view that holds every event. Subscribers share the bus's event
    objects, so this also places the events of filtered views, which may miss a start."""
    numbers: dict[int, int] = {}
    current: dict[str, int] = {}
    for event in everything:
        if event.stream == "dropped":
            continue
        fresh = event.stream == "lifecycle" and event.data["phase"] == "start" and event.seq == 1
        if fresh or event.run_id not in current:
            current[event.run_id] = current.get(event.run_id, -1) + 1
        numbers[id(event)] = current[event.run_id]
    return numbers


def lives(events: list[pl.Event], numbers: dict[int, int]) -> Lives:
    """Each run's events, one list per life of the run id."""
    runs: dict[str, dict[int, list[pl.Event]]] = defaultdict(dict)
    for event in events:
        if event.stream != "dropped":
            runs[event.run_id].setdefault(numbers[id(event)], []).append(event)
    return {
        run_id: [life for _, life in sorted(by_life.items())] for run_id, by_life in runs.items()
    }


def check_run_events(name: str, run_id: str, events: list[pl.Event], *, complete: bool) -> None:
    where = f"subscriber {name!r}, run {run_id!r}"
    # Every start has exactly one terminal event, before the next start (a retry).
    phases = [
        "terminal" if is_terminal(e) else e.data["phase"] for e in events if e.stream == "lifecycle"
    ]
    assert phases == ["start", "terminal"] * (len(phases) // 2), f"{where}: lifecycle {phases}"
    # Seq never goes back; agent events (not chat, not gap reports) rise strictly.
    seqs = [e.seq for e in events]
    assert seqs == sorted(seqs), f"{where}: seqs {seqs}"
    agent = [e for e in events if e.stream not in ("chat", "error")]
    rising = all(a.seq < b.seq for a, b in pairwise(agent))
    assert rising, f"{where}: {[(e.seq, e.stream, dict(e.data)) for e in events]}"
    if not complete:
        return
    if run_id.startswith("L"):
        # A local run's agent events, seen by a subscriber that takes them all: 1, 2, 3, ...
        assert [e.seq for e in agent] == list(range(1, len(agent) + 1)), f"{where}: {seqs}"
        return
    # A remote run: every seq gap is reported in band, just before the event after it.
    for a, b in pairwise(agent):
        if b.seq != a.seq + 1:
            gap = events[events.index(b) - 1]
            assert (gap.stream, gap.data["reason"]) == ("error", "seq gap"), where
            assert (gap.data["expected"], gap.data["received"]) == (a.seq + 1, b.seq), where


def check_lossless(chaos: Chaos, numbers: dict[int, int]) -> Lives:
    """Check every lossless subscriber; return the runs the unfiltered one saw."""
    assert set(chaos.lossless) == {spec.name for spec in LOSSLESS}
    for spec in LOSSLESS:
        received = chaos.lossless[spec.name]
        assert received.closed_reason == pl.BUS_CLOSED, spec.name
        real = [e for e in received.events if e.stream != "dropped"]
        assert received.delivered == len(real), spec.name
        if spec.overflow is pl.Overflow.BLOCK:
            assert received.dropped == 0, spec.name
        if spec.session_key is not None:
            assert {e.session_key for e in real} == {spec.session_key}, spec.name
        if spec.streams is not None:
            assert {e.stream for e in real} <= set(spec.streams), spec.name
        complete = spec.overflow is pl.Overflow.BLOCK and spec.session_key is None
        for run_id, run_lives in lives(received.events, numbers).items():
            for events in run_lives:
                check_run_events(spec.name, run_id, events, complete=complete)
    # The sluggish reader (which the router had to wait for) saw exactly the same events.
    assert chaos.lossless["all sluggish"].events == chaos.lossless["all"].events
    return lives(chaos.lossless["all"].events, numbers)


def allowed(item: Launched, stray: bool) -> set[tuple[str, str | None]]:
    """The (status, error) pairs the outcome of ``item`` may have."""
    shutdown = ("aborted", "shutdown")
    kind = item.kind
    pairs: set[tuple[str, str | None]] = {shutdown}
    if kind in ("ok", "emit_outside"):
        pairs.add(("ok", None))
    elif kind == "raise":
        pairs.add(("error", None))  # the error text is checked against the exception
    elif kind == "idle":
        pairs.add(("timeout", "run idle timeout"))
    elif kind == "abort":
        if item.abort_reason is not None:
            pairs.add(("aborted", item.abort_reason))
        if item.raises_on_exit:
            # Cancelled by its owner before the bus aborted it: it raised on the way out.
            pairs.add(("error", "cleanup failed"))
    if stray:
        pairs.add(("aborted", "stray"))
    return pairs


def check_outcomes(chaos: Chaos, runs: Lives) -> Counter[str]:
    """Check every handle's outcome against its kind and its terminal event."""
    terminals: dict[tuple[str, int], list[pl.Event]] = defaultdict(list)
    for run_id, run_lives in runs.items():
        for event in (e for life in run_lives for e in life if is_terminal(e)):
            terminals[run_id, event.seq].append(event)
    statuses: Counter[str] = Counter()
    for item in chaos.launched:
        outcome = item.handle.outcome
        assert outcome is not None, item.handle.id
        assert outcome.status in ("ok", "error", "aborted", "timeout")
        statuses[outcome.status] += 1
        error = None if outcome.status == "error" and item.kind == "raise" else outcome.error
        pair = (outcome.status, error)
        assert pair in allowed(item, item.handle.id in chaos.stray_ids), (item, outcome)
        if outcome.status == "error":
            assert outcome.exception is not None
            if item.kind == "raise":
                assert type(outcome.exception).__name__ == item.failure, (item, outcome)
                if item.failure == "Unprintable":
                    assert outcome.error == "<unprintable Unprintable>"
                else:
                    assert outcome.error == str(outcome.exception)
        # The terminal event every subscriber saw says the same as the outcome.
        matching = terminals.get((outcome.run_id, outcome.last_seq), [])
        assert any(status_of(t) == outcome.status for t in matching), (item, outcome, matching)
    return statuses


def check_remote_runs(chaos: Chaos, runs: Lives) -> None:
    for run_id, mode in chaos.remote_modes.items():
        (events,) = runs[run_id]
        (terminal,) = [e for e in events if is_terminal(e)]
        assert all(e.ingested for e in events)
        expected = {REMOTE_STATUS.get(mode, "timeout"), "aborted"}
        assert status_of(terminal) in expected, (run_id, mode, terminal)


def check_subscriptions(chaos: Chaos, stats: pl.BusStatistics, numbers: dict[int, int]) -> None:
    by_role: dict[str, list[Ended]] = defaultdict(list)
    for ended in chaos.ended:
        by_role[ended.role].append(ended)
    assert {e.closed_reason for e in by_role["lossless"]} == {pl.BUS_CLOSED}
    for ended in by_role["stalled"]:
        assert ended.closed_reason in (pl.SLOW_CONSUMER, pl.BUS_CLOSED), ended
    for ended in by_role["crashing"] + by_role["leaving"]:
        assert ended.closed_reason in (None, pl.SLOW_CONSUMER, pl.BUS_CLOSED), ended
    # The bus's counters are the sum over every subscription that came and went.
    assert stats.subscribers == 0
    assert stats.drops == sum(e.dropped for e in chaos.ended)
    assert stats.deliveries == sum(e.delivered for e in chaos.ended)
    assert stats.disconnects == sum(e.closed_reason == pl.SLOW_CONSUMER for e in chaos.ended)
    # Readers that left midway saw each run's events in seq order too.
    for seen in chaos.transient_reads:
        for run_id, run_lives in lives(seen, numbers).items():
            for events in run_lives:
                seqs = [e.seq for e in events]
                assert seqs == sorted(seqs), (run_id, seqs)


def check_all(chaos: Chaos, stats: pl.BusStatistics, logs: Recorder) -> None:
    # The toolkit logged no failure: a run actor, the router or the supervisor never failed.
    assert [r for r in logs.records if r[0].startswith("actors")] == []
    assert stats.failures == 0
    assert chaos.invalid_accepted == 0
    assert chaos.duplicates_accepted == 0

    numbers = life_numbers(chaos.lossless["all"].events)
    runs = check_lossless(chaos, numbers)
    statuses = check_outcomes(chaos, runs)
    check_remote_runs(chaos, runs)
    check_subscriptions(chaos, stats, numbers)

    all_events = chaos.lossless["all"].events
    all_terminals = [e for run in runs.values() for life in run for e in life if is_terminal(e)]
    by_outcome = Counter(status_of(t) for t in all_terminals)
    assert stats.live_runs == 0
    assert stats.events_published == len(all_events)
    assert stats.duplicates == chaos.duplicates_sent
    assert {k: v for k, v in stats.runs_by_outcome.items() if v} == dict(by_outcome)
    assert stats.runs_started == sum(len(run) for run in runs.values())
    local = Counter(status_of(t) for t in all_terminals if t.run_id.startswith("L"))
    # A handle lost to the owner's cancellation in the middle of start_run is the only
    # way a local body phase can lack one.
    assert statuses <= local
    # Each failed body was logged once (logger pipeline.run), and nothing else was.
    run_logs = [r for r in logs.records if r[0] == "pipeline.run"]
    assert all(r[1] == logging.ERROR and "failed" in r[2] for r in run_logs), run_logs[:3]
    assert len(run_logs) == local["error"]
    assert [r for r in logs.records if r[0] != "pipeline.run"] == []

    # The workload did what it is meant to: every path was taken.
    resumed = [
        e
        for e in all_events
        if e.stream == "lifecycle" and e.data["phase"] == "start" and e.seq > 1
    ]
    assert set(by_outcome) == {"ok", "error", "aborted", "timeout"}, by_outcome
    assert resumed
    assert chaos.crashes > 0
    assert chaos.duplicates_sent > 0
    assert chaos.gaps_sent > 0
    assert any(e.closed_reason == pl.SLOW_CONSUMER for e in chaos.ended)
    assert len(chaos.launched) >= STARTERS * RUNS_PER_STARTER * 0.7


def live_actors() -> list[RunActor]:
    gc.collect()
    return [o for o in gc.get_objects() if isinstance(o, RunActor)]


# ---- the test ------------------------------------------------------------------------------


async def run_chaos(chaos: Chaos) -> pl.BusStatistics:
    rng = chaos.rng
    total = STARTERS * RUNS_PER_STARTER
    chaos.threshold = rng.randint(int(total * 0.7), total)
    async with trio.open_nursery() as outside:  # lossless and stalled readers outlive the bus
        with trio.CancelScope() as owner:
            async with pl.open_bus(CONFIG) as bus:
                for spec in LOSSLESS:
                    await outside.start(read_lossless, chaos, bus, spec)
                for overflow in STALLED_POLICIES:
                    await outside.start(stall, chaos, bus, overflow, None)
                async with trio.open_nursery() as inside:
                    inside.start_soon(cancel_owner, chaos, owner, chaos.child_rng())
                    for index in range(STARTERS):
                        inside.start_soon(starter, chaos, bus, inside, chaos.child_rng(), index)
                    for index in range(INGESTORS):
                        inside.start_soon(ingestor, chaos, bus, inside, chaos.child_rng(), index)
                    inside.start_soon(stray_aborter, chaos, bus, chaos.child_rng())
                    inside.start_soon(
                        spawn_subscribers, chaos, bus, inside, outside, chaos.child_rng()
                    )
        assert owner.cancelled_caught
        chaos.bus_gone.set()
    return bus.statistics()


class TestChaos:
    @pytest.mark.parametrize("seed", SEEDS)
    async def test_every_run_ends_once_for_every_subscriber_and_leaves_nothing_behind(
        self, autojump_clock: trio.testing.MockClock, seed: int
    ) -> None:
        tasks_before = trio.lowlevel.current_statistics().tasks_living
        chaos = Chaos(random.Random(seed))
        with recorded_logs() as logs, trio.fail_after(600):  # virtual seconds
            stats = await run_chaos(chaos)
        check_all(chaos, stats, logs)
        assert trio.lowlevel.current_statistics().tasks_living == tasks_before
        # Outcomes of failed bodies keep their exceptions, whose tracebacks hold the bodies'
        # frames and so their runs: let them go before looking for leftover actors.
        chaos.launched.clear()
        assert live_actors() == []


# ---- a bug the chaos found -----------------------------------------------------------------

#: Trio runs each batch of woken tasks in order or reversed, at random, so an attempt meets
#: the bug about 7 times in 10 (measured: 142 of 200); all 20 missing it is about 1e-11.
ATTEMPTS = 20


async def abort_while_the_end_waits_for_room() -> tuple[list[pl.Event], pl.RunOutcome]:
    """Abort run ``r`` after its body has returned, while its end event waits for router room.

    Returns the terminal events an unfiltered subscriber saw for ``r``, and ``r``'s outcome.
    """
    finish, fill = trio.Event(), trio.Event()

    async def returns(run: pl.Run) -> None:
        await finish.wait()

    async def fills_the_router(run: pl.Run) -> None:
        await fill.wait()
        with suppress(trio.WouldBlock):
            while True:
                run.emit_nowait("assistant", {"delta": "x"})
        await trio.sleep_forever()

    # No clock jumps here: the router must wait for the stuck subscriber as long as it takes.
    config = pl.BusConfig(router_buffer=4, block_timeout=3600)
    async with pl.open_bus(config) as bus:
        async with bus.subscribe(buffer=100) as everything:
            async with bus.subscribe(buffer=1) as stuck:
                handle = await bus.start_run(returns, run_id="r")
                await bus.start_run(fills_the_router, run_id="f")
                # stuck holds r's start; the router waits there with f's start in hand.
                await trio.testing.wait_all_tasks_blocked()
                fill.set()  # the router's inbox fills up
                await trio.testing.wait_all_tasks_blocked()
                finish.set()  # r's body returns; its end event waits for room in the router
                await trio.testing.wait_all_tasks_blocked()
                queued = everything.statistics().queued
                stuck.receive_nowait()  # the router goes on and takes what its inbox holds
                while everything.statistics().queued == queued:
                    await trio.lowlevel.checkpoint()
                # The router has room again; r's ending task is woken but may not have run.
                bus.abort("r")
                outcome = await handle.wait()
            await bus.aclose()
            events = [e async for e in everything]
    return [e for e in events if e.run_id == "r" and is_terminal(e)], outcome


class TestAbortRacingTheEnd:
    """Found by the chaos test: an abort racing a body's own end gave two terminal events."""

    async def test_an_abort_racing_a_finished_bodys_end_event_adds_no_second_terminal_event(
        self,
    ) -> None:
        with trio.fail_after(30):
            for _ in range(ATTEMPTS):
                terminals, outcome = await abort_while_the_end_waits_for_room()
                # Seen when the race is lost: ["aborted", "ok"], with outcome "ok".
                assert [status_of(t) for t in terminals] == [outcome.status]
