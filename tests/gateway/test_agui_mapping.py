"""AG-UI mapping: bus events of real runs become AG-UI events that a verifying client accepts."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import pydantic
import pytest
import trio
import trio.testing
from ag_ui.core import (
    BaseEvent,
    CustomEvent,
    Event,
    EventType,
    ReasoningMessageContentEvent,
    RunErrorEvent,
    RunFinishedEvent,
    RunStartedEvent,
    TextMessageContentEvent,
    ToolCallArgsEvent,
    ToolCallResultEvent,
    ToolCallStartEvent,
)
from hypothesis import given, settings
from hypothesis import strategies as st

import pipeline as pl
from pipeline.gateway._agui import (
    CONTENT_TYPE,
    STREAM_CLOSED,
    AguiTranslator,
    InvalidRunInput,
    encode,
    last_user_message,
    parse_run_input,
)
from pipeline.testing import collect_run, is_terminal

Wire = dict[str, Any]
Body = Callable[[pl.Run], Awaitable[None]]

SESSION = pl.RunContext(session_key="s")
_EVENT = pydantic.TypeAdapter(Event)


# ---- helpers -----------------------------------------------------------------------------------


def check_order(events: Iterable[BaseEvent]) -> None:
    """Fail on any order ``@ag-ui/client``'s verifier rejects, and a little more.

    One run at a time, opened by RUN_STARTED; every message, reasoning span and tool call
    started before its content and closed before its run ends; tool END before RESULT; no empty
    delta; nothing after RUN_FINISHED or RUN_ERROR but a new RUN_STARTED.
    """
    in_run = False
    messages: set[str] = set()
    spans: set[str] = set()
    thoughts: set[str] = set()
    calls: set[str] = set()
    ended_calls: set[str] = set()
    for index, event in enumerate(events):
        kind, where = event.type, f"event {index} ({event.type.value})"
        ids = event.model_dump()
        if kind is EventType.RUN_STARTED:
            assert not in_run, f"{where}: a run is still active"
            in_run = True
            for ongoing in (messages, spans, thoughts, calls, ended_calls):
                ongoing.clear()
            continue
        assert in_run, f"{where}: outside a run"
        if kind in (EventType.RUN_FINISHED, EventType.RUN_ERROR):
            assert not messages, f"{where}: a text message is open"
            assert not spans, f"{where}: a reasoning span is open"
            assert not calls, f"{where}: a tool call is open"
            in_run = False
        elif kind is EventType.TEXT_MESSAGE_START:
            assert ids["message_id"] not in messages, where
            messages.add(ids["message_id"])
        elif kind is EventType.TEXT_MESSAGE_CONTENT:
            assert ids["message_id"] in messages, where
            assert ids["delta"], f"{where}: empty delta"
        elif kind is EventType.TEXT_MESSAGE_END:
            messages.remove(ids["message_id"])
        elif kind is EventType.REASONING_START:
            assert not spans, where
            spans.add(ids["message_id"])
        elif kind is EventType.REASONING_MESSAGE_START:
            assert spans, where
            assert not thoughts, where
            thoughts.add(ids["message_id"])
        elif kind is EventType.REASONING_MESSAGE_CONTENT:
            assert ids["message_id"] in thoughts, where
            assert ids["delta"], f"{where}: empty delta"
        elif kind is EventType.REASONING_MESSAGE_END:
            thoughts.remove(ids["message_id"])
        elif kind is EventType.REASONING_END:
            assert not thoughts, where
            spans.remove(ids["message_id"])
        elif kind is EventType.TOOL_CALL_START:
            assert ids["tool_call_id"] not in calls, where
            calls.add(ids["tool_call_id"])
        elif kind is EventType.TOOL_CALL_ARGS:
            assert ids["tool_call_id"] in calls, where
        elif kind is EventType.TOOL_CALL_END:
            calls.remove(ids["tool_call_id"])
            ended_calls.add(ids["tool_call_id"])
        elif kind is EventType.TOOL_CALL_RESULT:
            assert ids["tool_call_id"] in ended_calls, f"{where}: no TOOL_CALL_END before it"
        else:
            assert kind is EventType.CUSTOM, f"{where}: unexpected"
    assert not in_run, "the stream ends inside a run"


def check_valid(events: Iterable[BaseEvent]) -> None:
    """Every event survives its own model's validation and the wire form parses back to it."""
    for event in events:
        assert type(event).model_validate(event.model_dump()) == event
        frame = encode(event)
        assert frame.startswith(b"data: ")
        assert frame.endswith(b"\n\n")
        assert _EVENT.validate_json(frame[len(b"data: ") : -2]) == event


