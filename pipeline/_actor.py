"""The run actor's state: everything one run knows, owned by the task that runs it.

A :class:`RunActor` holds a run's seq counter, context, chat projection, stop reason and idle
deadline. It is created when a run starts and dropped when the run ends; the bus's only index,
``run id -> live actor``, loses its entry in the ending task's ``finally``. So a finished run
leaves nothing behind, however it finished.

The actor publishes through the router; callers make sure the router's inbox has room
(``MAX_EVENTS_PER_EMIT``) before calling a ``publish_*`` method, so that an agent event and the
chat events it causes enter the inbox together, in order, without a gap in seq.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from time import time_ns
from typing import TYPE_CHECKING, Any

import attrs
import trio

from ._chat import ChatProjection
from ._config import RunContext
from ._errors import InvalidEvent, UnknownRun
from ._event import (
    CHAT,
    DROPPED_STREAM,
    LIFECYCLE,
    SEQ_GAP,
    Event,
    annotation_kind,
    checked_data,
    checked_stream,
    is_terminal,
    make_event,
)
from ._frozen import FrozenDict, frozen_value

if TYPE_CHECKING:
    from ._core import BusCore

__all__ = ["MAX_EVENTS_PER_EMIT", "MAX_TERMINAL_EVENTS", "Phase", "RunActor", "epoch_ms"]

#: An agent event plus the chat event it causes (a delta after it, or a flush before it).
MAX_EVENTS_PER_EMIT = 2
#: A terminal lifecycle event, a chat flush and the chat final.
MAX_TERMINAL_EVENTS = 3
#: Streams only the bus may publish.
_RESERVED_STREAMS = frozenset({LIFECYCLE, CHAT, DROPPED_STREAM})
#: The idle deadline is refreshed at most once per this fraction of the idle timeout, because
#: moving a cancel scope's deadline costs more than the rest of an emit. So an idle run ends
#: between ``run_idle_timeout`` and ``run_idle_timeout * (1 + 1/64)`` after its last event.
IDLE_REFRESH_FRACTION = 1 / 64


def epoch_ms() -> int:
    return time_ns() // 1_000_000


class Phase(enum.Enum):
    """Where a run is in its life."""

    #: A body is running.
    RUNNING = "running"
    #: The body failed; the state waits ``error_retry_grace`` for a retry under the same id.
    GRACE = "grace"
    #: Events come from ``Bus.ingest``; it ends on a terminal lifecycle event or when idle.
    TRACKING = "tracking"
    ENDED = "ended"


@attrs.define(eq=False, on_setattr=attrs.setters.NO_OP, weakref_slot=False)
class RunActor:
    """The state of one live run."""

    id: str
    context: RunContext
    core: BusCore
    phase: Phase
    #: Seq of the newest agent event (local or ingested); the next local one is ``last_seq + 1``.
    last_seq: int = 0
    started_at: int = 0
    #: Why the run is being stopped (abort reason); ``None`` unless aborted.
    stop_reason: str | None = None
    #: The ``stopReason`` the body asked its end event to carry.
    end_reason: str | None = None
    #: The failure kept through the retry grace: (message, kind).
    failure: tuple[str, str] | None = None
    #: Counts the run's retry graces, so a keeper acts only on its own grace.
    grace_generation: int = 0
    #: When the current body phase's terminal event was published early (by an abort).
    ended_at: int | None = None
    #: The terminal lifecycle data seen by a tracked run.
    tracked_terminal: Mapping[str, Any] | None = None
    _scope: trio.CancelScope | None = None
    _chat: ChatProjection | None = None
    #: The session key the chat projection last published under (for its closing events).
    _chat_key: str | None = None
    #: Woken on a retry or abort during the grace, and on a tracked run's terminal event;
    #: made only for those stretches, so a running body does not pay for it.
    _wakeup: trio.Event | None = None
    _refreshed_at: float = -math.inf
    #: Ingest's dedupe of annotations (chat and seq-gap events, which carry their cause's
    #: seq): the newest annotation seq seen, then the kinds seen at it. One slot, made only
    #: by ingest: a local run never pays for it.
    _noted: tuple[int, tuple[str, ...]] = (0, ())

    # ---- scope, idle deadline, abort ---------------------------------------------------------

    def open_scope(self) -> trio.CancelScope:
        """A fresh cancel scope for the next stretch of work, with the idle deadline set."""
        scope = trio.CancelScope()
        self._scope = scope
        self._refreshed_at = -math.inf
        self._touch(self.core.clock.current_time())
        if self.stop_reason is not None:
            scope.cancel()
        return scope

    def close_scope(self) -> None:
        self._scope = None

    def _touch(self, now: float) -> None:
        """Note activity: push the idle deadline, at most once per refresh step."""
        core = self.core
        if now - self._refreshed_at >= core.idle_step:
            self._refreshed_at = now
            if self._scope is not None:
                self._scope.deadline = now + core.idle_window

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
                self.phase is Phase.RUNNING
                and self.ended_at is None
                and self.core.router.free() >= MAX_TERMINAL_EVENTS
            ):
                self.ended_at = epoch_ms()
                self.publish_aborted(reason, self.ended_at)
                self.core.router.flush_nowait()
        if self._scope is not None:
            self._scope.cancel()
        self.wake()
        return True

    def wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()

    def prepare_wait(self) -> None:
        """Make the event that :meth:`wake` sets, before the stretch that waits for it."""
        self._wakeup = trio.Event()

    def enter_grace(self) -> int:
        """Keep the state for a retry; returns this grace's generation."""
        self.phase = Phase.GRACE
        self.grace_generation += 1
        self.prepare_wait()
        return self.grace_generation

    def in_grace(self, generation: int) -> bool:
        return self.phase is Phase.GRACE and self.grace_generation == generation

    async def wait_woken(self) -> None:
        assert self._wakeup is not None, "prepare_wait() comes first"
        await self._wakeup.wait()

    # ---- agent events ------------------------------------------------------------------------

    def check_running(self) -> None:
        """:exc:`UnknownRun` unless a body is running and not being stopped."""
        if self.phase is not Phase.RUNNING:
            raise UnknownRun(f"run {self.id!r} has no running body")
        if self.stop_reason is not None:
            raise UnknownRun(f"run {self.id!r} is being stopped ({self.stop_reason})")

    @staticmethod
    def checked_input(
        stream: object, data: object, session_key: object
    ) -> tuple[str, Mapping[str, Any]]:
        """Validate what a caller wants to emit; :exc:`InvalidEvent` if it is malformed."""
        if type(stream) is not str or not stream.strip():
            stream = checked_stream(stream)  # raises with the reason
        if stream in _RESERVED_STREAMS:
            raise InvalidEvent(f"stream {stream!r} is published by the bus, not by run bodies")
        if session_key is not None and not isinstance(session_key, str):
            raise InvalidEvent(f"session_key must be a str or None, not {session_key!r}")
        frozen = checked_data(data)
        if stream == "error" and frozen.get("reason") == SEQ_GAP:
            raise InvalidEvent(f"an error with reason {SEQ_GAP!r} is the bus's own (ingest)")
        return stream, frozen

    def publish_agent(
        self, stream: str, data: Mapping[str, Any], session_key: str | None = None
    ) -> Event:
        """Sequence, enrich and publish one agent event and the chat events it causes.

        Its session key is the event's own non-blank key, else the context's; none at all
        for runs hidden from the control UI.
        """
        context = self.context
        if not context.control_ui_visible:
            key = None
        elif session_key is not None and session_key.strip():
            key = session_key
        else:
            key = context.session_key
        ts = time_ns() // 1_000_000
        self.last_seq = seq = self.last_seq + 1
        # Events of a run known from ingest (a tracked run's own closing events) are not local.
        remote = self.phase is Phase.TRACKING
        event = make_event(self.id, seq, stream, ts, data, key, remote)
        core = self.core
        now = core.clock.current_time()
        publish = core.publish
        if key is None:
            publish(event)
        else:
            self._chat_key = key
            chat = self._chat_projection()
            before = chat.before(stream, data, now, ts)
            if before is not None:
                publish(make_event(self.id, seq, CHAT, ts, frozen_value(before), key, remote))
            publish(event)
            truncations = chat.truncations
            after = chat.after(stream, data, now, ts)
            self.core.chat_truncations += chat.truncations - truncations
            if after is not None:
                publish(make_event(self.id, seq, CHAT, ts, frozen_value(after), key, remote))
        if now - self._refreshed_at >= core.idle_step:
            self._touch(now)
        return event

    def _chat_projection(self) -> ChatProjection:
        if self._chat is None:
            config = self.core.config
            self._chat = ChatProjection(config.chat_delta_interval, config.max_event_bytes)
        return self._chat

    def _closing_chat_key(self) -> str | None:
        """Where closing chat events go: the context's session, else the one the chat used."""
        if not self.context.control_ui_visible:
            return None
        return self.context.session_key or self._chat_key

    def _publish_chat(self, payload: Mapping[str, Any] | None, seq: int, ts: int) -> None:
        key = self._closing_chat_key()
        if payload is not None and key is not None:
            remote = self.phase is Phase.TRACKING
            self.core.publish(
                make_event(self.id, seq, CHAT, ts, frozen_value(payload), key, remote)
            )

    # ---- lifecycle ---------------------------------------------------------------------------

    def publish_start(self) -> None:
        if not self.started_at:
            self.started_at = epoch_ms()
        self.publish_agent(LIFECYCLE, FrozenDict(phase="start", startedAt=self.started_at))

    def publish_end(self, ended_at: int) -> None:
        data: dict[str, Any] = {"phase": "end", "startedAt": self.started_at, "endedAt": ended_at}
        if self.end_reason is not None:
            data["stopReason"] = self.end_reason
        event = self.publish_agent(LIFECYCLE, FrozenDict(data))
        if self._closing_chat_key() is not None:
            for payload in self._chat_projection().final(self.end_reason, event.ts):
                self._publish_chat(payload, event.seq, event.ts)

    def publish_aborted(self, reason: str, ended_at: int) -> None:
        """The chat ``aborted`` with the partial text, then the terminal lifecycle event.

        The chat event carries the seq of the lifecycle event it announces.
        """
        if self._closing_chat_key() is not None:
            payload = self._chat_projection().aborted(reason, ended_at)
            self._publish_chat(payload, self.last_seq + 1, ended_at)
        self.publish_agent(
            LIFECYCLE,
            FrozenDict(
                phase="end",
                aborted=True,
                stopReason=reason,
                startedAt=self.started_at,
                endedAt=ended_at,
            ),
        )

    def publish_error(self, message: str, kind: str, ended_at: int) -> None:
        """The lifecycle error; the chat error waits for :meth:`publish_chat_error`."""
        self.failure = (message, kind)
        self.publish_agent(
            LIFECYCLE,
            FrozenDict(
                phase="error",
                error=message,
                errorKind=kind,
                startedAt=self.started_at,
                endedAt=ended_at,
            ),
        )

    def publish_chat_error(self) -> None:
        """The chat error for the kept failure, once no retry is coming."""
        if self.failure is not None:
            self._publish_chat(ChatProjection.error(*self.failure), self.last_seq, epoch_ms())

    # ---- ingested events ---------------------------------------------------------------------

    def publish_ingested(self, event: Event) -> bool:
        """Publish an event sequenced elsewhere, after dedupe and gap detection.

        Returns False for a duplicate, which is not published: an agent event whose
        ``seq <= last_seq``, or an annotation (chat, seq gap) already seen (see
        :func:`annotation_kind`). Annotations neither move ``last_seq`` nor count for gaps, so
        forwarding a run from bus to bus loses none of its events.
        """
        kind = annotation_kind(event)
        if kind is not None:
            if not self._note(event.seq, kind):
                return False
            self.core.publish(event)
        else:
            last = self.last_seq
            if event.seq <= last:
                return False
            if last > 0 and event.seq != last + 1 and self._note(event.seq, SEQ_GAP):
                # Unless an upstream bus already reported this gap (its event was noted).
                gap = FrozenDict(reason=SEQ_GAP, expected=last + 1, received=event.seq)
                self.core.publish(
                    make_event(
                        self.id, event.seq, "error", epoch_ms(), gap, event.session_key, True
                    )
                )
            self.last_seq = event.seq
            self.core.publish(event)
            if self.phase is Phase.TRACKING and is_terminal(event):
                self.tracked_terminal = event.data
                self.wake()
        self._touch(self.core.clock.current_time())
        return True

    def _note(self, seq: int, kind: str) -> bool:
        """Record annotation ``(seq, kind)``; False if it was seen already (or is older)."""
        noted_seq, kinds = self._noted
        if seq > noted_seq:
            self._noted = (seq, (kind,))
            return True
        if seq < noted_seq or kind in kinds:
            return False
        self._noted = (seq, (*kinds, kind))
        return True

    # ---- the end -----------------------------------------------------------------------------

    def release(self) -> None:
        """Drop the run's state and its index entry; nothing of it stays in the bus."""
        self.phase = Phase.ENDED
        self._chat = None
        self._scope = None
        self.failure = None
        self.tracked_terminal = None
        self.core.forget(self)
