"""The bus's shared core: configuration, the router, the supervisor and the live-run index.

The bus facade and the tasks that run runs work through it. It holds no per-run state besides
the index ``run id -> live actor``, whose size is the number of live runs, bounded by
``max_runs``. To a run's driver it is only a :class:`~pipeline._actor.Publisher`.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
import trio

from actors import Router, Supervisor, cancel_requested_in, current_run

from ._actor import Phase, RunActor, RunClock
from ._config import BusConfig, RunContext
from ._counters import OUTCOMES, Counters
from ._errors import BusClosed, RunAlreadyActive, TooManyRuns
from ._event import Event
from ._state import RunSettings, RunState

__all__ = ["OUTCOMES", "WRONG_THREAD", "BusCore"]

#: Why a call from outside the bus's trio thread is refused.
WRONG_THREAD = (
    "the bus, its runs and its subscriptions belong to the trio thread that opened the bus;"
    " from another thread use bus.portal(), from asyncio pipeline.aio"
)
#: The context of runs started without one; frozen, so every such run can share it.
DEFAULT_CONTEXT = RunContext()


def _run_clock(core: BusCore) -> RunClock:
    return RunClock(trio.lowlevel.current_clock().current_time, core.config.run_idle_timeout)


def _run_settings(core: BusCore) -> RunSettings:
    config = core.config
    return RunSettings(config.chat_delta_interval, config.max_event_bytes)


@attrs.define(eq=False, on_setattr=attrs.setters.NO_OP)
class BusCore:
    config: BusConfig
    router: Router[Event]
    supervisor: Supervisor
    #: The only index of runs: live run id -> live actor.
    runs: dict[str, RunActor] = attrs.field(factory=dict)
    closing: bool = False
    #: Set by a cluster node (``pipeline.cluster``): aborting a run tracked from ingest asks
    #: the node that owns it, instead of ending the tracked copy here (GATEWAY 2).
    remote_abort: Callable[[str, str], bool] | None = None
    _all_ended: trio.Event = attrs.field(factory=trio.Event)
    #: The trio clock of the run the bus lives in (a MockClock in tests), looked up once, and
    #: the idle deadlines every run of the bus shares.
    clock: RunClock = attrs.field(init=False, default=attrs.Factory(_run_clock, takes_self=True))
    #: What every run state shares: chat settings and the counters.
    settings: RunSettings = attrs.field(
        init=False, default=attrs.Factory(_run_settings, takes_self=True)
    )
    #: How many events the router takes now without waiting (its ``free``, looked up once).
    room: Callable[[], int] = attrs.field(init=False)
    #: The trio run (so the thread) the bus lives in: only its tasks may call the bus.
    run: trio.lowlevel.TrioToken = attrs.field(init=False, factory=current_run)
    #: trio's runner object for that run, compared on the emit hot path (see ``_run.emit``).
    runner: object = attrs.field(
        init=False, factory=lambda: getattr(trio.lowlevel.current_task(), "_runner", None)
    )

    #: Queue an event the caller made room for: the router's own ``publish_nowait``, one
    #: call less per event than :meth:`publish` (room was checked, and a closed router has
    #: none, so the ``BusClosed`` translation is not needed).
    put: Callable[[Event], None] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.room = self.router.free
        self.put = self.router.publish_nowait

    @property
    def counters(self) -> Counters:
        return self.settings.counters

    def check_thread(self) -> None:
        """:exc:`RuntimeError` unless called from a task of the bus's trio run (SPEC 4.8)."""
        cancel_requested_in(self.run, WRONG_THREAD)

    def check_open(self) -> None:
        if self.closing:
            raise BusClosed("the bus is closed")

    def claim(self, run_id: str, context: RunContext | None, phase: Phase) -> RunActor:
        """The actor for a new run, or the one in retry grace under ``run_id`` (resumed).

        Raises :exc:`BusClosed`, :exc:`RunAlreadyActive` or :exc:`TooManyRuns`.
        """
        self.check_open()
        actor = self.runs.get(run_id)
        if actor is not None:
            if actor.phase is Phase.CLOSING and phase is Phase.RUNNING:
                raise RunClosing(actor)
            if actor.phase is not Phase.GRACE or phase is not Phase.RUNNING:
                raise RunAlreadyActive(f"run {run_id!r} is live")
            actor.resume(context)
            return actor
        if len(self.runs) >= self.config.max_runs:
            raise TooManyRuns(f"{self.config.max_runs} runs are live (max_runs)")
        context = context or DEFAULT_CONTEXT
        if phase is Phase.TRACKING:
            state = RunState.remote(run_id, context, self.settings)
        else:
            state = RunState(run_id, context, self.settings)
        actor = RunActor(state, self, phase)
        self.runs[run_id] = actor
        self.counters.runs_started += 1
        return actor

    def release(self, actor: RunActor) -> None:
        """End ``actor``'s run and drop its index entry; nothing of it stays in the bus."""
        actor.end()
        if self.runs.get(actor.id) is actor:
            del self.runs[actor.id]
        if self.closing and not self.runs:
            self._all_ended.set()

    def publish(self, event: Event, /, *, flush: bool = False) -> None:
        """Queue ``event`` for the router; callers have made sure there is room.

        With ``flush``, route what is queued now, in this task, unless a subscriber would make
        that wait (``Router.flush_nowait``).
        """
        try:
            self.router.publish_nowait(event)
        except trio.ClosedResourceError as exc:
            raise BusClosed("the bus is closed") from exc
        if flush:
            self.router.flush_nowait()

    async def wait_room(self, count: int) -> None:
        """Wait until the router's inbox takes ``count`` events without waiting."""
        try:
            await self.router.wait_free(count)
        except trio.ClosedResourceError as exc:
            raise BusClosed("the bus is closed") from exc

    async def wait_all_ended(self) -> None:
        if self.runs:
            await self._all_ended.wait()


class RunClosing(RunAlreadyActive):
    """A run under this id is closing (its expired grace's chat error is going out): a new
    run under the id has to wait for it (``BodyPhase.claim`` does)."""

    def __init__(self, actor: RunActor) -> None:
        super().__init__(f"run {actor.id!r} is closing")
        self.actor = actor
