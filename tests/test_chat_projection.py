"""The chat projection (SPEC 4.5, 4.3): throttled deltas, flushes, closing states.

The first classes test :class:`pipeline._chat.ChatProjection` as plain state; the rest test the
chat events a run publishes on the bus, under a mock clock. The merge rules themselves are
tested in ``test_chat_merge.py``.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable, Mapping
from contextlib import suppress
from typing import Any

import pytest
import trio
import trio.testing

import pipeline as pl
from pipeline._chat import ChatProjection
from pipeline.testing import collect_until, is_terminal

MAIN = pl.RunContext(session_key="main")
INTERVAL = 0.15  # the default chat_delta_interval, used by the agent_bus fixture
TS = 1_700_000_000_000

Body = Callable[[pl.Run], Awaitable[None]]


# ---- helpers ------------------------------------------------------------------------------------


def text_of(payload: Mapping[str, Any]) -> str:
    """The text block of a chat payload's message ("" if it has none)."""
    for block in payload["message"]["content"]:
        if block["type"] == "text":
            return str(block["text"])
    return ""


def chat(events: list[pl.Event], state: str | None = None) -> list[pl.Event]:
    """The chat events among ``events``, optionally only those in ``state``."""
    return [
        e for e in events if e.stream == "chat" and (state is None or e.data.get("state") == state)
    ]


def drain_queued(sub: pl.Subscription) -> list[pl.Event]:
    """Every event already queued for ``sub``, without waiting."""
    events: list[pl.Event] = []
    while sub.statistics().queued:
        events.append(sub.receive_nowait())
    return events


async def settle(sub: pl.Subscription, run_id: str) -> list[pl.Event]:
    """``run_id``'s events up to its terminal lifecycle event, and whatever follows it at once."""
    events = await collect_until(sub, lambda e: e.run_id == run_id and is_terminal(e))
    await trio.testing.wait_all_tasks_blocked()
    return [e for e in events + drain_queued(sub) if e.run_id == run_id]


async def run_events(
    bus: pl.Bus, body: Body, *, run_id: str = "r1", context: pl.RunContext = MAIN
) -> list[pl.Event]:
    """Run ``body`` and return every event of its run, chat events after the end included."""
    with trio.fail_after(60):
        async with bus.subscribe(run_id=run_id, buffer=4096) as sub:
            await bus.start_run(body, run_id=run_id, context=context)
            return await settle(sub, run_id)


def say(text: str, delta: str | None = None) -> dict[str, str]:
    data = {"text": text}
    if delta is not None:
        data["delta"] = delta
    return data


# ---- ChatProjection as plain state --------------------------------------------------------------


