"""A shared broadcast log: subscribers that share a filter read one log, each at its own position.

Fanning an item out to N mailboxes costs the router N appends. Subscribers with the same filter
and the same mailbox settings (a *group*) can instead share one log: the router appends each
item once, and each :class:`Member` reads it at its own position. The producer side then pays
nothing per subscriber, and a reader can take everything it has not read in one slice.

The log must still behave exactly like a mailbox per member, overflow policy included. A member
may fall at most ``capacity`` items behind. When one more item arrives for a member that far
behind, the member *spills*: its unread items are copied into a mailbox of its own (exactly
full), it leaves the log, and from then on the router sends to that mailbox like to any other,
so ``BLOCK``, ``DROP_*``, ``DISCONNECT``, drop markers and never-dropped items work as they
always did. A spilled member whose mailbox runs empty rejoins the log at its end.

The log keeps only what some attached member has not read: at most ``capacity + 1`` items.
Finding the slowest member costs a scan of the members, done only when the log has grown
``capacity`` past the last known slowest position, so fast readers cost one scan per
``capacity`` items.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from typing import TYPE_CHECKING, Generic, TypeVar

import attrs
import trio

from ._cancel import cancel_requested
from ._mailbox import Dropped, Mailbox, MailboxStatistics, Overflow

if TYPE_CHECKING:
    from ._router import Router, Subscriber

__all__ = ["Group", "Member"]

T = TypeVar("T")


@attrs.define(eq=False, on_setattr=attrs.setters.NO_OP, weakref_slot=False)
class Group(Generic[T]):
    """One shared log and the members reading it. Made and owned by a :class:`Router`."""

    #: What members with the same filter and mailbox settings share (the router's group key).
    key: Hashable
    #: The members' mailbox settings: how far behind a member may fall, and what its own
    #: mailbox does once it has spilled.
    capacity: int
    overflow: Overflow
    block_timeout: float | None
    droppable: Callable[[T], bool]
    #: The router attachment that appends to this log.
    subscriber: Subscriber[T] | None = None
    #: The log: ``items[0]`` is item ``base`` (an absolute position); the next is ``end``.
    items: list[T] = attrs.field(factory=list)
    base: int = 0
    end: int = 0
    #: At most the position of the slowest attached member.
    _low: int = 0
    members: dict[Member[T], None] = attrs.field(factory=dict)
    _readers: trio.lowlevel.ParkingLot = attrs.field(factory=trio.lowlevel.ParkingLot)
    _waiting: int = 0
    closed_reason: str | None = None
    open: bool = True

    def append(self, item: T) -> list[Member[T]] | None:
        """Add ``item``; returns the members that were ``capacity`` behind and spilled.

        The spilled members hold their unread items in their own mailboxes (full); the caller
        still owes them ``item``.
        """
        end = self.end + 1
        spilled = None
        if end - self._low > self.capacity:
            spilled = self._rebase(end)
        self.items.append(item)
        self.end = end
        if self._waiting:
            self._waiting -= len(self._readers.unpark_all())
        return spilled

    def takes(self, count: int) -> bool:
        """Whether :meth:`extend` can add ``count`` items: no member is near spilling (that
        is, the log has not grown ``capacity`` past the last known slowest position)."""
        return self.end + count - self._low <= self.capacity

    def extend(self, items: list[T]) -> None:
        """:meth:`append` each of ``items``, when :meth:`takes` says no member spills."""
        self.items += items
        self.end += len(items)
        if self._waiting:
            self._waiting -= len(self._readers.unpark_all())

    def _rebase(self, end: int) -> list[Member[T]] | None:
        """Find the slowest member, spill those too far behind, forget what all have read."""
        members = self.members
        spilled = None
        low = min((m.pos for m in members), default=self.end)
        if end - low > self.capacity:
            spilled = [m for m in members if end - m.pos > self.capacity]
            for member in spilled:
                self._spill(member)
            low = min((m.pos for m in members), default=self.end)
        if low > self.base:
            del self.items[: low - self.base]
            self.base = low
        self._low = low
        return spilled

    def _spill(self, member: Member[T]) -> None:
        del self.members[member]
        mailbox = member.own_mailbox()
        unread = self.items[member.pos - self.base :]
        mailbox.preload(unread)
        member.leave_log()

    def attach(self, member: Member[T]) -> None:
        """(Re)start ``member`` on this log at its end."""
        member.group = self
        member.pos = member.attached_at = self.end
        member.attached = True
        self.members[member] = None

    def detach(self, member: Member[T]) -> None:
        """Take ``member`` off the log; what it has not read moves to its own mailbox, which
        is closed: like a mailbox after its subscriber left, it can still be drained."""
        if self.members.pop(member, False) is None:
            member.leave_log()
            unread = self.items[member.pos - self.base :]
            if unread:
                member.own_mailbox().preload(unread)
            if member.mailbox is not None:
                member.mailbox.close(self.closed_reason)
            if self._waiting:  # its reader may be parked here: let it see the end
                self._waiting -= len(self._readers.unpark_all())

    def room(self) -> int:
        """How many items fit before the slowest attached member spills."""
        low = min((m.pos for m in self.members), default=self.end)
        return self.capacity - (self.end - low)

    def cut_off(self, reason: str) -> None:
        """Disconnect every attached member, as :meth:`Mailbox.disconnect` would: what it has
        not read is discarded (counted as dropped) and its reads end at once."""
        for member in list(self.members):
            del self.members[member]
            member.leave_log()
            mailbox = member.own_mailbox()
            mailbox.preload(self.items[member.pos - self.base :])
            mailbox.disconnect(reason)
        self.items.clear()
        self.base = self._low = self.end
        self.close(reason)

    def close(self, reason: str | None) -> None:
        if self.open:
            self.open = False
            self.closed_reason = reason
        self._waiting -= len(self._readers.unpark_all())

    def caught_up(self) -> None:
        """The only member has read everything: forget the log at once (with several
        members, the log is trimmed when it next grows ``capacity`` long)."""
        self.items.clear()
        self.base = self._low = self.end

    def items_from(self, pos: int) -> list[T]:
        return self.items[pos - self.base :]

    async def park(self) -> None:
        self._waiting += 1
        try:
            await self._readers.park()
        except BaseException:
            self._waiting -= 1
            raise


def extend_logs(subscribers: Iterable[Subscriber[T]], items: list[T]) -> bool:
    """Append ``items`` to every one of ``subscribers`` at once, if each is a shared log
    without a filter that takes them all without a member spilling; else add nothing and
    return False (the router then offers the items one by one).

    The outcome is what offering them one by one would give: every log gets every item, in
    order, and nothing else happens per item when no member spills.
    """
    count = len(items)
    for subscriber in subscribers:
        group = subscriber.group
        if group is None or subscriber.accepts is not None or not group.takes(count):
            return False
    for subscriber in subscribers:
        subscriber.group.extend(items)  # type: ignore[union-attr]  # checked above
    return True


@attrs.define(eq=False, on_setattr=attrs.setters.NO_OP, weakref_slot=False)
class Member(Generic[T]):
    """One reader of a group: the log while it keeps up, its own mailbox after it spilled.

    Reading has a mailbox's interface: ``receive_nowait``, ``receive``, ``receive_all_nowait``,
    ``receive_all``, ``closed_reason``, ``statistics()``.
    """

    group: Group[T]
    router: Router[T]
    #: Order of joining the router (see ``Subscriber.number``).
    number: int = 0
    pos: int = 0
    attached: bool = False
    #: Made the first time the member spills (most members never do).
    mailbox: Mailbox[T] | None = None
    #: Its own router attachment while it reads its mailbox.
    subscriber: Subscriber[T] | None = None
    #: Where it last joined the log, and the items it read from the log before that: what
    #: it read from the log is counted from its position (see :attr:`log_reads`), so a read,
    #: the hot path, updates one field instead of two.
    attached_at: int = 0
    past_log_reads: int = 0
    #: Once it has left the router: its state at that moment (for ``closed_reason`` and
    #: ``statistics()``, which keep answering as they did then).
    final: MailboxStatistics | None = None

    @property
    def log_reads(self) -> int:
        """Items read from the log."""
        if self.attached:
            return self.past_log_reads + self.pos - self.attached_at
        return self.past_log_reads

    def leave_log(self) -> None:
        self.past_log_reads = self.log_reads
        self.attached = False

    def own_mailbox(self) -> Mailbox[T]:
        if self.mailbox is None:
            group = self.group
            self.mailbox = Mailbox(
                group.capacity, group.overflow, group.block_timeout, group.droppable
            )
        return self.mailbox

    # ---- reading -----------------------------------------------------------------------------

    def receive_nowait(self) -> T | Dropped:
        """The next item, or a :class:`Dropped` marker; :exc:`trio.WouldBlock` if none is
        ready, :exc:`trio.EndOfChannel` once closed and drained."""
        if self.attached:
            group = self.group
            pos = self.pos
            if pos < group.end:
                self.pos = pos + 1
                item = group.items[pos - group.base]
                if pos + 1 == group.end and len(group.members) == 1:
                    group.caught_up()
                return item
            if group.open:
                raise trio.WouldBlock
            raise trio.EndOfChannel
        if self.mailbox is None and self.final is not None:  # it left, with nothing unread
            raise trio.EndOfChannel
        mailbox = self.own_mailbox()
        try:
            return mailbox.receive_nowait()
        except trio.WouldBlock:
            if self.router.rejoin(self):
                return self.receive_nowait()
            raise

    def receive_all_nowait(self) -> list[T | Dropped]:
        """Everything readable now, as per-item reads would return it."""
        if self.attached:
            group = self.group
            pos = self.pos
            if pos < group.end:
                self.pos = group.end
                items = group.items_from(pos)
                if len(group.members) == 1:
                    group.caught_up()
                return items  # type: ignore[return-value]  # T | Dropped
            if group.open:
                raise trio.WouldBlock
            raise trio.EndOfChannel
        if self.mailbox is None and self.final is not None:
            raise trio.EndOfChannel
        mailbox = self.own_mailbox()
        try:
            return mailbox.receive_all_nowait()
        except trio.WouldBlock:
            if self.router.rejoin(self):
                return self.receive_all_nowait()
            raise

    async def receive(self) -> T | Dropped:
        """Like :meth:`receive_nowait`, waiting while nothing is ready; always a cancellation
        point, a schedule point only when it waits."""
        if cancel_requested():
            await trio.lowlevel.checkpoint()
        while True:
            try:
                return self.receive_nowait()
            except trio.WouldBlock:
                await self._wait()

    async def receive_all(self) -> list[T | Dropped]:
        """Like :meth:`receive_all_nowait`, waiting while nothing is ready."""
        if cancel_requested():
            await trio.lowlevel.checkpoint()
        while True:
            try:
                return self.receive_all_nowait()
            except trio.WouldBlock:
                await self._wait()

    async def _wait(self) -> None:
        if self.attached:
            await self.group.park()
        else:
            await self.own_mailbox().wait_ready()

    # ---- state -------------------------------------------------------------------------------

    @property
    def closed_reason(self) -> str | None:
        if self.final is not None and self.mailbox is None:
            return self.final.closed_reason
        if self.attached or self.mailbox is None:
            return self.group.closed_reason
        return self.mailbox.closed_reason

    def statistics(self) -> MailboxStatistics:
        if self.final is not None and self.mailbox is None:
            return self.final
        own = None if self.mailbox is None else self.mailbox.statistics()
        received = self.log_reads + (own.received if own else 0)
        if own is None or self.attached:
            group = self.group
            return MailboxStatistics(
                received=received,
                dropped=own.dropped if own else 0,
                queued=group.end - self.pos if self.attached else 0,
                capacity=group.capacity,
                closed_reason=group.closed_reason,
                closed=not group.open,
            )
        return attrs.evolve(own, received=received)
