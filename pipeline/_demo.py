"""A simulated agent gateway on the bus: many runs, a live view, a summary.

Several sessions start runs that think, stream assistant text and call tools;
some fail, some stall and are stopped by their user. A UI client follows one
session, a logger counts everything, and a slow mobile client on a drop policy
shows that one slow reader costs nobody else anything.

Every run's script (its words, whether it calls a tool, how it ends) is drawn
from the seed before the run starts, so the same --seed gives the same runs and
the same outcome counts, at any --pace.
"""

from __future__ import annotations

import argparse
import logging
import random
import time
from collections import Counter
from typing import Any

import attrs
import trio

from actors import Overflow

from ._bus import Bus, open_bus
from ._config import BusConfig, RunContext
from ._event import Event
from ._run import Run
from ._subscription import Subscription

__all__ = ["add_arguments", "run"]

SESSIONS = ["alice", "bob", "carol", "dave", "erin", "frank"]
WORDS = [
    "the",
    "bus",
    "keeps",
    "every",
    "run",
    "in",
    "its",
    "own",
    "task",
    "so",
    "nothing",
    "outlives",
    "the",
    "run",
    "and",
    "no",
    "map",
    "grows",
    "without",
    "bound",
    "while",
    "subscribers",
    "read",
    "at",
    "their",
    "own",
    "pace",
]
#: How the runs end, with their relative weights: "fail" runs raise, "abort" runs stall until
#: their user presses stop.
FATES = {"ok": 80, "fail": 10, "abort": 10}


@attrs.frozen
class Script:
    """What one simulated run does, drawn up front from the seed."""

    index: int
    session: str
    words: tuple[str, ...]
    use_tool: bool
    #: ``"ok"``, ``"fail"`` or ``"abort"`` (see :data:`FATES`).
    fate: str
    #: The assistant delta (counting from 0) after which a "fail" run raises and an "abort"
    #: run stalls.
    stop_at: int
    #: The pause before the next run starts, as a fraction of 10 ms (times ``--pace``).
    gap: float

    @property
    def run_id(self) -> str:
        return f"{self.index:03d}-{self.session}"


def draw_scripts(runs: int, seed: int) -> list[Script]:
    """The scripts of ``runs`` runs: a pure function of ``seed``."""
    rng = random.Random(seed)
    scripts = []
    for index in range(runs):
        words = tuple(rng.sample(WORDS, k=rng.randint(6, 14)))
        scripts.append(
            Script(
                index=index,
                session=SESSIONS[index % len(SESSIONS)],
                words=words,
                use_tool=rng.random() < 0.5,
                fate=rng.choices(list(FATES), weights=list(FATES.values()))[0],
                stop_at=rng.randrange(len(words) - 1),
                gap=rng.random(),
            )
        )
    return scripts


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs", type=int, default=300, help="runs to simulate (default 300)")
    parser.add_argument(
        "--seed",
        type=int,
        default=7,
        help="random seed; the same seed gives the same runs and outcomes (default 7)",
    )
    parser.add_argument(
        "--pace",
        type=float,
        default=1.0,
        help="scale of the simulated model latency; 0 runs flat out (default 1.0)",
    )
    parser.add_argument(
        "--watch", default="alice", help="the session whose live view is printed (default alice)"
    )


def run(args: argparse.Namespace) -> int:
    if args.runs < 1 or args.pace < 0:
        raise SystemExit("--runs must be >= 1 and --pace >= 0")
    # The workload fails runs on purpose; each failure would be logged with its traceback.
    logging.getLogger("pipeline.run").setLevel(logging.CRITICAL)
    trio.run(_main, args.runs, args.seed, args.pace, args.watch)
    return 0


@attrs.define
class _Tally:
    """What one demo subscriber read."""

    name: str
    events: int = 0
    markers: int = 0
    closed_reason: str | None = None


async def _main(runs: int, seed: int, pace: float, watch: str) -> None:
    scripts = draw_scripts(runs, seed)
    started = time.perf_counter()
    config = BusConfig(max_runs=runs + 10, error_retry_grace=0.2 * pace)
    tallies = [_Tally(f"ui ({watch})"), _Tally("logger (all)"), _Tally("slow mobile (bob)")]
    print(f"Simulating {runs} runs over {len(SESSIONS)} sessions; live view of {watch!r}:\n")
    async with trio.open_nursery() as readers:
        async with open_bus(config) as bus:
            await _attach(readers, bus.subscribe(session_key=watch), tallies[0], _LiveView())
            await _attach(readers, bus.subscribe(buffer=1024), tallies[1], None)
            await _attach(
                readers,
                bus.subscribe(overflow=Overflow.DROP_OLDEST, buffer=64, session_key="bob"),
                tallies[2],
                _slow_reader(pace),
            )
            async with trio.open_nursery() as gateway:
                for script in scripts:
                    gateway.start_soon(_one_run, bus, script, seed, pace)
                    await trio.sleep(0.01 * pace * script.gap)
        # Closed: runs still in their retry grace were ended, every subscription drained.
        stats = bus.statistics()
    _summary(stats, tallies, time.perf_counter() - started)


