"""The bus for asyncio programs: ``async with pipeline.aio.open_bus() as bus:``.

The trio bus (:func:`pipeline.open_bus`) runs in trio's guest mode on the running asyncio loop,
in the loop's thread. A call that can finish at once calls the trio bus directly (trio allows
its synchronous functions from the host loop once the guest run is set up); a call that must
wait *hops*: ``TrioToken.run_sync_soon`` runs a starter in trio, which finishes it or starts a
task in a nursery owned by the guest run's main task, and an :class:`asyncio.Future` brings back
the result or the trio bus's own exception. A run body is an asyncio task, which the trio run
body waits for, re-raises the exception of, and cancels when the run is stopped. See
``docs/asyncio.md``.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import math
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from typing import Any, Generic, Protocol, TypeVar, final

import attrs
import trio

from actors import Overflow

from ._bus import Bus as TrioBus
from ._bus import BusStatistics
from ._bus import open_bus as open_trio_bus
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

T = TypeVar("T")

#: An asyncio run body: ``async def body(run: pipeline.aio.Run) -> None``.
RunBody = Callable[["Run"], Coroutine[Any, Any, object]]

#: The abort reason of a run whose asyncio task was cancelled by asyncio code, not by the bus.
CANCELLED_IN_ASYNCIO = "cancelled"


class _Outcome(Protocol):
    def unwrap(self) -> object: ...


# ---- one call from asyncio into trio ---------------------------------------------------------


@final
@attrs.define(eq=False)
class _Call(Generic[T]):
    """One asyncio call's trip into trio: the asyncio future and the scope of its trio task."""

    future: asyncio.Future[T]
    #: Run in trio on a result the asyncio caller will never see (it was cancelled).
    undo: Callable[[T], object] | None = None
    scope: trio.CancelScope | None = None

    def succeed(self, value: T) -> None:
        if not self.future.done():  # the asyncio caller may have been cancelled meanwhile
            self.future.set_result(value)

    def fail(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)

    def cancel(self) -> None:
        """In trio: the asyncio caller was cancelled, so stop the trio task doing the work."""
        if self.scope is not None:
            self.scope.cancel()


#: What a call runs first, in trio: it settles the call itself or hands it to a task.
_Starter = Callable[..., None]


def _closed() -> BusClosed:
    return BusClosed("the bus is closed")


