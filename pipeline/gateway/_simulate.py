"""Simulated agents for ``serve --simulate``: live traffic for a newcomer to watch and abort.

:func:`simulated_agent` is an :data:`~._config.Agent`: it thinks, streams an answer word by
word, calls a tool half way, and takes about four seconds unless aborted (GATEWAY 1.1: at
least three, so a client can watch it and press Abort). :func:`simulate_traffic` starts one
such run every couple of seconds in the demo's sessions, at most ``max_live`` at once.
"""

from __future__ import annotations

import random
import uuid

import trio

from .._bus import Bus
from .._config import RunContext
from .._demo import SESSIONS, WORDS
from .._errors import PipelineError
from .._run import Run

__all__ = ["simulate_traffic", "simulated_agent"]

#: Seconds between the words of a simulated answer: 32 words take about four seconds.
_WORD_PAUSE = 0.125
_ANSWER_WORDS = 32


async def simulated_agent(run: Run, message: str) -> None:
    """Answer ``message`` slowly: thinking, text, one tool call, more text."""
    rng = random.Random(run.id)
    await run.emit("thinking", {"delta": f"The user said {message[:80]!r}. "})
    await run.emit("thinking", {"delta": "Let me look that up."})
    for index in range(_ANSWER_WORDS):
        if index == _ANSWER_WORDS // 2:
            call = {"name": "search", "toolCallId": f"call-{run.id[:8]}"}
            await run.emit("tool", {"phase": "start", **call, "args": {"query": message[:80]}})
            await trio.sleep(0.3)
            await run.emit("tool", {"phase": "result", **call, "result": "3 hits"})
        await run.emit("assistant", {"delta": rng.choice(WORDS) + " "})
        await trio.sleep(_WORD_PAUSE)


async def simulate_traffic(bus: Bus, *, every: float = 2.0, max_live: int = 6) -> None:
    """Start a simulated run in a random demo session every ``every`` seconds, forever."""
    rng = random.Random()
    live = 0

    async def one(session: str) -> None:
        nonlocal live
        live += 1
        try:

            async def body(run: Run) -> None:
                await simulated_agent(run, "tell me about the bus")

            context = RunContext(session_key=session)
            handle = await bus.start_run(body, run_id=uuid.uuid4().hex, context=context)
            await handle.wait()
        except PipelineError:
            pass  # too many runs, or the bus is closing: skip this one
        finally:
            live -= 1

    async with trio.open_nursery() as nursery:
        while True:
            if live < max_live:
                nursery.start_soon(one, rng.choice(SESSIONS))
            await trio.sleep(every * (0.5 + rng.random()))
