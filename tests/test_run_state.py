"""RunState on its own: plain synchronous tests, no trio, no bus.

The state builds the events a run calls for and returns them; nothing is published here.
"""

from __future__ import annotations

from time import time_ns
from typing import Any

import pytest

import pipeline as pl
from pipeline._counters import Counters
from pipeline._event import Event, make_event
from pipeline._frozen import FrozenDict
from pipeline._state import RunSettings, RunState

INTERVAL = 0.150
MAIN = pl.RunContext(session_key="main")


def settings(max_event_bytes: int = 1_048_576) -> RunSettings:
    return RunSettings(INTERVAL, max_event_bytes, Counters())


def state(context: pl.RunContext = MAIN, *, run_id: str = "r1") -> RunState:
    return RunState(run_id, context, settings())


def agent(
    run: RunState, stream: str, data: dict[str, Any], *, now: float = 0.0, key: str | None = None
) -> tuple[Event | None, Event, Event | None]:
    return run.agent(stream, FrozenDict(data), key, now)


def wire_event(seq: int, stream: str = "assistant", **data: Any) -> Event:
    return make_event("r1", seq, stream, 1_700_000_000_000, FrozenDict(data), "main", True)


def chat(seq: int, state_: str) -> Event:
    return wire_event(seq, "chat", state=state_)


class TestSequencing:
    def test_seq_starts_at_1_with_the_start_and_rises_by_1_per_agent_event(self) -> None:
        run = state()
        start = run.start()
        seqs = [agent(run, "tool", {"phase": "update"})[1].seq for _ in range(3)]
        assert (start.seq, seqs, run.last_seq) == (1, [2, 3, 4], 4)

    def test_chat_events_carry_the_seq_of_the_agent_event_that_caused_them(self) -> None:
        run = state()
        _, event, after = agent(run, "assistant", {"delta": "Hi"})
        assert after is not None
        assert after.seq == event.seq == 1
        assert run.last_seq == 1

    def test_the_start_time_is_kept_through_a_retry(self) -> None:
        run = state()
        first = run.start()
        run.error("boom", "RuntimeError", 1)
        run.resume(None)
        again = run.start()
        assert again.data["startedAt"] == first.data["startedAt"] == run.started_at
        assert again.seq == 3

    def test_ts_is_epoch_milliseconds_at_enrichment(self) -> None:
        before = time_ns() // 1_000_000
        _, event, _ = agent(state(), "tool", {"phase": "update"})
        assert before <= event.ts <= time_ns() // 1_000_000


class TestSessionKey:
    @pytest.mark.parametrize(
        ("context", "own", "expected"),
        [
            (MAIN, None, "main"),
            (MAIN, "other", "other"),
            (MAIN, "   ", "main"),
            (MAIN, "", "main"),
            (pl.RunContext(), "own", "own"),
            (pl.RunContext(), None, None),
            (pl.RunContext(session_key="main", control_ui_visible=False), "own", None),
        ],
        ids=["context", "own", "blank-own", "empty-own", "own-only", "none", "hidden"],
    )
    def test_the_key_is_the_events_own_non_blank_key_else_the_contexts_none_if_hidden(
        self, context: pl.RunContext, own: str | None, expected: str | None
    ) -> None:
        _, event, _ = agent(state(context), "tool", {"phase": "update"}, key=own)
        assert event.session_key == expected

    def test_a_context_change_applies_to_later_events(self) -> None:
        run = state()
        run.context = run.context.updated(session_key="elsewhere")
        assert agent(run, "tool", {"phase": "update"})[1].session_key == "elsewhere"

    def test_lifecycle_events_carry_the_contexts_key(self) -> None:
        assert state().start().session_key == "main"
        assert state(pl.RunContext(control_ui_visible=False)).start().session_key is None

    def test_local_events_are_not_marked_ingested(self) -> None:
        run = state()
        assert not run.start().ingested
        assert not agent(run, "assistant", {"delta": "x"})[1].ingested


