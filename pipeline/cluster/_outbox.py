"""The node's pending outbound entries: local events and control entries waiting for Redis.

Both queues together hold at most ``max_pending`` entries (besides the one batch the writer
has in flight), whether Redis is away (an outage) or only slower than the bus. Past the bound
the *oldest* entry is dropped and counted, and a batch that failed goes back in front of the
queue and is trimmed the same way: after an outage the other nodes get the newest events of
each run, its terminal events included, and see the loss as a seq gap in band, rather than an
old prefix of runs that never end.
Control entries (aborts) are written before events, and dropped only when no event is left
to drop.

Putting never waits, so the publisher's subscription never waits on Redis.
"""

from __future__ import annotations

from collections import deque

import attrs
import trio

from .._event import Event
from ._config import Counters
from ._layout import Fields

__all__ = ["Outbox"]


@attrs.define(eq=False)
class Outbox:
    """Bounded queues of local events and control entries, in the order they were put."""

    limit: int
    counters: Counters
    _events: deque[Event] = attrs.field(factory=deque)
    _control: deque[Fields] = attrs.field(factory=deque)
    #: Entries taken by the writer and not yet acknowledged (they count as pending).
    in_flight: int = 0
    _nonempty: trio.Event = attrs.field(factory=trio.Event)
    _empty: trio.Event = attrs.field(factory=trio.Event)

    def __attrs_post_init__(self) -> None:
        self._empty.set()

    def __len__(self) -> int:
        return len(self._events) + len(self._control)

    @property
    def pending(self) -> int:
        """Entries not yet written: queued and in flight."""
        return len(self) + self.in_flight

    def put_event(self, event: Event) -> None:
        """Queue a local event; drop the oldest entry if the queue is full."""
        self._events.append(event)
        self._put()

    def put_control(self, fields: Fields) -> None:
        """Queue a control entry; drop the oldest entry if the queue is full."""
        self._control.append(fields)
        self._put()

    def take(self, count: int) -> tuple[list[Fields], list[Event]]:
        """Up to ``count`` entries, control entries first; they are in flight until
        :meth:`done` or :meth:`put_back`."""
        control = [self._control.popleft() for _ in range(min(count, len(self._control)))]
        count -= len(control)
        events = [self._events.popleft() for _ in range(min(count, len(self._events)))]
        self.in_flight += len(control) + len(events)
        self._changed()
        return control, events

    def done(self, control: list[Fields], events: list[Event]) -> None:
        """Entries taken with :meth:`take` were written."""
        self.in_flight -= len(control) + len(events)
        self._changed()

    def put_back(self, control: list[Fields], events: list[Event]) -> None:
        """Entries taken with :meth:`take` were not written: queue them again, in front."""
        self.in_flight -= len(control) + len(events)
        self._control.extendleft(reversed(control))
        self._events.extendleft(reversed(events))
        self._trim()
        self._changed()

    async def wait_nonempty(self) -> None:
        """Wait until an entry is queued."""
        await self._nonempty.wait()

    async def wait_empty(self) -> None:
        """Wait until nothing is queued or in flight."""
        await self._empty.wait()

    def _put(self) -> None:
        self._trim()
        self._changed()

    def _trim(self) -> None:
        while len(self) > self.limit:
            if self._events:
                self._events.popleft()
            else:
                self._control.popleft()
            self.counters.dropped_outbound += 1

    def _changed(self) -> None:
        if len(self):
            if not self._nonempty.is_set():
                self._nonempty.set()
        elif self._nonempty.is_set():
            self._nonempty = trio.Event()
        if self.pending:
            if self._empty.is_set():
                self._empty = trio.Event()
        elif not self._empty.is_set():
            self._empty.set()
