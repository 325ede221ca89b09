"""A router actor: one task that fans items out from a bounded inbox to filtered subscribers.

Producers put items into the router's inbox; the router task takes them in batches and offers
each to every subscriber whose filter accepts it, through that subscriber's own
:class:`~actors.Mailbox`. So the order in which a subscriber sees items is the order they entered
the inbox, and each subscriber's overflow policy applies to it alone: a slow subscriber under a
drop policy costs the others nothing; under ``BLOCK`` it holds the router for at most its
mailbox's ``block_timeout``, then it is disconnected.

A subscriber sees exactly the items published after :meth:`Router.subscribe` returned, even if
older ones were still queued in the inbox at that moment.

:meth:`Router.flush_nowait` lets a publisher route what is queued from its own task, for items
that should not wait for the router task's turn in the scheduler (an abort's terminal event).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Generic, TypeVar

import attrs
import trio

from ._mailbox import SLOW_CONSUMER, Mailbox, MailboxStatistics, Overflow

__all__ = ["ROUTER_STOPPED", "SUBSCRIBER_FAILED", "Router", "RouterStatistics", "Subscriber"]

T = TypeVar("T")

_log = logging.getLogger("actors.router")

#: ``closed_reason`` of a subscriber removed because its filter or mailbox raised (logged).
SUBSCRIBER_FAILED = "subscriber failed"
#: ``closed_reason`` of every subscriber when the router task ended without :meth:`close`
#: (it was cancelled, or failed with a bug, which is logged by its supervisor).
ROUTER_STOPPED = "router stopped"
#: Reasons a subscriber was cut off rather than closed: counted as disconnects.
_CUT_OFF = frozenset({SLOW_CONSUMER, SUBSCRIBER_FAILED})

#: How many items the router fans out before it lets other tasks (the readers) run.
BATCH = 64


@attrs.frozen
class RouterStatistics:
    """A snapshot of the router's counters, summed over current and past subscribers."""

    #: Items accepted into the inbox.
    published: int
    #: Items waiting in the inbox.
    queued: int
    #: Items subscribers have read.
    deliveries: int
    #: Items lost to subscribers' overflow policies or discarded by disconnects.
    drops: int
    #: Subscribers cut off: as slow consumers, or because their filter or mailbox failed.
    disconnects: int
    #: Subscribers attached now.
    subscribers: int


@attrs.define(eq=False, on_setattr=attrs.setters.NO_OP)
class Subscriber(Generic[T]):
    """One attachment to a router: a filter and the mailbox items go to."""

    mailbox: Mailbox[T]
    #: ``None`` accepts everything (and skips the call on the hot path).
    accepts: Callable[[T], bool] | None = None
    #: The inbox position of the first item this subscriber may see.
    starts_at: int = 0


