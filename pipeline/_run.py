"""Runs as the user sees them (``Run``, ``RunHandle``, ``RunOutcome``) and the tasks behind them.

A run's life is a sequence of stretches, each owned by one task:

- a *body phase* (:class:`BodyPhase`): from the lifecycle start to the terminal event, in the
  task running the body: a supervised task for ``Bus.start_run``, the caller's own task for
  ``async with Bus.run()``;
- a *retry grace* (:func:`keep_for_retry`): after a body failed, a supervised task keeps the
  state for ``error_retry_grace`` so a retry under the same id resumes it;
- *tracking* (:func:`track_ingested`): for runs known only from ``Bus.ingest``.

Whichever stretch is last releases the run's state in its ``finally``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Coroutine
from types import TracebackType
from typing import Any, ClassVar, Literal

import attrs
import trio

from actors import RUN_CONTEXT, cancel_requested_in

from ._actor import RUNNING, Phase, RunActor
from ._config import RunContext
from ._core import WRONG_THREAD, BusCore, RunClosing
from ._errors import BusClosed, UnknownRun
from ._event import Event
from ._state import MAX_EVENTS_PER_EMIT, MAX_TERMINAL_EVENTS, checked_input, epoch_ms

__all__ = [
    "BlockPhase",
    "BodyPhase",
    "Run",
    "RunHandle",
    "RunOutcome",
    "keep_for_retry",
    "track_ingested",
]

_log = logging.getLogger("pipeline.run")

#: The error text of a run ended by ``run_idle_timeout``.
IDLE_TIMEOUT_ERROR = "run idle timeout"
#: The abort reason of runs ended because the bus closed.
SHUTDOWN = "shutdown"

Status = Literal["ok", "error", "aborted", "timeout"]
RunBody = Callable[["Run"], Awaitable[object]]


@attrs.frozen
class RunOutcome:
    """How one body phase of a run ended."""

    run_id: str
    status: Status
    #: ``str(exc)`` for ``"error"``; the abort reason for ``"aborted"``; ``None`` otherwise.
    error: str | None
    #: The body's exception, traceback attached, for ``"error"``; ``None`` otherwise.
    exception: BaseException | None
    #: Seq of the last agent event the run published (its terminal lifecycle event).
    last_seq: int
    #: Epoch milliseconds.
    started_at: int
    ended_at: int


@attrs.define(eq=False, on_setattr=attrs.setters.NO_OP)
class Run:
    """The body's side of a run: emit events into it, change its context.

    It is valid only while its body runs; afterwards its methods raise :exc:`UnknownRun`.
    """

    _phase: BodyPhase

    @property
    def id(self) -> str:
        return self._phase.actor.id

    @property
    def context(self) -> RunContext:
        return self._phase.actor.state.context

    def emit(
        self, stream: str, data: Any, *, session_key: str | None = None
    ) -> Coroutine[Any, Any, Event]:
        """Publish one event (``await run.emit(...)``); waits only while the router is full.

        A plain method returning the coroutine that does the work: emitting is the hot path,
        and one coroutine per event is cheaper than two. A stale ``Run`` raises at once; a
        call from another thread raises when awaited, before doing anything.
        """
        phase = self._phase
        if not phase._active:
            raise UnknownRun(f"run {phase.actor.id!r} has no running body")
        return emit(phase.core, phase.actor, stream, data, session_key)

    def emit_nowait(self, stream: str, data: Any, *, session_key: str | None = None) -> Event:
        """Publish one event; :exc:`trio.WouldBlock` if the router's inbox is full."""
        phase = self._phase
        phase.check_active()
        return emit_nowait(phase.core, phase.actor, stream, data, session_key)

    def update_context(self, **fields: Any) -> RunContext:
        """Change only the given context fields; later events see the change."""
        self._phase.check_active()
        state = self._phase.actor.state
        state.context = state.context.updated(**fields)
        return state.context

    def set_stop_reason(self, reason: str | None) -> None:
        """The ``stopReason`` the end event (and the chat final) will carry."""
        self._phase.check_active()
        self._phase.actor.state.end_reason = reason


