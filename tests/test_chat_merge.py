"""Merging streamed text (SPEC 4.5, docs/semantics.md 1.2): no character a producer sent is lost.

These tests feed :class:`pipeline._chat.ChatProjection` directly, as plain state. The regression
classes hold the corruptions the reference gateway's overlap heuristic caused.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from pipeline._chat import SEGMENT_SEPARATOR, ChatProjection

TS = 1_700_000_000_000
#: Stands for a tool call between two assistant events.
TOOL: Mapping[str, Any] = {"phase": "start", "name": "search", "toolCallId": "t1"}

Update = Mapping[str, Any]


def delta(piece: str) -> Update:
    return {"delta": piece}


def text(full: str, piece: str | None = None) -> Update:
    return {"text": full} if piece is None else {"text": full, "delta": piece}


def feed(updates: Iterable[Update], *, stream: str = "assistant", limit: int = 1_048_576) -> str:
    """The merged text of ``stream`` after ``updates`` (:data:`TOOL` is a tool call).

    The throttle holds back every delta but the first, so the text is read whole only at the
    end and appended deltas pile up as pieces, as they do between two deltas of a real run.
    """
    chat = ChatProjection(math.inf, limit=limit)
    for now, data in enumerate(updates):
        if data is TOOL:
            chat.before("tool", data, float(now), TS)
            chat.after("tool", data, float(now), TS)
        else:
            chat.after(stream, data, float(now), TS)
    return chat.text if stream == "assistant" else chat.thinking


def merged(*updates: Update, limit: int = 1_048_576) -> str:
    return feed(updates, limit=limit)


# ---- regressions: the overlap heuristic corrupted these -----------------------------------------


class TestRegressions:
    def test_a_delta_only_answer_keeps_repeated_digits_words_and_dots(self) -> None:
        pieces = ["The ", "answer ", "is ", "100", "0", " and", " and", " more", ".", ".", "."]
        assert merged(*map(delta, pieces)) == "The answer is 1000 and and more..."

    def test_a_delta_only_path_keeps_every_slash_and_letter(self) -> None:
        pieces = ["see file://", "/tmp/a.p", "ptx"]
        assert merged(*map(delta, pieces)) == "see file:///tmp/a.pptx"

    def test_a_text_after_a_tool_call_keeps_the_text_before_it(self) -> None:
        updates = [text("Let me search.", "Let me search."), TOOL, text("Found it.", "Found it.")]
        assert merged(*updates) == "Let me search.\n\nFound it."


# ---- delta-only updates -------------------------------------------------------------------------


class TestDeltas:
    def test_a_delta_is_appended_verbatim(self) -> None:
        assert merged(delta("Hello"), delta(" world")) == "Hello world"

    def test_a_delta_that_repeats_the_end_of_the_text_is_appended_whole(self) -> None:
        assert merged(delta("Hello wo"), delta("world")) == "Hello woworld"

    def test_a_delta_the_text_already_ends_with_is_appended_again(self) -> None:
        assert merged(delta("10"), delta("0")) == "100"

    def test_a_long_delta_only_stream_is_rebuilt_exactly(self) -> None:
        deltas = [f"{i}." for i in range(5_000)]
        assert merged(*map(delta, deltas)) == "".join(deltas)

    def test_a_delta_after_a_text_extends_that_text(self) -> None:
        assert merged(text("Hel", "Hel"), delta("lo")) == "Hello"

    def test_an_empty_text_with_a_delta_counts_as_a_delta_alone(self) -> None:
        assert merged(delta("Hi"), {"text": "", "delta": "!"}) == "Hi!"

    def test_an_update_with_neither_text_nor_delta_changes_nothing(self) -> None:
        assert merged(delta("Hi"), {"text": "", "delta": ""}, {"mediaUrls": []}) == "Hi"


# ---- cumulative texts ---------------------------------------------------------------------------


class TestCumulativeTexts:
    def test_the_first_text_is_taken_as_it_is(self) -> None:
        assert merged(text("Hi")) == "Hi"

    def test_a_text_that_extends_the_segment_replaces_it(self) -> None:
        assert merged(text("Hel", "Hel"), text("Hello", "lo")) == "Hello"

    def test_a_text_that_extends_the_segment_replaces_it_without_a_delta(self) -> None:
        assert merged(text("Hel"), text("Hello")) == "Hello"

    def test_a_text_that_extends_deltas_replaces_them(self) -> None:
        assert merged(delta("Hel"), delta("lo"), text("Hello world")) == "Hello world"

    def test_a_stale_text_without_a_delta_keeps_the_segment(self) -> None:
        assert merged(text("Hello"), text("Hel")) == "Hello"

    def test_a_stale_text_after_deltas_keeps_them(self) -> None:
        assert merged(text("Hel"), delta("lo"), text("Hel")) == "Hello"

    def test_the_first_text_with_a_partial_delta_is_taken_whole(self) -> None:
        # A projection can start mid-stream, e.g. once update_context made a hidden run visible.
        assert merged(text("Hello world", " world")) == "Hello world"


class TestTextWithADelta:
    """The decision of docs/semantics.md 1.2: a text wins over the delta sent with it."""

    def test_a_stale_text_with_its_delta_does_not_append_the_delta_again(self) -> None:
        assert merged(text("Hello world."), text("Hello world", " world")) == "Hello world."

    def test_a_stale_text_wins_over_a_delta_it_does_not_end_with(self) -> None:
        assert merged(text("Hello"), text("Hel", " world")) == "Hello"

    def test_an_extending_text_wins_over_a_delta_it_does_not_end_with(self) -> None:
        # A producer that trims its cumulative text but not its deltas.
        assert merged(text("Hel", "Hel"), text("Hello", "lo\n")) == "Hello"


# ---- segments -----------------------------------------------------------------------------------


class TestSegments:
    def test_a_new_segment_grows_with_its_own_texts(self) -> None:
        updates = [text("Let me search."), TOOL, text("Found"), text("Found it.")]
        assert merged(*updates) == "Let me search.\n\nFound it."

    def test_deltas_after_a_new_segment_extend_it(self) -> None:
        updates = [text("Let me search."), TOOL, text("Found"), delta(" it"), delta(".")]
        assert merged(*updates) == "Let me search.\n\nFound it."

    def test_a_stale_text_of_the_new_segment_keeps_it(self) -> None:
        updates = [text("Let me search."), TOOL, text("Found it."), text("Found")]
        assert merged(*updates) == "Let me search.\n\nFound it."

    def test_segments_are_joined_in_order(self) -> None:
        updates = [text("One."), TOOL, text("Two."), TOOL, text("Three.")]
        assert merged(*updates) == "One.\n\nTwo.\n\nThree."

    def test_a_text_that_diverges_starts_a_new_segment_even_without_a_tool_call(self) -> None:
        # Segments are told apart by their text, not by the events between them.
        assert merged(text("Hello"), text("Goodbye")) == "Hello\n\nGoodbye"

    def test_a_diverging_text_with_a_delta_starts_a_new_segment_from_the_text(self) -> None:
        assert merged(text("Hello"), text("Goodbye!", "!")) == "Hello\n\nGoodbye!"

    def test_thinking_keeps_its_segments_too(self) -> None:
        updates = [text("Search first."), TOOL, text("Now answer.")]
        assert feed(updates, stream="thinking") == "Search first.\n\nNow answer."


# ---- the limit ----------------------------------------------------------------------------------


class TestLimit:
    def test_a_new_segment_is_cut_at_the_limit(self) -> None:
        assert merged(text("abc"), TOOL, text("xyz"), limit=7) == "abc\n\nxy"

    def test_a_separator_that_reaches_past_the_limit_is_cut(self) -> None:
        assert merged(text("abc"), TOOL, text("xyz"), limit=4) == "abc\n"

    def test_a_cut_new_segment_is_counted(self) -> None:
        chat = ChatProjection(0.0, limit=7)
        for data in (text("abc"), text("xyz")):
            chat.after("assistant", data, 0.0, TS)
        assert chat.truncations == 1

    def test_a_text_that_extends_a_cut_segment_stays_cut(self) -> None:
        assert merged(text("abcdef"), text("abcdefgh"), limit=4) == "abcd"


# ---- properties ---------------------------------------------------------------------------------

#: A small alphabet, so that pieces often repeat the end of the text (what the heuristic trimmed).
pieces = st.text(alphabet="ab0./\n", max_size=4)


@st.composite
def cumulative_stream(draw: st.DrawFn, first: str = "") -> tuple[list[Update], str]:
    """Updates of one segment, each text extending the last, and the last text.

    Each text comes with the delta it adds or alone; some updates are re-sent later (stale).
    """
    grown = itertools.accumulate(draw(st.lists(pieces, min_size=1)), initial=first)
    texts = [full for full in grown if full]
    updates: list[Update] = []
    for i, full in enumerate(texts):
        piece = full[len(texts[i - 1]) :] if i else full
        updates.append(text(full, piece) if draw(st.booleans()) else text(full))
        if draw(st.booleans()):
            updates.append(draw(st.sampled_from(updates)))  # a re-send, maybe stale
    return updates, texts[-1] if texts else ""


#: Any update: a tool call, a delta, a text, or both, consistent or not.
any_update = (
    st.sampled_from([TOOL])
    | st.builds(delta, pieces)
    | st.builds(text, pieces)
    | st.builds(text, pieces, pieces)
)


class TestMergeProperties:
    @given(st.lists(pieces | st.text(max_size=8)))
    def test_any_delta_only_stream_is_rebuilt_exactly(self, deltas: list[str]) -> None:
        assert merged(*map(delta, deltas)) == "".join(deltas)

    @given(cumulative_stream())
    def test_a_cumulative_text_stream_ends_as_its_last_text(
        self, stream: tuple[list[Update], str]
    ) -> None:
        updates, last = stream
        assert merged(*updates) == last

    @given(st.data(), st.lists(st.sampled_from("ABCDE"), min_size=1, unique=True))
    def test_segments_after_tool_calls_are_kept_in_order_joined_by_a_blank_line(
        self, data: st.DataObject, heads: list[str]
    ) -> None:
        # Each segment starts with its own letter, so no segment extends another.
        updates: list[Update] = []
        segments: list[str] = []
        for head in heads:
            segment_updates, last = data.draw(cumulative_stream(first=head))
            updates += [TOOL, *segment_updates]
            segments.append(last)
        assert merged(*updates) == SEGMENT_SEPARATOR.join(segments)

    @given(st.lists(any_update), st.integers(0, 12))
    def test_the_merged_text_never_exceeds_the_limit(
        self, updates: list[Update], limit: int
    ) -> None:
        assert len(merged(*updates, limit=limit)) <= limit

    @given(st.lists(any_update), st.integers(0, 12))
    def test_the_cut_text_is_the_start_of_the_uncut_text(
        self, updates: list[Update], limit: int
    ) -> None:
        assert merged(*updates).startswith(merged(*updates, limit=limit))

    @given(st.lists(any_update, min_size=1))
    def test_the_merged_text_only_ever_grows(self, updates: list[Update]) -> None:
        texts = [merged(*updates[:n]) for n in range(len(updates) + 1)]
        assert all(later.startswith(earlier) for earlier, later in itertools.pairwise(texts))
