"""The chat projection: a run's assistant and thinking events, merged into chat messages.

A UI shows one growing assistant message, not a stream of fragments. The projection keeps the
merged text and thinking of one run, and says which ``chat`` events to publish: a throttled
``delta`` as the text grows, a flush of unsent growth before a tool starts, and one closing
``final``, ``error`` or ``aborted``. It is plain state owned by the run actor, so it is dropped
with the run; it never publishes anything itself.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import attrs

__all__ = ["ChatProjection", "merge_text"]

_TEXT_STREAMS = frozenset({"assistant", "thinking"})
_FLUSH_STREAMS = frozenset({"tool", "item"})


def merge_text(previous: str, text: str | None, delta: str | None) -> str:
    """The reference gateway's merge of a streamed text update into what was seen so far.

    - a new full ``text`` that extends the previous text replaces it;
    - a new ``text`` that the previous text already extends, sent without a delta, is stale;
    - otherwise the ``delta`` is appended without the part that overlaps the end of the text.
    """
    if text:
        if text.startswith(previous):  # also when nothing was seen yet
            return text
        if previous.startswith(text) and not delta:
            return previous
    if delta:
        return _append_unique_suffix(previous, delta)
    return text or previous


#: The longest overlap looked for between the text and a delta. The search is quadratic in the
#: overlap, and real overlaps (a re-sent token or word) are short.
MAX_OVERLAP = 1024


def _append_unique_suffix(base: str, suffix: str) -> str:
    if not base:
        return suffix
    if base.endswith(suffix):
        return base
    for overlap in range(min(len(base), len(suffix), MAX_OVERLAP), 0, -1):
        if base.endswith(suffix[:overlap]):
            return base + suffix[overlap:]
    return base + suffix


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


@attrs.define(on_setattr=attrs.setters.NO_OP)
class ChatProjection:
    """Merged chat state of one run, and the chat payloads its events call for.

    Times (``now``) are trio clock seconds; ``timestamp`` values are epoch milliseconds.
    """

    #: At most one throttled delta per this many seconds.
    interval: float
    #: The most characters kept of the text, and of the thinking; the rest is cut off (and
    #: counted in :attr:`truncations`), so a run's chat state is bounded.
    limit: int = 1_048_576
    text: str = ""
    thinking: str = ""
    #: The text and thinking the last delta carried.
    _sent: tuple[str, str] = ("", "")
    _last_delta_at: float = -math.inf
    #: After ``aborted`` or ``final``, the projection publishes nothing more.
    _closed: bool = False
    #: How many updates were cut to :attr:`limit`.
    truncations: int = 0

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
            self.text = self._bounded(merge_text(self.text, text, delta))
        else:
            self.thinking = self._bounded(merge_text(self.thinking, text, delta))
        if now - self._last_delta_at < self.interval or not self._has_unsent():
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
        if self.text or self.thinking:
            final["message"] = self._message(timestamp)
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

    def _bounded(self, merged: str) -> str:
        if len(merged) <= self.limit:
            return merged
        self.truncations += 1
        return merged[: self.limit]

    def _has_unsent(self) -> bool:
        return (self.text, self.thinking) != self._sent

    def _flush(self, timestamp: int) -> dict[str, Any] | None:
        if self._closed or not self._has_unsent():
            return None
        return self._delta(timestamp)

    def _delta(self, timestamp: int) -> dict[str, Any]:
        self._sent = (self.text, self.thinking)
        return {"state": "delta", "message": self._message(timestamp)}

    def _message(self, timestamp: int) -> dict[str, Any]:
        content: list[dict[str, str]] = []
        if self.thinking:
            content.append({"type": "thinking", "thinking": self.thinking})
        if self.text:
            content.append({"type": "text", "text": self.text})
        return {"role": "assistant", "content": content, "timestamp": timestamp}