async def emit(
    core: BusCore, actor: RunActor, stream: object, data: object, session_key: object
) -> Event:
    """Validate, wait for room in the router's inbox if needed, and publish.

    Always a cancellation point (an aborted body gets its ``Cancelled`` here rather than
    publish); a schedule point only when it waits for room.
    """
    # Inlined cancel_requested_in(): this is every emit's first step (see _subscription).
    try:
        task = RUN_CONTEXT.task
        fast = task._runner is core.runner and not task._cancel_status.effectively_cancelled
    except AttributeError:
        fast = False
    if not fast and cancel_requested_in(core.run, WRONG_THREAD):
        await trio.lowlevel.checkpoint()
    stream, frozen = checked_input(stream, data, session_key)
    if actor.phase is not RUNNING or actor.stop_reason is not None:
        actor.check_running()  # raises
    if core.room() < MAX_EVENTS_PER_EMIT:
        await core.wait_room(MAX_EVENTS_PER_EMIT)
        actor.check_running()
    return actor.publish_agent(stream, frozen, session_key)  # type: ignore[arg-type]


def emit_nowait(
    core: BusCore, actor: RunActor, stream: object, data: object, session_key: object
) -> Event:
    stream, frozen = checked_input(stream, data, session_key)
    actor.check_running()
    if core.room() < MAX_EVENTS_PER_EMIT:
        raise trio.WouldBlock
    return actor.publish_agent(stream, frozen, session_key)  # type: ignore[arg-type]


@attrs.define(eq=False, on_setattr=attrs.setters.NO_OP)
class RunHandle:
    """The starter's side of one body phase: abort it, wait for its outcome."""

    id: str
    _actor: RunActor | None
    #: The bus, whose trio run's tasks alone may use the handle.
    _core: BusCore
    #: Made by the first wait() before the body finishes; a handle nobody waits on costs less.
    _done: trio.Event | None = None
    _outcome: RunOutcome | None = None

    def abort(self, reason: str = "rpc") -> bool:
        """Cancel the body; False if it has already finished."""
        cancel_requested_in(self._core.run, WRONG_THREAD)
        if not isinstance(reason, str):
            raise TypeError(f"reason must be a str, not {reason!r}")
        if self._actor is None:
            return False
        return self._actor.abort(reason)

    @property
    def outcome(self) -> RunOutcome | None:
        """The outcome once the body has finished, else ``None``."""
        return self._outcome

    async def wait(self) -> RunOutcome:
        """Wait for the body to finish (not for a retry grace) and return its outcome.

        By then its closing events have also reached the subscriptions (the router has
        routed everything published so far), unless a full ``BLOCK`` subscriber holds the
        router: a subscriber can read them without waiting.
        """
        cancel_requested_in(self._core.run, WRONG_THREAD)
        if self._outcome is None:
            if self._done is None:
                self._done = trio.Event()
            await self._done.wait()
        else:
            await trio.lowlevel.checkpoint()
        await self._core.router.wait_routed()
        assert self._outcome is not None
        return self._outcome

    def _finish(self, outcome: RunOutcome) -> None:
        self._outcome = outcome
        self._actor = None
        if self._done is not None:
            self._done.set()


