"""The event: one sequenced, enriched fact about an agent run, and its wire form.

``Event`` is constructed on the hot path (hundreds of thousands per second), so its constructor
does not validate: events are built by the bus from data it has already checked
(:func:`checked_data`), or parsed from untrusted wire data by :meth:`Event.from_wire`, which
checks everything. An ``Event`` handed to ``Bus.ingest`` is checked the same way. One checking
path serves all three (``emit``, ``ingest``, ``from_wire``): JSON values only, finite numbers,
non-blank names, and data copied read-only all the way down (:mod:`pipeline._frozen`), since
every subscriber of an event shares it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, NoReturn

import attrs

from ._errors import EventTooLarge, InvalidEvent
from ._frozen import EMPTY, FrozenDict, frozen_data

__all__ = [
    "CHAT",
    "DROPPED_STREAM",
    "LIFECYCLE",
    "SEQ_GAP",
    "Event",
    "annotation_kind",
    "checked_data",
    "checked_stream",
    "is_droppable",
    "is_terminal",
    "make_event",
]

#: The stream of the in-band marker a subscriber reads after it lost events.
DROPPED_STREAM = "dropped"
LIFECYCLE = "lifecycle"
CHAT = "chat"
#: The ``reason`` of the ``error`` event ingest publishes before an event that skipped seqs.
SEQ_GAP = "seq gap"

_DROPPABLE_STREAMS = frozenset({"assistant", "thinking"})
_PHASED_STREAMS = frozenset({"tool", "item"})
_KEPT_PHASES = frozenset({"start", "result", "end"})


_FIELDS = ("run_id", "seq", "stream", "ts", "data", "session_key")


class _Fields:
    """The slots of :class:`Event`, on a base class that keeps ``object``'s own (fast)
    ``__setattr__``: :func:`make_event` fills one, then makes it an ``Event``."""

    __slots__ = ("data", "ingested", "run_id", "seq", "session_key", "stream", "ts")

    run_id: str
    seq: int
    stream: str
    ts: int
    data: Mapping[str, Any]
    session_key: str | None
    ingested: bool


class Event(_Fields):
    """One event of one run, as every subscriber sees it. Immutable.

    ``data`` is a read-only copy of what the producer gave, read-only all the way down (a
    :class:`~pipeline._frozen.FrozenDict`): every subscriber shares the same event.
    ``ingested`` marks events about runs this bus knows from ``Bus.ingest`` (made elsewhere);
    it is not part of the wire form or of equality.

    A plain class with slots rather than an ``attrs`` one: the bus makes one per event, and
    attrs' frozen ``__init__`` (one ``object.__setattr__`` per field) costs about four times
    what :func:`make_event` does. Equality and hashing use the six wire fields; an event is
    not a sequence.
    """

    __slots__ = ()

    run_id: str
    #: Position in the run: 1, 2, 3, ... for agent events; chat events carry their cause's seq.
    seq: int
    stream: str
    #: Epoch milliseconds at enrichment.
    ts: int
    data: Mapping[str, Any]
    session_key: str | None
    ingested: bool

    def __init__(
        self,
        run_id: str,
        seq: int,
        stream: str,
        ts: int,
        data: Mapping[str, Any] = EMPTY,
        session_key: str | None = None,
        ingested: bool = False,
    ) -> None:
        _set = object.__setattr__
        _set(self, "run_id", run_id)
        _set(self, "seq", seq)
        _set(self, "stream", stream)
        _set(self, "ts", ts)
        _set(self, "data", data)
        _set(self, "session_key", session_key)
        _set(self, "ingested", ingested)

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise attrs.exceptions.FrozenInstanceError

    def __delattr__(self, name: str) -> NoReturn:
        raise attrs.exceptions.FrozenInstanceError

    def _key(self) -> tuple[object, ...]:
        return (self.run_id, self.seq, self.stream, self.ts, self.data, self.session_key)

    def __eq__(self, other: object) -> bool:
        if type(other) is not Event:
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())  # TypeError while data is a dict, as for any dict

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in _FIELDS)
        return f"Event({fields})"

    def __reduce__(self) -> tuple[type[Event], tuple[object, ...]]:
        return (Event, (*self._key(), self.ingested))

    def evolve(self, **changes: Any) -> Event:
        """A copy with ``changes`` applied (field names as keywords), like ``attrs.evolve``."""
        fields = {name: getattr(self, name) for name in (*_FIELDS, "ingested")}
        unknown = set(changes) - set(fields)
        if unknown:
            raise TypeError(f"Event has no field(s) {', '.join(sorted(unknown))}")
        return Event(**(fields | changes))

    def to_wire(self) -> dict[str, Any]:
        """The camelCase dict form, ready for ``json.dumps``; ``sessionKey`` only when set.

        ``data`` is the event's own read-only data (no copy). Raises :exc:`InvalidEvent` for
        an event built by hand with data that is not JSON.
        """
        data = self.data
        wire: dict[str, Any] = {
            "runId": self.run_id,
            "seq": self.seq,
            "stream": self.stream,
            "ts": self.ts,
            "data": data if type(data) is FrozenDict else frozen_data(data),
        }
        if self.session_key is not None:
            wire["sessionKey"] = self.session_key
        return wire

    @classmethod
    def from_wire(cls, obj: object, *, max_bytes: int | None = None) -> Event:
        """Parse and check a wire dict; raise :exc:`InvalidEvent` (or :exc:`EventTooLarge`).

        Unknown keys are ignored, so newer producers can add fields.
        """
        if not isinstance(obj, Mapping):
            raise InvalidEvent(f"an event must be a JSON object, not {type(obj).__name__}")
        if max_bytes is not None:
            size = wire_size(obj)
            if size > max_bytes:
                raise EventTooLarge(f"event is {size} bytes; the limit is {max_bytes}")
        missing = [key for key in ("runId", "seq", "stream", "ts", "data") if key not in obj]
        if missing:
            raise InvalidEvent(f"event is missing {', '.join(missing)}")
        return _checked(
            obj["runId"], obj["seq"], obj["stream"], obj["ts"], obj["data"], obj.get("sessionKey")
        )


def wire_size(obj: object) -> int:
    """Size of ``obj`` as compact UTF-8 JSON; :exc:`InvalidEvent` if it is not JSON."""
    try:
        text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidEvent(f"event is not JSON-serialisable: {exc}") from exc
    return len(text.encode("utf-8", "surrogatepass"))


def _is_text(value: object) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _is_count(value: object, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def checked_stream(stream: object) -> str:
    """``stream`` if it is a non-blank str, else :exc:`InvalidEvent`."""
    if not _is_text(stream):
        raise InvalidEvent(f"stream must be a non-blank string, not {stream!r}")
    return stream  # type: ignore[return-value]  # _is_text checked the type


def checked_data(data: object) -> FrozenDict:
    """A read-only copy of ``data`` if it is a JSON object, else :exc:`InvalidEvent`."""
    return frozen_data(data)


def checked_event(event: Event, *, ingested: bool = False) -> Event:
    """A copy of ``event`` with read-only data, if every field is well formed.

    Raises :exc:`InvalidEvent` otherwise. ``ingested`` marks the copy as made elsewhere.
    """
    return _checked(
        event.run_id, event.seq, event.stream, event.ts, event.data, event.session_key, ingested
    )


def _checked(
    run_id: object,
    seq: object,
    stream: object,
    ts: object,
    data: object,
    session_key: object,
    ingested: bool = False,
) -> Event:
    if not _is_text(run_id):
        raise InvalidEvent(f"runId must be a non-blank string, not {run_id!r}")
    if not _is_count(seq, 1):
        raise InvalidEvent(f"seq must be an int >= 1, not {seq!r}")
    checked_stream(stream)
    if not _is_count(ts, 0):
        raise InvalidEvent(f"ts must be an int >= 0 (epoch ms), not {ts!r}")
    if session_key is not None and not _is_text(session_key):
        raise InvalidEvent(f"sessionKey must be a non-blank string or null, not {session_key!r}")
    return make_event(
        run_id,  # type: ignore[arg-type]  # checked above
        seq,  # type: ignore[arg-type]
        stream,  # type: ignore[arg-type]
        ts,  # type: ignore[arg-type]
        frozen_data(data),
        session_key,  # type: ignore[arg-type]
        ingested,
    )


def is_droppable(event: Event) -> bool:
    """Whether a full mailbox may drop ``event`` (SPEC 4.6).

    Assistant and thinking text, chat deltas, and tool/item progress may be dropped: later
    events supersede them. Lifecycle, errors, chat final/error/aborted and tool/item
    start/result/end may not. It never raises, whatever the data holds: a list as ``phase``
    is simply not a kept phase.
    """
    stream = event.stream
    if stream in _DROPPABLE_STREAMS:
        return True
    if stream == CHAT:
        return event.data.get("state") == "delta"
    if stream in _PHASED_STREAMS:
        phase = event.data.get("phase")
        return not (type(phase) is str and phase in _KEPT_PHASES)
    return False


def is_terminal(event: Event) -> bool:
    """Whether ``event`` is a terminal lifecycle event (``end`` or ``error``)."""
    return event.stream == LIFECYCLE and event.data.get("phase") in _TERMINAL_PHASES


_TERMINAL_PHASES = ("end", "error")


def annotation_kind(event: Event) -> str | None:
    """What kind of annotation ``event`` is, or ``None`` for an agent event.

    Annotations are the events the bus derives from a run's agent events: ``chat`` events and
    ``seq gap`` errors. They carry the seq of the agent event they are about instead of a seq
    of their own, so ingest must not take them for duplicates of it. Within one run, the pair
    (seq, kind) names one annotation: the chat ``state`` (a run publishes at most one chat
    event of each state per seq) or ``"seq gap"``.
    """
    stream = event.stream
    if stream == CHAT:
        state = event.data.get("state")
        return state if type(state) is str else "chat"
    if stream == "error" and event.data.get("reason") == SEQ_GAP:
        return SEQ_GAP
    return None


def make_event(
    run_id: str,
    seq: int,
    stream: str,
    ts: int,
    data: Mapping[str, Any],
    session_key: str | None = None,
    ingested: bool = False,
) -> Event:
    """``Event(...)`` without its cost: the bus's own constructor, for the hot path.

    The new object starts as a :class:`_Fields`, whose slots take plain assignments (``Event``
    refuses them, and ``object.__setattr__`` per field costs about 0.2 µs each), then its class
    is switched to :class:`Event`, which only adds behaviour to the same layout: a cheap
    switch, after which the event is immutable like any other. The whole costs about a quarter
    of ``Event(...)``; an earlier version built a subclass of ``Event`` and switched it back,
    which made CPython compare the two classes' slots on every switch (3x slower).
    """
    event = _new(_Fields)
    event.run_id = run_id
    event.seq = seq
    event.stream = stream
    event.ts = ts
    event.data = data
    event.session_key = session_key
    event.ingested = ingested
    event.__class__ = Event
    return event  # type: ignore[return-value]  # it is an Event now


_new = object.__new__