@final
@attrs.define(eq=False)
class _Bridge:
    """The trio side of an asyncio bus: the trio bus, the token and the nursery for calls."""

    loop: asyncio.AbstractEventLoop
    token: trio.lowlevel.TrioToken
    bus: TrioBus
    #: Owned by the guest run's main task; every task a call starts lives in it.
    nursery: trio.Nursery
    #: Set once the guest run has finished: no more calls.
    finished: bool = False
    #: The bus's statistics once it had closed, for calls after the guest run has finished.
    final_statistics: BusStatistics | None = None
    _pending: set[_Call[Any]] = attrs.field(factory=set)
    _feeds: set[_Feed] = attrs.field(factory=set)

    # ---- from asyncio ----

    async def call(
        self, starter: _Starter, *args: object, undo: Callable[[Any], object] | None = None
    ) -> Any:
        """Run ``starter(call, *args)`` in trio and wait (in asyncio) for the call's result.

        If this caller is cancelled, so is the trio side; a result it will not see is given
        to ``undo`` (in trio).
        """
        if asyncio.get_running_loop() is not self.loop:
            raise RuntimeError("a pipeline.aio bus is used from the loop that opened it only")
        call: _Call[Any] = _Call(self.loop.create_future(), undo)
        self.soon(self._begin, call, starter, args)
        self._pending.add(call)
        try:
            return await call.future
        except asyncio.CancelledError:
            future = call.future
            if not future.done() or future.cancelled():
                self.soon_quietly(call.cancel)
            elif future.exception() is None and undo is not None:
                self.soon_quietly(undo, future.result())  # done, then cancelled before resuming
            raise
        finally:
            self._pending.discard(call)

    async def run(
        self,
        async_fn: Callable[..., Awaitable[T]],
        *args: object,
        undo: Callable[[T], object] | None = None,
    ) -> T:
        """``await async_fn(*args)`` in a trio task; its result or exception, in asyncio."""
        result: T = await self.call(self.spawn, async_fn, *args, undo=undo)
        return result

    def soon(self, fn: Callable[..., object], *args: object) -> None:
        """``fn(*args)`` soon, in trio; :exc:`BusClosed` if the guest run has finished."""
        if self.finished:
            raise _closed()
        try:
            self.token.run_sync_soon(fn, *args)
        except trio.RunFinishedError:
            raise _closed() from None

    def soon_quietly(self, fn: Callable[..., object], *args: object) -> None:
        """``fn(*args)`` soon in trio, unless the guest run has finished (then nothing to do)."""
        if not self.finished:
            with suppress(trio.RunFinishedError):
                self.token.run_sync_soon(fn, *args)

    # ---- in trio ----

    def _begin(self, call: _Call[Any], starter: _Starter, args: tuple[object, ...]) -> None:
        if call.future.done():  # cancelled in asyncio before trio got to it
            return
        try:
            starter(call, *args)
        except Exception as exc:  # the trio bus's own error, raised in the asyncio caller
            call.fail(exc)

    def spawn(self, call: _Call[T], async_fn: Callable[..., Awaitable[T]], *args: object) -> None:
        """Finish ``call`` with ``await async_fn(*args)`` in a task of the calls' nursery."""
        try:
            self.nursery.start_soon(self._settle, call, async_fn, args, name="pipeline.aio.call")
        except RuntimeError:  # the nursery is closed: the bus has closed
            call.fail(_closed())

    async def _settle(
        self, call: _Call[T], async_fn: Callable[..., Awaitable[T]], args: tuple[object, ...]
    ) -> None:
        try:
            if call.future.done():
                return
            with trio.CancelScope() as call.scope:
                try:
                    result = await async_fn(*args)
                except Exception as exc:
                    call.fail(exc)
                else:
                    if call.future.done() and call.undo is not None:  # the caller was cancelled
                        call.undo(result)
                    call.succeed(result)
        finally:
            call.fail(_closed())  # cancelled with the nursery (no-op if already settled)

    def finish(self) -> None:
        """The guest run has ended: fail what is still waiting for trio."""
        self.finished = True
        for call in list(self._pending):
            call.fail(_closed())

    # ---- subscriptions, in trio ----

    async def open_feed(
        self, trio_cm: AbstractAsyncContextManager[TrioSubscription], capacity: int
    ) -> _Feed:
        feed = _Feed(capacity)
        await self.nursery.start(self._hold_feed, feed, trio_cm, name="pipeline.aio.subscription")
        return feed

    async def _hold_feed(
        self,
        feed: _Feed,
        trio_cm: AbstractAsyncContextManager[TrioSubscription],
        *,
        task_status: trio.TaskStatus[None],
    ) -> None:
        try:
            async with trio_cm as sub:
                feed.sub = sub
                self._feeds.add(feed)
                try:
                    task_status.started()
                    await feed.released.wait()
                finally:
                    self._feeds.discard(feed)
                    feed.final_statistics = sub.statistics()
        finally:
            feed.gone.set()

    async def end_feeds(self) -> None:
        """After the bus has closed: move what each subscription still holds to asyncio."""
        for feed in list(self._feeds):
            with trio.move_on_after(self.bus.config.shutdown_timeout):
                async with feed.lock:  # after a read in progress, so order is kept
                    feed.take(math.inf)
            feed.ended = True


# ---- subscriptions ---------------------------------------------------------------------------


@final
@attrs.define(eq=False)
class _Feed:
    """One asyncio subscription: its trio subscription and the events moved to asyncio.

    The trio side appends (in trio, under ``lock``); the asyncio side pops. Both run in the
    loop's thread, one at a time.
    """

    #: The most events one read moves to the asyncio side.
    capacity: int
    events: deque[Event] = attrs.field(factory=deque)
    ended: bool = False
    sub: TrioSubscription = attrs.field(init=False)
    #: Its statistics when it ended, for calls after the guest run has finished.
    final_statistics: SubscriptionStatistics | None = None
    lock: trio.Lock = attrs.field(factory=trio.Lock)
    released: trio.Event = attrs.field(factory=trio.Event)
    gone: trio.Event = attrs.field(factory=trio.Event)

    def take(self, limit: float) -> bool:
        """Move queued events, up to ``limit`` held here; True if any moved or it has ended."""
        events, receive_nowait = self.events, self.sub.receive_nowait
        moved = False
        while len(events) < limit:
            try:
                events.append(receive_nowait())
            except trio.WouldBlock:
                break
            except trio.EndOfChannel:
                self.ended = True
                return True
            moved = True
        return moved

    async def fill(self) -> None:
        async with self.lock:
            if self.ended or self.take(self.capacity):
                return
            try:
                event = await self.sub.receive()
            except trio.EndOfChannel:
                self.ended = True
                return
            self.events.append(event)
            self.take(self.capacity)


