"""A bounded mailbox with an explicit overflow policy.

A mailbox is the only way items reach an actor. It never grows past its capacity: when it is
full, its :class:`Overflow` policy decides whether the sender waits, an item is dropped, or the
receiver is disconnected. Drops are never silent: the receiver's next read after a drop is a
:class:`Dropped` marker carrying how many items it missed.

Sending and receiving await only when they must (a full mailbox under ``BLOCK``, an empty one on
receive). Trio's memory channels always yield to the scheduler, which costs about twenty times
more than the work itself on a fan-out path; a bounded mailbox lets the batch size be bounded by
the capacity instead.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

import attrs
import trio

from ._cancel import cancel_requested

__all__ = ["SLOW_CONSUMER", "Dropped", "Mailbox", "MailboxStatistics", "Overflow"]

T = TypeVar("T")

#: The ``closed_reason`` of a mailbox whose receiver could not keep up.
SLOW_CONSUMER = "slow consumer"


class Overflow(enum.Enum):
    """What a full mailbox does with one more item."""

    #: The sender waits for space, up to the mailbox's ``block_timeout``; then the receiver is
    #: disconnected as a slow consumer.
    BLOCK = "block"
    #: The oldest droppable queued item makes room; if none is queued, a droppable new item is
    #: dropped instead; if nothing droppable is left, the receiver is disconnected.
    DROP_OLDEST = "drop_oldest"
    #: A droppable new item is dropped; a non-droppable one replaces the newest droppable queued
    #: item; if nothing droppable is left, the receiver is disconnected.
    DROP_NEWEST = "drop_newest"
    #: The receiver is disconnected at once.
    DISCONNECT = "disconnect"


@attrs.frozen
class Dropped:
    """In-band marker: ``count`` items were dropped since the receiver's previous read."""

    count: int


@attrs.frozen
class MailboxStatistics:
    """A snapshot of one mailbox's counters."""

    #: Items the receiver has taken out.
    received: int
    #: Items lost to the overflow policy or discarded by a disconnect.
    dropped: int
    #: Items waiting to be read now.
    queued: int
    capacity: int
    #: ``None`` while open; else why it closed (for example :data:`SLOW_CONSUMER`).
    closed_reason: str | None
    #: True once no more items can be sent.
    closed: bool


def _never_droppable(item: object) -> bool:
    return False


