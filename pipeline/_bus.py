"""The bus: the public facade over the router, the supervisor and the live runs."""

from __future__ import annotations

import threading
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import attrs
import trio

from actors import Overflow, Router, Supervisor, cancel_requested, open_supervisor

from ._actor import Phase, RunActor
from ._config import BusConfig, RunContext
from ._core import BusCore
from ._counters import OUTCOMES
from ._errors import InvalidEvent, RunAlreadyActive, TooManySubscribers, UnknownRun
from ._event import DROPPED_STREAM, LIFECYCLE, Event, annotation_kind, checked_event, is_droppable
from ._portal import BusPortal
from ._run import (
    SHUTDOWN,
    BlockPhase,
    BodyPhase,
    Run,
    RunBody,
    RunHandle,
    emit,
    emit_nowait,
    track_ingested,
)
from ._state import MAX_EVENTS_PER_EMIT
from ._subscription import BUS_CLOSED, EventFilter, Subscription, event_filter, event_keys

__all__ = ["Bus", "BusStatistics", "open_bus"]


@attrs.frozen
class BusStatistics:
    """A snapshot of the bus's counters."""

    #: Runs in the index now: running, in retry grace, or tracked from ingest.
    live_runs: int
    #: Open subscriptions.
    subscribers: int
    #: Events accepted for fan-out (agent, lifecycle, chat and gap events).
    events_published: int
    #: Events subscribers have read.
    deliveries: int
    #: Events lost to overflow policies or discarded on disconnect.
    drops: int
    #: Subscribers cut off: as slow consumers, or because their filter failed (a bug, logged).
    disconnects: int
    #: Ingested events dropped as duplicates.
    duplicates: int
    #: Chat text or thinking updates cut to ``max_event_bytes`` characters (a run's chat
    #: buffers never grow past that).
    chat_truncations: int
    #: Runs claimed so far (a retry during the grace is not a new run).
    runs_started: int
    #: Body phases (and tracked runs) ended, by outcome status.
    runs_by_outcome: Mapping[str, int]
    #: Supervised tasks that failed with a bug (each was logged).
    failures: int


#: The task name of runs started by ``start_run`` (followed by the run id).
_RUN_TASK_NAME = "pipeline.run"


def _run_id(run_id: str | None) -> str:
    if run_id is None:
        return uuid.uuid4().hex
    if not isinstance(run_id, str) or not run_id.strip():
        raise ValueError(f"run_id must be a non-blank str, not {run_id!r}")
    return run_id


def _context(context: RunContext | None) -> RunContext | None:
    if context is not None and not isinstance(context, RunContext):
        raise TypeError(f"context must be a RunContext or None, not {context!r}")
    return context


def _reason(reason: str) -> str:
    if not isinstance(reason, str):
        raise TypeError(f"reason must be a str, not {reason!r}")
    return reason


def _buffer(buffer: int | None, default: int) -> int:
    if buffer is None:
        return default
    if isinstance(buffer, bool) or not isinstance(buffer, int) or buffer < 1:
        raise ValueError(f"buffer must be a positive int, not {buffer!r}")
    return buffer