class TestProjectionDeltas:
    def test_the_first_text_produces_a_delta_at_once(self) -> None:
        chat_ = ChatProjection(1.0)
        payload = chat_.after("assistant", say("Hi", "Hi"), 0.0, TS)
        assert payload == {
            "state": "delta",
            "message": {
                "role": "assistant",
                "content": [{"type": "text", "text": "Hi"}],
                "timestamp": TS,
            },
        }

    def test_growth_within_the_interval_produces_no_delta(self) -> None:
        chat_ = ChatProjection(1.0)
        chat_.after("assistant", say("Hi", "Hi"), 0.0, TS)
        assert chat_.after("assistant", say("Hi there", " there"), 0.9, TS) is None

    def test_growth_after_the_interval_produces_a_delta_with_everything_merged(self) -> None:
        chat_ = ChatProjection(1.0)
        chat_.after("assistant", say("Hi", "Hi"), 0.0, TS)
        chat_.after("assistant", say("Hi there", " there"), 0.5, TS)
        payload = chat_.after("assistant", say("Hi there!", "!"), 1.0, TS)
        assert payload is not None
        assert text_of(payload) == "Hi there!"

    def test_no_delta_is_produced_when_nothing_grew(self) -> None:
        chat_ = ChatProjection(1.0)
        chat_.after("assistant", say("Hi", "Hi"), 0.0, TS)
        assert chat_.after("assistant", say("Hi"), 5.0, TS) is None

    def test_an_assistant_event_without_text_or_delta_is_ignored(self) -> None:
        chat_ = ChatProjection(1.0)
        assert chat_.after("assistant", {"mediaUrls": ["a.png"]}, 0.0, TS) is None
        assert chat_.text == ""

    def test_non_string_text_is_ignored(self) -> None:
        chat_ = ChatProjection(1.0)
        assert chat_.after("assistant", {"text": 42, "delta": ["x"]}, 0.0, TS) is None
        assert chat_.text == ""

    def test_other_streams_do_not_feed_the_text(self) -> None:
        chat_ = ChatProjection(1.0)
        assert chat_.after("tool", {"text": "result"}, 0.0, TS) is None
        assert chat_.text == ""

    def test_thinking_is_merged_separately_and_comes_first_in_the_message(self) -> None:
        chat_ = ChatProjection(0.0)
        chat_.after("assistant", say("Answer", "Answer"), 0.0, TS)
        payload = chat_.after("thinking", say("Hmm", "Hmm"), 1.0, TS)
        assert payload is not None
        assert payload["message"]["content"] == [
            {"type": "thinking", "thinking": "Hmm"},
            {"type": "text", "text": "Answer"},
        ]

    def test_a_delta_carries_every_segment_joined_by_a_blank_line(self) -> None:
        chat_ = ChatProjection(1.0)
        chat_.after("assistant", say("Let me search.", "Let me search."), 0.0, TS)
        payload = chat_.after("assistant", say("Found it.", "Found it."), 1.0, TS)
        assert payload is not None
        assert text_of(payload) == "Let me search.\n\nFound it."

    def test_a_stale_text_produces_no_delta(self) -> None:
        chat_ = ChatProjection(1.0)
        chat_.after("assistant", say("Hello", "Hello"), 0.0, TS)
        assert chat_.after("assistant", say("Hel", "l"), 5.0, TS) is None


class TestProjectionBounds:
    def test_the_merged_text_is_cut_to_the_limit_and_counted(self) -> None:
        chat_ = ChatProjection(0.0, limit=10)
        chat_.after("assistant", say("Hello", "Hello"), 0.0, TS)
        payload = chat_.after("assistant", say("Hello world!", " world!"), 1.0, TS)
        assert chat_.text == "Hello worl"
        assert payload is not None
        assert payload["message"]["content"] == [{"type": "text", "text": "Hello worl"}]
        assert chat_.truncations == 1

    def test_text_at_the_limit_stops_growing(self) -> None:
        chat_ = ChatProjection(0.0, limit=4)
        for i, piece in enumerate(["ab", "cd", "ef", "gh"]):
            chat_.after("assistant", {"delta": piece}, float(i), TS)
        assert chat_.text == "abcd"
        assert chat_.truncations == 2


class TestProjectionFlush:
    def test_a_flush_restarts_the_throttle_interval(self) -> None:
        chat_ = ChatProjection(1.0)
        chat_.after("assistant", say("Hi", "Hi"), 0.0, TS)
        chat_.after("assistant", say("Hi there", " there"), 1.5, TS)  # a delta at 1.5
        chat_.after("assistant", say("Hi there you", " you"), 1.6, TS)  # throttled
        assert chat_.before("tool", {"phase": "start"}, 2.0, TS) is not None  # flush at 2.0
        assert chat_.after("assistant", say("Hi there you!", "!"), 2.6, TS) is None
        assert chat_.after("assistant", say("Hi there you!!", "!"), 3.0, TS) is not None

    @pytest.mark.parametrize("stream", ["tool", "item"])
    def test_unsent_growth_is_flushed_before_a_start_phase(self, stream: str) -> None:
        chat_ = ChatProjection(1.0)
        chat_.after("assistant", say("Hi", "Hi"), 0.0, TS)
        chat_.after("assistant", say("Hi there", " there"), 0.1, TS)
        payload = chat_.before(stream, {"phase": "start"}, 0.0, TS)
        assert payload is not None
        assert payload["state"] == "delta"
        assert text_of(payload) == "Hi there"

    @pytest.mark.parametrize("phase", ["update", "result", "end", None])
    def test_no_flush_happens_before_other_tool_phases(self, phase: str | None) -> None:
        chat_ = ChatProjection(1.0)
        chat_.after("assistant", say("Hi", "Hi"), 0.0, TS)
        chat_.after("assistant", say("Hi there", " there"), 0.1, TS)
        assert chat_.before("tool", {"phase": phase}, 0.0, TS) is None

    def test_no_flush_happens_when_everything_was_sent(self) -> None:
        chat_ = ChatProjection(1.0)
        chat_.after("assistant", say("Hi", "Hi"), 0.0, TS)
        assert chat_.before("tool", {"phase": "start"}, 0.0, TS) is None