class TestChatAroundAgentEvents:
    def test_a_run_without_a_session_key_gets_no_chat_events(self) -> None:
        before, _, after = agent(state(pl.RunContext()), "assistant", {"delta": "Hi"})
        assert (before, after) == (None, None)

    def test_an_assistant_delta_is_followed_by_a_chat_delta(self) -> None:
        before, _, after = agent(state(), "assistant", {"text": "Hel", "delta": "Hel"})
        assert before is None
        assert after is not None
        assert (after.stream, after.session_key, after.data["state"]) == ("chat", "main", "delta")
        assert after.data["message"]["content"] == [{"type": "text", "text": "Hel"}]

    def test_deltas_are_throttled_to_one_per_interval(self) -> None:
        run = state()
        assert agent(run, "assistant", {"delta": "a"}, now=0.0)[2] is not None
        assert agent(run, "assistant", {"delta": "b"}, now=0.1)[2] is None
        after = agent(run, "assistant", {"delta": "c"}, now=0.2)[2]
        assert after is not None
        assert after.data["message"]["content"][0]["text"] == "abc"

    def test_unsent_growth_is_flushed_before_a_tool_starts(self) -> None:
        run = state()
        agent(run, "assistant", {"delta": "a"}, now=0.0)
        agent(run, "assistant", {"delta": "b"}, now=0.1)
        before, event, after = agent(run, "tool", {"phase": "start", "name": "search"}, now=0.1)
        assert before is not None
        assert after is None
        assert before.seq == event.seq
        assert before.data["message"]["content"][0]["text"] == "ab"

    def test_text_cut_to_the_limit_is_counted_on_the_bus_counters(self) -> None:
        run = RunState("r1", MAIN, settings(max_event_bytes=4))
        agent(run, "assistant", {"delta": "abcdef"})
        assert run.settings.counters.chat_truncations == 1


class TestTerminalEvents:
    def test_end_is_the_lifecycle_end_then_the_chat_final_at_its_seq(self) -> None:
        run = state()
        run.start()
        agent(run, "assistant", {"delta": "a"}, now=0.0)
        agent(run, "assistant", {"delta": "b"}, now=0.1)
        end, flush, final = run.end(42)
        assert (end.stream, end.data["phase"], end.data["endedAt"], end.seq) == (
            "lifecycle",
            "end",
            42,
            4,
        )
        assert "stopReason" not in end.data
        assert [(e.stream, e.seq, e.data["state"]) for e in (flush, final)] == [
            ("chat", 4, "delta"),
            ("chat", 4, "final"),
        ]
        assert final.data["message"]["content"] == [{"type": "text", "text": "ab"}]

    def test_the_end_carries_the_stop_reason_the_body_set(self) -> None:
        run = state()
        run.end_reason = "max_tokens"
        end, final = run.end(1)
        assert end.data["stopReason"] == final.data["stopReason"] == "max_tokens"

    def test_a_run_without_a_session_key_ends_with_the_lifecycle_event_only(self) -> None:
        assert [e.stream for e in state(pl.RunContext()).end(1)] == ["lifecycle"]

    def test_abort_is_the_chat_aborted_then_the_lifecycle_end_at_the_same_seq(self) -> None:
        run = state()
        agent(run, "assistant", {"delta": "partial"})
        aborted, end = run.aborted("rpc", 7)
        assert (aborted.stream, aborted.data["state"], aborted.data["stopReason"]) == (
            "chat",
            "aborted",
            "rpc",
        )
        assert aborted.data["message"]["content"] == [{"type": "text", "text": "partial"}]
        assert dict(end.data) == {
            "phase": "end",
            "aborted": True,
            "stopReason": "rpc",
            "startedAt": 0,
            "endedAt": 7,
        }
        assert aborted.seq == end.seq == 2

    def test_after_an_abort_the_run_makes_no_more_chat(self) -> None:
        run = state()
        run.aborted("rpc", 1)
        assert agent(run, "assistant", {"delta": "late"})[2] is None
        assert [e.stream for e in run.end(2)] == ["lifecycle"]

    def test_an_error_keeps_its_failure_for_the_chat_error(self) -> None:
        run = state()
        run.start()
        error = run.error("boom", "RuntimeError", 5)
        assert dict(error.data) == {
            "phase": "error",
            "error": "boom",
            "errorKind": "RuntimeError",
            "startedAt": run.started_at,
            "endedAt": 5,
        }
        (chat_error,) = run.chat_error()
        assert (chat_error.stream, chat_error.seq) == ("chat", error.seq)
        assert dict(chat_error.data) == {
            "state": "error",
            "errorMessage": "boom",
            "errorKind": "RuntimeError",
        }

    def test_no_chat_error_without_a_failure_or_a_session_key(self) -> None:
        assert state().chat_error() == []
        hidden = state(pl.RunContext())
        hidden.error("boom", "RuntimeError", 1)
        assert hidden.chat_error() == []

    def test_a_retry_forgets_the_failure_and_stop_reason_but_keeps_the_text(self) -> None:
        run = state()
        agent(run, "assistant", {"delta": "a"})
        run.end_reason = "max_tokens"
        run.error("boom", "RuntimeError", 1)
        run.resume(pl.RunContext(session_key="main", verbose_level="on"))
        assert run.failure is None
        assert run.end_reason is None
        assert run.context.verbose_level == "on"
        assert run.chat_error() == []
        final = run.end(2)[-1]
        assert final.data["message"]["content"] == [{"type": "text", "text": "a"}]

    def test_a_remote_runs_own_closing_events_are_marked_ingested(self) -> None:
        run = RunState.remote("r1", MAIN, settings())
        assert all(e.ingested for e in run.aborted("shutdown", 1))
        assert run.error("run idle timeout", "timeout", 2).ingested

    def test_clear_drops_the_chat_text(self) -> None:
        run = state()
        agent(run, "assistant", {"delta": "secret"})
        run.clear()
        assert run.end(1)[-1].data.get("message") is None


