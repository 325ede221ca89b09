"""The machinery under :mod:`pipeline.aio`: the trio guest run on the asyncio loop, and hops.

:mod:`pipeline.aio` gives asyncio programs the trio bus itself rather than a second
implementation, so it has to run trio inside an asyncio program. :class:`Guest` starts trio in
guest mode (``trio.lowlevel.start_guest_run``) on the running asyncio loop: trio's scheduler
runs in the loop's thread, as loop callbacks. Its main task opens the trio bus and a nursery
that owns every task started for an asyncio caller, and closes both when the asyncio block
exits, so nothing outlives the bus and nothing is fire-and-forget.

Sharing the thread lets a call that can finish at once call the trio bus directly (trio allows
its synchronous functions from the host loop once the guest run is set up); that costs no hop
and lives in :mod:`pipeline.aio`. A call that must wait *hops*, through :meth:`Bridge.call`:
``TrioToken.run_sync_soon`` runs a starter in trio, which finishes the call at once or starts
a task in the bridge's nursery, and an :class:`asyncio.Future` brings back the result or the
trio bus's own exception. Cancelling the asyncio caller cancels that task, and a result the
caller will never see is undone. A hop costs a wake-up of trio's I/O thread, so the public
classes hop only when they must wait. :class:`Feed` is the trio side of one asyncio
subscription: it moves events to the asyncio side, at most the subscription's buffer at a
time. See ``docs/asyncio.md``.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, suppress
from typing import Any, Generic, Protocol, TypeVar, final

import attrs
import trio

from ._bus import Bus as TrioBus
from ._bus import BusStatistics
from ._bus import open_bus as open_trio_bus
from ._config import BusConfig
from ._errors import BusClosed
from ._event import Event
from ._subscription import Subscription as TrioSubscription
from ._subscription import SubscriptionStatistics

__all__ = ["Bridge", "Call", "Feed", "Guest", "Starter", "bus_closed"]

T = TypeVar("T")


class _Outcome(Protocol):
    def unwrap(self) -> object: ...


# ---- one call from asyncio into trio ---------------------------------------------------------


@final
@attrs.define(eq=False)
class Call(Generic[T]):
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
Starter = Callable[..., None]


def bus_closed() -> BusClosed:
    """The error of a call made, or still waiting, once the bus has closed."""
    return BusClosed("the bus is closed")


@final
@attrs.define(eq=False)
class Bridge:
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
    _pending: set[Call[Any]] = attrs.field(factory=set)
    _feeds: set[Feed] = attrs.field(factory=set)

    # ---- from asyncio ----

    async def call(
        self, starter: Starter, *args: object, undo: Callable[[Any], object] | None = None
    ) -> Any:
        """Run ``starter(call, *args)`` in trio and wait (in asyncio) for the call's result.

        If this caller is cancelled, so is the trio side; a result it will not see is given
        to ``undo`` (in trio).
        """
        if asyncio.get_running_loop() is not self.loop:
            raise RuntimeError("a pipeline.aio bus is used from the loop that opened it only")
        call: Call[Any] = Call(self.loop.create_future(), undo)
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
            raise bus_closed()
        try:
            self.token.run_sync_soon(fn, *args)
        except trio.RunFinishedError:
            raise bus_closed() from None

    def soon_quietly(self, fn: Callable[..., object], *args: object) -> None:
        """``fn(*args)`` soon in trio, unless the guest run has finished (then nothing to do)."""
        if not self.finished:
            with suppress(trio.RunFinishedError):
                self.token.run_sync_soon(fn, *args)

    # ---- in trio ----

    def _begin(self, call: Call[Any], starter: Starter, args: tuple[object, ...]) -> None:
        if call.future.done():  # cancelled in asyncio before trio got to it
            return
        try:
            starter(call, *args)
        except Exception as exc:  # the trio bus's own error, raised in the asyncio caller
            call.fail(exc)

    def spawn(self, call: Call[T], async_fn: Callable[..., Awaitable[T]], *args: object) -> None:
        """Finish ``call`` with ``await async_fn(*args)`` in a task of the calls' nursery."""
        try:
            self.nursery.start_soon(self._settle, call, async_fn, args, name="pipeline.aio.call")
        except RuntimeError:  # the nursery is closed: the bus has closed
            call.fail(bus_closed())

    async def _settle(
        self, call: Call[T], async_fn: Callable[..., Awaitable[T]], args: tuple[object, ...]
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
            call.fail(bus_closed())  # cancelled with the nursery (no-op if already settled)

    def finish(self) -> None:
        """The guest run has ended: fail what is still waiting for trio."""
        self.finished = True
        for call in list(self._pending):
            call.fail(bus_closed())

    # ---- subscriptions, in trio ----

    async def open_feed(
        self, trio_cm: AbstractAsyncContextManager[TrioSubscription], capacity: int
    ) -> Feed:
        """Enter ``trio_cm`` in a task of the calls' nursery, which holds it until released."""
        feed = Feed(capacity)
        await self.nursery.start(self._hold_feed, feed, trio_cm, name="pipeline.aio.subscription")
        return feed

    async def _hold_feed(
        self,
        feed: Feed,
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
class Feed:
    """One asyncio subscription: its trio subscription and the events moved to asyncio.

    :meth:`take` moves events in, from a trio task under ``lock`` or directly from asyncio
    when no such task holds it; the asyncio side pops them. Both run in the loop's thread,
    one at a time.
    """

    #: The subscription's buffer: the most events a read leaves on the asyncio side.
    capacity: int
    events: deque[Event] = attrs.field(factory=deque)
    #: Set once no more events will come: the trio subscription ended, or the bus closed.
    ended: bool = False
    sub: TrioSubscription = attrs.field(init=False)
    #: Its statistics when it ended, for calls after the guest run has finished.
    final_statistics: SubscriptionStatistics | None = None
    lock: trio.Lock = attrs.field(factory=trio.Lock)
    #: Set when the asyncio side lets go: the task holding the trio subscription leaves it.
    released: trio.Event = attrs.field(factory=trio.Event)
    #: Set once that task has left it.
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
        """In trio: wait until an event can be moved, then move up to ``capacity``."""
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


# ---- the guest run ---------------------------------------------------------------------------


@final
@attrs.define(eq=False)
class Guest:
    """The trio guest run on an asyncio loop: start it, close it, wait for it to finish."""

    loop: asyncio.AbstractEventLoop
    #: The asyncio task that opened the bus: cancelled if the guest run ends on its own.
    owner: asyncio.Task[Any] | None
    ready: asyncio.Future[Bridge]
    done: asyncio.Future[None]
    token: trio.lowlevel.TrioToken = attrs.field(init=False)
    bridge: Bridge | None = None
    close_requested: trio.Event = attrs.field(factory=trio.Event)
    closing: bool = False
    owner_cancelled: bool = False
    error: BaseException | None = None

    @classmethod
    def start(cls, config: BusConfig) -> Guest:
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
                bridge = Bridge(self.loop, self.token, bus, nursery)
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

    async def wait_ready(self) -> Bridge | None:
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