class TestProjectionClosingStates:
    def test_final_flushes_unsent_growth_first(self) -> None:
        chat_ = ChatProjection(1.0)
        chat_.after("assistant", say("Hi", "Hi"), 0.0, TS)
        chat_.after("assistant", say("Hi there", " there"), 0.1, TS)
        flush, final = chat_.final(None, TS)
        assert flush["state"] == "delta"
        assert text_of(flush) == "Hi there"
        assert final["state"] == "final"
        assert text_of(final) == "Hi there"

    def test_final_alone_follows_when_everything_was_sent(self) -> None:
        chat_ = ChatProjection(1.0)
        chat_.after("assistant", say("Hi", "Hi"), 0.0, TS)
        assert [p["state"] for p in chat_.final(None, TS)] == ["final"]

    def test_final_carries_the_stop_reason_when_there_is_one(self) -> None:
        chat_ = ChatProjection(1.0)
        (final,) = chat_.final("max_tokens", TS)
        assert final["stopReason"] == "max_tokens"

    def test_final_has_no_stop_reason_when_there_is_none(self) -> None:
        chat_ = ChatProjection(1.0)
        (final,) = chat_.final(None, TS)
        assert "stopReason" not in final

    def test_final_has_no_message_when_nothing_was_said(self) -> None:
        chat_ = ChatProjection(1.0)
        assert chat_.final(None, TS) == [{"state": "final"}]

    def test_aborted_carries_the_partial_text_and_the_reason(self) -> None:
        chat_ = ChatProjection(1.0)
        chat_.after("assistant", say("Hi", "Hi"), 0.0, TS)
        chat_.after("assistant", say("Hi the", " the"), 0.1, TS)
        payload = chat_.aborted("rpc", TS)
        assert payload is not None
        assert payload["state"] == "aborted"
        assert payload["stopReason"] == "rpc"
        assert text_of(payload) == "Hi the"

    def test_aborted_carries_every_segment_joined_by_a_blank_line(self) -> None:
        chat_ = ChatProjection(1.0)
        chat_.after("assistant", say("Let me search.", "Let me search."), 0.0, TS)
        chat_.after("assistant", say("Found", "Found"), 0.1, TS)
        payload = chat_.aborted("rpc", TS)
        assert payload is not None
        assert text_of(payload) == "Let me search.\n\nFound"

    def test_after_aborted_the_projection_publishes_nothing_more(self) -> None:
        chat_ = ChatProjection(0.0)
        chat_.after("assistant", say("Hi", "Hi"), 0.0, TS)
        chat_.aborted("rpc", TS)
        assert chat_.after("assistant", say("Hi there", " there"), 10.0, TS) is None
        assert chat_.before("tool", {"phase": "start"}, 0.0, TS) is None
        assert chat_.final(None, TS) == []
        assert chat_.aborted("rpc", TS) is None

    def test_after_final_the_projection_publishes_nothing_more(self) -> None:
        chat_ = ChatProjection(0.0)
        chat_.final(None, TS)
        assert chat_.after("assistant", say("late", "late"), 10.0, TS) is None
        assert chat_.final(None, TS) == []

    def test_error_carries_the_message_and_the_kind(self) -> None:
        assert ChatProjection.error("boom", "RuntimeError") == {
            "state": "error",
            "errorMessage": "boom",
            "errorKind": "RuntimeError",
        }


