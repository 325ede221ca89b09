"""Helpers for testing your own agent code against the bus (under pytest-trio or plain trio).

Typical use, with the ``agent_bus`` fixture from :mod:`pipeline.pytest_plugin`::

    async def test_my_agent_says_hello(agent_bus):
        outcome, events = await run_and_collect(agent_bus, my_agent, run_id="r1")
        assert outcome.status == "ok"
        assert texts(events) == ["Hello"]

Nothing here waits for ever on its own: wrap calls in ``trio.fail_after`` in tests that could
hang, as with any trio code.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

from ._bus import Bus
from ._config import RunContext
from ._event import DROPPED_STREAM, Event, is_terminal
from ._run import RunBody, RunOutcome
from ._subscription import Subscription

__all__ = ["collect_run", "collect_until", "drain", "is_terminal", "run_and_collect", "texts"]


async def collect_until(sub: Subscription, predicate: Callable[[Event], bool]) -> list[Event]:
    """Read events until one satisfies ``predicate`` (included) or the subscription ends."""
    events: list[Event] = []
    async for event in sub:
        events.append(event)
        if predicate(event):
            break
    return events


async def collect_run(sub: Subscription, run_id: str) -> list[Event]:
    """Read one run's events up to and including its terminal lifecycle event.

    Other runs' events are read and skipped; ``dropped`` markers are kept, so losses stay
    visible. Nothing after the terminal event is read: chat events that follow it (``final``,
    ``error``) stay queued for the next read.
    """
    events = await collect_until(sub, lambda event: event.run_id == run_id and is_terminal(event))
    return [e for e in events if e.run_id == run_id or e.stream == DROPPED_STREAM]


async def drain(sub: Subscription) -> list[Event]:
    """Read every event until the subscription ends (for example when the bus closes)."""
    return [event async for event in sub]


async def run_and_collect(
    bus: Bus,
    body: RunBody,
    *,
    run_id: str | None = None,
    context: RunContext | None = None,
) -> tuple[RunOutcome, list[Event]]:
    """Start ``body`` as a run and return its outcome and every event it published.

    That includes the chat events already queued after its terminal event (the ``final``).
    """
    if run_id is None:
        run_id = uuid.uuid4().hex
    async with bus.subscribe(run_id=run_id, buffer=max(bus.config.subscriber_buffer, 1024)) as sub:
        handle = await bus.start_run(body, run_id=run_id, context=context)
        events = await collect_run(sub, run_id)
        outcome = await handle.wait()
        # The subscription takes only this run, so whatever is queued now is its own.
        events.extend(sub.receive_nowait() for _ in range(sub.statistics().queued))
        return outcome, events


def texts(events: list[Event], stream: str = "assistant") -> list[str]:
    """The ``delta`` (else ``text``) strings of ``stream`` events, in order."""
    out: list[str] = []
    for event in events:
        if event.stream == stream:
            piece = event.data.get("delta", event.data.get("text"))
            if isinstance(piece, str):
                out.append(piece)
    return out