def translate(wires: Iterable[Mapping[str, Any]], **options: Any) -> list[BaseEvent]:
    translator = AguiTranslator("s", **options)
    return [event for wire in wires for event in translator.translate(wire)]


def of_type(events: Iterable[BaseEvent], kind: type[Any]) -> list[Any]:
    return [event for event in events if isinstance(event, kind)]


def texts(events: Iterable[BaseEvent], kind: type[Any] = TextMessageContentEvent) -> list[str]:
    """The text of each message of ``kind`` content events, in order of their first content."""
    pieces: dict[str, str] = {}
    for event in of_type(events, kind):
        pieces[event.message_id] = pieces.get(event.message_id, "") + event.delta
    return list(pieces.values())


async def run_on_bus(body: Body, run_id: str = "r1", *, abort: bool = False) -> list[Wire]:
    """The wire dicts a session subscriber receives for one run, chat events included."""
    with trio.fail_after(5):
        async with pl.open_bus(pl.BusConfig(error_retry_grace=0)) as bus:
            async with bus.subscribe(session_key="s") as sub:
                await bus.start_run(body, run_id=run_id, context=SESSION)
                if abort:
                    await trio.testing.wait_all_tasks_blocked()
                    assert bus.abort(run_id)
                events = await collect_run(sub, run_id)
                if not abort:  # the chat final or error follows the terminal event
                    events.append(await sub.receive())
    return [event.to_wire() for event in events]


def wire(run_id: str, seq: int, stream: str, **data: Any) -> Wire:
    return {"runId": run_id, "seq": seq, "stream": stream, "ts": 1000 + seq, "data": data}


async def both_runs(sub: pl.Subscription) -> list[pl.Event]:
    """Every event up to the terminal events of runs r1 and r2."""
    events: list[pl.Event] = []
    ended: set[str] = set()
    async for event in sub:
        events.append(event)
        if is_terminal(event):
            ended.add(event.run_id)
            if ended == {"r1", "r2"}:
                break
    return events


async def answering(run: pl.Run) -> None:
    await run.emit("thinking", {"delta": "The user wants "})
    await run.emit("thinking", {"delta": "a sum."})
    await run.emit("assistant", {"text": "Let me", "delta": "Let me"})
    await run.emit("assistant", {"text": "Let me check.", "delta": " check."})
    await run.emit("assistant", {"text": "Let me"})  # a stale re-send
    args = {"a": 999, "b": 1}
    await run.emit("tool", {"phase": "start", "name": "sum", "toolCallId": "t1", "args": args})
    await run.emit("tool", {"phase": "update", "toolCallId": "t1", "progress": 0.5})
    await run.emit("tool", {"phase": "result", "toolCallId": "t1", "result": {"sum": 1000}})
    await run.emit("assistant", {"text": "It is", "delta": "It is"})
    await run.emit("assistant", {"delta": " 1000."})


async def counting(run: pl.Run) -> None:
    for number in range(10):
        await run.emit("assistant", {"delta": f"{number} "})


async def interrupted(run: pl.Run) -> None:
    await run.emit("assistant", {"delta": "Working on"})
    await trio.sleep_forever()


async def failing(run: pl.Run) -> None:
    await run.emit("thinking", {"delta": "Hmm"})
    await run.emit("tool", {"phase": "start", "name": "fetch", "toolCallId": "t9"})
    raise ConnectionError("upstream reset")


# ---- single runs from a real bus ----------------------------------------------------------------


