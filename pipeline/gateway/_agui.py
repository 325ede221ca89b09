"""AG-UI: bus events translated into an AG-UI event stream (GATEWAY.md 1.6).

One :class:`AguiTranslator` per AG-UI stream (one HTTP response) takes the bus events' wire dicts
and returns the AG-UI events they map to, in an order ``@ag-ui/client``'s verifier accepts:
lifecycle start: ``RUN_STARTED`` (threadId = the session key); ``assistant``: ``TEXT_MESSAGE_*``,
one message per stretch of text between tool calls or reasoning (a diverging cumulative ``text``
starts a new one), only characters not sent yet and never an empty delta; ``thinking``:
``REASONING_START``, ``REASONING_MESSAGE_*``, ``REASONING_END`` by the same rules; tool start:
``TOOL_CALL_START``, ``ARGS`` (JSON) and ``END`` at once, since the bus's start carries complete
arguments and END means just that; tool result: ``TOOL_CALL_RESULT`` (other tool phases:
nothing); lifecycle end: open items closed, then ``RUN_FINISHED`` (outcome ``cancelled`` when
aborted, ``stopReason`` in metadata); lifecycle error: the same, then ``RUN_ERROR`` (code =
errorKind); ``dropped``: ``CUSTOM`` "dropped" ``{"count": n}``; a seq gap: ``CUSTOM`` "seq_gap";
``chat`` (a projection of the same events): nothing; any other stream: ``CUSTOM`` named after it.

AG-UI has one run at a time on a stream: events but ``RUN_*`` carry no run id, and the verifier
rejects ``RUN_STARTED`` during a run and anything but ``RUN_STARTED`` between runs. A session's
runs may overlap on the bus, so the translator serialises them: another run's events are held
while one is open (at most ``backlog``; more are dropped and counted, but terminal events are
always kept, so no held run stays open for ever) and translated in order once it ends. A run
first seen mid-way gets a ``RUN_STARTED`` first; a ``dropped`` report waits for an open run.
With ``run_id`` set (``POST /agui``: one run per response) only that run is translated.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Mapping
from typing import Any, Final

import ag_ui.core as agui
import attrs
import pydantic
import pydantic_core
from ag_ui.core import BaseEvent, RunAgentInput
from ag_ui.encoder import EventEncoder

from .._event import CHAT, DROPPED_STREAM, LIFECYCLE, SEQ_GAP

__all__ = [
    "CONTENT_TYPE",
    "STREAM_CLOSED",
    "AguiTranslator",
    "InvalidRunInput",
    "encode",
    "last_user_message",
    "parse_run_input",
]

_ENCODER: Final = EventEncoder()
#: The media type of an AG-UI stream encoded by :func:`encode`.
CONTENT_TYPE: Final[str] = _ENCODER.get_content_type()

_TERMINAL_PHASES: Final = frozenset({"end", "error"})
#: The ``code`` of the ``RUN_ERROR`` that :meth:`AguiTranslator.close` sends.
STREAM_CLOSED: Final = "stream_closed"


def _text(value: object) -> str | None:
    """``value`` if it is a non-empty string (empty strings count as absent, as in the bus)."""
    return value if isinstance(value, str) and value else None


def _json(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _is_terminal(wire: Mapping[str, Any]) -> bool:
    """Whether a (checked) wire dict is a terminal lifecycle event."""
    return wire["stream"] == LIFECYCLE and wire["data"].get("phase") in _TERMINAL_PHASES


@attrs.define
class _Sent:
    """The current segment of a run's assistant text or thinking, as far as sent: kept in
    pieces, joined only to compare a cumulative ``text``, so many deltas cost no copying."""

    _pieces: list[str] = attrs.Factory(list)

    def update(self, text: str | None, delta: str | None) -> tuple[bool, str]:
        """Whether an update starts a new segment, and its characters not sent yet.

        Merged as the chat projection merges (docs/semantics.md 1.2): a ``text`` wins over the
        ``delta`` sent with it, and a stale re-sent ``text`` adds nothing.
        """
        if text is not None:
            current = "".join(self._pieces)
            if current.startswith(text) and len(text) < len(current):
                self._pieces = [current]
                return False, ""
            self._pieces = [text]
            if text.startswith(current):
                return False, text[len(current) :]
            return True, text
        if delta is not None:
            self._pieces.append(delta)
            return False, delta
        return False, ""


@attrs.define
class _Run:
    """What is open of the run on the stream: its message, its reasoning, its tool calls."""

    run_id: str
    text: _Sent = attrs.Factory(_Sent)
    thinking: _Sent = attrs.Factory(_Sent)
    message_id: str | None = None
    #: The open reasoning span and the reasoning message inside it.
    reasoning_ids: tuple[str, str] | None = None
    #: Tool calls started and not answered yet: toolCallId -> name.
    tools: dict[str, str] = attrs.Factory(dict)


@attrs.define
class AguiTranslator:
    """Turns one stream's bus events (wire dicts) into AG-UI events. Owned by one task."""

    #: The AG-UI thread: the session key.
    thread_id: str = attrs.field(validator=attrs.validators.instance_of(str))
    #: When set, only this run is translated (``POST /agui``); other runs' events are ignored.
    run_id: str | None = attrs.field(
        default=None,
        kw_only=True,
        validator=attrs.validators.optional(attrs.validators.instance_of(str)),
    )
    #: How many events of runs waiting for the open run to end are held at most.
    backlog: int = attrs.field(default=1024, kw_only=True, validator=attrs.validators.ge(0))
    _run: _Run | None = attrs.field(default=None, init=False)
    _held: collections.deque[Mapping[str, Any]] = attrs.field(factory=collections.deque, init=False)
    _held_terminals: int = attrs.field(default=0, init=False)
    #: Events lost (``dropped`` markers, backlog overflow) not reported yet.
    _dropped: int = attrs.field(default=0, init=False)
    _ids: int = attrs.field(default=0, init=False)
    _done: bool = attrs.field(default=False, init=False)

    @property
    def done(self) -> bool:
        """Whether the stream is complete: a ``run_id`` translator's run ended, or it was closed."""
        return self._done

    def translate(self, wire: Mapping[str, Any]) -> list[BaseEvent]:
        """The AG-UI events for one bus event's wire dict, in stream order (maybe none)."""
        stream = wire.get("stream")
        data = wire.get("data")
        if stream == CHAT or self._done or not isinstance(data, Mapping):
            return []
        if stream == DROPPED_STREAM:
            count = data.get("count")
            self._dropped += count if isinstance(count, int) and count > 0 else 1
            return self._report_dropped()
        run_id = wire.get("runId")
        if not isinstance(run_id, str) or not run_id:
            return []
        if self.run_id is not None and run_id != self.run_id:
            return []
        if self._run is not None and self._run.run_id != run_id:
            self._hold(wire)
            return self._report_dropped()
        out = self._one(wire)
        return out + self._drain() if self._run is None else out

    def close(self, reason: str) -> list[BaseEvent]:
        """The last events of a stream cut short (a slow consumer, the gateway shutting down).

        The open run's items closed, then ``RUN_ERROR`` (``reason``, code :data:`STREAM_CLOSED`);
        nothing if no run is open. Held events are discarded; nothing is translated after it.
        """
        self._held.clear()
        self._held_terminals = 0
        self._done = True
        run, self._run = self._run, None
        if run is None:
            return []
        return [*self._close_open(run), agui.RunErrorEvent(message=reason, code=STREAM_CLOSED)]

    def _one(self, wire: Mapping[str, Any]) -> list[BaseEvent]:
        """The events for one checked wire dict of the open run (or of no open run), each
        stamped with the bus event's time (epoch ms)."""
        events = self._event(wire["runId"], wire["stream"], wire["data"])
        ts = wire.get("ts")
        if isinstance(ts, int) and not isinstance(ts, bool):
            for event in events:
                event.timestamp = ts
        return events

    def _event(self, run_id: str, stream: object, data: Mapping[str, Any]) -> list[BaseEvent]:
        phase = data.get("phase")
        if stream == LIFECYCLE and phase not in ("start", *_TERMINAL_PHASES):
            return []
        out = self._open(run_id) if self._run is None else []  # a repeated start: nothing
        run = self._run
        assert run is not None  # opened just above
        if stream == LIFECYCLE:
            return out + self._finish(run, data) if phase in _TERMINAL_PHASES else out
        if stream == "assistant":
            return out + self._assistant(run, data)
        if stream == "thinking":
            return out + self._thinking(run, data)
        if stream == "tool" and phase == "start":
            call_id = _text(data.get("toolCallId")) or self._new_id(run, "tool")
            if call_id in run.tools:  # a repeated start: the call is open already
                return out
            name = _text(data.get("name")) or "tool"
            return out + self._start_call(run, call_id, name, data.get("args"))
        if stream == "tool":
            return out + self._tool_result(run, data) if phase == "result" else out
        if stream == "error" and data.get("reason") == SEQ_GAP:
            return [*out, agui.CustomEvent(name="seq_gap", value=dict(data))]
        return [*out, agui.CustomEvent(name=str(stream), value=dict(data))]

    def _open(self, run_id: str) -> list[BaseEvent]:
        self._run = _Run(run_id)
        started = agui.RunStartedEvent(
            thread_id=self.thread_id, run_id=run_id, protocol_version=agui.PROTOCOL_VERSION
        )
        return [started, *self._report_dropped()]

    def _finish(self, run: _Run, data: Mapping[str, Any]) -> list[BaseEvent]:
        self._run = None
        self._done = self.run_id is not None
        out = self._close_open(run)
        if data.get("phase") == "error":
            message = _text(data.get("error")) or "the run failed"
            out.append(agui.RunErrorEvent(message=message, code=_text(data.get("errorKind"))))
            return out
        stop_reason = _text(data.get("stopReason"))
        out.append(
            agui.RunFinishedEvent(
                thread_id=self.thread_id,
                run_id=run.run_id,
                outcome=agui.RunFinishedCancelledOutcome() if data.get("aborted") is True else None,
                metadata={"stopReason": stop_reason} if stop_reason is not None else None,
            )
        )
        return out

    def _new_id(self, run: _Run, kind: str) -> str:
        self._ids += 1
        return f"{run.run_id}-{kind}-{self._ids}"

    def _assistant(self, run: _Run, data: Mapping[str, Any]) -> list[BaseEvent]:
        new_segment, piece = run.text.update(_text(data.get("text")), _text(data.get("delta")))
        out = self._close_message(run) if new_segment else []
        if not piece:
            return out
        out += self._close_reasoning(run)
        if run.message_id is None:
            run.message_id = self._new_id(run, "message")
            out.append(agui.TextMessageStartEvent(message_id=run.message_id, role="assistant"))
        out.append(agui.TextMessageContentEvent(message_id=run.message_id, delta=piece))
        return out

    def _thinking(self, run: _Run, data: Mapping[str, Any]) -> list[BaseEvent]:
        new_segment, piece = run.thinking.update(_text(data.get("text")), _text(data.get("delta")))
        out = self._close_reasoning(run) if new_segment else []
        if not piece:
            return out
        out += self._close_message(run)
        if run.reasoning_ids is None:
            span, message = self._new_id(run, "reasoning"), self._new_id(run, "thinking")
            run.reasoning_ids = (span, message)
            out.append(agui.ReasoningStartEvent(message_id=span))
            out.append(agui.ReasoningMessageStartEvent(message_id=message))
        out.append(agui.ReasoningMessageContentEvent(message_id=run.reasoning_ids[1], delta=piece))
        return out

    def _start_call(self, run: _Run, call_id: str, name: str, args: object) -> list[BaseEvent]:
        parent = run.message_id
        out = [*self._close_message(run), *self._close_reasoning(run)]
        run.tools[call_id] = name
        out.append(
            agui.ToolCallStartEvent(
                tool_call_id=call_id, tool_call_name=name, parent_message_id=parent
            )
        )
        arguments = "" if args is None else _json(args)
        if arguments:
            out.append(agui.ToolCallArgsEvent(tool_call_id=call_id, delta=arguments))
        out.append(agui.ToolCallEndEvent(tool_call_id=call_id))
        return out

    def _tool_result(self, run: _Run, data: Mapping[str, Any]) -> list[BaseEvent]:
        name = _text(data.get("name"))
        # An id-less result answers the latest open call (of the tool ``name``, when given).
        pending = (call for call in reversed(run.tools) if name in (None, run.tools[call]))
        call_id = _text(data.get("toolCallId")) or next(pending, None)
        out: list[BaseEvent] = []
        if call_id is None or call_id not in run.tools:
            # A result whose start this stream never saw: the call is opened for it.
            call_id = call_id or self._new_id(run, "tool")
            out += self._start_call(run, call_id, name or "tool", None)
        del run.tools[call_id]
        content = _json(data["result"]) if "result" in data else ""
        result_id = self._new_id(run, "result")
        return [
            *out,
            agui.ToolCallResultEvent(message_id=result_id, tool_call_id=call_id, content=content),
        ]

    def _close_message(self, run: _Run) -> list[BaseEvent]:
        if run.message_id is None:
            return []
        message_id, run.message_id = run.message_id, None
        return [agui.TextMessageEndEvent(message_id=message_id)]

    def _close_reasoning(self, run: _Run) -> list[BaseEvent]:
        if run.reasoning_ids is None:
            return []
        (span, message), run.reasoning_ids = run.reasoning_ids, None
        end = agui.ReasoningEndEvent(message_id=span)
        return [agui.ReasoningMessageEndEvent(message_id=message), end]

    def _close_open(self, run: _Run) -> list[BaseEvent]:
        return [*self._close_message(run), *self._close_reasoning(run)]

    def _hold(self, wire: Mapping[str, Any]) -> None:
        """Keep another run's event for later; beyond ``backlog``, drop and count it."""
        if _is_terminal(wire):
            self._held_terminals += 1
        elif len(self._held) - self._held_terminals >= self.backlog:
            self._dropped += 1
            return
        self._held.append(wire)

    def _drain(self) -> list[BaseEvent]:
        """Translate held events now that no run is open, one run at a time, in order."""
        out: list[BaseEvent] = []
        while self._run is None and self._held:
            first = self._held[0]["runId"]
            skipped: collections.deque[Mapping[str, Any]] = collections.deque()
            while self._held:
                wire = self._held.popleft()
                if wire["runId"] != first:
                    skipped.append(wire)
                    continue
                if _is_terminal(wire):
                    self._held_terminals -= 1
                out += self._one(wire)
                if self._run is None:  # its run ended: the next run starts from the oldest
                    break
            skipped.extend(self._held)
            self._held = skipped
        return out

    def _report_dropped(self) -> list[BaseEvent]:
        """A ``CUSTOM`` ``dropped`` for the losses not reported yet, if a run is open."""
        if not self._dropped or self._run is None:
            return []
        count, self._dropped = self._dropped, 0
        return [agui.CustomEvent(name="dropped", value={"count": count})]


