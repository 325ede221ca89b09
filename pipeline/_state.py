"""A run's state, and the events it calls for: plain synchronous code, no trio, no I/O.

:class:`RunState` holds what a run knows (its seq counter, context, chat projection, start
time, kept failure and ingest dedupe) and builds the events that state calls for: an agent
event with the chat events around it, the terminal lifecycle and chat events, the seq-gap
event before an ingested event that skipped seqs. It never publishes anything: every method
returns the events to publish, in order, as :class:`~pipeline._chat.ChatProjection` returns
its payloads. Its driver (:class:`~pipeline._actor.RunActor`) publishes them, after making sure
the router has room for :data:`MAX_EVENTS_PER_EMIT` (or :data:`MAX_TERMINAL_EVENTS`) events, so
that an agent event and the chat events it causes enter the router together, without a gap
in seq.
"""

from __future__ import annotations

from collections.abc import Mapping
from time import time_ns
from typing import Any

import attrs

from ._chat import ChatProjection
from ._config import RunContext
from ._counters import Counters
from ._errors import InvalidEvent
from ._event import (
    CHAT,
    DROPPED_STREAM,
    LIFECYCLE,
    SEQ_GAP,
    Event,
    annotation_kind,
    checked_stream,
    make_event,
)
from ._frozen import FrozenDict, frozen_data, frozen_value

__all__ = [
    "MAX_EVENTS_PER_EMIT",
    "MAX_TERMINAL_EVENTS",
    "RunSettings",
    "RunState",
    "checked_input",
    "epoch_ms",
]

#: An agent event plus the chat event it causes (a delta after it, or a flush before it).
MAX_EVENTS_PER_EMIT = 2
#: A terminal lifecycle event, a chat flush and the chat final.
MAX_TERMINAL_EVENTS = 3
#: Streams only the bus may publish.
_RESERVED_STREAMS = frozenset({LIFECYCLE, CHAT, DROPPED_STREAM})


def epoch_ms() -> int:
    return time_ns() // 1_000_000


def checked_input(
    stream: object, data: object, session_key: object
) -> tuple[str, Mapping[str, Any]]:
    """Validate what a body wants to emit; :exc:`InvalidEvent` if it is malformed."""
    if type(stream) is not str or not stream.strip():
        stream = checked_stream(stream)  # raises with the reason
    if stream in _RESERVED_STREAMS:
        raise InvalidEvent(f"stream {stream!r} is published by the bus, not by run bodies")
    if session_key is not None and not isinstance(session_key, str):
        raise InvalidEvent(f"session_key must be a str or None, not {session_key!r}")
    frozen = frozen_data(data)
    if stream == "error" and frozen.get("reason") == SEQ_GAP:
        raise InvalidEvent(f"an error with reason {SEQ_GAP!r} is the bus's own (ingest)")
    return stream, frozen


@attrs.frozen
class RunSettings:
    """What every run of one bus shares: the chat projection's settings and the counters."""

    #: At most one chat delta per this many seconds, per run.
    chat_delta_interval: float
    #: A run's chat text and thinking are each cut to this many characters.
    max_event_bytes: int
    counters: Counters = attrs.field(factory=Counters)


@attrs.define(eq=False, on_setattr=attrs.setters.NO_OP, weakref_slot=False)
class _Rare:
    """The state few runs need, made by the first of them to need it: a live run that only
    emits does without it (an idle run's memory is a measured target)."""

    #: Made from ingested events (another node sequenced them): events built here are marked
    #: ``ingested`` too.
    remote: bool = False
    #: The ``stopReason`` the body asked its end event to carry.
    end_reason: str | None = None
    #: The failure kept through the retry grace: (message, kind).
    failure: tuple[str, str] | None = None
    #: Ingest's dedupe of annotations (chat and seq-gap events, which carry their cause's
    #: seq): the newest annotation seq seen, and the kinds seen at it.
    noted_seq: int = 0
    noted_kinds: tuple[str, ...] = ()


#: What an agent event calls for: (chat event before it, the event, chat event after it).
AgentEvents = tuple[Event | None, Event, Event | None]


