"""The router's records: one attachment (:class:`Subscriber`) and the counters' snapshot."""

from __future__ import annotations

import operator
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import attrs

from ._mailbox import Mailbox

if TYPE_CHECKING:
    from ._broadcast import Group, Member

__all__ = ["GROUP_MAILBOX", "JOINING_ORDER", "IndexEntry", "RouterStatistics", "Subscriber"]

T = TypeVar("T")


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


#: An index entry: (dimension, key), the dimension being a position in what ``keys`` returns.
IndexEntry = tuple[int, Hashable]


@attrs.define(eq=False, on_setattr=attrs.setters.NO_OP)
class Subscriber(Generic[T]):
    """One attachment to a router: a filter and the mailbox items go to."""

    mailbox: Mailbox[T]
    #: ``None`` accepts everything (and skips the call on the hot path).
    accepts: Callable[[T], bool] | None = None
    #: The inbox position of the first item this subscriber may see.
    starts_at: int = 0
    #: Where the router's index files it; ``None``: offered every item.
    index: IndexEntry | None = None
    #: Set for a group's attachment: items go to the group's shared log, not to ``mailbox``.
    group: Group[T] | None = None
    #: Set for the own mailbox of a group member that spilled (its counters are the member's).
    member: Member[T] | None = None
    #: Order of joining: full ``BLOCK`` subscribers are waited for in this order.
    number: int = 0

    def spilled(self, member: Member[T], routed: int) -> Subscriber[T]:
        """The router attachment of a member of this (group) subscriber's log that left it
        for its own mailbox, once the router has routed ``routed`` items."""
        assert member.mailbox is not None
        subscriber = Subscriber(
            member.mailbox, self.accepts, starts_at=routed, index=self.index, number=member.number
        )
        member.subscriber = subscriber
        subscriber.member = member
        return subscriber


#: The mailbox slot of a group's attachment, which items never reach (they go to its log).
GROUP_MAILBOX: Mailbox[Any] = Mailbox(1)
GROUP_MAILBOX.close()

#: The order in which full ``BLOCK`` subscribers are waited for: the order they joined.
JOINING_ORDER = operator.attrgetter("number")