# ---- POST /agui input, and the encoding ------------------------------------------------------


class InvalidRunInput(ValueError):
    """A ``POST /agui`` body that is not a valid ``RunAgentInput``."""


def parse_run_input(body: bytes) -> RunAgentInput:
    """The ``RunAgentInput`` in a request body; :exc:`InvalidRunInput` says what is wrong."""
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
        raise InvalidRunInput(f"the body is not JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise InvalidRunInput("the body must be a JSON object (a RunAgentInput)")
    try:
        run_input = RunAgentInput.model_validate(obj)
    except pydantic.ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, error['loc'])) or 'body'}: {error['msg']}"
            for error in exc.errors()[:5]
        )
        raise InvalidRunInput(f"the body is not a valid RunAgentInput: {problems}") from exc
    for field, value in (("threadId", run_input.thread_id), ("runId", run_input.run_id)):
        if not value.strip():
            raise InvalidRunInput(f"{field} must not be blank")
    return run_input


def last_user_message(run_input: RunAgentInput) -> str:
    """The text of the last user message ("" if none): its text parts joined by newlines."""
    for message in reversed(run_input.messages):
        if isinstance(message, agui.UserMessage):
            if isinstance(message.content, str):
                return message.content
            return "\n".join(
                part.text for part in message.content if isinstance(part, agui.TextPart)
            )
    return ""


def encode(event: BaseEvent) -> bytes:
    """One AG-UI event as SSE bytes (a ``data:`` line, a blank line): see :data:`CONTENT_TYPE`."""
    try:
        return _ENCODER.encode(event).encode("utf-8")
    except pydantic_core.PydanticSerializationError:
        # Text with a lone surrogate (valid in a JSON string, not in UTF-8): escaped, as the
        # WebSocket frames escape it.
        data = json.dumps(event.model_dump(mode="json", by_alias=True), separators=(",", ":"))
        return f"data: {data}\n\n".encode()