# ---- chat events on the bus ---------------------------------------------------------------------


class TestChatDeltasOnTheBus:
    async def test_assistant_text_of_a_visible_run_produces_a_chat_delta(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock
    ) -> None:
        async def body(run: pl.Run) -> None:
            await run.emit("assistant", say("Hello", "Hello"))

        (delta,) = chat(await run_events(agent_bus, body), "delta")
        assert delta.session_key == "main"
        assert delta.data["message"]["role"] == "assistant"
        assert text_of(delta.data) == "Hello"

    async def test_a_chat_delta_follows_its_agent_event_and_carries_its_seq(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock
    ) -> None:
        async def body(run: pl.Run) -> None:
            await run.emit("assistant", say("Hello", "Hello"))

        events = await run_events(agent_bus, body)
        (assistant,) = [e for e in events if e.stream == "assistant"]
        (delta,) = chat(events, "delta")
        assert delta.seq == assistant.seq
        assert events.index(delta) == events.index(assistant) + 1

    async def test_chat_deltas_go_out_at_most_once_per_interval(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock
    ) -> None:
        emitted_at: dict[int, float] = {}

        async def body(run: pl.Run) -> None:
            text = ""
            for _ in range(50):
                text += "x"
                event = await run.emit("assistant", say(text, "x"))
                emitted_at[event.seq] = trio.current_time()
                await trio.sleep(0.02)

        events = await run_events(agent_bus, body)
        times = [emitted_at[e.seq] for e in chat(events, "delta") if e.seq in emitted_at]
        gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
        assert len(times) >= 6
        assert min(gaps) >= INTERVAL

    async def test_throttled_growth_goes_out_with_the_next_delta_after_the_interval(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock
    ) -> None:
        async def body(run: pl.Run) -> None:
            await run.emit("assistant", say("a", "a"))
            await trio.sleep(INTERVAL / 3)
            await run.emit("assistant", say("ab", "b"))
            await trio.sleep(INTERVAL)
            await run.emit("assistant", say("abc", "c"))

        deltas = chat(await run_events(agent_bus, body), "delta")
        assert [text_of(d.data) for d in deltas] == ["a", "abc"]

    async def test_the_throttle_is_per_run(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock
    ) -> None:
        async def body(run: pl.Run) -> None:
            await run.emit("assistant", say(run.id, run.id))
            await trio.sleep(1)

        with trio.fail_after(60):
            async with agent_bus.subscribe(session_key="main", streams={"chat"}) as sub:
                await agent_bus.start_run(body, run_id="a", context=MAIN)
                await agent_bus.start_run(body, run_id="b", context=MAIN)
                first, second = await sub.receive(), await sub.receive()
        assert {(first.run_id, text_of(first.data)), (second.run_id, text_of(second.data))} == {
            ("a", "a"),
            ("b", "b"),
        }

    async def test_chat_deltas_are_droppable_for_a_slow_subscriber(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock
    ) -> None:
        async def body(run: pl.Run) -> None:
            text = ""
            for _ in range(5):
                text += "x"
                await run.emit("assistant", say(text, "x"))
                await trio.sleep(1)

        with trio.fail_after(60):
            async with agent_bus.subscribe(
                run_id="r1", streams={"chat"}, overflow=pl.Overflow.DROP_OLDEST, buffer=1
            ) as sub:
                handle = await agent_bus.start_run(body, run_id="r1", context=MAIN)
                await handle.wait()
                await trio.testing.wait_all_tasks_blocked()
                marker, final = await sub.receive(), await sub.receive()
        assert marker.stream == "dropped"
        assert marker.data["count"] >= 5
        assert final.data["state"] == "final"
        assert sub.closed_reason is None

    async def test_thinking_and_text_are_both_in_the_delta_message(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock
    ) -> None:
        async def body(run: pl.Run) -> None:
            await run.emit("thinking", say("Let me see", "Let me see"))
            await trio.sleep(1)
            await run.emit("assistant", say("42", "42"))

        deltas = chat(await run_events(agent_bus, body), "delta")
        assert deltas[-1].data["message"]["content"] == [
            {"type": "thinking", "thinking": "Let me see"},
            {"type": "text", "text": "42"},
        ]

    async def test_merged_text_is_what_the_chat_shows(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock
    ) -> None:
        async def body(run: pl.Run) -> None:
            for data in (say("Hel", "Hel"), {"delta": "lo"}, say("He"), say("Hello!", "!")):
                await run.emit("assistant", data)
                await trio.sleep(1)

        deltas = chat(await run_events(agent_bus, body), "delta")
        assert [text_of(d.data) for d in deltas] == ["Hel", "Hello", "Hello!"]

    async def test_a_delta_that_repeats_the_end_of_the_text_is_shown_whole(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock
    ) -> None:
        async def body(run: pl.Run) -> None:
            for piece in ("see file://", "/tmp/a.p", "ptx"):
                await run.emit("assistant", {"delta": piece})

        (final,) = chat(await run_events(agent_bus, body), "final")
        assert text_of(final.data) == "see file:///tmp/a.pptx"