@attrs.define(eq=False, on_setattr=attrs.setters.NO_OP, weakref_slot=False)
class RunState:
    """The state of one run, and the events it calls for (see the module docstring).

    Times: ``now`` is the bus's trio clock in seconds (it drives the chat throttle); ``ts``,
    ``started_at`` and ``ended_at`` are epoch milliseconds.
    """

    id: str
    context: RunContext
    settings: RunSettings = attrs.field(repr=False)
    #: Seq of the newest agent event (local or ingested); the next local one is ``last_seq + 1``.
    last_seq: int = 0
    #: When the run first started (a retry keeps it).
    started_at: int = 0
    _chat: ChatProjection | None = None
    #: The session key the chat projection last published under (for its closing events).
    _chat_key: str | None = None
    _rare: _Rare | None = None

    @classmethod
    def remote(cls, run_id: str, context: RunContext, settings: RunSettings) -> RunState:
        """The state of a run known only from ingested events."""
        return cls(run_id, context, settings, rare=_Rare(remote=True))

    def _more(self) -> _Rare:
        if self._rare is None:
            self._rare = _Rare()
        return self._rare

    @property
    def is_remote(self) -> bool:
        return self._rare is not None and self._rare.remote

    @property
    def end_reason(self) -> str | None:
        return None if self._rare is None else self._rare.end_reason

    @end_reason.setter
    def end_reason(self, reason: str | None) -> None:
        if reason is not None or self._rare is not None:
            self._more().end_reason = reason

    @property
    def failure(self) -> tuple[str, str] | None:
        """The failure kept for the chat error: (message, kind)."""
        return None if self._rare is None else self._rare.failure

    def resume(self, context: RunContext | None) -> None:
        """A retry takes the run over: forget the failed attempt (seq and chat go on)."""
        if self._rare is not None:
            self._rare.failure = None
            self._rare.end_reason = None
        if context is not None:
            self.context = context

    def clear(self) -> None:
        """Drop the buffers and kept failure: the run has ended."""
        self._chat = None
        self._rare = None

    # ---- agent events ------------------------------------------------------------------------

    def agent(
        self, stream: str, data: Mapping[str, Any], session_key: str | None, now: float
    ) -> AgentEvents:
        """Sequence and enrich one agent event from the body (checked by :func:`checked_input`).

        Returns it with the chat events to publish before and after it (``None`` for none).
        Its session key is the event's own non-blank key, else the context's; none at all for
        runs hidden from the control UI. The chat events carry the agent event's seq.
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
        event = make_event(self.id, seq, stream, ts, data, key)
        if key is None:
            return None, event, None
        self._chat_key = key
        chat = self._chat
        if chat is None:
            settings = self.settings
            chat = self._chat = ChatProjection(
                settings.chat_delta_interval, settings.max_event_bytes
            )
        run_id = self.id
        payload = chat.before(stream, data, now, ts)
        before = None
        if payload is not None:
            before = make_event(run_id, seq, CHAT, ts, frozen_value(payload), key)
        truncations = chat.truncations
        payload = chat.after(stream, data, now, ts)
        if chat.truncations != truncations:
            self.settings.counters.chat_truncations += chat.truncations - truncations
        if payload is None:
            return before, event, None
        return before, event, make_event(run_id, seq, CHAT, ts, frozen_value(payload), key)

    def _lifecycle(self, data: Mapping[str, Any]) -> Event:
        """Sequence and enrich a lifecycle event (which feeds no chat)."""
        context = self.context
        key = context.session_key if context.control_ui_visible else None
        if key is not None:
            self._chat_key = key
        self.last_seq = seq = self.last_seq + 1
        return make_event(self.id, seq, LIFECYCLE, epoch_ms(), data, key, self.is_remote)

    def _closing_chat_key(self) -> str | None:
        """Where closing chat events go: the context's session, else the one the chat used."""
        if not self.context.control_ui_visible:
            return None
        return self.context.session_key or self._chat_key

    def _chat_projection(self) -> ChatProjection:
        if self._chat is None:
            settings = self.settings
            self._chat = ChatProjection(settings.chat_delta_interval, settings.max_event_bytes)
        return self._chat

    def _chat_event(self, payload: Mapping[str, Any], seq: int, ts: int, key: str) -> Event:
        return make_event(self.id, seq, CHAT, ts, frozen_value(payload), key, self.is_remote)

    # ---- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Event:
        """The lifecycle start (the first start time stays through retries)."""
        if not self.started_at:
            self.started_at = epoch_ms()
        return self._lifecycle(FrozenDict(phase="start", startedAt=self.started_at))

    def end(self, ended_at: int) -> list[Event]:
        """The lifecycle end, then the chat flush (if any) and final."""
        data: dict[str, Any] = {"phase": "end", "startedAt": self.started_at, "endedAt": ended_at}
        end_reason = self.end_reason
        if end_reason is not None:
            data["stopReason"] = end_reason
        event = self._lifecycle(FrozenDict(data))
        events = [event]
        key = self._closing_chat_key()
        if key is not None:
            for payload in self._chat_projection().final(end_reason, event.ts):
                events.append(self._chat_event(payload, event.seq, event.ts, key))
        return events

    def aborted(self, reason: str, ended_at: int) -> list[Event]:
        """The chat ``aborted`` with the partial text, then the terminal lifecycle event.

        The chat event carries the seq of the lifecycle event it announces.
        """
        events = []
        key = self._closing_chat_key()
        if key is not None:
            payload = self._chat_projection().aborted(reason, ended_at)
            if payload is not None:
                events.append(self._chat_event(payload, self.last_seq + 1, ended_at, key))
        data = FrozenDict(
            phase="end",
            aborted=True,
            stopReason=reason,
            startedAt=self.started_at,
            endedAt=ended_at,
        )
        events.append(self._lifecycle(data))
        return events

    def error(self, message: str, kind: str, ended_at: int) -> Event:
        """The lifecycle error; the failure is kept for :meth:`chat_error`."""
        self._more().failure = (message, kind)
        data = FrozenDict(
            phase="error",
            error=message,
            errorKind=kind,
            startedAt=self.started_at,
            endedAt=ended_at,
        )
        return self._lifecycle(data)

    def chat_error(self) -> list[Event]:
        """The chat error for the kept failure, once no retry is coming."""
        failure = self.failure
        key = self._closing_chat_key()
        if failure is None or key is None:
            return []
        return [self._chat_event(ChatProjection.error(*failure), self.last_seq, epoch_ms(), key)]

    # ---- ingested events ---------------------------------------------------------------------

    def ingested(self, event: Event) -> tuple[Event, ...]:
        """What to publish for an event sequenced elsewhere: ``()`` for a duplicate, else the
        event, after a seq-gap error if it skipped seqs.

        A duplicate is an agent event whose ``seq <= last_seq``, or an annotation (chat, seq
        gap) already seen (see :func:`annotation_kind`). Annotations neither move ``last_seq``
        nor count for gaps, so forwarding a run from bus to bus loses none of its events.
        """
        kind = annotation_kind(event)
        if kind is not None:
            return (event,) if self._note(event.seq, kind) else ()
        last = self.last_seq
        if event.seq <= last:
            return ()
        self.last_seq = event.seq
        if last > 0 and event.seq != last + 1 and self._note(event.seq, SEQ_GAP):
            # Unless an upstream bus already reported this gap (its event was noted).
            gap = FrozenDict(reason=SEQ_GAP, expected=last + 1, received=event.seq)
            return (
                make_event(self.id, event.seq, "error", epoch_ms(), gap, event.session_key, True),
                event,
            )
        return (event,)

    def _note(self, seq: int, kind: str) -> bool:
        """Record annotation ``(seq, kind)``; False if it was seen already (or is older)."""
        rare = self._more()
        if seq > rare.noted_seq:
            rare.noted_seq, rare.noted_kinds = seq, (kind,)
            return True
        if seq < rare.noted_seq or kind in rare.noted_kinds:
            return False
        rare.noted_kinds += (kind,)
        return True
