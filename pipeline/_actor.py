"""A run's driver: the task side of a run, around its pure state.

A :class:`RunActor` is what the bus's index holds for a live run (``run id -> actor``). It
owns what needs trio: the cancel scope of the run's current stretch (abort, idle deadline) and
the event a waiting stretch sleeps on. What the run knows, and which events that calls for,
is its :class:`~pipeline._state.RunState`; the actor publishes those events through a
:class:`Publisher`, the narrow face of the bus (publish, room, clock) that is all it may use.
It is created when a run is claimed and dropped when the run ends: the stretch that ends the
run releases it from the index in its ``finally``, so a finished run leaves nothing behind.

Callers make sure the router has room (``MAX_EVENTS_PER_EMIT``, ``MAX_TERMINAL_EVENTS``)
before calling a ``publish_*`` method.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from math import inf
from typing import Any, Protocol

import attrs
import trio

from ._config import RunContext
from ._errors import UnknownRun
from ._event import Event, is_terminal
from ._state import MAX_TERMINAL_EVENTS, RunState, epoch_ms

__all__ = ["IDLE_REFRESH_FRACTION", "Phase", "Publisher", "RunActor", "RunClock", "epoch_ms"]

#: A run's idle deadline moves at most once per this fraction of the idle timeout, because
#: moving a cancel scope's deadline costs more than the rest of an emit. So an idle run ends
#: between ``run_idle_timeout`` and ``run_idle_timeout * (1 + 1/64)`` after its last event.
IDLE_REFRESH_FRACTION = 1 / 64


class Phase(enum.Enum):
    """Where a run is in its life."""

    #: A body is running.
    RUNNING = "running"
    #: The body failed; the state waits ``error_retry_grace`` for a retry under the same id.
    GRACE = "grace"
    #: Events come from ``Bus.ingest``; it ends on a terminal lifecycle event or when idle.
    TRACKING = "tracking"
    #: The retry grace expired; its chat error is going out. A retry under the same id waits
    #: for the run to end, then starts a new run (so the two runs' events never interleave).
    CLOSING = "closing"
    ENDED = "ended"


RUNNING = Phase.RUNNING


@attrs.define(eq=False, on_setattr=attrs.setters.NO_OP, weakref_slot=False)
class RunClock:
    """The time as a bus's runs see it: its trio clock, and their shared idle deadlines.

    A deadline is rounded up to the end of the current step (``idle_timeout / 64``), and the
    step's end is when it moves next: every run active in the same step shares these two
    floats, so a live run holds no float of its own. A run then ends between ``idle_timeout``
    and ``idle_timeout + step`` after its last event, as with a deadline per run.
    """

    #: The trio clock's ``current_time`` (a MockClock's in tests), looked up once per bus.
    current_time: Callable[[], float]
    #: ``None``: runs never idle out.
    idle_timeout: float | None
    _step: float = attrs.field(init=False, default=inf)
    #: The end of the current step, and the deadline of a run active in it.
    _next: float = attrs.field(init=False, default=-inf)
    _deadline: float = attrs.field(init=False, default=inf)

    def __attrs_post_init__(self) -> None:
        if self.idle_timeout is None:
            self._next = inf
        else:
            self._step = self.idle_timeout * IDLE_REFRESH_FRACTION

    def idle_deadline(self, now: float) -> tuple[float, float]:
        """For a run active at ``now``: when to move its deadline next, and the deadline."""
        if now >= self._next:
            assert self.idle_timeout is not None
            step = self._step
            end = (now // step + 1) * step
            if not now < end <= now + step:  # float rounding
                end = now + step
            self._next, self._deadline = end, end + self.idle_timeout
        return self._next, self._deadline


class Publisher(Protocol):
    """All a run's driver may use of the bus."""

    @property
    def clock(self) -> RunClock: ...

    def room(self) -> int:
        """How many events the router takes now without waiting."""
        ...

    def publish(self, event: Event, /, *, flush: bool = False) -> None:
        """Queue ``event`` for the router (callers made sure there is room). With ``flush``,
        also route what is queued now, if no subscriber makes that wait."""
        ...

    @property
    def put(self) -> Callable[[Event], None]:
        """``publish`` without its options, for the emit hot path: it queues an event that
        callers made room for, which cannot fail (a closed router has no room)."""
        ...


