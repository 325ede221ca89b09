"""The bus's shared core: configuration, the router, the supervisor and the live-run index.

Run actors and the bus facade both work through it. It holds no per-run state besides the
index ``run id -> live actor``, whose size is the number of live runs, bounded by ``max_runs``.
"""

from __future__ import annotations

import math

import attrs
import trio

from actors import Router, Supervisor, cancel_requested_in, current_run

from ._actor import IDLE_REFRESH_FRACTION, Phase, RunActor
from ._config import BusConfig, RunContext
from ._errors import BusClosed, RunAlreadyActive, TooManyRuns
from ._event import Event

__all__ = ["OUTCOMES", "WRONG_THREAD", "BusCore"]

OUTCOMES = ("ok", "error", "aborted", "timeout")
#: Why a call from outside the bus's trio thread is refused.
WRONG_THREAD = (
    "the bus, its runs and its subscriptions belong to the trio thread that opened the bus;"
    " from another thread use bus.portal(), from asyncio pipeline.aio"
)
#: The context of runs started without one; frozen, so every such run can share it.
DEFAULT_CONTEXT = RunContext()


@attrs.define(eq=False, on_setattr=attrs.setters.NO_OP)
class BusCore:
    config: BusConfig
    router: Router[Event]
    supervisor: Supervisor
    #: The only index of runs: live run id -> live actor.
    runs: dict[str, RunActor] = attrs.field(factory=dict)
    closing: bool = False
    runs_started: int = 0
    outcomes: dict[str, int] = attrs.field(factory=lambda: dict.fromkeys(OUTCOMES, 0))
    duplicates: int = 0
    #: Chat text or thinking updates cut to ``max_event_bytes`` characters.
    chat_truncations: int = 0
    _all_ended: trio.Event = attrs.field(factory=trio.Event)
    #: The trio clock of the run the bus lives in (a MockClock in tests), looked up once.
    clock: trio.abc.Clock = attrs.field(factory=trio.lowlevel.current_clock)
    #: How often a run's idle deadline moves, and how far ahead it is put (inf: no idle
    #: timeout). Kept here, not per run: every run of the bus shares them.
    idle_step: float = attrs.field(init=False, default=math.inf)
    idle_window: float = attrs.field(init=False, default=math.inf)
    #: The trio run (so the thread) the bus lives in: only its tasks may call the bus.
    run: trio.lowlevel.TrioToken = attrs.field(init=False, factory=current_run)

    def __attrs_post_init__(self) -> None:
        idle = self.config.run_idle_timeout
        if idle is not None:
            self.idle_step = idle * IDLE_REFRESH_FRACTION
            self.idle_window = idle + self.idle_step

    def check_thread(self) -> None:
        """:exc:`RuntimeError` unless called from a task of the bus's trio run (SPEC 4.8)."""
        cancel_requested_in(self.run, WRONG_THREAD)

    def check_open(self) -> None:
        if self.closing:
            raise BusClosed("the bus is closed")

    def claim(self, run_id: str, context: RunContext | None, phase: Phase) -> tuple[RunActor, bool]:
        """The actor for a new run, or the one in retry grace under ``run_id`` (True).

        Raises :exc:`BusClosed`, :exc:`RunAlreadyActive` or :exc:`TooManyRuns`.
        """
        self.check_open()
        actor = self.runs.get(run_id)
        if actor is not None:
            if actor.phase is not Phase.GRACE or phase is not Phase.RUNNING:
                raise RunAlreadyActive(f"run {run_id!r} is live")
            actor.phase = Phase.RUNNING
            actor.failure = None
            actor.stop_reason = None
            actor.end_reason = None
            actor.ended_at = None
            if context is not None:
                actor.context = context
            actor.wake()
            return actor, True
        if len(self.runs) >= self.config.max_runs:
            raise TooManyRuns(f"{self.config.max_runs} runs are live (max_runs)")
        actor = RunActor(run_id, context or DEFAULT_CONTEXT, self, phase)
        self.runs[run_id] = actor
        self.runs_started += 1
        return actor, False

    def forget(self, actor: RunActor) -> None:
        if self.runs.get(actor.id) is actor:
            del self.runs[actor.id]
        if self.closing and not self.runs:
            self._all_ended.set()

    def record(self, status: str) -> None:
        self.outcomes[status] += 1

    def publish(self, event: Event) -> None:
        """Queue ``event`` for the router; callers have made sure there is room."""
        try:
            self.router.publish_nowait(event)
        except trio.ClosedResourceError as exc:
            raise BusClosed("the bus is closed") from exc

    async def wait_room(self, count: int) -> None:
        """Wait until the router's inbox takes ``count`` events without waiting."""
        try:
            await self.router.wait_free(count)
        except trio.ClosedResourceError as exc:
            raise BusClosed("the bus is closed") from exc

    async def wait_all_ended(self) -> None:
        if self.runs:
            await self._all_ended.wait()