@attrs.define(eq=False, on_setattr=attrs.setters.NO_OP, weakref_slot=False)
class BodyPhase:
    """One body's stretch of a run, as the async context manager's exit around the body.

    :meth:`claim` claims the run (or resumes it from its retry grace) and publishes the
    lifecycle start; :meth:`enter` opens the run's cancel scope in the task that runs the body.
    Leaving publishes the terminal events under a shielded scope, then hands the state to a
    retry grace or releases it. The body's own exception is reported as the outcome and not
    propagated (``start_run``); :class:`BlockPhase` propagates it (``async with bus.run()``).
    """

    #: Whether the body's own exception propagates to the caller.
    reraise: ClassVar[bool] = False

    core: BusCore = attrs.field(repr=False)
    actor: RunActor = attrs.field(init=False)
    handle: RunHandle = attrs.field(init=False)
    _active: bool = attrs.field(init=False, default=False)

    def check_active(self) -> None:
        cancel_requested_in(self.core.run, WRONG_THREAD)
        if not self._active:
            raise UnknownRun(f"run {self.actor.id!r} has no running body")

    async def claim(self, run_id: str, context: RunContext | None) -> RunHandle:
        """Claim the run and publish its lifecycle start (in the caller's task).

        Waits only while the router's inbox lacks room for the start event; always a
        cancellation point.
        """
        core = self.core
        if cancel_requested_in(core.run, WRONG_THREAD):
            await trio.lowlevel.checkpoint()
        core.check_open()
        while True:
            if core.room() < MAX_EVENTS_PER_EMIT:
                await core.wait_room(MAX_EVENTS_PER_EMIT)
            # From here on nothing awaits: the claim and the start event are one step, so
            # the room checked above is still there.
            try:
                actor = self.actor = core.claim(run_id, context, Phase.RUNNING)
                break
            except RunClosing as closing:  # a new run waits for the closing one to end
                await closing.actor.wait_ended()
        try:
            actor.publish_start()
        except BaseException:
            core.release(actor)
            raise
        self.handle = RunHandle(run_id, actor, core)
        self._active = True
        return self.handle

    def enter(self) -> Run:
        """Open the run's cancel scope in the task that runs the body (after :meth:`claim`).

        A run aborted in between gets an already-cancelled scope.
        """
        self.actor.open_scope().__enter__()
        return Run(self)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        return await self.leave(exc)

    async def leave(self, exc: BaseException | None) -> bool:
        """Close the run's cancel scope around the body, which left with ``exc`` (``None``
        when it returned), then end the body phase; True if ``exc`` was handled here."""
        actor, core = self.actor, self.core
        scope = actor.scope
        assert scope is not None, "enter() comes first"
        exc_type, tb = (None, None) if exc is None else (type(exc), exc.__traceback__)
        try:
            remaining = None if scope.__exit__(exc_type, exc, tb) else exc
        except BaseException as transformed:
            remaining = transformed
        actor.close_scope()
        self._active = False
        outcome: RunOutcome | None = None
        kept = False
        state = actor.state
        try:
            status, error, kind = _classify(remaining, scope, actor, self.reraise)
            if status == "error":
                _log.error("run %r failed: %s", actor.id, error, exc_info=remaining)
            keep = status == "error" and core.config.error_retry_grace > 0 and not core.closing
            if actor.ended_at is not None:  # an abort already published the terminal events
                ended_at = actor.ended_at
            else:
                ended_at = epoch_ms()
                # Claim the terminal events before waiting for room: an abort arriving while
                # this waits must not publish a terminal event of its own (it would be the
                # run's second). The body has ended; the abort only gets to say so.
                actor.claim_terminal(ended_at)
                await _publish_shielded(
                    core, lambda: _publish_terminal(actor, status, error, kind, ended_at, keep)
                )
            if keep and core.closing:
                # The bus began closing while the terminal event waited: no grace to wait in.
                keep = False
                await _publish_shielded(core, actor.publish_chat_error)
            outcome = RunOutcome(
                run_id=actor.id,
                status=status,
                error=error,
                exception=remaining if status == "error" else None,
                last_seq=state.last_seq,
                started_at=state.started_at,
                ended_at=ended_at,
            )
            core.counters.record(status)
            if keep:
                wakeup = actor.enter_grace()
                core.supervisor.start_soon(
                    keep_for_retry, core, actor, wakeup, name="pipeline.retry_grace"
                )
                kept = True
        finally:
            # Whatever happened above, the run ends here unless a grace keeper now owns it.
            if not kept:
                core.release(actor)
            self.handle._finish(outcome or _failed_to_end(actor))
        if remaining is None:
            return exc is not None
        if isinstance(remaining, Exception) and not self.reraise:
            return True
        if remaining is not exc:
            raise remaining
        return False


@attrs.define(eq=False, on_setattr=attrs.setters.NO_OP, weakref_slot=False)
class BlockPhase(BodyPhase):
    """The body phase of ``async with bus.run()``: the caller's block is the body, and its
    exception propagates once the run has ended."""

    reraise: ClassVar[bool] = True

    run_id: str = attrs.field(kw_only=True)
    context: RunContext | None = attrs.field(kw_only=True)

    async def __aenter__(self) -> Run:
        await self.claim(self.run_id, self.context)
        return self.enter()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        """End the run; when the block ended without an exception, also wait until its
        closing events have reached the subscriptions, as ``RunHandle.wait()`` does."""
        handled = await self.leave(exc)
        if exc is None:
            await self.core.router.wait_routed()
        return handled


def _failed_to_end(actor: RunActor) -> RunOutcome:
    """The outcome of a run whose ending itself failed (a bug, logged by the supervisor)."""
    return RunOutcome(
        run_id=actor.id,
        status="error",
        error="the bus failed to end this run",
        exception=None,
        last_seq=actor.state.last_seq,
        started_at=actor.state.started_at,
        ended_at=epoch_ms(),
    )