@attrs.define(eq=False, on_setattr=attrs.setters.NO_OP)
class Router(Generic[T]):
    """Fans items from a bounded inbox out to filtered subscribers' mailboxes.

    Run :meth:`serve` in a nursery (``await nursery.start(router.serve)``); call :meth:`close`
    to end it after the inbox drains.
    """

    capacity: int
    _inbox: Mailbox[T] = attrs.field(init=False)
    _active: tuple[Subscriber[T], ...] = attrs.field(init=False, default=())
    _pending: list[Subscriber[T]] = attrs.field(init=False, factory=list)
    _published: int = attrs.field(init=False, default=0)
    _routed: int = attrs.field(init=False, default=0)
    _close_reason: str | None = attrs.field(init=False, default=None)
    # True while the router task holds items taken from the inbox across an await (it waits
    # for a full BLOCK subscriber): routing queued items then would overtake the held ones.
    _holding: bool = attrs.field(init=False, default=False)
    # Counters of subscribers that have left, so statistics() stays a sum over all of them.
    _past_deliveries: int = attrs.field(init=False, default=0)
    _past_drops: int = attrs.field(init=False, default=0)
    _disconnects: int = attrs.field(init=False, default=0)

    def __attrs_post_init__(self) -> None:
        self._inbox = Mailbox(self.capacity)

    # ---- producers ---------------------------------------------------------------------------

    def free(self) -> int:
        """How many items the inbox takes before a publisher would have to wait."""
        return self._inbox.free()

    def publish_nowait(self, item: T) -> None:
        """Queue ``item`` for fan-out; :exc:`trio.WouldBlock` if the inbox is full.

        Raises :exc:`trio.ClosedResourceError` after :meth:`close`.
        """
        self._inbox.send_nowait(item)
        self._published += 1

    async def publish(self, item: T) -> None:
        """Queue ``item`` for fan-out, waiting for space if the inbox is full."""
        await self._inbox.send(item)
        self._published += 1

    async def wait_free(self, count: int) -> None:
        """Wait until the inbox takes ``count`` items without waiting."""
        await self._inbox.wait_free(count)

    def flush_nowait(self) -> bool:
        """Route every queued item now, in the caller's task, if no subscriber makes that wait.

        Subscribers then hold the items before this returns, instead of one scheduler turn
        later (two, counting the reader's). The order stays the inbox's order. Returns False,
        routing nothing, while the router task is waiting on a full ``BLOCK`` subscriber or when
        one has less room than there are queued items; the router task routes them as usual.
        The cost is the router's own for these items: bounded by the inbox's capacity.
        """
        if self._holding:
            return False
        inbox = self._inbox
        queued = len(inbox)
        for subscriber in (*self._active, *self._pending):
            mailbox = subscriber.mailbox
            short = mailbox.free() < queued and not mailbox.closed  # closed takes nothing
            if short and mailbox.overflow is Overflow.BLOCK:
                return False
        for item in inbox.take_nowait(queued):
            owed = self._offer(item)
            assert owed is None, "a BLOCK subscriber with room refused an item"
        return True

    # ---- subscribers -------------------------------------------------------------------------

    def subscribe(
        self, mailbox: Mailbox[T], accepts: Callable[[T], bool] | None = None
    ) -> Subscriber[T]:
        """Attach ``mailbox``; it gets every later item that ``accepts`` (if given) approves."""
        if self._close_reason is not None:
            raise trio.ClosedResourceError("router closed")
        subscriber = Subscriber(mailbox, accepts, starts_at=self._published)
        if self._published == self._routed:
            self._active += (subscriber,)
        else:
            self._pending.append(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber[T]) -> None:
        """Detach ``subscriber`` and close its mailbox; safe to call more than once."""
        if subscriber in self._active:
            self._active = tuple(s for s in self._active if s is not subscriber)
        elif subscriber in self._pending:
            self._pending.remove(subscriber)
        else:
            return
        self._retire(subscriber)

    def _retire(self, subscriber: Subscriber[T]) -> None:
        mailbox = subscriber.mailbox
        if mailbox.closed_reason in _CUT_OFF:
            self._disconnects += 1
        mailbox.close()
        stats = mailbox.statistics()
        self._past_deliveries += stats.received
        self._past_drops += stats.dropped

    # ---- the actor ---------------------------------------------------------------------------

    def close(self, reason: str | None = None) -> None:
        """Accept no more items; the router ends once it has routed what is queued.

        Every subscriber's mailbox is then closed with ``reason``, so readers see the end after
        the last item.
        """
        if self._close_reason is None:
            self._close_reason = reason or "router closed"
        self._inbox.close(reason)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The router task: route until closed and drained, then close every mailbox."""
        task_status.started()
        inbox = self._inbox
        try:
            while True:
                try:
                    await inbox.wait_readable()
                except trio.EndOfChannel:
                    break
                for item in inbox.take_nowait(BATCH):
                    owed = self._offer(item)
                    if owed:
                        self._holding = True
                        await self._deliver_waiting(item, owed)
                self._holding = False
                if len(inbox):
                    await trio.lowlevel.checkpoint()
        finally:
            # However it ends (closed, cancelled, or a bug), no publisher may wait on it.
            if self._close_reason is None:
                self._close_reason = ROUTER_STOPPED
            self._inbox.close(self._close_reason)
            self.close_subscribers(self._close_reason)

    def _offer(self, item: T) -> list[Subscriber[T]] | None:
        """Give ``item`` to every accepting subscriber that has room, without waiting.

        Returns the ``BLOCK`` subscribers that were full, which are still owed the item.
        """
        if self._pending:
            self._activate_pending()
        self._routed += 1
        owed: list[Subscriber[T]] | None = None
        for subscriber in self._active:
            try:
                accepts = subscriber.accepts
                if accepts is None or accepts(item):
                    subscriber.mailbox.send_nowait(item)
            except trio.WouldBlock:
                if owed is None:
                    owed = []
                owed.append(subscriber)
            except trio.ClosedResourceError:
                self.unsubscribe(subscriber)
            except Exception:
                self._fail(subscriber)
        return owed

    async def _deliver_waiting(self, item: T, owed: list[Subscriber[T]]) -> None:
        """Wait for room at each full ``BLOCK`` subscriber, up to its ``block_timeout``."""
        for subscriber in owed:
            try:
                await subscriber.mailbox.send(item)
            except trio.ClosedResourceError:
                self.unsubscribe(subscriber)
            except Exception:
                self._fail(subscriber)

    def _fail(self, subscriber: Subscriber[T]) -> None:
        # A subscriber's own filter or policy hook is broken: it alone pays.
        _log.exception("router: subscriber failed on an item; it is disconnected")
        subscriber.mailbox.disconnect(SUBSCRIBER_FAILED)
        self.unsubscribe(subscriber)

    def _activate_pending(self) -> None:
        ready = [s for s in self._pending if s.starts_at <= self._routed]
        if ready:
            self._pending = [s for s in self._pending if s.starts_at > self._routed]
            self._active += tuple(ready)

    def close_subscribers(self, reason: str) -> None:
        """Close every subscriber's mailbox now, without waiting for the inbox to drain.

        Readers still get what is queued for them, then the end. A router blocked on a full
        mailbox stops waiting; items still in the inbox reach no one. For shutdowns that
        cannot wait any longer.
        """
        for subscriber in (*self._active, *self._pending):
            subscriber.mailbox.close(reason)

    def statistics(self) -> RouterStatistics:
        live: list[MailboxStatistics] = [
            s.mailbox.statistics() for s in (*self._active, *self._pending)
        ]
        return RouterStatistics(
            published=self._published,
            queued=len(self._inbox),
            deliveries=self._past_deliveries + sum(s.received for s in live),
            drops=self._past_drops + sum(s.dropped for s in live),
            disconnects=self._disconnects + sum(s.closed_reason in _CUT_OFF for s in live),
            subscribers=len(live),
        )