def _release(feed: _Feed) -> None:
    feed.released.set()


def _start_fill(call: _Call[None], bridge: _Bridge, feed: _Feed) -> None:
    if feed.ended or (not feed.lock.locked() and feed.take(feed.capacity)):
        call.succeed(None)
    else:
        bridge.spawn(call, feed.fill)


def _start_release(call: _Call[None], bridge: _Bridge, feed: _Feed) -> None:
    _release(feed)
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

    _bridge: _Bridge
    _feed: _Feed

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
                raise _closed()
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

    bridge: _Bridge
    fn: RunBody
    #: The asyncio caller's context variables, for the body's task.
    context: contextvars.Context
    trio_run: TrioRun = attrs.field(init=False)
    #: Set (in trio) once the asyncio task has ended or been given up on.
    ended: trio.Event = attrs.field(init=False)

    async def serve(self, trio_run: TrioRun) -> object:
        """The trio run body: run the asyncio body and end as it ended."""
        self.trio_run, self.ended = trio_run, trio.Event()
        bridge = self.bridge
        done = trio.Event()
        coro = self.context.run(self.fn, Run(trio_run, self))
        task = bridge.loop.create_task(coro, context=self.context)
        task.add_done_callback(lambda _: bridge.soon_quietly(done.set))
        try:
            await done.wait()
        finally:
            if not task.done():  # aborted, timed out, or the bus is closing
                task.cancel()
                with (
                    trio.CancelScope(shield=True),
                    trio.move_on_after(bridge.bus.config.shutdown_timeout),
                ):
                    await done.wait()
            if not task.done():
                _log.warning("the asyncio body of run %r ignored its cancellation", trio_run.id)
            elif not task.cancelled():
                task.exception()  # retrieved, so asyncio does not log it as never retrieved
            self.ended.set()
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
            await self.ended.wait()  # being stopped: the asyncio task is cancelled meanwhile
            raise

    async def fail_when_ended(self, exc: BaseException) -> Event:
        await self.ended.wait()
        raise exc


def _start_emit(
    call: _Call[Event], body: _Body, stream: str, data: Any, session_key: str | None
) -> None:
    try:
        call.succeed(body.trio_run.emit_nowait(stream, data, session_key=session_key))
    except trio.WouldBlock:  # the router is full: wait for room in a task
        body.bridge.spawn(call, body.emit, stream, data, session_key)
    except UnknownRun as exc:
        if body.ended.is_set():
            raise
        # The run is being stopped and its asyncio task is about to be cancelled: as in trio,
        # where emitting from an aborted body raises Cancelled, the caller sees its
        # cancellation (CancelledError), or this error if it was some other task.
        body.bridge.spawn(call, body.fail_when_ended, exc)


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
        meanwhile, the body's task is cancelled (``CancelledError``).
        """
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            await asyncio.sleep(0)  # delivers the pending CancelledError
        try:
            return self._trio_run.emit_nowait(stream, data, session_key=session_key)
        except trio.WouldBlock:
            pass  # the router is full: wait for room in trio
        except UnknownRun:
            if self._body.ended.is_set():
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

    _bridge: _Bridge
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

    _bridge: _Bridge

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
            raise _closed()
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
        feed: _Feed = await bridge.run(bridge.open_feed, trio_cm, capacity, undo=_release)
        try:
            yield Subscription(bridge, feed)
        finally:
            with suppress(BusClosed):  # the bus closed first, and the trio subscription with it
                await bridge.call(_start_release, bridge, feed)

    def statistics(self) -> BusStatistics:
        """A snapshot of the bus's counters; once closed, the last one."""
        bridge = self._bridge
        if not bridge.finished:
            return bridge.bus.statistics()
        if bridge.final_statistics is None:  # the guest run crashed
            raise _closed()
        return bridge.final_statistics


