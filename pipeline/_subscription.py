"""Subscriptions: a filtered, bounded view of the bus's events for one reader."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable

import attrs
import trio

from actors import (
    ROUTER_STOPPED,
    RUN_CONTEXT,
    SLOW_CONSUMER,
    SUBSCRIBER_FAILED,
    Dropped,
    IndexEntry,
    Member,
    Router,
    cancel_requested_in,
)

from ._actor import epoch_ms
from ._core import WRONG_THREAD
from ._event import DROPPED_STREAM, Event, make_event
from ._frozen import FrozenDict

_current_task = trio.lowlevel.current_task

__all__ = [
    "BUS_CLOSED",
    "ROUTER_STOPPED",
    "SLOW_CONSUMER",
    "SUBSCRIBER_FAILED",
    "Batches",
    "EventFilter",
    "Subscription",
    "SubscriptionStatistics",
    "event_filter",
    "event_keys",
]

#: ``closed_reason`` once the bus has closed and every queued event was read.
BUS_CLOSED = "bus closed"


@attrs.frozen
class SubscriptionStatistics:
    """A snapshot of one subscription's counters."""

    #: Events this subscriber has read (drop markers not included).
    delivered: int
    #: Events lost to its overflow policy (each reported by a ``dropped`` marker) or discarded
    #: when it was disconnected.
    dropped: int
    #: Events waiting to be read.
    queued: int


@attrs.define(eq=False, on_setattr=attrs.setters.NO_OP)
class Subscription:
    """An async iterator of the events that match one subscriber's filter.

    After a loss, the next item read is an :class:`Event` with stream ``"dropped"``, run id
    ``""``, seq 0 and ``data={"count": n}``. Iteration ends when the bus closes (after the
    last queued event) or when the subscriber is disconnected as a slow consumer; then
    :attr:`closed_reason` says which. Reading awaits only when nothing is queued.
    """

    #: Where its events come from: the shared log of the subscriptions with the same filter
    #: and settings, or its own mailbox after it fell behind (see ``actors.Member``).
    _reader: Member[Event]
    _router: Router[Event]
    #: The bus's trio run, whose tasks alone may read the subscription.
    _run: trio.lowlevel.TrioToken
    #: The reader's bound method, looked up once: reading is the hot path.
    _take: Callable[[], Event | Dropped] = attrs.field(init=False)
    #: The trio runner of the bus's run, compared on the hot path (trio's own object).
    _runner: object = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._take = self._reader.receive_nowait
        self._runner = getattr(_current_task(), "_runner", None)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        # The hot path of every subscriber, so its two checks (this task belongs to the bus's
        # trio run; no cancellation is pending) and a read from the shared log are inlined
        # here; anything unusual takes the general path below.
        try:
            task = RUN_CONTEXT.task
            fast = task._runner is self._runner and not task._cancel_status.effectively_cancelled
        except AttributeError:
            fast = False
        reader = self._reader
        if fast and reader.attached:
            group = reader.group
            pos = reader.pos
            if pos < group.end:
                reader.pos = pos + 1
                event = group.items[pos - group.base]
                if pos + 1 == group.end and len(group.members) == 1:
                    group.caught_up()
                return event  # a shared log holds events only, never drop markers
        return await self._next()

    async def _next(self) -> Event:
        if cancel_requested_in(self._run, WRONG_THREAD):
            await trio.lowlevel.checkpoint()
        try:
            try:
                item = self._take()
            except trio.WouldBlock:
                item = await self._reader.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None
        if type(item) is Dropped:
            return _dropped_marker(item.count)
        return item  # type: ignore[return-value]  # the only other item type is Event

    async def receive(self) -> Event:
        """The next event; :exc:`trio.EndOfChannel` once the subscription has ended."""
        try:
            return await self.__anext__()
        except StopAsyncIteration:
            raise trio.EndOfChannel from None

    def receive_nowait(self) -> Event:
        """The next event if one is queued, else :exc:`trio.WouldBlock`."""
        cancel_requested_in(self._run, WRONG_THREAD)
        item = self._take()
        if type(item) is Dropped:
            return _dropped_marker(item.count)
        return item  # type: ignore[return-value]

    def batches(self) -> Batches:
        """An async iterator of non-empty lists of events: everything queued at each step.

        ``async for batch in sub.batches():`` reads exactly the events, in the same order and
        with the same ``dropped`` markers, as ``async for event in sub``, at a fraction of the
        cost per event. Each step is a cancellation point; it yields to the scheduler only
        when nothing is queued.
        """
        return Batches(self)

    @property
    def closed_reason(self) -> str | None:
        """``None`` while open; once ended, :data:`BUS_CLOSED`, :data:`SLOW_CONSUMER`,
        :data:`SUBSCRIBER_FAILED` or :data:`ROUTER_STOPPED` (see ``docs/api.md``)."""
        return self._reader.closed_reason

    def statistics(self) -> SubscriptionStatistics:
        cancel_requested_in(self._run, WRONG_THREAD)
        stats = self._reader.statistics()
        return SubscriptionStatistics(
            delivered=stats.received, dropped=stats.dropped, queued=stats.queued
        )

    def _detach(self) -> None:
        self._router.leave(self._reader)