class TestRuns:
    async def test_a_finished_run_gives_valid_events_whose_text_is_the_chat_text(self) -> None:
        wires = await run_on_bus(answering)
        events = translate(wires)
        check_valid(events)
        check_order(events)
        chat_text = wires[-1]["data"]["message"]["content"][-1]["text"]
        assert "\n\n".join(texts(events)) == chat_text == "Let me check.\n\nIt is 1000."

    async def test_thinking_becomes_reasoning_before_the_answer(self) -> None:
        events = translate(await run_on_bus(answering))
        assert texts(events, ReasoningMessageContentEvent) == ["The user wants a sum."]
        types = [event.type for event in events]
        assert types.index(EventType.REASONING_END) < types.index(EventType.TEXT_MESSAGE_START)

    async def test_a_tool_call_sends_its_args_and_result_as_json_after_closing_the_text(
        self,
    ) -> None:
        events = translate(await run_on_bus(answering))
        types = [event.type.value for event in events if "TOOL" in event.type.value]
        assert types == ["TOOL_CALL_START", "TOOL_CALL_ARGS", "TOOL_CALL_END", "TOOL_CALL_RESULT"]
        (start,) = of_type(events, ToolCallStartEvent)
        assert (start.tool_call_id, start.tool_call_name) == ("t1", "sum")
        assert events[events.index(start) - 1].type is EventType.TEXT_MESSAGE_END
        assert start.parent_message_id == events[events.index(start) - 1].model_dump()["message_id"]
        assert json.loads(of_type(events, ToolCallArgsEvent)[0].delta) == {"a": 999, "b": 1}
        (result,) = of_type(events, ToolCallResultEvent)
        assert json.loads(str(result.content)) == {"sum": 1000}

    async def test_an_aborted_run_finishes_with_the_cancelled_outcome(self) -> None:
        events = translate(await run_on_bus(interrupted, abort=True))
        check_valid(events)
        check_order(events)
        finished = events[-1]
        assert isinstance(finished, RunFinishedEvent)
        assert finished.outcome is not None
        assert finished.outcome.type == "cancelled"
        assert finished.metadata == {"stopReason": "rpc"}
        assert texts(events) == ["Working on"]

    async def test_a_failing_run_closes_what_is_open_and_ends_with_run_error(self) -> None:
        events = translate(await run_on_bus(failing))
        check_valid(events)
        check_order(events)
        error = events[-1]
        assert isinstance(error, RunErrorEvent)
        assert (error.message, error.code) == ("upstream reset", "ConnectionError")

    async def test_a_run_that_ends_normally_has_no_outcome(self) -> None:
        finished = translate(await run_on_bus(answering))[-1]
        assert isinstance(finished, RunFinishedEvent)
        assert (finished.outcome, finished.thread_id, finished.run_id) == (None, "s", "r1")

    async def test_a_run_starts_with_its_session_as_thread_and_the_protocol_version(self) -> None:
        started = translate(await run_on_bus(answering))[0]
        assert isinstance(started, RunStartedEvent)
        assert (started.thread_id, started.run_id, started.protocol_version) == ("s", "r1", "1.0")

    async def test_chat_events_map_to_nothing(self) -> None:
        wires = await run_on_bus(answering)
        translator = AguiTranslator("s")
        for item in wires[:-1]:
            translator.translate(item)
        assert wires[-1]["stream"] == "chat"
        assert translator.translate(wires[-1]) == []


class TestTools:
    def test_a_result_without_an_id_answers_the_latest_open_call_of_its_tool(self) -> None:
        events = translate(
            [
                wire("r", 1, "tool", phase="start", name="sum", toolCallId="a"),
                wire("r", 2, "tool", phase="start", name="search", toolCallId="b"),
                wire("r", 3, "tool", phase="result", name="sum", result=3),
            ]
        )
        (result,) = of_type(events, ToolCallResultEvent)
        assert (result.tool_call_id, result.content) == ("a", "3")

    def test_a_result_whose_start_was_not_seen_opens_its_call_first(self) -> None:
        events = translate([wire("r", 5, "tool", phase="result", toolCallId="t", result="ok")])
        assert [e.type.value for e in events] == [
            "RUN_STARTED",
            "TOOL_CALL_START",
            "TOOL_CALL_END",
            "TOOL_CALL_RESULT",
        ]


