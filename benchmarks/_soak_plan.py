"""What the memory soak drives and checks: the agent turns, the plan of outcomes, the draining
subscriber's tally, and the memory samples.

Shared by the bus soak and the leaking model (``benchmarks.soak_run``,
``benchmarks._leaky_model``), so both designs run exactly the same workload.
"""

from __future__ import annotations

import gc
import sys
import time
import tracemalloc
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import attrs
import trio

from ._util import rss_bytes

#: The retained-memory target: growth allowed between the sample after 1,000 runs and the last.
TARGET_BYTES = 1 << 20
#: Runs after which the baseline sample is taken.
BASELINE_RUNS = 1_000
#: Sessions the runs are spread over (each run has a session key, so the chat projection runs).
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

    async def emit(self, stream: str, data: Any, *, session_key: str | None = None) -> object: ...


class Tallied(Protocol):
    """What the drain reads of an event (the bus's ``Event`` or the leaky model's)."""

    @property
    def stream(self) -> str: ...

    @property
    def data(self) -> Mapping[str, Any]: ...


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

    def tally(self, event: Tallied) -> None:
        self.events += 1
        if event.stream == "lifecycle" and event.data.get("phase") in ("end", "error"):
            self.terminals += 1
        elif event.stream == "dropped":
            self.dropped += 1


@attrs.define
class Sampler:
    """Records (runs, seconds, traced, rss, blocks) at quiescent points and prints progress."""

    total: int
    every: int
    use_tracemalloc: bool
    began: float = attrs.field(factory=time.perf_counter)
    samples: list[dict[str, Any]] = attrs.field(factory=list)

    def due(self, runs: int) -> bool:
        return runs in (BASELINE_RUNS, self.total) or (self.every > 0 and runs % self.every == 0)

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
        shown = mib(traced) if traced is not None else "n/a"
        print(
            f"{runs:>10,} / {self.total:,} runs  {elapsed:8.1f} s  {rate:8,.0f} runs/s  "
            f"traced {shown}  RSS {mib(rss)}  blocks {blocks:,}",
            file=sys.stderr,
            flush=True,
        )
        return sample


def mib(n: int) -> str:
    return f"{n / (1 << 20):8.3f} MiB"


async def until(predicate: Callable[[], bool]) -> None:
    """Poll ``predicate`` (a condition on counters, which signal nothing) for up to 60 s."""
    with trio.fail_after(60):
        while not predicate():  # noqa: ASYNC110  # nothing to wait on but the counters
            await trio.sleep(0.001)
