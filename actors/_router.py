"""A router actor: one task that fans items out from a bounded inbox to filtered subscribers.

Producers put items into the router's inbox; the router task takes them in batches and offers
each to every subscriber whose filter accepts it, through that subscriber's own
:class:`~actors.Mailbox`. So the order in which a subscriber sees items is the order they entered
the inbox, and each subscriber's overflow policy applies to it alone: a slow subscriber under a
drop policy costs the others nothing; under ``BLOCK`` it holds the router for at most its
mailbox's ``block_timeout``, then it is disconnected.

A subscriber sees exactly the items published after :meth:`Router.subscribe` returned, even if
older ones were still queued in the inbox at that moment.

Routing costs what the *matching* subscribers cost, not what all of them cost. A router made
with ``keys`` (a function giving an item's key in each of a few dimensions, such as its run id
and its session) keeps an index: a subscriber attached with ``index=(dimension, key)`` is
offered only the items with that key in that dimension, found with one dict lookup per
dimension; its ``accepts`` filter then checks the rest. Subscribers without an index entry are
offered everything. Subscribers with equal filters can share one log (:meth:`Router.join`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Iterator
from typing import Generic, TypeVar

import attrs
import trio

from ._broadcast import Group, Member, extend_logs
from ._mailbox import SLOW_CONSUMER, Mailbox, MailboxStatistics, Overflow, _never_droppable
from ._subscriber import (
    GROUP_MAILBOX,
    JOINING_ORDER,
    IndexEntry,
    RouterStatistics,
    Subscriber,
)

__all__ = [
    "ROUTER_STOPPED",
    "SUBSCRIBER_FAILED",
    "IndexEntry",
    "Router",
    "RouterStatistics",
    "Subscriber",
]

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


@attrs.define(eq=False, on_setattr=attrs.setters.NO_OP)
class Router(Generic[T]):
    """Fans items from a bounded inbox out to filtered subscribers' mailboxes.

    Run :meth:`serve` in a nursery (``await nursery.start(router.serve)``); call :meth:`close`
    to end it after the inbox drains.
    """

    capacity: int
    #: An item's key in each indexed dimension (``None``: no index).
    keys: Callable[[T], tuple[Hashable, ...]] | None = attrs.field(default=None, kw_only=True)
    #: How many keys ``keys`` returns.
    key_dimensions: int = attrs.field(default=0, kw_only=True)
    #: Subscribers filed in the index: while there are none, items' keys are not computed.
    _indexed: int = attrs.field(init=False, default=0)
    _inbox: Mailbox[T] = attrs.field(init=False)
    #: Subscribers offered every item; dicts as ordered sets: O(1) to leave.
    _everyone: dict[Subscriber[T], None] = attrs.field(init=False, factory=dict)
    #: Per dimension: key -> the subscribers filed under it.
    _index: list[dict[Hashable, dict[Subscriber[T], None]]] = attrs.field(init=False, factory=list)
    #: Subscribers waiting for the router to reach the items published after they joined.
    _pending: list[Subscriber[T]] = attrs.field(init=False, factory=list)
    #: Shared logs by group key (see :meth:`join`).
    _groups: dict[Hashable, Group[T]] = attrs.field(init=False, factory=dict)
    #: Every group member, attached or spilled.
    _members: dict[Member[T], None] = attrs.field(init=False, factory=dict)
    #: Subscribers and members that have joined so far (numbers them).
    _joined: int = attrs.field(init=False, default=0)
    #: Tasks in :meth:`wait_routed`, woken after each batch the router task routes.
    _route_waiters: trio.lowlevel.ParkingLot = attrs.field(
        init=False, factory=trio.lowlevel.ParkingLot
    )
    _route_waiting: int = attrs.field(init=False, default=0)
    _serving: bool = attrs.field(init=False, default=False)
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
        if (self.keys is None) != (self.key_dimensions == 0):
            raise ValueError("keys and key_dimensions (>= 1) go together")
        self._index = [{} for _ in range(self.key_dimensions)]

    # ---- producers ---------------------------------------------------------------------------

    def free(self) -> int:
        """How many items the inbox takes before a publisher would have to wait."""
        inbox = self._inbox  # Mailbox.free, inlined: every emit asks
        return inbox.capacity - len(inbox._queue) if inbox._open else 0

    def publish_nowait(self, item: T) -> None:
        """Queue ``item`` for fan-out; :exc:`trio.WouldBlock` if the inbox is full.

        Raises :exc:`trio.ClosedResourceError` after :meth:`close`.
        """
        inbox = self._inbox
        queue = inbox._queue
        if inbox._open and len(queue) < inbox.capacity:  # Mailbox.send_nowait, inlined
            queue.append(item)
            if inbox._waiting_readers:
                inbox._wake_reader()
        else:
            inbox.send_nowait(item)
        self._published += 1

    async def publish(self, item: T) -> None:
        """Queue ``item`` for fan-out, waiting for space if the inbox is full."""
        await self._inbox.send(item)
        self._published += 1

    async def wait_free(self, count: int) -> None:
        """Wait until the inbox takes ``count`` items without waiting."""
        await self._inbox.wait_free(count)

    def flush_nowait(self) -> bool:
        """Route every queued item now, in the caller's task, if that makes no subscriber
        wait or lose anything.

        Subscribers then hold the items before this returns, instead of one scheduler turn
        later (two, counting the reader's). The order stays the inbox's order. Returns False,
        routing nothing, while the router task is waiting on a full ``BLOCK`` subscriber, or
        when some subscriber has less room than there are queued items: routing them all at
        once could make it wait, drop or be cut off where the router's own pace, which lets
        readers run between batches, would not. The router task then routes them as usual.
        Costs one room check per subscriber, and the router's own work for the items.
        """
        if self._holding:
            return False
        inbox = self._inbox
        queued = len(inbox)
        for subscriber in self.subscribers():
            mailbox = subscriber.mailbox
            if mailbox.free() < queued and not mailbox.closed:  # closed takes nothing
                return False
        for group in self._groups.values():
            if group.room() < queued:
                return False
        for item in inbox.take_nowait(queued):
            owed = self._offer(item)
            assert owed is None, "a subscriber with room refused an item"
        self._wake_route_waiters()
        return True

    # ---- subscribers -------------------------------------------------------------------------

    def subscribe(
        self,
        mailbox: Mailbox[T],
        accepts: Callable[[T], bool] | None = None,
        *,
        index: IndexEntry | None = None,
    ) -> Subscriber[T]:
        """Attach ``mailbox``; it gets every later item that ``accepts`` (if given) approves.

        With ``index=(dimension, key)`` it is offered only items whose ``keys(item)[dimension]``
        is ``key`` (``accepts`` still checks them); that needs a router made with ``keys``.
        """
        if self._close_reason is not None:
            raise trio.ClosedResourceError("router closed")
        self._check_index(index)
        self._joined += 1
        subscriber = Subscriber(
            mailbox, accepts, starts_at=self._published, index=index, number=self._joined
        )
        if self._published == self._routed:
            self._file(subscriber)
        else:
            self._pending.append(subscriber)
        return subscriber

    def _file(self, subscriber: Subscriber[T]) -> None:
        entry = subscriber.index
        if entry is None:
            self._everyone[subscriber] = None
        else:
            dimension, key = entry
            self._index[dimension].setdefault(key, {})[subscriber] = None
            self._indexed += 1

    def _unfile(self, subscriber: Subscriber[T]) -> bool:
        entry = subscriber.index
        if entry is None:
            return self._everyone.pop(subscriber, False) is None
        dimension, key = entry
        bucket = self._index[dimension].get(key)
        if bucket is None or bucket.pop(subscriber, False) is not None:
            return False
        if not bucket:
            del self._index[dimension][key]
        self._indexed -= 1
        return True

    def unsubscribe(self, subscriber: Subscriber[T]) -> None:
        """Detach ``subscriber`` and close its mailbox; safe to call more than once. O(1)."""
        if not self._unfile(subscriber) and subscriber not in self._pending:
            return
        self.unsubscribe_filed(subscriber)

    def unsubscribe_filed(self, subscriber: Subscriber[T]) -> None:
        if subscriber in self._pending:
            self._pending.remove(subscriber)
        self._retire(subscriber)

    def subscribers(self) -> Iterator[Subscriber[T]]:
        """Every attached mailbox subscriber (a snapshot, safe to change the router while
        iterating); groups' attachments are not included."""
        filed = [s for s in self._everyone if s.group is None]
        for buckets in self._index:
            for bucket in buckets.values():
                filed.extend(s for s in bucket if s.group is None)
        return iter([*filed, *self._pending])

    # ---- groups: subscribers sharing one log -------------------------------------------------

    def join(
        self,
        key: Hashable,
        *,
        capacity: int,
        overflow: Overflow = Overflow.BLOCK,
        block_timeout: float | None = None,
        droppable: Callable[[T], bool] | None = None,
        accepts: Callable[[T], bool] | None = None,
        index: IndexEntry | None = None,
    ) -> Member[T]:
        """Attach a reader that shares a log with every other reader joined under ``key``.

        Readers under one ``key`` must have the same filter (``accepts``, ``index``) and the
        same mailbox settings; the first one's are kept. A :class:`~actors.Member` reads like
        a mailbox of ``capacity`` with ``overflow`` and sees exactly what one would: the items
        published from now on that match. See :mod:`actors._broadcast`.
        """
        if self._close_reason is not None:
            raise trio.ClosedResourceError("router closed")
        self._check_index(index)
        group = self._groups.get(key)
        if group is None:
            droppable = droppable or _never_droppable
            group = Group(key, capacity, overflow, block_timeout, droppable)
        self._joined += 1
        member: Member[T] = Member(group, self, number=self._joined)
        self._members[member] = None
        if self._published == self._routed:
            if group.subscriber is None:
                self._open_group(group, accepts, index)
            group.attach(member)
            return member
        # Items published before this reader joined are still in the inbox: it must not see
        # them, so it starts on a mailbox of its own and joins the log once that runs empty.
        mailbox = member.own_mailbox()
        member.subscriber = self.subscribe(mailbox, accepts, index=index)
        member.subscriber.member = member
        member.subscriber.number = member.number
        return member

    def _check_index(self, index: IndexEntry | None) -> None:
        if index is not None and not 0 <= index[0] < self.key_dimensions:
            raise ValueError(f"no index dimension {index[0]!r} in this router")

    def _open_group(
        self,
        group: Group[T],
        accepts: Callable[[T], bool] | None,
        index: IndexEntry | None,
    ) -> None:
        group.subscriber = Subscriber(
            GROUP_MAILBOX, accepts, starts_at=self._published, index=index, group=group
        )
        self._groups[group.key] = group
        self._file(group.subscriber)

    def rejoin(self, member: Member[T]) -> bool:
        """Move a reader whose own mailbox ran empty back onto its group's log.

        Not while the router holds items for it (it waits on a full ``BLOCK`` subscriber), nor
        while the reader is pending (items published before it joined are still queued).
        """
        subscriber = member.subscriber
        mailbox = member.mailbox
        if (
            subscriber is None
            or mailbox is None
            or self._holding
            or not mailbox.is_drained()
            or subscriber in self._pending
            or not self._unfile(subscriber)
        ):
            return False
        member.subscriber = None
        old = member.group
        group = self._groups.get(old.key)
        if group is None:
            group = Group(old.key, old.capacity, old.overflow, old.block_timeout, old.droppable)
            self._open_group(group, subscriber.accepts, subscriber.index)
        group.attach(member)
        return True

    def leave(self, member: Member[T]) -> None:
        """Detach a reader from its group (or its own mailbox); safe to call more than once."""
        if member.final is not None:
            return
        stats = member.statistics()
        if member.attached:
            group = member.group
            group.detach(member)
            if not group.members:
                self._close_group(group)
        subscriber = member.subscriber
        member.subscriber = None
        if subscriber is not None and (self._unfile(subscriber) or subscriber in self._pending):
            self.unsubscribe_filed(subscriber)
        if self._members.pop(member, False) is None:
            self._past_deliveries += stats.received
            self._past_drops += stats.dropped
            self._disconnects += stats.closed_reason in _CUT_OFF
            if member.mailbox is not None:
                member.mailbox.close(stats.closed_reason)
        member.final = stats

    def _close_group(self, group: Group[T]) -> None:
        """Forget a group nobody reads any more (its members left or spilled)."""
        if self._groups.get(group.key) is group:
            del self._groups[group.key]
            assert group.subscriber is not None
            self._unfile(group.subscriber)

    def _retire(self, subscriber: Subscriber[T]) -> None:
        mailbox = subscriber.mailbox
        if subscriber.member is not None:
            subscriber.member.subscriber = None  # its mailbox counts and closes at leave()
            return
        if subscriber.group is not None:
            return
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
        self._serving = True
        task_status.started()
        inbox = self._inbox
        try:
            while True:
                try:
                    await inbox.wait_readable()
                except trio.EndOfChannel:
                    break
                items = inbox.take_nowait(BATCH)
                if not self._log_all(items):
                    for item in items:
                        owed = self._offer(item)
                        if owed:
                            self._holding = True
                            self._wake_route_waiters()  # routing stalls: they need not wait
                            await self._deliver_waiting(item, owed)
                self._holding = False
                if self._route_waiting:
                    self._wake_route_waiters()
                if len(inbox):
                    await trio.lowlevel.checkpoint()
        finally:
            # However it ends (closed, cancelled, or a bug), no publisher may wait on it.
            self._serving = False
            self._wake_route_waiters()
            if self._close_reason is None:
                self._close_reason = ROUTER_STOPPED
            self._inbox.close(self._close_reason)
            self.close_subscribers(self._close_reason)

    async def wait_routed(self) -> None:
        """Wait until every item published so far has been offered to the subscribers.

        Returns early while routing is stalled on a full ``BLOCK`` subscriber (the items are
        on their way, but only its reader can let them through), and once the router task
        has stopped. Returns without yielding when everything is routed already.
        """
        target = self._published
        while self._routed < target and self._serving and not self._holding:
            self._route_waiting += 1
            try:
                await self._route_waiters.park()
            except BaseException:
                self._route_waiting -= 1
                raise

    def _wake_route_waiters(self) -> None:
        if self._route_waiting:
            self._route_waiting -= len(self._route_waiters.unpark_all())

    def _log_all(self, items: list[T]) -> bool:
        """Route ``items`` at once when every subscriber is a shared log that takes them all
        without a member spilling (see :func:`~actors._broadcast.extend_logs`): one
        ``list.extend`` per log and batch instead of three calls per item and subscriber.
        False, routing nothing, otherwise."""
        if self._indexed or self._pending or not extend_logs(self._everyone, items):
            return False
        self._routed += len(items)
        return True

    def _offer(self, item: T) -> list[Subscriber[T]] | None:
        """Give ``item`` to every matching subscriber that has room, without waiting.

        Returns the ``BLOCK`` subscribers that were full, which are still owed the item.
        """
        if self._pending:
            self._activate_pending()
        self._routed += 1
        owed: list[Subscriber[T]] | None = None
        if self._everyone:
            owed = self._offer_to(self._everyone, item, owed)
        if self._indexed:
            assert self.keys is not None
            for buckets, key in zip(self._index, self.keys(item), strict=True):
                if buckets:
                    bucket = buckets.get(key)
                    if bucket:
                        owed = self._offer_to(bucket, item, owed)
        return owed

    def _offer_to(
        self,
        subscribers: dict[Subscriber[T], None],
        item: T,
        owed: list[Subscriber[T]] | None,
    ) -> list[Subscriber[T]] | None:
        gone: list[Subscriber[T]] | None = None
        spilled: list[Subscriber[T]] | None = None
        emptied: list[Group[T]] | None = None
        for subscriber in subscribers:
            accepts = subscriber.accepts
            mailbox = subscriber.mailbox
            try:
                if accepts is not None and not accepts(item):
                    continue
                group = subscriber.group
                if group is not None:
                    members = group.append(item)
                    if members is not None:
                        if spilled is None:
                            spilled = []
                        spilled += [subscriber.spilled(member, self._routed) for member in members]
                        if not group.members:
                            emptied = [*(emptied or ()), group]
                    continue
                # Mailbox.send_nowait, inlined for the common case: open, with room.
                queue = mailbox._queue
                if mailbox._open and len(queue) < mailbox.capacity:
                    queue.append(item)
                    if mailbox._waiting_readers:
                        mailbox._wake_reader()
                else:
                    mailbox.send_nowait(item)
            except trio.WouldBlock:
                if owed is None:
                    owed = []
                owed.append(subscriber)
            except Exception as exc:
                if gone is None:
                    gone = []
                gone.append(subscriber)
                if not isinstance(exc, trio.ClosedResourceError):
                    self._log_failure(subscriber)
        if gone is not None:  # not while iterating: the dict would change size
            for subscriber in gone:
                self._drop(subscriber)
        if emptied is not None:
            for group in emptied:
                self._close_group(group)
        if spilled is not None:
            owed = self._adopt(spilled, item, owed)
        return owed

    def _adopt(
        self, spilled: list[Subscriber[T]], item: T, owed: list[Subscriber[T]] | None
    ) -> list[Subscriber[T]] | None:
        """File spilled members as plain subscribers, and give them the item that spilled
        them (through their overflow policy: their mailboxes are full)."""
        for subscriber in spilled:
            self._file(subscriber)
        return self._offer_to(dict.fromkeys(spilled), item, owed)

    def _drop(self, subscriber: Subscriber[T]) -> None:
        group = subscriber.group
        if group is not None:  # its filter failed: every member is cut off, as a mailbox is
            group.cut_off(SUBSCRIBER_FAILED)
            self._close_group(group)
            return
        if not subscriber.mailbox.closed:
            subscriber.mailbox.disconnect(SUBSCRIBER_FAILED)
        self.unsubscribe(subscriber)

    async def _deliver_waiting(self, item: T, owed: list[Subscriber[T]]) -> None:
        """Wait for room at each full ``BLOCK`` subscriber, up to its ``block_timeout``, in
        the order they subscribed."""
        if len(owed) > 1:
            owed.sort(key=JOINING_ORDER)
        for subscriber in owed:
            try:
                await subscriber.mailbox.send(item)
            except trio.ClosedResourceError:
                self.unsubscribe(subscriber)
            except Exception:
                self._fail(subscriber)

    def _fail(self, subscriber: Subscriber[T]) -> None:
        self._log_failure(subscriber)
        self._drop(subscriber)

    def _log_failure(self, subscriber: Subscriber[T]) -> None:
        # A subscriber's own filter or policy hook is broken: it alone pays.
        _log.exception("router: subscriber failed on an item; it is disconnected")
        if subscriber.group is None and not subscriber.mailbox.closed:
            subscriber.mailbox.disconnect(SUBSCRIBER_FAILED)

    def _activate_pending(self) -> None:
        ready = [s for s in self._pending if s.starts_at <= self._routed]
        if ready:
            self._pending = [s for s in self._pending if s.starts_at > self._routed]
            for subscriber in ready:
                self._file(subscriber)

    def close_subscribers(self, reason: str) -> None:
        """Close every subscriber's mailbox now, without waiting for the inbox to drain.

        Readers still get what is queued for them, then the end. A router blocked on a full
        mailbox stops waiting; items still in the inbox reach no one. For shutdowns that
        cannot wait any longer.
        """
        for subscriber in self.subscribers():
            subscriber.mailbox.close(reason)
        for group in list(self._groups.values()):
            # Its members read what is logged, then the end; a later join starts a new group.
            group.close(reason)
            self._close_group(group)

    def statistics(self) -> RouterStatistics:
        live: list[MailboxStatistics] = [
            s.mailbox.statistics() for s in self.subscribers() if s.member is None
        ]
        members = [member.statistics() for member in self._members]
        return RouterStatistics(
            published=self._published,
            queued=len(self._inbox),
            deliveries=self._past_deliveries + sum(s.received for s in (*live, *members)),
            drops=self._past_drops + sum(s.dropped for s in (*live, *members)),
            disconnects=self._disconnects
            + sum(s.closed_reason in _CUT_OFF for s in (*live, *members)),
            subscribers=len(live)
            + sum(m.attached or m.subscriber is not None for m in self._members),
        )