# ---- losses and other streams ------------------------------------------------------------------


class TestMarkers:
    async def test_a_dropped_marker_becomes_a_custom_event_once_its_run_is_open(self) -> None:
        with trio.fail_after(5):
            async with pl.open_bus() as bus:
                async with bus.subscribe(overflow=pl.Overflow.DROP_OLDEST, buffer=3) as sub:
                    await (await bus.start_run(counting, run_id="r1")).wait()
                    await trio.testing.wait_all_tasks_blocked()
                    queued = sub.statistics().queued
                    wires = [sub.receive_nowait().to_wire() for _ in range(queued + 1)]
        assert wires[0]["stream"] == "dropped"  # before the run's first event
        events = translate(wires)
        check_valid(events)
        check_order(events)
        assert isinstance(events[0], RunStartedEvent)
        assert events[1] == CustomEvent(
            name="dropped", value={"count": 9}, timestamp=events[0].timestamp
        )
        assert texts(events) == ["9 "]

    async def test_a_seq_gap_becomes_a_custom_event(self) -> None:
        with trio.fail_after(5):
            async with pl.open_bus() as bus:
                async with bus.subscribe(session_key="s") as sub:
                    for seq, stream, data in [
                        (1, "lifecycle", {"phase": "start"}),
                        (3, "assistant", {"delta": "late"}),
                        (4, "lifecycle", {"phase": "end"}),
                    ]:
                        await bus.ingest({**wire("x", seq, stream, **data), "sessionKey": "s"})
                    wires = [event.to_wire() for event in await collect_run(sub, "x")]
        events = translate(wires)
        check_order(events)
        (gap,) = of_type(events, CustomEvent)
        assert (gap.name, gap.value["expected"], gap.value["received"]) == ("seq_gap", 2, 3)

    def test_an_unknown_stream_becomes_a_custom_event_named_after_it(self) -> None:
        events = translate(
            [wire("r", 1, "lifecycle", phase="start"), wire("r", 2, "item", phase="x", n=1)]
        )
        assert events[1] == CustomEvent(name="item", value={"phase": "x", "n": 1}, timestamp=1002)


# ---- text merging ------------------------------------------------------------------------------


class TestText:
    def test_cumulative_texts_send_only_what_is_new(self) -> None:
        events = translate(
            [
                wire("r", 1, "assistant", text="Hel"),
                wire("r", 2, "assistant", text="Hello", delta="lo"),
                wire("r", 3, "assistant", text="Hel"),
                wire("r", 4, "assistant", delta="!"),
            ]
        )
        assert [e.delta for e in of_type(events, TextMessageContentEvent)] == ["Hel", "lo", "!"]

    def test_a_diverging_text_starts_a_new_message(self) -> None:
        events = translate(
            [wire("r", 1, "assistant", text="One"), wire("r", 2, "assistant", text="Two")]
        )
        assert texts(events) == ["One", "Two"]

    def test_empty_updates_send_nothing(self) -> None:
        start = wire("r", 1, "lifecycle", phase="start")
        empties = [wire("r", 2, "assistant", delta=""), wire("r", 3, "thinking", text="")]
        assert [e.type for e in translate([start, *empties])] == [EventType.RUN_STARTED]


# ---- several runs on one stream ----------------------------------------------------------------


