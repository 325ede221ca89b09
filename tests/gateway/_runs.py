"""Runs a test drives step by step, to put a reconnect or a resume exactly where it wants in a
run's stream (WebSocket resume, SSE ``Last-Event-ID``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import attrs
import trio

import pipeline as pl

__all__ = ["RACING_CAP", "Stepped", "stepped_run"]

#: The most events a run emits while it races a reconnect (a 10,000-event buffer holds them).
RACING_CAP = 5000


@attrs.define(eq=False)
class Stepped:
    """A run the test drives: ``await step(n)`` makes it emit ``n`` assistant deltas, and
    ``await step(until)`` makes it emit them one after another until ``until`` is set (either
    returns once the body has taken the order, so once the previous order is done);
    ``await end()`` ends it. ``emitted`` counts the deltas."""

    run_id: str
    _orders: trio.MemorySendChannel[int | trio.Event]
    emitted: list[int]

    async def step(self, order: int | trio.Event) -> None:
        await self._orders.send(order)

    async def end(self) -> None:
        await self._orders.aclose()


@asynccontextmanager
async def stepped_run(
    bus: pl.Bus, session: str = "alice", cap: int = RACING_CAP
) -> AsyncIterator[Stepped]:
    send, receive = trio.open_memory_channel[int | trio.Event](0)
    emitted = [0]

    async def emit(run: pl.Run) -> None:
        await run.emit("assistant", {"delta": "w "})
        emitted[0] += 1

    async def body(run: pl.Run) -> None:
        async with receive:
            async for order in receive:
                if isinstance(order, trio.Event):
                    for _ in range(cap):
                        if order.is_set():
                            break
                        await emit(run)
                else:
                    for _ in range(order):
                        await emit(run)

    handle = await bus.start_run(body, context=pl.RunContext(session_key=session))
    async with send:
        yield Stepped(handle.id, send, emitted)