class TestChatVisibility:
    async def test_a_run_without_a_session_key_publishes_no_chat(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock
    ) -> None:
        async def body(run: pl.Run) -> None:
            await run.emit("assistant", say("Hello", "Hello"))
            await run.emit("tool", {"phase": "start", "name": "search"})

        events = await run_events(agent_bus, body, context=pl.RunContext())
        assert [e.stream for e in events] == ["lifecycle", "assistant", "tool", "lifecycle"]

    async def test_a_hidden_run_publishes_no_chat(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock
    ) -> None:
        async def body(run: pl.Run) -> None:
            await run.emit("assistant", say("Hello", "Hello"))

        hidden = pl.RunContext(session_key="main", control_ui_visible=False)
        events = await run_events(agent_bus, body, context=hidden)
        assert chat(events) == []
        assert len(events) == 3


class TestChatFlush:
    async def test_unsent_text_is_flushed_before_a_tool_start_with_the_tools_seq(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock
    ) -> None:
        async def body(run: pl.Run) -> None:
            await run.emit("assistant", say("Let me", "Let me"))
            await run.emit("assistant", say("Let me search", " search"))
            await run.emit("tool", {"phase": "start", "name": "search", "toolCallId": "t1"})

        events = await run_events(agent_bus, body)
        (tool,) = [e for e in events if e.stream == "tool"]
        flush = events[events.index(tool) - 1]
        assert flush.stream == "chat"
        assert flush.data["state"] == "delta"
        assert text_of(flush.data) == "Let me search"
        assert flush.seq == tool.seq

    async def test_unsent_text_is_flushed_before_an_item_start(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock
    ) -> None:
        async def body(run: pl.Run) -> None:
            await run.emit("assistant", say("Let me", "Let me"))
            await run.emit("assistant", say("Let me look", " look"))
            await run.emit("item", {"phase": "start", "kind": "command"})

        events = await run_events(agent_bus, body)
        (item,) = [e for e in events if e.stream == "item"]
        flush = events[events.index(item) - 1]
        assert (flush.stream, flush.seq, text_of(flush.data)) == ("chat", item.seq, "Let me look")

    async def test_no_flush_happens_before_a_tool_update(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock
    ) -> None:
        async def body(run: pl.Run) -> None:
            await run.emit("assistant", say("Let me", "Let me"))
            await run.emit("assistant", say("Let me search", " search"))
            await run.emit("tool", {"phase": "update", "toolCallId": "t1"})

        events = await run_events(agent_bus, body)
        (tool,) = [e for e in events if e.stream == "tool"]
        assert events[events.index(tool) - 1].stream == "assistant"

    async def test_no_flush_happens_before_a_tool_start_when_everything_was_sent(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock
    ) -> None:
        async def body(run: pl.Run) -> None:
            await run.emit("assistant", say("Let me search", "Let me search"))
            await run.emit("tool", {"phase": "start", "name": "search"})

        events = await run_events(agent_bus, body)
        assert len(chat(events, "delta")) == 1

    async def test_unsent_text_is_flushed_before_the_final(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock
    ) -> None:
        async def body(run: pl.Run) -> None:
            await run.emit("assistant", say("Done", "Done"))
            await run.emit("assistant", say("Done.", "."))

        events = await run_events(agent_bus, body)
        *_, flush, final = chat(events)
        assert (flush.data["state"], text_of(flush.data)) == ("delta", "Done.")
        assert final.data["state"] == "final"