# ---- the guest run ---------------------------------------------------------------------------


@final
@attrs.define(eq=False)
class _Guest:
    """The trio guest run on an asyncio loop: start it, close it, wait for it to finish."""

    loop: asyncio.AbstractEventLoop
    #: The asyncio task that opened the bus: cancelled if the guest run ends on its own.
    owner: asyncio.Task[Any] | None
    ready: asyncio.Future[_Bridge]
    done: asyncio.Future[None]
    token: trio.lowlevel.TrioToken = attrs.field(init=False)
    bridge: _Bridge | None = None
    close_requested: trio.Event = attrs.field(factory=trio.Event)
    closing: bool = False
    owner_cancelled: bool = False
    error: BaseException | None = None

    @classmethod
    def start(cls, config: BusConfig) -> _Guest:
        loop = asyncio.get_running_loop()
        guest = cls(loop, asyncio.current_task(), loop.create_future(), loop.create_future())
        if trio.lowlevel.in_trio_run():
            raise RuntimeError(
                "pipeline.aio.open_bus needs a thread with no trio run: trio allows one run, "
                "guest or not, per thread"
            )
        trio.lowlevel.start_guest_run(
            guest._serve,
            config,
            run_sync_soon_threadsafe=loop.call_soon_threadsafe,
            run_sync_soon_not_threadsafe=loop.call_soon,
            done_callback=guest._trio_done,
            # Leave the signal wakeup fd to the host: asyncio's add_signal_handler relies on it,
            # and trio would put back the old one when it ends, under asyncio's feet.
            host_uses_signal_set_wakeup_fd=True,
        )
        guest.token = trio.lowlevel.current_trio_token()
        return guest

    async def _serve(self, config: BusConfig) -> None:
        """The guest run's main task."""
        async with open_trio_bus(config) as bus:
            async with trio.open_nursery() as nursery:
                bridge = _Bridge(self.loop, self.token, bus, nursery)
                self.bridge = bridge
                if not self.ready.done():
                    self.ready.set_result(bridge)
                await self.close_requested.wait()
                await bus.aclose()
                await bridge.end_feeds()
                nursery.cancel_scope.cancel()
            bridge.final_statistics = bus.statistics()

    def _trio_done(self, outcome: _Outcome) -> None:
        """Called by trio, in asyncio, once the guest run has finished."""
        try:
            outcome.unwrap()
        except BaseException as exc:  # kept, and raised in asyncio by finish()
            self.error = _leaf(exc)
        if self.bridge is not None:
            self.bridge.finish()
        self.done.set_result(None)
        if not self.closing and self.owner is not None and not self.owner.done():
            self.owner.cancel()
            self.owner_cancelled = True

    async def wait_ready(self) -> _Bridge | None:
        """The bridge once the bus is open; ``None`` if the guest run ended first."""
        await asyncio.wait((self.ready, self.done), return_when=asyncio.FIRST_COMPLETED)
        return self.ready.result() if self.ready.done() else None

    async def finish(self) -> None:
        """Close the bus and wait until the guest run has finished, even if cancelled meanwhile
        (closing is bounded by ``shutdown_timeout``). Raises the guest run's error, if any."""
        if not self.closing:
            self.closing = True
            with suppress(trio.RunFinishedError):
                self.token.run_sync_soon(self.close_requested.set)
        cancelled: asyncio.CancelledError | None = None
        while not self.done.done():
            try:
                await asyncio.shield(self.done)
            except asyncio.CancelledError as exc:
                cancelled = exc
        if self.owner_cancelled and self.owner is not None:
            self.owner_cancelled = False
            self.owner.uncancel()
            if self.error is None:
                self.error = BusClosed("the bus's trio run ended unexpectedly")
        if self.error is not None:
            raise self.error
        if cancelled is not None:
            raise cancelled


def _leaf(exc: BaseException) -> BaseException:
    """The one exception inside nested single-exception groups (trio's strict nurseries)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


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
    guest = _Guest.start(config)
    try:
        bridge = await guest.wait_ready()
        if bridge is not None:  # else the guest run ended first: finish() raises its error
            yield Bus(bridge)
    finally:
        await guest.finish()
