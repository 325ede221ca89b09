"""The event: one sequenced, enriched fact about an agent run, and its wire form.

``Event`` is constructed on the hot path (hundreds of thousands per second), so its constructor
does not validate: events are built by the bus from data it has already checked
(:func:`checked_data`), or parsed from untrusted wire data by :meth:`Event.from_wire`, which
checks everything. An ``Event`` handed to ``Bus.ingest`` is checked the same way.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import attrs

from ._errors import EventTooLarge, InvalidEvent

__all__ = ["DROPPED_STREAM", "Event", "checked_data", "checked_stream", "is_droppable"]

#: The stream of the in-band marker a subscriber reads after it lost events.
DROPPED_STREAM = "dropped"
LIFECYCLE = "lifecycle"
CHAT = "chat"

_DROPPABLE_STREAMS = frozenset({"assistant", "thinking"})
_PHASED_STREAMS = frozenset({"tool", "item"})
_KEPT_PHASES = frozenset({"start", "result", "end"})
_EMPTY: Mapping[str, Any] = MappingProxyType({})


@attrs.frozen
class Event:
    """One event of one run, as every subscriber sees it.

    ``data`` is a read-only shallow copy of what the producer gave.
    """

    run_id: str
    #: Position in the run: 1, 2, 3, ... for agent events; chat events carry their cause's seq.
    seq: int
    stream: str
    #: Epoch milliseconds at enrichment.
    ts: int
    data: Mapping[str, Any] = _EMPTY
    session_key: str | None = None

    def to_wire(self) -> dict[str, Any]:
        """The camelCase, JSON-ready dict form; ``sessionKey`` only when set."""
        wire: dict[str, Any] = {
            "runId": self.run_id,
            "seq": self.seq,
            "stream": self.stream,
            "ts": self.ts,
            "data": dict(self.data),
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
        session_key = obj.get("sessionKey")
        if session_key is not None and not _is_text(session_key):
            raise InvalidEvent(
                f"sessionKey must be a non-blank string or null, not {session_key!r}"
            )
        return checked_event(
            cls(
                run_id=obj["runId"],
                seq=obj["seq"],
                stream=obj["stream"],
                ts=obj["ts"],
                data=obj["data"],
                session_key=session_key,
            )
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


def checked_data(data: object) -> Mapping[str, Any]:
    """A read-only copy of ``data`` if it is a mapping with str keys, else :exc:`InvalidEvent`."""
    if type(data) is not dict and not isinstance(data, Mapping):
        raise InvalidEvent(f"data must be a mapping, not {type(data).__name__}")
    copy = dict(data)
    for key in copy:
        if type(key) is not str:
            raise InvalidEvent(f"data keys must be str, not {key!r}")
    return MappingProxyType(copy)


def checked_event(event: Event) -> Event:
    """``event`` with its data frozen, if every field is well formed; else :exc:`InvalidEvent`."""
    if not _is_text(event.run_id):
        raise InvalidEvent(f"runId must be a non-blank string, not {event.run_id!r}")
    if not _is_count(event.seq, 1):
        raise InvalidEvent(f"seq must be an int >= 1, not {event.seq!r}")
    checked_stream(event.stream)
    if not _is_count(event.ts, 0):
        raise InvalidEvent(f"ts must be an int >= 0 (epoch ms), not {event.ts!r}")
    if event.session_key is not None and not _is_text(event.session_key):
        raise InvalidEvent(f"sessionKey must be a non-blank string, not {event.session_key!r}")
    return attrs.evolve(event, data=checked_data(event.data))


def is_droppable(event: Event) -> bool:
    """Whether a full mailbox may drop ``event`` (SPEC 4.6).

    Assistant and thinking text, chat deltas, and tool/item progress may be dropped: later
    events supersede them. Lifecycle, errors, chat final/error/aborted and tool/item
    start/result/end may not.
    """
    stream = event.stream
    if stream in _DROPPABLE_STREAMS:
        return True
    if stream == CHAT:
        return event.data.get("state") == "delta"
    if stream in _PHASED_STREAMS:
        return event.data.get("phase") not in _KEPT_PHASES
    return False