async def _attach(
    nursery: trio.Nursery, subscription: Any, tally: _Tally, on_event: Any
) -> Subscription:
    """Open ``subscription`` and read it in ``nursery`` until the bus closes."""
    ready: trio.MemorySendChannel[Subscription]
    ready, wait_ready = trio.open_memory_channel[Subscription](1)

    async def reader() -> None:
        async with subscription as sub:
            ready.send_nowait(sub)
            async for event in sub:
                if event.stream == "dropped":
                    tally.markers += event.data["count"]
                else:
                    tally.events += 1
                if on_event is not None:
                    await on_event(event)
            tally.closed_reason = sub.closed_reason

    nursery.start_soon(reader)
    return await wait_ready.receive()


def _slow_reader(pace: float) -> Any:
    async def on_event(event: Event) -> None:
        await trio.sleep(0.002 * pace)

    return on_event


@attrs.define
class _LiveView:
    """Prints the first few runs of the watched session as a chat UI would show them."""

    limit: int = 4
    shown: set[str] = attrs.field(factory=set)

    async def __call__(self, event: Event) -> None:
        if event.run_id not in self.shown:
            if len(self.shown) >= self.limit or event.stream != "lifecycle":
                return
            self.shown.add(event.run_id)
        run = event.run_id[:6]
        data = event.data
        if event.stream == "lifecycle":
            phase = data["phase"]
            reason = data.get("stopReason") or data.get("error")
            detail = f" ({reason})" if reason else ""
            print(f"  [{run}] #{event.seq:<3} lifecycle {phase}{detail}")
        elif event.stream == "tool" and data.get("phase") in ("start", "result"):
            print(f"  [{run}] #{event.seq:<3} tool {data['name']} {data['phase']}")
        elif event.stream == "chat" and data["state"] != "delta":
            text = data.get("errorMessage") or "".join(
                block.get("text", "") for block in data.get("message", {}).get("content", [])
            )
            print(f"  [{run}] #{event.seq:<3} chat {data['state']}: {_clip(text)}")


def _clip(text: str, width: int = 60) -> str:
    return repr(text if len(text) <= width else text[: width - 1] + "…")


async def _one_run(bus: Bus, script: Script, seed: int, pace: float) -> None:
    # The run's own generator: its latencies do not depend on how tasks interleave.
    rng = random.Random(f"{seed}:{script.index}")
    words = script.words

    async def body(run: Run) -> None:
        await run.emit("thinking", {"delta": "Let me think. "})
        for i, word in enumerate(words):
            await run.emit("assistant", {"delta": word + " "})
            if i == script.stop_at and script.fate == "fail":
                raise RuntimeError("model overloaded")
            if i == script.stop_at and script.fate == "abort":
                await trio.sleep_forever()  # the model stalls; its user presses stop
            await trio.sleep(0.03 * pace * rng.random())
            if script.use_tool and i == len(words) // 2:
                call = {"name": "search", "toolCallId": f"t{script.index}"}
                await run.emit("tool", {"phase": "start", **call})
                await run.emit("tool", {"phase": "update", "progress": 0.5, **call})
                await trio.sleep(0.1 * pace)
                await run.emit("tool", {"phase": "result", **call, "result": "3 hits"})

    context = RunContext(session_key=script.session)
    if script.fate != "abort":
        handle = await bus.start_run(body, run_id=script.run_id, context=context)
    else:
        # The user watches the answer come in and, once it stalls after the script's
        # stop_at-th delta, presses stop: from outside the body, as a UI would.
        async with bus.subscribe(run_id=script.run_id, streams=["assistant"]) as watch:
            handle = await bus.start_run(body, run_id=script.run_id, context=context)
            seen = 0
            async for _ in watch:
                seen += 1
                if seen > script.stop_at:
                    break
        await trio.sleep(0.1 * pace * rng.random())
        handle.abort(reason="user pressed stop")
    await handle.wait()


def _summary(stats: Any, tallies: list[_Tally], seconds: float) -> None:
    outcomes = Counter(stats.runs_by_outcome)
    rows = [
        ("runs started", stats.runs_started),
        *((f"  ended {status}", count) for status, count in outcomes.items()),
        ("events published", stats.events_published),
        ("deliveries", stats.deliveries),
        ("drops (counted, reported in band)", stats.drops),
        ("slow consumers disconnected", stats.disconnects),
        ("live runs at end", stats.live_runs),
        ("wall time", f"{seconds:.2f} s"),
    ]
    print("\nSummary")
    print("-" * 46)
    for label, value in rows:
        print(f"{label:<36}{value:>10}")
    print("\nSubscribers")
    print(f"{'name':<18}{'events':>10}{'dropped':>10}  ended")
    for tally in tallies:
        print(f"{tally.name:<18}{tally.events:>10}{tally.markers:>10}  {tally.closed_reason}")