class TestChatFinal:
    async def test_the_final_follows_the_lifecycle_end_with_its_seq(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock
    ) -> None:
        async def body(run: pl.Run) -> None:
            await run.emit("assistant", say("Done", "Done"))

        events = await run_events(agent_bus, body)
        end = next(e for e in events if is_terminal(e))
        (final,) = chat(events, "final")
        assert events.index(final) > events.index(end)
        assert final.seq == end.seq

    async def test_the_final_carries_the_whole_message(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock
    ) -> None:
        async def body(run: pl.Run) -> None:
            await run.emit("assistant", say("Hello", "Hello"))
            await run.emit("assistant", say("Hello world", " world"))

        (final,) = chat(await run_events(agent_bus, body), "final")
        assert text_of(final.data) == "Hello world"

    async def test_the_final_carries_every_segment_joined_by_a_blank_line(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock
    ) -> None:
        async def body(run: pl.Run) -> None:
            await run.emit("assistant", say("Let me search.", "Let me search."))
            await run.emit("tool", {"phase": "start", "name": "search", "toolCallId": "t1"})
            await run.emit("tool", {"phase": "result", "toolCallId": "t1", "result": "42"})
            await run.emit("assistant", say("It is", "It is"))
            await run.emit("assistant", say("It is 42.", " 42."))

        (final,) = chat(await run_events(agent_bus, body), "final")
        assert text_of(final.data) == "Let me search.\n\nIt is 42."

    async def test_the_final_carries_the_stop_reason_the_body_set(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock
    ) -> None:
        async def body(run: pl.Run) -> None:
            await run.emit("assistant", say("Hello", "Hello"))
            run.set_stop_reason("max_tokens")

        events = await run_events(agent_bus, body)
        end = next(e for e in events if is_terminal(e))
        (final,) = chat(events, "final")
        assert end.data["stopReason"] == "max_tokens"
        assert final.data["stopReason"] == "max_tokens"

    async def test_the_final_has_no_stop_reason_when_the_body_set_none(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock
    ) -> None:
        async def body(run: pl.Run) -> None:
            await run.emit("assistant", say("Hello", "Hello"))

        (final,) = chat(await run_events(agent_bus, body), "final")
        assert "stopReason" not in final.data

    async def test_a_run_that_said_nothing_gets_a_final_without_a_message(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock
    ) -> None:
        async def body(run: pl.Run) -> None:
            await run.emit("tool", {"phase": "start", "name": "search"})

        (final,) = chat(await run_events(agent_bus, body))
        assert final.data == {"state": "final"}