@attrs.define(eq=False, on_setattr=attrs.setters.NO_OP)
class Bus:
    """The agent event bus. Open one with :func:`open_bus`."""

    _core: BusCore
    _subscribers: int = 0
    _router_done: trio.Event = attrs.field(factory=trio.Event)
    _closed: trio.Event = attrs.field(factory=trio.Event)
    #: Shields the router from its owner's cancellation, so that closing can still deliver
    #: the runs' terminal events; cancelled once closing has waited ``shutdown_timeout``.
    _router_scope: trio.CancelScope = attrs.field(factory=lambda: trio.CancelScope(shield=True))

    @property
    def config(self) -> BusConfig:
        return self._core.config

    # ---- runs --------------------------------------------------------------------------------

    async def start_run(
        self, body: RunBody, *, run_id: str | None = None, context: RunContext | None = None
    ) -> RunHandle:
        """Run ``body(run)`` under the bus's supervision; return once its start is published.

        A ``run_id`` whose run is in its retry grace resumes that run.
        """
        self._core.check_thread()
        if not callable(body):
            raise TypeError(f"body must be an async callable, not {body!r}")
        run_id = _run_id(run_id)
        context = _context(context)
        phase = BodyPhase(self._core)
        handle = await phase.claim(run_id, context)
        # The start event is out; the body runs in a task of the bus's own, named after the
        # run so that tools and tracebacks show which run a task serves.
        self._core.supervisor.start_soon_self_guarded(
            _serve_body, phase, body, name=f"{_RUN_TASK_NAME} {run_id}"
        )
        # A schedule point, as trio's own nursery.start is: a loop that starts runs lets the
        # router, the readers and the new bodies take their turns, instead of queueing runs
        # faster than anything can read them.
        await trio.lowlevel.checkpoint()
        return handle

    def run(
        self, *, run_id: str | None = None, context: RunContext | None = None
    ) -> AbstractAsyncContextManager[Run]:
        """Make the calling task's ``async with`` block the body of a run.

        An abort or idle timeout cancels the block (execution goes on after it); an exception
        raised in the block ends the run as an error and then propagates.
        """
        self._core.check_thread()
        return BlockPhase(self._core, run_id=_run_id(run_id), context=_context(context))

    async def emit(
        self, run_id: str, stream: str, data: Any, *, session_key: str | None = None
    ) -> Event:
        """Emit into a live run from outside its body; :exc:`UnknownRun` if none is running."""
        self._core.check_thread()
        self._core.check_open()
        return await emit(self._core, self._live(run_id), stream, data, session_key)

    def _emit_nowait(
        self, run_id: str, stream: str, data: Any, session_key: str | None = None
    ) -> Event:
        """:meth:`emit` without waiting (:exc:`trio.WouldBlock` when the router is full);
        the portal's fast path, which needs no task in the bus's thread."""
        self._core.check_thread()
        self._core.check_open()
        return emit_nowait(self._core, self._live(run_id), stream, data, session_key)

    def abort(self, run_id: str, *, reason: str = "rpc") -> bool:
        """Cancel a live run's body (or end its retry grace); False if no such live run."""
        core = self._core
        core.check_thread()
        reason = _reason(reason)
        actor = core.runs.get(run_id)
        if actor is None:
            return False
        if actor.phase is Phase.TRACKING and core.remote_abort is not None:
            return core.remote_abort(run_id, reason)
        return actor.abort(reason)

    def _end_tracked(self, run_id: str, reason: str) -> bool:
        """End a run tracked from ingest here and now, as aborted with ``reason``, whoever
        owns it (a cluster node does this for the runs of a node that was lost)."""
        self._core.check_thread()
        actor = self._core.runs.get(run_id)
        return actor is not None and actor.phase is Phase.TRACKING and actor.abort(reason)

    def update_context(self, run_id: str, **fields: Any) -> RunContext:
        """Change only the given context fields of a live run; later events see the change."""
        self._core.check_thread()
        state = self._live(run_id).state
        state.context = state.context.updated(**fields)
        return state.context

    def live_runs(self, *, session_key: str | None = None) -> dict[str, RunContext]:
        """The live runs (running, in retry grace, or tracked from ingest) and their contexts,
        only those whose context names ``session_key`` when it is given.

        A snapshot, O(live runs): for control paths (abort every run of a session, check which
        session a run belongs to), not for the event path.
        """
        self._core.check_thread()
        return {
            run_id: actor.context
            for run_id, actor in self._core.runs.items()
            if session_key is None or actor.context.session_key == session_key
        }

    def _live(self, run_id: str) -> RunActor:
        actor = self._core.runs.get(run_id)
        if actor is None:
            raise UnknownRun(f"no live run {run_id!r}")
        return actor

    # ---- ingest ------------------------------------------------------------------------------

    async def ingest(self, event: Event | Mapping[str, Any]) -> bool:
        """Take an event sequenced elsewhere; False if it was a duplicate and dropped.

        Wire dicts are checked strictly (:exc:`InvalidEvent`, :exc:`EventTooLarge`). An agent
        event for a run that is not live starts a tracked run, which counts against
        ``max_runs``; an annotation (a chat or seq-gap event) for a run that is not live, such
        as the chat ``final`` that follows a forwarded run's end, is published as it is and
        tracks nothing. Always a cancellation point.
        """
        core = self._core
        core.check_thread()
        if isinstance(event, Event):
            event = checked_event(event, ingested=True)
        else:
            event = Event.from_wire(event, max_bytes=core.config.max_event_bytes)
            event = checked_event(event, ingested=True)
        if event.stream == DROPPED_STREAM:
            raise InvalidEvent("'dropped' markers are made by each subscription, not ingested")
        if cancel_requested():
            await trio.lowlevel.checkpoint()
        core.check_open()
        await core.wait_room(MAX_EVENTS_PER_EMIT)
        # No await from here on: the room waited for above is still there.
        core.check_open()
        actor = core.runs.get(event.run_id)
        if actor is None and annotation_kind(event) is not None:
            core.publish(event)
            return True
        if event.stream == LIFECYCLE and actor is not None and actor.phase is not Phase.TRACKING:
            raise RunAlreadyActive(
                f"run {event.run_id!r} has a local body: its lifecycle events are the bus's"
            )
        if actor is None:
            context = RunContext(session_key=event.session_key)
            actor = core.claim(event.run_id, context, Phase.TRACKING)
            wakeup = actor.prepare_wait()
            core.supervisor.start_soon(
                track_ingested, core, actor, wakeup, name="pipeline.ingested_run"
            )
        published = actor.publish_ingested(event)
        if not published:
            core.counters.duplicates += 1
        return published

    # ---- subscribers -------------------------------------------------------------------------

    def subscribe(
        self,
        *,
        run_id: str | None = None,
        session_key: str | None = None,
        streams: Iterable[str] | None = None,
        overflow: Overflow = Overflow.BLOCK,
        buffer: int | None = None,
        local_only: bool = False,
    ) -> AbstractAsyncContextManager[Subscription]:
        """Subscribe to the events published from now on that match every filter given.

        ``buffer`` defaults to ``subscriber_buffer``; ``overflow`` says what a full buffer does.
        ``local_only`` leaves out events about runs known from ``ingest`` (made elsewhere), so
        a bridge that forwards this bus's events to another never echoes what it ingested.
        """
        self._core.check_thread()
        if not isinstance(overflow, Overflow):
            raise TypeError(f"overflow must be an Overflow, not {overflow!r}")
        if not isinstance(local_only, bool):
            raise TypeError(f"local_only must be a bool, not {local_only!r}")
        where = event_filter(run_id, session_key, streams, local_only=local_only)
        capacity = _buffer(buffer, self._core.config.subscriber_buffer)
        return self._subscription(where, overflow, capacity)

    @asynccontextmanager
    async def _subscription(
        self, where: EventFilter, overflow: Overflow, capacity: int
    ) -> AsyncIterator[Subscription]:
        core = self._core
        if cancel_requested():
            await trio.lowlevel.checkpoint()
        core.check_open()
        if self._subscribers >= core.config.max_subscribers:
            raise TooManySubscribers(
                f"{core.config.max_subscribers} subscriptions are open (max_subscribers)"
            )
        timeout = core.config.block_timeout if overflow is Overflow.BLOCK else None
        reader = core.router.join(
            (where.key, overflow, capacity),
            capacity=capacity,
            overflow=overflow,
            block_timeout=timeout,
            droppable=is_droppable,
            accepts=where.accepts,
            index=where.index,
        )
        self._subscribers += 1
        try:
            yield Subscription(reader, core.router, core.run)
        finally:
            self._subscribers -= 1
            core.router.leave(reader)

    # ---- state and shutdown ------------------------------------------------------------------

    def portal(self) -> BusPortal:
        """A portal through which other threads emit, abort and start runs (SPEC 4.8).

        Call it in the bus's trio thread; use the portal from any other thread.
        """
        self._core.check_thread()
        return BusPortal(self, trio.lowlevel.current_trio_token(), threading.get_ident())

    def statistics(self) -> BusStatistics:
        core = self._core
        core.check_thread()
        routed = core.router.statistics()
        counters = core.counters
        return BusStatistics(
            live_runs=len(core.runs),
            subscribers=self._subscribers,
            events_published=routed.published,
            deliveries=routed.deliveries,
            drops=routed.drops,
            disconnects=routed.disconnects,
            duplicates=counters.duplicates,
            chat_truncations=counters.chat_truncations,
            runs_started=counters.runs_started,
            runs_by_outcome={status: counters.outcomes[status] for status in OUTCOMES},
            failures=core.supervisor.statistics().failed,
        )

    async def aclose(self) -> None:
        """Close the bus: abort live runs (reason ``"shutdown"``), deliver their terminal
        events, then end every subscription. Safe to call twice; shielded from cancellation,
        bounded by ``shutdown_timeout`` for the runs and again for the router. If the router
        has not delivered everything by then (a full ``BLOCK`` subscriber holds it), every
        subscription is ended anyway, and what was still queued in the router is not delivered.
        """
        core = self._core
        core.check_thread()
        if core.closing:
            await self._closed.wait()
            return
        core.closing = True
        timeout = core.config.shutdown_timeout
        with trio.CancelScope(shield=True):
            for actor in list(core.runs.values()):
                actor.abort(SHUTDOWN)
            with trio.move_on_after(timeout):
                await core.wait_all_ended()
            core.router.close(BUS_CLOSED)
            with trio.move_on_after(timeout):
                await self._router_done.wait()
            if not self._router_done.is_set():
                # The router is stuck on a full BLOCK subscriber: end every subscription anyway.
                core.router.close_subscribers(BUS_CLOSED)
                self._router_scope.cancel()
        self._closed.set()

    async def _serve_router(self, *, task_status: trio.TaskStatus[None]) -> None:
        """The router task, shielded: when the bus's owner is cancelled, the runs' terminal
        events must still be routed while the bus closes (see :meth:`aclose`)."""
        try:
            with self._router_scope:
                await self._core.router.serve(task_status=task_status)
        finally:
            self._router_done.set()