class TestSeveralRuns:
    async def test_overlapping_runs_of_a_session_come_out_one_after_the_other(self) -> None:
        second_spoke = trio.Event()

        async def first(run: pl.Run) -> None:
            await run.emit("assistant", {"delta": "r1:a "})
            await second_spoke.wait()
            await run.emit("assistant", {"delta": "r1:b r1:c "})

        async def second(run: pl.Run) -> None:
            await run.emit("assistant", {"delta": "r2:a "})
            second_spoke.set()
            await run.emit("assistant", {"delta": "r2:b r2:c "})

        with trio.fail_after(5):
            async with pl.open_bus() as bus:
                async with bus.subscribe(session_key="s") as sub:
                    await bus.start_run(first, run_id="r1", context=SESSION)
                    await bus.start_run(second, run_id="r2", context=SESSION)
                    events = await both_runs(sub)
        runs = [e.run_id for e in events if e.stream == "assistant"]
        assert runs.index("r2") < len(runs) - 1 - runs[::-1].index("r1")  # they overlap
        translated = translate([event.to_wire() for event in events])
        check_order(translated)
        assert texts(translated) == ["r1:a r1:b r1:c ", "r2:a r2:b r2:c "]

    def test_a_held_run_beyond_the_backlog_loses_content_but_still_ends(self) -> None:
        held = [wire("r2", seq, "assistant", delta="x") for seq in range(2, 6)]
        events = translate(
            [
                wire("r1", 1, "lifecycle", phase="start"),
                wire("r2", 1, "lifecycle", phase="start"),
                *held,
                wire("r2", 6, "lifecycle", phase="end"),
                wire("r1", 2, "lifecycle", phase="end"),
            ],
            backlog=3,
        )
        check_order(events)
        assert sum(e.value["count"] for e in of_type(events, CustomEvent)) == 2
        assert texts(events) == ["xx"]
        assert [e.run_id for e in of_type(events, RunFinishedEvent)] == ["r1", "r2"]

    def test_a_run_only_translator_ignores_other_runs_and_is_done_after_its_end(self) -> None:
        translator = AguiTranslator("s", run_id="r1")
        assert translator.translate(wire("r2", 1, "lifecycle", phase="start")) == []
        assert translator.translate(wire("r1", 1, "lifecycle", phase="start"))
        assert not translator.done
        (finished,) = translator.translate(wire("r1", 2, "lifecycle", phase="end"))
        assert isinstance(finished, RunFinishedEvent)
        assert translator.done
        assert translator.translate(wire("r1", 3, "lifecycle", phase="start")) == []

    def test_a_run_first_seen_mid_way_is_started_before_its_event(self) -> None:
        events = translate([wire("r", 7, "assistant", delta="hi")])
        assert [e.type.value for e in events] == [
            "RUN_STARTED",
            "TEXT_MESSAGE_START",
            "TEXT_MESSAGE_CONTENT",
        ]

    def test_a_retried_run_starts_again_after_its_run_error(self) -> None:
        events = translate(
            [
                wire("r", 1, "lifecycle", phase="start"),
                wire("r", 2, "lifecycle", phase="error", error="boom", errorKind="E"),
                wire("r", 3, "lifecycle", phase="start"),
                wire("r", 4, "lifecycle", phase="end"),
            ]
        )
        check_order(events)
        assert [e.type.value for e in events] == [
            "RUN_STARTED",
            "RUN_ERROR",
            "RUN_STARTED",
            "RUN_FINISHED",
        ]

    def test_closing_a_stream_mid_run_ends_the_run_with_run_error(self) -> None:
        translator = AguiTranslator("s")
        events = translator.translate(wire("r", 1, "assistant", delta="partial"))
        events += translator.close("the gateway is shutting down")
        check_order(events)
        assert events[-1] == RunErrorEvent(
            message="the gateway is shutting down", code=STREAM_CLOSED
        )
        assert translator.close("again") == []


# ---- random mixes -------------------------------------------------------------------------------

_UPDATES = st.one_of(
    st.builds(lambda d: ("assistant", {"delta": d}), st.text(max_size=3)),
    st.builds(lambda t: ("assistant", {"text": t}), st.sampled_from(["", "A", "AB", "ABC", "X"])),
    st.builds(lambda d: ("thinking", {"delta": d}), st.text(max_size=3)),
    st.builds(
        lambda i, n: ("tool", {"phase": "start", "toolCallId": i, "name": n, "args": {"q": 1}}),
        st.sampled_from(["t1", "t2", ""]),
        st.sampled_from(["search", "sum"]),
    ),
    st.builds(
        lambda i, p: ("tool", {"phase": p, "toolCallId": i, "result": "ok"}),
        st.sampled_from(["t1", "t2", ""]),
        st.sampled_from(["result", "update"]),
    ),
    st.just(("item", {"phase": "start"})),
    st.just(("lifecycle", {"phase": "start"})),  # a repeated start
    st.just(("dropped", {"count": 2})),
)
_ENDINGS = st.sampled_from(
    [
        {"phase": "end"},
        {"phase": "end", "aborted": True, "stopReason": "rpc"},
        {"phase": "error", "error": "boom", "errorKind": "E"},
    ]
)