class TestChatError:
    async def test_without_a_retry_grace_the_chat_error_follows_the_lifecycle_error(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        async def body(run: pl.Run) -> None:
            await run.emit("assistant", say("Hel", "Hel"))
            raise RuntimeError("model overloaded")

        async with pl.open_bus(pl.BusConfig(error_retry_grace=0)) as bus:
            events = await run_events(bus, body)
        error = next(e for e in events if is_terminal(e))
        assert events[-1].stream == "chat"
        assert events[-1].seq == error.seq
        assert events[-1].data == {
            "state": "error",
            "errorMessage": "model overloaded",
            "errorKind": "RuntimeError",
        }


class TestChatAbort:
    @staticmethod
    async def aborted_run(bus: pl.Bus) -> list[pl.Event]:
        async def body(run: pl.Run) -> None:
            await run.emit("assistant", say("Hel", "Hel"))
            await run.emit("assistant", say("Hello wor", "lo wor"))
            await trio.sleep_forever()

        with trio.fail_after(60):
            async with bus.subscribe(run_id="r1", buffer=1024) as sub:
                handle = await bus.start_run(body, run_id="r1", context=MAIN)
                await trio.sleep(1)
                handle.abort("user stop")
                return await settle(sub, "r1")

    async def test_an_aborted_run_publishes_its_partial_text_as_chat_aborted(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock
    ) -> None:
        (aborted,) = chat(await self.aborted_run(agent_bus), "aborted")
        assert aborted.data["stopReason"] == "user stop"
        assert text_of(aborted.data) == "Hello wor"

    async def test_chat_aborted_is_published_before_the_terminal_lifecycle_event(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock
    ) -> None:
        # SPEC 4.3: "The partial chat text is published as chat state "aborted", then the
        # terminal lifecycle."
        events = await self.aborted_run(agent_bus)
        (aborted,) = chat(events, "aborted")
        end = next(e for e in events if is_terminal(e))
        assert events.index(aborted) < events.index(end)

    async def test_chat_aborted_carries_the_seq_of_the_terminal_lifecycle_event(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock
    ) -> None:
        events = await self.aborted_run(agent_bus)
        (aborted,) = chat(events, "aborted")
        end = next(e for e in events if is_terminal(e))
        assert aborted.seq == end.seq

    async def test_an_aborted_run_gets_no_final(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock
    ) -> None:
        events = await self.aborted_run(agent_bus)
        assert chat(events, "final") == []

    async def test_no_chat_delta_follows_an_abort_of_a_run_fed_from_outside(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock
    ) -> None:
        async def body(run: pl.Run) -> None:
            await trio.sleep_forever()

        with trio.fail_after(60):
            async with agent_bus.subscribe(run_id="r1", buffer=1024) as sub:
                await agent_bus.start_run(body, run_id="r1", context=MAIN)
                before = await agent_bus.emit("r1", "assistant", say("Hel", "Hel"))
                await trio.sleep(1)
                assert agent_bus.abort("r1")
                with suppress(pl.UnknownRun):
                    await agent_bus.emit("r1", "assistant", say("Hello", "lo"))
                events = await settle(sub, "r1")
        assert [e.seq for e in chat(events, "delta")] == [before.seq]

    async def test_emitting_into_an_aborted_run_from_outside_raises_unknown_run(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock
    ) -> None:
        async def body(run: pl.Run) -> None:
            await trio.sleep_forever()

        with trio.fail_after(60):
            await agent_bus.start_run(body, run_id="r1", context=MAIN)
            assert agent_bus.abort("r1")
            with pytest.raises(pl.UnknownRun):
                await agent_bus.emit("r1", "assistant", say("late", "late"))

    async def test_an_emit_in_a_body_being_aborted_is_not_published(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock
    ) -> None:
        async def body(run: pl.Run) -> None:
            await run.emit("assistant", say("Hel", "Hel"))
            assert agent_bus.abort(run.id)
            await run.emit("assistant", say("Hello", "lo"))

        events = await run_events(agent_bus, body)
        assert [e.data["text"] for e in events if e.stream == "assistant"] == ["Hel"]
        assert [e.data["state"] for e in chat(events)] == ["delta", "aborted"]

    async def test_no_chat_delta_follows_an_abort_even_from_the_bodys_cleanup(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock
    ) -> None:
        first: list[pl.Event] = []

        async def body(run: pl.Run) -> None:
            first.append(await run.emit("assistant", say("Hel", "Hel")))
            try:
                await trio.sleep_forever()
            finally:
                with trio.CancelScope(shield=True):
                    await run.emit("assistant", say("Hello", "lo"))

        with trio.fail_after(60):
            async with agent_bus.subscribe(run_id="r1", buffer=1024) as sub:
                handle = await agent_bus.start_run(body, run_id="r1", context=MAIN)
                await trio.sleep(1)
                handle.abort()
                events = await settle(sub, "r1")
        assert [e.seq for e in chat(events, "delta")] == [first[0].seq]