@asynccontextmanager
async def open_bus(config: BusConfig | None = None) -> AsyncIterator[Bus]:
    """Open an agent event bus whose tasks live in a nursery of its own.

    Leaving the block closes the bus (see :meth:`Bus.aclose`).
    """
    if config is None:
        config = BusConfig()
    if not isinstance(config, BusConfig):
        raise TypeError(f"config must be a BusConfig, not {config!r}")
    async with open_supervisor(shutdown_timeout=config.shutdown_timeout, name="bus") as supervisor:
        bus = Bus(_new_core(config, supervisor))
        await supervisor.start(bus._serve_router, name="router")
        try:
            yield bus
        finally:
            await bus.aclose()


def _new_core(config: BusConfig, supervisor: Supervisor) -> BusCore:
    router: Router[Event] = Router(config.router_buffer, keys=event_keys, key_dimensions=2)
    return BusCore(config, router, supervisor)


async def _serve_body(phase: BodyPhase, body: RunBody) -> None:
    """The root coroutine of a ``start_run`` task, and its own supervisor guard.

    Every live run keeps this frame, so it has few locals, no guard coroutine around it (see
    Supervisor.start_soon_self_guarded), and leaves the phase itself rather than through
    ``async with``, which would keep a bound method on the frame's stack.
    """
    phase.core.supervisor.child_started()
    try:
        try:
            await body(phase.enter())
        except BaseException as exc:
            if not await phase.leave(exc):
                raise
        else:
            await phase.leave(None)
    except Exception:
        phase.core.supervisor.child_failed(f"{_RUN_TASK_NAME} {phase.actor.id}")
    finally:
        phase.core.supervisor.child_ended()