class TestIngestDedupe:
    def test_events_in_order_are_published_as_they_are(self) -> None:
        run = state()
        events = [wire_event(seq, delta="x") for seq in (1, 2, 3)]
        assert [run.ingested(e) for e in events] == [(e,) for e in events]
        assert run.last_seq == 3

    def test_an_agent_event_at_or_below_the_last_seq_is_a_duplicate(self) -> None:
        run = state()
        run.ingested(wire_event(1))
        run.ingested(wire_event(2))
        assert run.ingested(wire_event(2)) == ()
        assert run.ingested(wire_event(1)) == ()
        assert run.last_seq == 2

    def test_a_gap_returns_a_seq_gap_error_before_the_event(self) -> None:
        run = state()
        run.ingested(wire_event(1))
        late = wire_event(4)
        gap, event = run.ingested(late)
        assert event is late
        assert (gap.stream, gap.seq, gap.session_key, gap.ingested) == ("error", 4, "main", True)
        assert dict(gap.data) == {"reason": "seq gap", "expected": 2, "received": 4}
        assert run.last_seq == 4

    def test_the_first_event_seen_may_start_anywhere(self) -> None:
        run = state()
        first = wire_event(5)
        assert run.ingested(first) == (first,)

    def test_a_chat_event_is_not_a_duplicate_of_the_agent_event_it_shares_a_seq_with(
        self,
    ) -> None:
        run = state()
        run.ingested(wire_event(1))
        delta = chat(1, "delta")
        assert run.ingested(delta) == (delta,)
        assert run.last_seq == 1

    def test_annotations_neither_move_the_last_seq_nor_count_for_gaps(self) -> None:
        run = state()
        run.ingested(wire_event(1))
        run.ingested(chat(1, "delta"))
        nxt = wire_event(2)
        assert run.ingested(nxt) == (nxt,)


class TestAnnotationDedupe:
    def test_the_same_annotation_twice_is_a_duplicate(self) -> None:
        run = state()
        run.ingested(wire_event(1))
        assert run.ingested(chat(1, "delta")) != ()
        assert run.ingested(chat(1, "delta")) == ()

    def test_annotations_of_different_kinds_at_one_seq_are_all_kept(self) -> None:
        run = state()
        run.ingested(wire_event(3))
        flush, final = chat(3, "delta"), chat(3, "final")
        assert (run.ingested(flush), run.ingested(final)) == ((flush,), (final,))
        assert run.ingested(chat(3, "final")) == ()

    def test_an_annotation_older_than_the_newest_seen_is_a_duplicate(self) -> None:
        run = state()
        run.ingested(wire_event(1))
        run.ingested(chat(1, "delta"))
        run.ingested(wire_event(2))
        run.ingested(chat(2, "delta"))
        assert run.ingested(chat(1, "final")) == ()

    def test_a_gap_reported_upstream_is_not_reported_again(self) -> None:
        run = state()
        run.ingested(wire_event(1))
        upstream_gap = wire_event(4, "error", reason="seq gap", expected=2, received=4)
        assert run.ingested(upstream_gap) == (upstream_gap,)
        late = wire_event(4)
        assert run.ingested(late) == (late,)

    def test_a_gap_reported_here_is_deduped_when_it_arrives_again(self) -> None:
        run = state()
        run.ingested(wire_event(1))
        gap, _ = run.ingested(wire_event(4))
        assert run.ingested(gap) == ()
