"""Subscriptions: a filtered, bounded view of the bus's events for one reader."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import attrs
import trio

from actors import (
    ROUTER_STOPPED,
    SLOW_CONSUMER,
    SUBSCRIBER_FAILED,
    Dropped,
    Mailbox,
    Router,
    Subscriber,
    cancel_requested_in,
)

from ._actor import epoch_ms
from ._core import WRONG_THREAD
from ._event import DROPPED_STREAM, Event
from ._frozen import FrozenDict

__all__ = [
    "BUS_CLOSED",
    "ROUTER_STOPPED",
    "SLOW_CONSUMER",
    "SUBSCRIBER_FAILED",
    "Subscription",
    "SubscriptionStatistics",
    "event_filter",
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

    _mailbox: Mailbox[Event]
    _router: Router[Event]
    _subscriber: Subscriber[Event]
    #: The bus's trio run, whose tasks alone may read the subscription.
    _run: trio.lowlevel.TrioToken
    #: The mailbox's bound method, looked up once: reading is the hot path.
    _take: Callable[[], Event | Dropped] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._take = self._mailbox.receive_nowait

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        if cancel_requested_in(self._run, WRONG_THREAD):
            await trio.lowlevel.checkpoint()
        try:
            try:
                item = self._take()
            except trio.WouldBlock:
                item = await self._mailbox.receive()
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

    @property
    def closed_reason(self) -> str | None:
        """``None`` while open; once ended, :data:`BUS_CLOSED`, :data:`SLOW_CONSUMER`,
        :data:`SUBSCRIBER_FAILED` or :data:`ROUTER_STOPPED` (see ``docs/api.md``)."""
        return self._mailbox.closed_reason

    def statistics(self) -> SubscriptionStatistics:
        cancel_requested_in(self._run, WRONG_THREAD)
        stats = self._mailbox.statistics()
        return SubscriptionStatistics(
            delivered=stats.received, dropped=stats.dropped, queued=stats.queued
        )

    def _detach(self) -> None:
        self._router.unsubscribe(self._subscriber)


def _dropped_marker(count: int) -> Event:
    return Event("", 0, DROPPED_STREAM, epoch_ms(), FrozenDict(count=count), None)


def event_filter(
    run_id: str | None,
    session_key: str | None,
    streams: Iterable[str] | None,
    *,
    local_only: bool = False,
) -> Callable[[Event], bool] | None:
    """The router-side filter for a subscription; ``None`` when it takes every event."""
    accepts = _field_filter(run_id, session_key, streams)
    if not local_only:
        return accepts
    if accepts is None:
        return lambda event: not event.ingested
    fields = accepts
    return lambda event: not event.ingested and fields(event)


def _field_filter(
    run_id: str | None, session_key: str | None, streams: Iterable[str] | None
) -> Callable[[Event], bool] | None:
    if isinstance(streams, str):
        raise TypeError("streams must be a collection of stream names, not one str")
    wanted = None if streams is None else frozenset(streams)
    if wanted is not None and not all(isinstance(s, str) for s in wanted):
        raise TypeError("streams must contain only str")
    if run_id is None and session_key is None and wanted is None:
        return None
    if run_id is None and wanted is None:
        return lambda event: event.session_key == session_key
    if session_key is None and wanted is None:
        return lambda event: event.run_id == run_id

    def accepts(event: Event) -> bool:
        return (
            (run_id is None or event.run_id == run_id)
            and (session_key is None or event.session_key == session_key)
            and (wanted is None or event.stream in wanted)
        )

    return accepts