def _check_capacity(inst: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{attribute.name} must be a positive int, not {value!r}")


def _check_timeout(
    inst: object, attribute: attrs.Attribute[float | None], value: float | None
) -> None:
    if value is not None and not (isinstance(value, int | float) and value > 0):
        raise ValueError(f"{attribute.name} must be a positive number or None, not {value!r}")


@attrs.define(eq=False, on_setattr=attrs.setters.NO_OP)
class Mailbox(Generic[T]):
    """A bounded single-receiver queue with an overflow policy and in-band drop markers.

    ``droppable(item)`` tells which items the ``DROP_*`` policies may discard; it is asked only
    when the mailbox is full. ``block_timeout=None`` makes ``BLOCK`` wait for ever (the right
    choice for an actor's own inbox, where waiting is back-pressure, not a fault).
    """

    capacity: int = attrs.field(validator=_check_capacity)
    overflow: Overflow = attrs.field(
        default=Overflow.BLOCK, validator=attrs.validators.instance_of(Overflow)
    )
    block_timeout: float | None = attrs.field(default=None, validator=_check_timeout)
    droppable: Callable[[T], bool] = _never_droppable
    _queue: deque[T] = attrs.field(init=False, factory=deque)
    _readers: trio.lowlevel.ParkingLot = attrs.field(init=False, factory=trio.lowlevel.ParkingLot)
    _writers: trio.lowlevel.ParkingLot = attrs.field(init=False, factory=trio.lowlevel.ParkingLot)
    # How many tasks are parked in each lot: an int is cheaper to test than the lot itself.
    _waiting_readers: int = attrs.field(init=False, default=0)
    _waiting_writers: int = attrs.field(init=False, default=0)
    _open: bool = attrs.field(init=False, default=True)
    _closed_reason: str | None = attrs.field(init=False, default=None)
    _unreported_drops: int = attrs.field(init=False, default=0)
    # The first this-many queued items are known not droppable, so a DROP_OLDEST scan starts
    # after them: without it, a full mailbox headed by kept items rescans them on every send.
    _kept_prefix: int = attrs.field(init=False, default=0)
    _received: int = attrs.field(init=False, default=0)
    _dropped: int = attrs.field(init=False, default=0)

    # ---- state -------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once :meth:`close` or :meth:`disconnect` was called."""
        return not self._open

    @property
    def closed_reason(self) -> str | None:
        return self._closed_reason

    def free(self) -> int:
        """How many items fit before the mailbox is full; none once it is closed."""
        if not self._open:
            return 0
        return self.capacity - len(self._queue)

    def __len__(self) -> int:
        return len(self._queue)

    def statistics(self) -> MailboxStatistics:
        return MailboxStatistics(
            received=self._received,
            dropped=self._dropped,
            queued=len(self._queue),
            capacity=self.capacity,
            closed_reason=self._closed_reason,
            closed=not self._open,
        )

    # ---- sending -----------------------------------------------------------------------------

    def send_nowait(self, item: T) -> None:
        """Put ``item`` in, applying the overflow policy if the mailbox is full.

        Raises :exc:`trio.WouldBlock` if it is full under ``BLOCK``, and
        :exc:`trio.ClosedResourceError` if it is closed or this send disconnected it.
        """
        if not self._open:
            raise trio.ClosedResourceError(self._closed_reason or "mailbox closed")
        queue = self._queue
        if len(queue) >= self.capacity and not self._make_room(item):
            return
        queue.append(item)
        if self._waiting_readers:
            self._wake_reader()

    async def send(self, item: T) -> None:
        """Put ``item`` in; under ``BLOCK``, wait up to ``block_timeout`` for space.

        It is always a cancellation point, and yields only when it waits. When the wait times
        out, the receiver is disconnected as a slow consumer and
        :exc:`trio.ClosedResourceError` is raised.
        """
        if cancel_requested():
            await trio.lowlevel.checkpoint()
        if self._open and len(self._queue) < self.capacity:
            self.send_nowait(item)
            return
        if self.overflow is not Overflow.BLOCK:
            self.send_nowait(item)
            return
        timeout = math.inf if self.block_timeout is None else self.block_timeout
        with trio.move_on_after(timeout):
            await self.wait_free(1)
            self.send_nowait(item)
            return
        self.disconnect(SLOW_CONSUMER)
        raise trio.ClosedResourceError(SLOW_CONSUMER)

    async def wait_free(self, count: int) -> None:
        """Wait until at least ``count`` items fit (returns at once if they do).

        Raises :exc:`trio.ClosedResourceError` if the mailbox is or becomes closed. It is always
        a cancellation point, and yields only when it waits.
        """
        if cancel_requested():
            await trio.lowlevel.checkpoint()
        if count > self.capacity:
            raise ValueError(f"cannot wait for {count} free slots in a mailbox of {self.capacity}")
        woken = False
        while self._open and len(self._queue) > self.capacity - count:
            self._waiting_writers += 1
            try:
                await self._writers.park()
            except BaseException:
                self._waiting_writers -= 1  # cancelled while parked, so nobody woke it
                raise
            woken = True
        if woken and self._waiting_writers and len(self._queue) < self.capacity:
            # Pass the turn on: this task was woken for a slot but need not use it. If it does,
            # the next writer finds no room and parks again: at most one spare wake per wake.
            self._wake_writers(1)
        if not self._open:
            raise trio.ClosedResourceError(self._closed_reason or "mailbox closed")

    def _make_room(self, item: T) -> bool:
        """Apply the overflow policy to a full mailbox; True if ``item`` should be appended."""
        policy = self.overflow
        if policy is Overflow.BLOCK:
            raise trio.WouldBlock
        if policy is Overflow.DROP_NEWEST:
            if self.droppable(item):
                self._count_drop()
                return False
            if self._drop_queued(newest=True):
                return True
        elif policy is Overflow.DROP_OLDEST:
            if self._drop_queued(newest=False):
                return True
            if self.droppable(item):
                self._count_drop()
                return False
        self.disconnect(SLOW_CONSUMER)
        raise trio.ClosedResourceError(SLOW_CONSUMER)

    def _drop_queued(self, *, newest: bool) -> bool:
        queue = self._queue
        droppable = self.droppable
        first = self._kept_prefix
        indexes = range(len(queue) - 1, first - 1, -1) if newest else range(first, len(queue))
        for index in indexes:
            if droppable(queue[index]):
                del queue[index]
                if not newest:
                    self._kept_prefix = index
                self._count_drop()
                return True
        self._kept_prefix = len(queue)
        return False

    def _count_drop(self) -> None:
        self._dropped += 1
        self._unreported_drops += 1
        if self._waiting_readers:
            self._wake_reader()

    # ---- receiving ---------------------------------------------------------------------------

    def receive_nowait(self) -> T | Dropped:
        """Take the next item, or a :class:`Dropped` marker if items were lost since last read.

        Raises :exc:`trio.WouldBlock` if there is nothing to read, and :exc:`trio.EndOfChannel`
        once the mailbox is closed and drained.
        """
        if self._unreported_drops:
            dropped = Dropped(self._unreported_drops)
            self._unreported_drops = 0
            return dropped
        if self._queue:
            self._received += 1
            item = self._queue.popleft()
            if self._kept_prefix:
                self._kept_prefix -= 1
            if self._waiting_writers:
                self._wake_writers(1)
            return item
        if self._open:
            raise trio.WouldBlock
        raise trio.EndOfChannel

    async def receive(self) -> T | Dropped:
        """Like :meth:`receive_nowait`, but wait while the mailbox is open and empty.

        It is always a cancellation point, and yields only when it waits.
        """
        if cancel_requested():
            await trio.lowlevel.checkpoint()
        while self._open and not self._queue and not self._unreported_drops:
            await self._park_reader()
        return self.receive_nowait()

    def receive_all_nowait(self) -> list[T | Dropped]:
        """Everything readable now, as per-item reading would return it: a :class:`Dropped`
        marker first if items were lost since the last read, then every queued item.

        Raises :exc:`trio.WouldBlock` if there is nothing to read, and :exc:`trio.EndOfChannel`
        once the mailbox is closed and drained.
        """
        queue = self._queue
        if not queue and not self._unreported_drops:
            if self._open:
                raise trio.WouldBlock
            raise trio.EndOfChannel
        batch: list[T | Dropped] = []
        if self._unreported_drops:
            batch.append(Dropped(self._unreported_drops))
            self._unreported_drops = 0
        count = len(queue)
        batch.extend(queue)
        queue.clear()
        self._received += count
        self._kept_prefix = 0
        if count and self._waiting_writers:
            self._wake_writers(count)
        return batch

    async def receive_all(self) -> list[T | Dropped]:
        """Like :meth:`receive_all_nowait`, but wait while the mailbox is open and empty.

        It is always a cancellation point, and yields only when it waits.
        """
        if cancel_requested():
            await trio.lowlevel.checkpoint()
        while self._open and not self._queue and not self._unreported_drops:
            await self._park_reader()
        return self.receive_all_nowait()

    def is_drained(self) -> bool:
        """Open, and nothing to read: no item queued and no drop left to report."""
        return self._open and not self._queue and not self._unreported_drops

    def preload(self, items: list[T]) -> None:
        """Fill an empty mailbox with ``items`` (at most its capacity), as if each had been
        sent: for a reader that moves here from a shared log with its unread items."""
        if self._queue or len(items) > self.capacity:
            raise ValueError("preload() fills an empty mailbox, within its capacity")
        self._queue.extend(items)

    async def wait_ready(self) -> None:
        """Wait until a read would not block: an item or a drop marker is ready, or the mailbox
        is closed. Always a cancellation point."""
        if cancel_requested():
            await trio.lowlevel.checkpoint()
        while self._open and not self._queue and not self._unreported_drops:
            await self._park_reader()

    def take_nowait(self, limit: int) -> list[T]:
        """Take up to ``limit`` queued items at once, for batch consumers.

        Drop markers are not returned here: a batch consumer reads losses from
        :meth:`statistics`. Meant for ``BLOCK`` mailboxes, which never drop.
        """
        queue = self._queue
        count = min(limit, len(queue))
        if count == len(queue):  # all of it: one copy instead of a popleft() per item
            batch = list(queue)
            queue.clear()
        else:
            batch = [queue.popleft() for _ in range(count)]
        self._received += count
        self._kept_prefix = max(0, self._kept_prefix - count)
        if count and self._waiting_writers:
            self._wake_writers(count)
        return batch

    async def wait_readable(self) -> None:
        """Wait until an item is queued; raise :exc:`trio.EndOfChannel` once closed and drained.

        It is always a cancellation point, and yields only when it waits.
        """
        if cancel_requested():
            await trio.lowlevel.checkpoint()
        while self._open and not self._queue:
            await self._park_reader()
        if not self._queue:
            raise trio.EndOfChannel

    # A parked task is either woken (and the waker uncounts it) or cancelled (and it uncounts
    # itself): trio never does both to one park.

    async def _park_reader(self) -> None:
        self._waiting_readers += 1
        try:
            await self._readers.park()
        except BaseException:
            self._waiting_readers -= 1
            raise

    def _wake_reader(self) -> None:
        self._waiting_readers -= len(self._readers.unpark())

    def _wake_writers(self, count: int) -> None:
        self._waiting_writers -= len(self._writers.unpark(count=count))

    # ---- closing -----------------------------------------------------------------------------

    def close(self, reason: str | None = None) -> None:
        """Stop accepting items; the receiver still reads what is queued, then sees the end.

        Closing twice keeps the first reason.
        """
        if self._open:
            self._open = False
            self._closed_reason = reason
        self._waiting_readers -= len(self._readers.unpark_all())
        self._waiting_writers -= len(self._writers.unpark_all())

    def disconnect(self, reason: str) -> None:
        """Close at once and discard what is queued (counted as dropped): the receiver is gone.

        Used when the receiver cannot keep up, so that its backlog stops costing memory.
        """
        self.close(reason)
        self._dropped += len(self._queue)
        self._queue.clear()
        self._kept_prefix = 0
        self._unreported_drops = 0