@st.composite
def streams(draw: st.DrawFn) -> list[Wire]:
    """One or more runs' events, runs overlapping at random, each run ending or not."""
    runs = [
        [("lifecycle", {"phase": "start"}), *draw(st.lists(_UPDATES, max_size=12))]
        + ([("lifecycle", draw(_ENDINGS))] if draw(st.booleans()) or index == 0 else [])
        for index in range(draw(st.integers(1, 3)))
    ]
    out: list[Wire] = []
    seqs = [0] * len(runs)
    while any(runs):
        index = draw(st.sampled_from([i for i, events in enumerate(runs) if events]))
        stream, data = runs[index].pop(0)
        seqs[index] += 1
        run_id = "" if stream == "dropped" else f"r{index}"
        out.append(wire(run_id, seqs[index], stream, **data))
    return out


class TestInvariants:
    @settings(max_examples=150, deadline=None)
    @given(streams())
    def test_any_mix_of_runs_and_events_translates_in_a_valid_order(
        self, wires: list[Wire]
    ) -> None:
        translator = AguiTranslator("s")
        events = [event for item in wires for event in translator.translate(item)]
        check_order([*events, *translator.close("end of test")])

    @settings(max_examples=100, deadline=None)
    @given(streams())
    def test_no_assistant_character_is_lost_in_a_lone_run(self, wires: list[Wire]) -> None:
        lone = [w for w in wires if w["runId"] == "r0" and "text" not in w["data"]]
        deltas = "".join(w["data"]["delta"] for w in lone if w["stream"] == "assistant")
        events = translate(lone)
        check_valid(events)
        assert "".join(texts(events)) == deltas


# ---- POST /agui input and the encoding -----------------------------------------------------------


def body(**fields: Any) -> bytes:
    base = {"threadId": "s", "runId": "r1", "messages": []}
    return json.dumps(base | fields).encode()


class TestRunInput:
    def test_a_valid_body_parses_and_gives_the_last_user_message(self) -> None:
        messages = [
            {"id": "1", "role": "user", "content": "first"},
            {"id": "2", "role": "assistant", "content": "reply"},
            {"id": "3", "role": "user", "content": [{"type": "text", "text": "second"}]},
            {"id": "4", "role": "assistant", "content": "later"},
        ]
        run_input = parse_run_input(body(messages=messages))
        assert (run_input.thread_id, run_input.run_id) == ("s", "r1")
        assert last_user_message(run_input) == "second"

    def test_without_a_user_message_the_last_user_message_is_empty(self) -> None:
        assert last_user_message(parse_run_input(body())) == ""

    @pytest.mark.parametrize(
        ("raw", "says"),
        [
            (b"{not json", "not JSON"),
            (b"\xff", "not JSON"),
            (b"[]", "JSON object"),
            (json.dumps({"threadId": "s", "runId": "r"}).encode(), "messages"),
            (body(threadId=" "), "threadId must not be blank"),
            (body(messages=[{"id": "1", "role": "wizard", "content": "x"}]), "messages"),
        ],
    )
    def test_a_bad_body_is_an_invalid_run_input_that_says_why(self, raw: bytes, says: str) -> None:
        with pytest.raises(InvalidRunInput, match=says) as caught:
            parse_run_input(raw)
        assert isinstance(caught.value, ValueError)


def test_encode_gives_one_server_sent_event_frame_of_the_wire_json() -> None:
    frame = encode(RunStartedEvent(thread_id="s", run_id="r1"))
    assert CONTENT_TYPE == "text/event-stream"
    assert frame == b'data: {"type":"RUN_STARTED","threadId":"s","runId":"r1"}\n\n'