def _dropped_marker(count: int) -> Event:
    return make_event("", 0, DROPPED_STREAM, epoch_ms(), FrozenDict(count=count), None)


#: The router's index dimensions for events: ``keys(event)[RUN]`` and ``[SESSION]``.
RUN, SESSION = 0, 1


def event_keys(event: Event) -> tuple[str, str | None]:
    """An event's keys in the router's index: its run id and its session key."""
    return (event.run_id, event.session_key)


@attrs.frozen
class EventFilter:
    """Where the router files a subscription and what it still checks per event.

    The most selective field given goes to the index (run id, else session key), so an event
    costs only the subscriptions that can match it; ``accepts`` checks the fields left.
    """

    index: IndexEntry | None
    accepts: Callable[[Event], bool] | None
    #: Equal for equal filters: subscriptions with equal keys (and settings) share a log.
    key: Hashable


def event_filter(
    run_id: str | None,
    session_key: str | None,
    streams: Iterable[str] | None,
    *,
    local_only: bool = False,
) -> EventFilter:
    """The router-side filter for a subscription."""
    for name, value in (("run_id", run_id), ("session_key", session_key)):
        if value is not None and not isinstance(value, str):
            raise TypeError(f"{name} must be a str or None, not {value!r}")
    if isinstance(streams, str):
        raise TypeError("streams must be a collection of stream names, not one str")
    wanted = None if streams is None else frozenset(streams)
    if wanted is not None and not all(isinstance(s, str) for s in wanted):
        raise TypeError("streams must contain only str")
    index: IndexEntry | None = None
    if run_id is not None:
        index = (RUN, run_id)
    elif session_key is not None:
        index = (SESSION, session_key)
    also_session = session_key if run_id is not None else None
    key = (run_id, session_key, wanted, local_only)
    return EventFilter(index, _rest(also_session, wanted, local_only), key)


def _rest(
    session_key: str | None, wanted: frozenset[str] | None, local_only: bool
) -> Callable[[Event], bool] | None:
    """The checks the index does not make; ``None`` when there are none (the hot path)."""
    if session_key is None and not local_only:
        if wanted is None:
            return None
        return lambda event: event.stream in wanted

    def accepts(event: Event) -> bool:
        return (
            (session_key is None or event.session_key == session_key)
            and (wanted is None or event.stream in wanted)
            and not (local_only and event.ingested)
        )

    return accepts


@attrs.define(eq=False, on_setattr=attrs.setters.NO_OP)
class Batches:
    """The iterator :meth:`Subscription.batches` returns."""

    _subscription: Subscription

    def __aiter__(self) -> Batches:
        return self

    async def __anext__(self) -> list[Event]:
        sub = self._subscription
        if cancel_requested_in(sub._run, WRONG_THREAD):
            await trio.lowlevel.checkpoint()
        reader = sub._reader
        try:
            try:
                items = reader.receive_all_nowait()
            except trio.WouldBlock:
                items = await reader.receive_all()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None
        if type(items[0]) is Dropped:
            items[0] = _dropped_marker(items[0].count)
        return items  # type: ignore[return-value]  # every other item is an Event