@attrs.define(eq=False, on_setattr=attrs.setters.NO_OP, weakref_slot=False)
class _Rare:
    """What only a waiting stretch (retry grace, tracking) or an abort needs: made by the
    first of them, so a running body does not pay for it."""

    #: Woken on a retry or abort during the grace, and on a tracked run's terminal event.
    wakeup: trio.Event | None = None
    #: When the current body phase's terminal events were claimed (see ``claim_terminal``).
    ended_at: int | None = None
    #: The terminal lifecycle data seen by a tracked run.
    tracked_terminal: Mapping[str, Any] | None = None
    #: Set when a closing run has ended (see ``Phase.CLOSING``).
    ended: trio.Event | None = None


@attrs.define(eq=False, on_setattr=attrs.setters.NO_OP, weakref_slot=False)
class RunActor:
    """The driver of one live run (see the module docstring)."""

    state: RunState
    publisher: Publisher = attrs.field(repr=False)
    phase: Phase
    #: Why the run is being stopped (abort reason); ``None`` unless aborted.
    stop_reason: str | None = None
    _scope: trio.CancelScope | None = None
    #: When the idle deadline moves next (a float shared with the bus's other runs).
    _refresh_at: float = -inf
    _rare: _Rare | None = None

    @property
    def id(self) -> str:
        return self.state.id

    @property
    def context(self) -> RunContext:
        return self.state.context

    @property
    def scope(self) -> trio.CancelScope | None:
        return self._scope

    @property
    def ended_at(self) -> int | None:
        """When the current body phase's terminal events were claimed: by an abort that
        published them, or by the ending body phase (:meth:`claim_terminal`)."""
        return None if self._rare is None else self._rare.ended_at

    def claim_terminal(self, ended_at: int) -> None:
        """The ending body phase publishes the terminal events: an abort from now on only
        cancels (one terminal event per body phase, SPEC 4.2)."""
        self._more().ended_at = ended_at

    @property
    def tracked_terminal(self) -> Mapping[str, Any] | None:
        return None if self._rare is None else self._rare.tracked_terminal

    def _more(self) -> _Rare:
        if self._rare is None:
            self._rare = _Rare()
        return self._rare

    # ---- scope, idle deadline, abort ---------------------------------------------------------

    def open_scope(self) -> trio.CancelScope:
        """A fresh cancel scope for the next stretch of work, with the idle deadline set."""
        scope = self._scope = trio.CancelScope()
        self._touch(self.publisher.clock.current_time())
        if self.stop_reason is not None:
            scope.cancel()
        return scope

    def close_scope(self) -> None:
        self._scope = None

    def _touch(self, now: float) -> None:
        """Note activity: push the idle deadline (to the end of the current step's window)."""
        self._refresh_at, deadline = self.publisher.clock.idle_deadline(now)
        if self._scope is not None:
            self._scope.deadline = deadline

    def abort(self, reason: str) -> bool:
        """Stop the run: cancel its body (or tracking), or end its retry grace early.

        A running body's terminal events go out here and now when the router has room: once
        aborted, the body can publish nothing more, so subscribers need not wait for it to
        unwind. They are routed at once too, with whatever is queued ahead of them, so every
        subscriber holds them when this returns, unless a full ``BLOCK`` subscriber makes that
        wait (then the router task delivers them). Otherwise they go out when the body has ended.
        """
        if self.phase is Phase.ENDED:
            return False
        if self.stop_reason is None:
            self.stop_reason = reason
            if (
                self.phase is RUNNING
                and self.ended_at is None
                and self.publisher.room() >= MAX_TERMINAL_EVENTS
            ):
                ended_at = self._more().ended_at = epoch_ms()
                self._publish(self.state.aborted(reason, ended_at), flush=True)
        if self._scope is not None:
            self._scope.cancel()
        self.wake()
        return True

    def wake(self) -> None:
        if self._rare is not None and self._rare.wakeup is not None:
            self._rare.wakeup.set()

    def prepare_wait(self) -> trio.Event:
        """Make the event that :meth:`wake` sets, before the stretch that waits for it."""
        wakeup = self._more().wakeup = trio.Event()
        return wakeup

    def enter_grace(self) -> trio.Event:
        """Keep the state for a retry; returns the event this grace's keeper waits on."""
        self.phase = Phase.GRACE
        return self.prepare_wait()

    def in_grace(self, wakeup: trio.Event) -> bool:
        """Whether the run is still in the grace that ``wakeup`` belongs to."""
        return self.phase is Phase.GRACE and self._rare is not None and self._rare.wakeup is wakeup

    def resume(self, context: RunContext | None) -> None:
        """A retry takes the run over from its grace (its keeper is woken and lets go)."""
        self.phase = RUNNING
        self.stop_reason = None
        if self._rare is not None:
            self._rare.ended_at = None
        self.state.resume(context)
        self.wake()

    def end(self) -> None:
        """The run has ended: drop its state's buffers and the scope."""
        self.phase = Phase.ENDED
        self._scope = None
        if self._rare is not None and self._rare.ended is not None:
            self._rare.ended.set()
        self._rare = None
        self.state.clear()

    def close_grace(self) -> None:
        """The retry grace expired: no retry may resume the run any more (``Phase.CLOSING``)."""
        self.phase = Phase.CLOSING
        self._more().ended = trio.Event()

    async def wait_ended(self) -> None:
        """Wait until a closing run has ended."""
        ended = None if self._rare is None else self._rare.ended
        if self.phase is Phase.CLOSING and ended is not None:
            await ended.wait()

    # ---- publishing --------------------------------------------------------------------------

    def check_running(self) -> None:
        """:exc:`UnknownRun` unless a body is running and not being stopped."""
        if self.phase is not RUNNING:
            raise UnknownRun(f"run {self.id!r} has no running body")
        if self.stop_reason is not None:
            raise UnknownRun(f"run {self.id!r} is being stopped ({self.stop_reason})")

    def publish_agent(
        self, stream: str, data: Mapping[str, Any], session_key: str | None = None
    ) -> Event:
        """Sequence, enrich and publish one agent event and the chat events it causes."""
        publisher = self.publisher
        now = publisher.clock.current_time()
        before, event, after = self.state.agent(stream, data, session_key, now)
        publish = publisher.put
        if before is not None:
            publish(before)
        publish(event)
        if after is not None:
            publish(after)
        if now >= self._refresh_at:
            self._touch(now)
        return event

    def _publish(self, events: Sequence[Event], *, flush: bool = False) -> None:
        """Publish ``events`` in order; with ``flush``, route them (see :meth:`abort`)."""
        publish = self.publisher.publish
        for event in events[:-1]:
            publish(event)
        if events:
            publish(events[-1], flush=flush)

    def publish_start(self) -> None:
        self.publisher.publish(self.state.start())

    def publish_end(self, ended_at: int) -> None:
        self._publish(self.state.end(ended_at))

    def publish_aborted(self, reason: str, ended_at: int) -> None:
        self._publish(self.state.aborted(reason, ended_at))

    def publish_error(self, message: str, kind: str, ended_at: int) -> None:
        """The lifecycle error; the chat error waits for :meth:`publish_chat_error`."""
        self.publisher.publish(self.state.error(message, kind, ended_at))

    def publish_chat_error(self) -> None:
        """The chat error for the kept failure, once no retry is coming."""
        self._publish(self.state.chat_error())

    def publish_ingested(self, event: Event) -> bool:
        """Publish an event sequenced elsewhere, after dedupe and gap detection.

        Returns False for a duplicate, which is not published (see
        :meth:`RunState.ingested`). A tracked run's terminal event wakes its tracker.
        """
        events = self.state.ingested(event)
        if not events:
            return False
        self._publish(events)
        if self.phase is Phase.TRACKING and is_terminal(event):
            self._more().tracked_terminal = event.data
            self.wake()
        self._touch(self.publisher.clock.current_time())
        return True
