"""A small, faithful model of the leaking design the bus replaces, for the memory soak.

Runs are trio tasks whose state dies with them, as in the bus, except the seq counters: they
live in one dict keyed by run id that nothing ever prunes (the reference gateway's
``seqByRun`` map). Events go to one draining subscriber through a bounded channel. The model
has no chat projection, so it publishes fewer events per run than the bus.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import Any

import attrs
import trio

from ._soak_plan import (
    SESSIONS,
    Drain,
    Plan,
    Sampler,
    failing_turn,
    hanging_turn,
    kind_of,
    ok_turn,
    until,
)

__all__ = ["soak_leaky"]


def _epoch_ms() -> int:
    return time.time_ns() // 1_000_000


@attrs.frozen
class LeakyEvent:
    """The model's event: the same fields as the bus's, built the same way (data copied)."""

    run_id: str
    seq: int
    stream: str
    ts: int
    data: Mapping[str, Any]
    session_key: str | None


@attrs.define(eq=False)
class LeakyGateway:
    send: trio.MemorySendChannel[LeakyEvent]
    seq_by_run: dict[str, int] = attrs.field(factory=dict)
    published: int = 0

    async def publish(
        self, run_id: str, stream: str, data: Any, session_key: str | None
    ) -> LeakyEvent:
        seq = self.seq_by_run.get(run_id, 0) + 1
        self.seq_by_run[run_id] = seq  # never pruned: the leak
        event = LeakyEvent(
            run_id, seq, stream, _epoch_ms(), MappingProxyType(dict(data)), session_key
        )
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

    async def emit(self, stream: str, data: Any, *, session_key: str | None = None) -> LeakyEvent:
        return await self.gateway.publish(self.id, stream, data, session_key or self.session_key)


async def _phase(
    run: LeakyRun,
    body: Callable[[LeakyRun], Awaitable[None]],
    *,
    task_status: trio.TaskStatus[trio.CancelScope] = trio.TASK_STATUS_IGNORED,
) -> str:
    """One body phase with its lifecycle events; returns the outcome status."""
    await run.emit("lifecycle", {"phase": "start", "startedAt": _epoch_ms()})
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
            await run.emit("lifecycle", {"phase": "end", "endedAt": _epoch_ms()})
    return status


async def soak_leaky(total: int, concurrency: int, sampler: Sampler) -> dict[str, Any]:
    """The soak's plan through the model; checks what the drain saw against the plan."""
    send, receive = trio.open_memory_channel[LeakyEvent](1024)
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
            drain.tally(event)

    async def one_run(
        kind: str, run: LeakyRun, *, task_status: trio.TaskStatus[trio.CancelScope]
    ) -> None:
        try:
            if kind in ("ok", "abort"):
                body = hanging_turn if kind == "abort" else ok_turn
                outcomes[await _phase(run, body, task_status=task_status)] += 1
            else:
                outcomes[await _phase(run, failing_turn, task_status=task_status)] += 1
                if kind == "retry":
                    # The retry resumes the run: its seq continues from the kept counter.
                    outcomes[await _phase(run, ok_turn)] += 1
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
            if sampler.due(runs):
                await until(quiet)
                sampler.take(runs)
        await send.aclose()
    assert drain.events == gateway.published, (drain, gateway.published)
    assert drain.dropped == 0, drain
    assert drain.terminals == plan.terminals, (drain, plan)
    expected = plan.outcomes()
    assert outcomes == expected, (outcomes, expected)
    assert len(gateway.seq_by_run) == total
    return {"events": drain.events, "outcomes": outcomes, "plan": attrs.asdict(plan)}
