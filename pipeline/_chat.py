"""The chat projection: a run's assistant and thinking events, merged into chat messages.

A UI shows one growing assistant message, not a stream of fragments. The projection keeps the
merged text and thinking of one run, losing no character a producer sent (SPEC 4.5: deltas are
appended verbatim, a cumulative text is authoritative for the current segment, and a text that
diverges starts a new segment), and says which ``chat`` events to publish: a throttled
``delta`` as the text grows, a flush of unsent growth before a tool starts, and one closing
``final``, ``error`` or ``aborted``. It is plain state owned by the run actor, so it is dropped
with the run; it never publishes anything itself.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import attrs

from ._event import wire_size

__all__ = ["SEGMENT_SEPARATOR", "ChatProjection"]

_TEXT_STREAMS = frozenset({"assistant", "thinking"})
_FLUSH_STREAMS = frozenset({"tool", "item"})

#: Room kept in a chat event for everything but its texts (run id, session key, seq, state,
#: stop reason, the JSON around them), so that the whole event fits in ``max_event_bytes``.
_ENVELOPE_BYTES = 8192

#: What joins a text segment to the one before it: a blank line.
SEGMENT_SEPARATOR = "\n\n"

#: The deltas appended to a segment are joined into it once there are more of them than this
#: plus 1/this of the segment's length. Joining copies the segment, so doing it that rarely
#: keeps an append O(len(delta)) amortised, and often enough that the pieces (an object each)
#: cost a few bytes per character of text at most.
_PIECES = 32


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


@attrs.define(weakref_slot=False)
class _Buffer:
    """One merged text of a run (its assistant text or its thinking), kept in segments.

    The merged text is ``_done + _segment + "".join(_tail)``: the finished segments, each
    followed by :data:`SEGMENT_SEPARATOR`; the current segment as the last cumulative text
    made it; and the deltas appended since, kept as pieces so that an append does not copy
    the text. The merged text never shrinks: every update keeps it or extends it, and its
    length is at most the ``limit`` passed to :meth:`merge`.
    """

    _done: str = ""
    _segment: str = ""
    #: Allocated by the first delta-only update: runs fed cumulative texts never need it.
    _tail: list[str] | None = None
    #: The length of the merged text.
    size: int = 0

    @property
    def value(self) -> str:
        return self._done + self._current()

    def merge(self, text: str | None, delta: str | None, limit: int) -> bool:
        """Merge one update into the buffer (SPEC 4.5), keeping at most ``limit`` characters.

        Empty strings count as absent. Returns whether the update had to be cut to the limit.
        """
        if text:
            return self._merge_text(text, limit)
        if delta:
            return self._append(delta, limit)
        return False

    def _merge_text(self, text: str, limit: int) -> bool:
        # A text wins over a delta sent with it: the delta is the end of a cumulative text,
        # so the text carries its characters already (docs/semantics.md, 1.2).
        segment = self._current()
        if text.startswith(segment):  # it extends the segment (every text extends "")
            return self._set_segment(text, limit)
        if segment.startswith(text):  # the segment extends it: a stale re-send
            return False
        # The agent moved on (after a tool call): keep the segment, start a new one.
        done = self._done + segment + SEGMENT_SEPARATOR
        cut = len(done) > limit
        self._done = done[:limit] if cut else done
        return self._set_segment(text, limit) or cut

    def _set_segment(self, text: str, limit: int) -> bool:
        room = limit - len(self._done)
        cut = len(text) > room
        self._segment = text[:room] if cut else text
        self.size = len(self._done) + len(self._segment)
        return cut

    def _append(self, delta: str, limit: int) -> bool:
        room = limit - self.size
        if room <= 0:
            return True
        piece = delta[:room]
        tail = self._tail
        if tail is None:
            tail = self._tail = []
        tail.append(piece)
        self.size += len(piece)
        if len(tail) > _PIECES + len(self._segment) // _PIECES:
            self._current()
        return len(piece) < len(delta)

    def _current(self) -> str:
        """The current segment, whole."""
        if self._tail:
            self._segment += "".join(self._tail)
            self._tail.clear()
        return self._segment


@attrs.define(on_setattr=attrs.setters.NO_OP, weakref_slot=False)
class ChatProjection:
    """Merged chat state of one run, and the chat payloads its events call for.

    Times (``now``) are trio clock seconds; ``timestamp`` values are epoch milliseconds.
    """

    #: At most one throttled delta per this many seconds.
    interval: float
    #: The most characters kept of the text, and of the thinking (separators included); the
    #: rest is cut off (and counted in :attr:`truncations`), so a run's chat state is bounded.
    limit: int = 1_048_576
    #: The merged buffers, made by their first update: most runs never think aloud, and an
    #: idle run's memory is a measured target (benchmarks/idle_cost.py).
    _text: _Buffer | None = attrs.field(default=None, init=False)
    _thinking: _Buffer | None = attrs.field(default=None, init=False)
    #: Whether the text or the thinking grew since the last delta. (The merged buffers never
    #: change but by growing, so growth is all a delta can have missed.)
    _unsent: bool = False
    _last_delta_at: float = -math.inf
    #: After ``aborted`` or ``final``, the projection publishes nothing more.
    _closed: bool = False
    #: How many updates were cut to :attr:`limit`.
    truncations: int = 0

    @property
    def text(self) -> str:
        """The merged assistant text: its segments joined by a blank line."""
        return self._text.value if self._text is not None else ""

    @property
    def thinking(self) -> str:
        """The merged thinking: its segments joined by a blank line."""
        return self._thinking.value if self._thinking is not None else ""

    def before(
        self, stream: str, data: Mapping[str, Any], now: float, timestamp: int
    ) -> dict[str, Any] | None:
        """The chat payload to publish before an agent event (a flush before a tool starts).

        A flush restarts the throttle interval, like any delta.
        """
        if stream in _FLUSH_STREAMS and data.get("phase") == "start":
            flushed = self._flush(timestamp)
            if flushed is not None:
                self._last_delta_at = now
            return flushed
        return None

    def after(
        self, stream: str, data: Mapping[str, Any], now: float, timestamp: int
    ) -> dict[str, Any] | None:
        """The chat payload to publish after an agent event (a throttled delta), if any."""
        if self._closed or stream not in _TEXT_STREAMS:
            return None
        text, delta = _str_or_none(data.get("text")), _str_or_none(data.get("delta"))
        if text is None and delta is None:
            return None
        if stream == "assistant":
            buffer = self._text = self._text or _Buffer()
        else:
            buffer = self._thinking = self._thinking or _Buffer()
        size = buffer.size
        if buffer.merge(text, delta, self.limit):
            self.truncations += 1
        self._unsent = self._unsent or buffer.size != size
        if now - self._last_delta_at < self.interval or not self._unsent:
            return None
        self._last_delta_at = now
        return self._delta(timestamp)

    def final(self, stop_reason: str | None, timestamp: int) -> list[dict[str, Any]]:
        """The flush (if any) and the ``final`` payload that follow a lifecycle end."""
        if self._closed:
            return []
        payloads = [p for p in (self._flush(timestamp),) if p is not None]
        final: dict[str, Any] = {"state": "final"}
        if stop_reason is not None:
            final["stopReason"] = stop_reason
        message = self._message(timestamp)
        if message["content"]:  # the run said something
            final["message"] = message
        self._closed = True
        return [*payloads, final]

    def aborted(self, stop_reason: str, timestamp: int) -> dict[str, Any] | None:
        """The ``aborted`` payload with the partial text; after it, no more chat."""
        if self._closed:
            return None
        self._closed = True
        return {"state": "aborted", "stopReason": stop_reason, "message": self._message(timestamp)}

    @staticmethod
    def error(message: str, kind: str) -> dict[str, Any]:
        """The ``error`` payload, published once a failed run's retry grace has expired."""
        return {"state": "error", "errorMessage": message, "errorKind": kind}

    def _flush(self, timestamp: int) -> dict[str, Any] | None:
        if self._closed or not self._unsent:
            return None
        return self._delta(timestamp)

    def _delta(self, timestamp: int) -> dict[str, Any]:
        self._unsent = False
        return {"state": "delta", "message": self._message(timestamp)}

    def _message(self, timestamp: int) -> dict[str, Any]:
        content: list[dict[str, str]] = []
        thinking, text = self._fitting(self.thinking, self.text)
        if thinking:
            content.append({"type": "thinking", "thinking": thinking})
        if text:
            content.append({"type": "text", "text": text})
        return {"role": "assistant", "content": content, "timestamp": timestamp}

    def _fitting(self, thinking: str, text: str) -> tuple[str, str]:
        """The thinking and text a chat message can carry: cut from the end until the
        message's wire JSON fits in :attr:`limit` bytes with room for the event around it.
        The buffers keep their characters: each holds up to ``limit`` of them, and a character
        takes up to 6 bytes of JSON, so without this a long run's chat event could be larger
        than another bus's ``ingest`` accepts (lossless forwarding, SPEC 4.4). Measured only
        when the texts could be too large, so short runs pay nothing."""
        budget = self.limit - _ENVELOPE_BYTES
        if budget < _ENVELOPE_BYTES or (len(thinking) + len(text)) * 6 <= budget:
            # Below 16 KiB no chat event could fit anyway: the limit then bounds the buffers
            # only (as the unit tests with tiny limits use it).
            return thinking, text
        while (thinking or text) and (size := wire_size([thinking, text])) > budget:
            keep = budget / size
            if len(thinking) > len(text):
                thinking = thinking[: max(int(len(thinking) * keep) - 64, 0)]
            else:
                text = text[: max(int(len(text) * keep) - 64, 0)]
        return thinking, text
