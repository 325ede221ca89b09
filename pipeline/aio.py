"""The bus for asyncio programs: ``async with pipeline.aio.open_bus() as bus:``.

The trio bus (:func:`pipeline.open_bus`) runs in trio's guest mode on the running asyncio loop,
in the loop's thread. A call that can finish at once calls the trio bus directly (trio allows
its synchronous functions from the host loop once the guest run is set up); a call that must
wait *hops* into trio and back (the guest run and the hops are in :mod:`pipeline._aio_bridge`).
A run body is an asyncio task, which the trio run body waits for, re-raises the exception of,
and cancels when the run is stopped. See ``docs/asyncio.md``.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from typing import Any, final

import attrs
import trio

from actors import Overflow

from ._aio_bridge import Bridge, Call, Feed, Guest, bus_closed
from ._bus import BusStatistics
from ._config import BusConfig, RunContext
from ._errors import BusClosed, UnknownRun
from ._event import DROPPED_STREAM, Event
from ._run import Run as TrioRun
from ._run import RunHandle as TrioRunHandle
from ._run import RunOutcome
from ._subscription import BUS_CLOSED, SubscriptionStatistics
from ._subscription import Subscription as TrioSubscription

__all__ = ["Bus", "Run", "RunBody", "RunHandle", "Subscription", "open_bus"]

_log = logging.getLogger("pipeline.aio")

#: An asyncio run body: ``async def body(run: pipeline.aio.Run) -> None``.
RunBody = Callable[["Run"], Coroutine[Any, Any, object]]

#: The abort reason of a run whose asyncio task was cancelled by asyncio code, not by the bus.
CANCELLED_IN_ASYNCIO = "cancelled"


# ---- subscriptions ---------------------------------------------------------------------------


def _release(feed: Feed) -> None:
    feed.released.set()


def _start_fill(call: Call[None], bridge: Bridge, feed: Feed) -> None:
    if feed.ended or (not feed.lock.locked() and feed.take(feed.capacity)):
        call.succeed(None)
    else:
        bridge.spawn(call, feed.fill)


def _start_wait_gone(call: Call[None], bridge: Bridge, feed: Feed) -> None:
    if feed.gone.is_set():
        call.succeed(None)
    else:
        bridge.spawn(call, feed.gone.wait)


@final
@attrs.define(eq=False, on_setattr=attrs.setters.NO_OP)
class Subscription:
    """An async iterator of the events that match one subscriber's filter (see
    :class:`pipeline.Subscription`). Made by :meth:`Bus.subscribe`.

    A read takes what trio has queued (up to the subscription's buffer) directly; only when
    nothing is queued does it hop into trio to wait. Read it from one task at a time.
    """

    _bridge: Bridge
    _feed: Feed

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        feed = self._feed
        if not (feed.events or feed.ended or feed.lock.locked() or self._bridge.finished):
            feed.take(feed.capacity)  # what is queued already, without a hop
        while not feed.events:
            if feed.ended:
                raise StopAsyncIteration
            await self._bridge.call(_start_fill, self._bridge, feed)
        return feed.events.popleft()

    @property
    def closed_reason(self) -> str | None:
        """As :attr:`pipeline.Subscription.closed_reason` (``"bus closed"`` after the bus)."""
        reason = self._feed.sub.closed_reason
        if reason is None and self._feed.ended:
            return BUS_CLOSED  # ended by the bus closing before trio said why
        return reason

    def statistics(self) -> SubscriptionStatistics:
        """Delivered counts events read here; queued includes those moved but not yet read."""
        if self._bridge.finished:
            stats = self._feed.final_statistics
            if stats is None:  # the guest run crashed
                raise bus_closed()
        else:
            stats = self._feed.sub.statistics()
        moved = sum(1 for event in self._feed.events if event.stream != DROPPED_STREAM)
        return SubscriptionStatistics(
            delivered=stats.delivered - moved, dropped=stats.dropped, queued=stats.queued + moved
        )


# ---- runs ------------------------------------------------------------------------------------


@final
@attrs.define(eq=False)
class _Body:
    """One asyncio run body, and the trio run body that runs it as an asyncio task."""

    bridge: Bridge
    fn: RunBody
    #: The asyncio caller's context variables, for the body's task.
    context: contextvars.Context
    trio_run: TrioRun = attrs.field(init=False)
    task: asyncio.Task[object] = attrs.field(init=False)
    #: Set (in trio) once the bus has cancelled the asyncio task, or it has ended or been
    #: given up on: from then on an emit into the stopped run raises at once, rather than
    #: wait for a cancellation that has already been delivered.
    stopped: trio.Event = attrs.field(init=False)

    async def serve(self, trio_run: TrioRun) -> object:
        """The trio run body: run the asyncio body and end as it ended."""
        self.trio_run, self.stopped = trio_run, trio.Event()
        bridge = self.bridge
        done = trio.Event()
        coro = self.context.run(self.fn, Run(trio_run, self))
        self.task = task = bridge.loop.create_task(coro, context=self.context)
        task.add_done_callback(lambda _: bridge.soon_quietly(done.set))
        try:
            await done.wait()
        finally:
            if not task.done():  # aborted, timed out, or the bus is closing
                task.cancel()
                self.stopped.set()  # its cleanup may emit, and must not wait for itself
                with (
                    trio.CancelScope(shield=True),
                    trio.move_on_after(bridge.bus.config.shutdown_timeout),
                ):
                    await done.wait()
            if not task.done():
                _log.warning("the asyncio body of run %r ignored its cancellation", trio_run.id)
            elif not task.cancelled():
                task.exception()  # retrieved, so asyncio does not log it as never retrieved
            self.stopped.set()
        if task.cancelled():
            # Cancelled by asyncio code, not by the bus: end the run as trio ends a body
            # cancelled from outside, as aborted.
            bridge.bus.abort(trio_run.id, reason=CANCELLED_IN_ASYNCIO)
            await trio.lowlevel.checkpoint()  # the abort cancelled this body: raises Cancelled
            raise RuntimeError("the body's asyncio task was cancelled")  # (if it did not)
        exc = task.exception()
        if exc is not None:
            raise exc
        return task.result()

    async def emit(self, stream: str, data: Any, session_key: str | None) -> Event:
        try:
            return await self.trio_run.emit(stream, data, session_key=session_key)
        except UnknownRun:
            await self.stopped.wait()  # being stopped: the asyncio task is cancelled meanwhile
            raise

    async def fail_when_stopped(self, exc: BaseException) -> Event:
        await self.stopped.wait()
        raise exc


def _start_emit(
    call: Call[Event], body: _Body, stream: str, data: Any, session_key: str | None
) -> None:
    try:
        call.succeed(body.trio_run.emit_nowait(stream, data, session_key=session_key))
    except trio.WouldBlock:  # the router is full: wait for room in a task
        body.bridge.spawn(call, body.emit, stream, data, session_key)
    except UnknownRun as exc:
        if body.stopped.is_set():
            raise
        # The run is being stopped and its asyncio task is about to be cancelled: as in trio,
        # where emitting from an aborted body raises Cancelled, the caller sees its
        # cancellation (CancelledError), or this error if it was some other task.
        body.bridge.spawn(call, body.fail_when_stopped, exc)


def _abort_orphan(handle: TrioRunHandle) -> None:
    """A run started for a ``start_run`` call that was cancelled: nobody holds its handle."""
    handle.abort(CANCELLED_IN_ASYNCIO)


@final
@attrs.define(eq=False, on_setattr=attrs.setters.NO_OP)
class Run:
    """The asyncio body's side of a run (see :class:`pipeline.Run`); valid while it runs."""

    _trio_run: TrioRun
    _body: _Body

    @property
    def id(self) -> str:
        return self._trio_run.id

    @property
    def context(self) -> RunContext:
        return self._trio_run.context

    async def emit(self, stream: str, data: Any, *, session_key: str | None = None) -> Event:
        """Publish one event; waits (one hop into trio) only while the router is full.

        As trio's ``emit``: always a cancellation point (a pending cancellation is raised
        here rather than publish), a schedule point only when it waits. If the run is aborted
        meanwhile, the body's task is cancelled (``CancelledError``); an emit from the body's
        cleanup after that raises ``CancelledError`` too, one from any other task
        :exc:`UnknownRun`.
        """
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            await asyncio.sleep(0)  # delivers the pending CancelledError
        try:
            return self._trio_run.emit_nowait(stream, data, session_key=session_key)
        except trio.WouldBlock:
            pass  # the router is full: wait for room in trio
        except UnknownRun:
            if self._body.stopped.is_set():
                if task is self._body.task:  # in its cleanup, after the bus cancelled it
                    raise asyncio.CancelledError from None  # as trio's Cancelled would be
                raise
            # Being stopped: in trio, the body's task is cancelled before this call returns.
        event: Event = await self._body.bridge.call(
            _start_emit, self._body, stream, data, session_key
        )
        return event

    def update_context(self, **fields: Any) -> RunContext:
        """Change only the given context fields; later events see the change."""
        return self._trio_run.update_context(**fields)

    def set_stop_reason(self, reason: str | None) -> None:
        """The ``stopReason`` the end event (and the chat final) will carry."""
        self._trio_run.set_stop_reason(reason)


@final
@attrs.define(eq=False, on_setattr=attrs.setters.NO_OP)
class RunHandle:
    """The starter's side of one body phase (see :class:`pipeline.RunHandle`)."""

    _bridge: Bridge
    _handle: TrioRunHandle

    @property
    def id(self) -> str:
        return self._handle.id

    @property
    def outcome(self) -> RunOutcome | None:
        """The outcome once the body has finished, else ``None``."""
        return self._handle.outcome

    def abort(self, reason: str = "rpc") -> bool:
        """Cancel the body (its asyncio task is cancelled); False if it has already finished."""
        if self._bridge.finished:
            return False
        return self._handle.abort(reason)

    async def wait(self) -> RunOutcome:
        """Wait for the body to finish and return its outcome (a hop only if it has not)."""
        outcome = self._handle.outcome
        if outcome is None:
            outcome = await self._bridge.run(self._handle.wait)
        return outcome


# ---- the bus ---------------------------------------------------------------------------------


@final
@attrs.define(eq=False, on_setattr=attrs.setters.NO_OP)
class Bus:
    """The agent event bus, for asyncio code (see :class:`pipeline.Bus`). Open one with
    :func:`open_bus`; use it from the loop's thread only."""

    _bridge: Bridge

    @property
    def config(self) -> BusConfig:
        return self._bridge.bus.config

    async def start_run(
        self, body: RunBody, *, run_id: str | None = None, context: RunContext | None = None
    ) -> RunHandle:
        """Run ``await body(run)`` as an asyncio task supervised by the bus; return once its
        start is published. The task gets a copy of the caller's context variables."""
        if not callable(body):
            raise TypeError(f"body must be an async callable, not {body!r}")
        bridge = self._bridge
        served = _Body(bridge, body, contextvars.copy_context())
        start = functools.partial(
            bridge.bus.start_run, served.serve, run_id=run_id, context=context
        )
        handle: TrioRunHandle = await bridge.run(start, undo=_abort_orphan)
        return RunHandle(bridge, handle)

    async def emit(
        self, run_id: str, stream: str, data: Any, *, session_key: str | None = None
    ) -> Event:
        """Emit into a live run from outside its body; :exc:`UnknownRun` if none is running."""
        bridge = self._bridge
        emit = functools.partial(bridge.bus.emit, session_key=session_key)
        return await bridge.run(emit, run_id, stream, data)

    async def ingest(self, event: Event | Mapping[str, Any]) -> bool:
        """Take an event sequenced elsewhere (see :meth:`pipeline.Bus.ingest`)."""
        return await self._bridge.run(self._bridge.bus.ingest, event)

    def abort(self, run_id: str, *, reason: str = "rpc") -> bool:
        """Cancel a live run's body (its asyncio task is cancelled); False if no such run."""
        if self._bridge.finished:
            return False
        return self._bridge.bus.abort(run_id, reason=reason)

    def update_context(self, run_id: str, **fields: Any) -> RunContext:
        """Change only the given context fields of a live run."""
        if self._bridge.finished:
            raise UnknownRun(f"no live run {run_id!r}")
        return self._bridge.bus.update_context(run_id, **fields)

    def subscribe(
        self,
        *,
        run_id: str | None = None,
        session_key: str | None = None,
        streams: Iterable[str] | None = None,
        overflow: Overflow = Overflow.BLOCK,
        buffer: int | None = None,
    ) -> AbstractAsyncContextManager[Subscription]:
        """Subscribe to the events published from now on that match every filter given.

        Arguments are checked here, as by :meth:`pipeline.Bus.subscribe`.
        """
        bridge = self._bridge
        if bridge.finished:
            raise bus_closed()
        trio_cm = bridge.bus.subscribe(
            run_id=run_id,
            session_key=session_key,
            streams=streams,
            overflow=overflow,
            buffer=buffer,
        )
        capacity = bridge.bus.config.subscriber_buffer if buffer is None else buffer
        return self._subscription(trio_cm, capacity)

    @asynccontextmanager
    async def _subscription(
        self, trio_cm: AbstractAsyncContextManager[TrioSubscription], capacity: int
    ) -> AsyncIterator[Subscription]:
        bridge = self._bridge
        feed: Feed = await bridge.run(bridge.open_feed, trio_cm, capacity, undo=_release)
        try:
            yield Subscription(bridge, feed)
        finally:
            # Let go before the hop: if this task is cancelled before the hop reaches trio,
            # its starter never runs, and the trio subscription must not stay open.
            bridge.soon_quietly(_release, feed)
            with suppress(BusClosed):  # the bus closed first, and the trio subscription with it
                await bridge.call(_start_wait_gone, bridge, feed)

    def statistics(self) -> BusStatistics:
        """A snapshot of the bus's counters; once closed, the last one."""
        bridge = self._bridge
        if not bridge.finished:
            return bridge.bus.statistics()
        if bridge.final_statistics is None:  # the guest run crashed
            raise bus_closed()
        return bridge.final_statistics


@asynccontextmanager
async def open_bus(config: BusConfig | None = None) -> AsyncIterator[Bus]:
    """Open an agent event bus for asyncio code, running trio in guest mode on this loop.

    Leaving the block closes the bus (as :meth:`pipeline.Bus.aclose`) and returns once the
    guest run has finished. One such bus per event loop at a time (trio allows one guest run
    per thread).
    """
    if config is None:
        config = BusConfig()
    if not isinstance(config, BusConfig):
        raise TypeError(f"config must be a BusConfig, not {config!r}")
    guest = Guest.start(config)
    try:
        bridge = await guest.wait_ready()
        if bridge is not None:  # else the guest run ended first: finish() raises its error
            yield Bus(bridge)
    finally:
        await guest.finish()