def describe(exc: BaseException) -> str:
    """``str(exc)``, or a stand-in when the exception cannot print itself."""
    try:
        return str(exc)
    except Exception:
        return f"<unprintable {type(exc).__name__}>"


def _classify(
    exc: BaseException | None, scope: trio.CancelScope, actor: RunActor, own_task: bool
) -> tuple[Status, str | None, str]:
    """The outcome status, error text and error kind of a body that left with ``exc``.

    Once the run was aborted, that is its outcome, however the body left: the abort explains
    what it raised on the way out, and a body that returned before noticing was still stopped.
    A cancellation from outside the run's own scope is the bus shutting down for a run in a
    task of the bus's (``start_run``: the bus's owner was cancelled), and the caller's own
    cancellation for ``async with bus.run()`` (``own_task``).
    """
    if actor.stop_reason is not None:
        return "aborted", actor.stop_reason, "aborted"
    if exc is None:
        if scope.cancelled_caught:
            return "timeout", IDLE_TIMEOUT_ERROR, "timeout"
        return "ok", None, ""
    if isinstance(exc, Exception):
        return "error", describe(exc), type(exc).__name__
    # Cancelled from outside (its owner nursery is going away) or KeyboardInterrupt.
    return "aborted", "cancelled" if own_task else SHUTDOWN, "aborted"


def _publish_terminal(
    actor: RunActor, status: Status, error: str | None, kind: str, ended_at: int, keep: bool
) -> None:
    if status == "ok":
        actor.publish_end(ended_at)
    elif status == "aborted":
        actor.publish_aborted(error or "aborted", ended_at)
    else:
        actor.publish_error(error or status, kind, ended_at)
        if not keep:
            actor.publish_chat_error()


async def _publish_shielded(core: BusCore, publish: Callable[[], None]) -> None:
    """Publish a run's closing events even while being cancelled.

    It waits for room in the router as long as it takes, since a terminal event is never
    dropped; once the bus is closing, at most ``shutdown_timeout``.
    """
    with trio.CancelScope(shield=True) as cleanup:
        if core.closing:
            cleanup.deadline = trio.current_time() + core.config.shutdown_timeout
        try:
            await core.wait_room(MAX_TERMINAL_EVENTS)
            publish()
            return
        except BusClosed:
            pass
    _log.warning("closing events could not be published: the bus closed first")


async def keep_for_retry(core: BusCore, actor: RunActor, wakeup: trio.Event) -> None:
    """Keep a failed run's state for ``error_retry_grace``; a retry under its id resumes it.

    If the grace expires (or the run is aborted, or the bus closes), the chat error goes out
    and the state is released. ``wakeup`` is this grace's (:meth:`RunActor.enter_grace`).
    """
    try:
        with trio.move_on_after(core.config.error_retry_grace):
            await wakeup.wait()
    finally:
        if actor.in_grace(wakeup):  # else a retry took the run over
            # The grace is over: a retry from now on waits for this run to end and starts a new
            # one, even while the chat error below waits for room (it used to resume this
            # run, which was then released under it).
            actor.close_grace()
            try:
                await _publish_shielded(core, actor.publish_chat_error)
            finally:
                core.release(actor)


async def track_ingested(core: BusCore, actor: RunActor, wakeup: trio.Event) -> None:
    """Own a run known only from ingested events, until its terminal event or idle timeout.

    If it ends any other way (abort, idle timeout, cancellation), it publishes a terminal
    event of its own, so subscribers still see the run end.
    """
    status: Status = "aborted"
    reason = "cancelled"
    try:
        with actor.open_scope() as scope:
            await wakeup.wait()
        if actor.tracked_terminal is not None:
            status = _tracked_status(actor.tracked_terminal)
        elif actor.stop_reason is not None:
            reason = actor.stop_reason
        elif scope.cancelled_caught:
            status = "timeout"
    finally:
        actor.close_scope()
        try:
            if actor.tracked_terminal is None:
                ended_at = epoch_ms()
                if status == "timeout":
                    await _publish_shielded(
                        core, lambda: actor.publish_error(IDLE_TIMEOUT_ERROR, "timeout", ended_at)
                    )
                else:
                    await _publish_shielded(core, lambda: actor.publish_aborted(reason, ended_at))
        finally:
            core.counters.record(status)
            core.release(actor)


def _tracked_status(terminal: Any) -> Status:
    if terminal.get("phase") == "end":
        return "aborted" if terminal.get("aborted") else "ok"
    return "timeout" if terminal.get("errorKind") == "timeout" else "error"
