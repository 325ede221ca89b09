"""Ingest of events sequenced elsewhere (SPEC 4.4): validation, dedupe, gaps, tracked runs."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import hypothesis.strategies as st
import pytest
import trio
import trio.testing
from hypothesis import given, settings

import pipeline as pl
from pipeline.testing import collect_until, is_terminal

MAX_BYTES = 2048
FIELDS = ("runId", "seq", "stream", "ts", "data")


@pytest.fixture
def agent_bus_config() -> pl.BusConfig:
    return pl.BusConfig(max_event_bytes=MAX_BYTES, max_runs=4)


def wire(
    seq: int = 1,
    *,
    run_id: str = "remote",
    stream: str = "assistant",
    data: Mapping[str, Any] | None = None,
    session_key: str | None = "main",
) -> dict[str, Any]:
    """A valid wire dict."""
    obj: dict[str, Any] = {
        "runId": run_id,
        "seq": seq,
        "stream": stream,
        "ts": 1_700_000_000_000 + seq,
        "data": {"text": f"part {seq}"} if data is None else dict(data),
    }
    if session_key is not None:
        obj["sessionKey"] = session_key
    return obj


def utf8_json_size(obj: object) -> int:
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    return len(text.encode("utf-8"))


def drain_queued(sub: pl.Subscription) -> list[pl.Event]:
    events: list[pl.Event] = []
    while sub.statistics().queued:
        events.append(sub.receive_nowait())
    return events


async def published(sub: pl.Subscription) -> list[pl.Event]:
    """What ``sub`` got from everything done so far."""
    await trio.testing.wait_all_tasks_blocked()
    return drain_queued(sub)


# ---- strategies for malformed wire dicts --------------------------------------------------------

blank = st.text(alphabet=st.sampled_from([" ", "\t", "\n", "\r", "\u00a0", "\u3000"]), max_size=4)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)
not_a_str = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.lists(json_scalars)
)
not_a_text = st.one_of(not_a_str, blank)
not_a_count = st.one_of(
    st.none(),
    st.booleans(),
    st.floats(allow_nan=False),
    st.text(max_size=8),
    st.lists(st.integers(), max_size=2),
)
not_a_mapping = st.one_of(
    st.none(), st.booleans(), st.integers(), st.text(max_size=8), st.lists(json_scalars)
)
not_a_str_key = st.one_of(st.integers(), st.booleans(), st.none(), st.floats(allow_nan=False))
not_json = st.one_of(
    st.just(math.nan),
    st.just(math.inf),
    st.just(-math.inf),
    st.builds(set, st.lists(st.integers(), max_size=2)),
    st.binary(max_size=4),
    st.builds(object),
    st.complex_numbers(),
)


@st.composite
def malformed_wire(draw: st.DrawFn) -> object:
    """A wire object with exactly one thing wrong with it."""
    obj = wire(draw(st.integers(1, 10_000)))
    flaw = draw(
        st.sampled_from(
            [
                "not a mapping",
                "missing field",
                "runId",
                "seq type",
                "seq below 1",
                "stream",
                "ts type",
                "ts negative",
                "data type",
                "data key",
                "data value",
                "sessionKey",
                "oversized",
            ]
        )
    )
    if flaw == "not a mapping":
        return draw(not_a_mapping)
    if flaw == "missing field":
        del obj[draw(st.sampled_from(FIELDS))]
    elif flaw == "runId":
        obj["runId"] = draw(not_a_text)
    elif flaw == "seq type":
        obj["seq"] = draw(not_a_count)
    elif flaw == "seq below 1":
        obj["seq"] = draw(st.integers(max_value=0))
    elif flaw == "stream":
        obj["stream"] = draw(not_a_text)
    elif flaw == "ts type":
        obj["ts"] = draw(not_a_count)
    elif flaw == "ts negative":
        obj["ts"] = draw(st.integers(max_value=-1))
    elif flaw == "data type":
        obj["data"] = draw(not_a_mapping)
    elif flaw == "data key":
        obj["data"] = {draw(not_a_str_key): "value"}
    elif flaw == "data value":
        obj["data"] = {"text": draw(not_json)}
    elif flaw == "sessionKey":
        obj["sessionKey"] = draw(st.one_of(blank, st.booleans(), st.integers(), st.lists(blank)))
    else:
        obj["data"] = {"text": draw(st.sampled_from(["x", "é", "漢", "🙂"])) * MAX_BYTES}
    return obj


@st.composite
def valid_wire(draw: st.DrawFn) -> dict[str, Any]:
    non_blank = st.text(min_size=1, max_size=12).filter(lambda s: bool(s.strip()))
    obj: dict[str, Any] = {
        "runId": draw(non_blank),
        "seq": draw(st.integers(min_value=1, max_value=2**53)),
        "stream": draw(non_blank),
        "ts": draw(st.integers(min_value=0, max_value=2**53)),
        "data": draw(st.dictionaries(st.text(max_size=8), json_scalars, max_size=4)),
    }
    session_key = draw(st.one_of(st.none(), non_blank))
    if session_key is not None or draw(st.booleans()):
        obj["sessionKey"] = session_key
    return obj


# ---- validation ---------------------------------------------------------------------------------


class TestWireValidation:
    @settings(max_examples=400, deadline=None)
    @given(malformed_wire())
    def test_a_malformed_wire_dict_raises_invalid_event(self, obj: object) -> None:
        with pytest.raises(pl.InvalidEvent):
            pl.Event.from_wire(obj, max_bytes=MAX_BYTES)

    @settings(max_examples=200, deadline=None)
    @given(valid_wire())
    def test_a_well_formed_wire_dict_is_accepted_as_it_is(self, obj: dict[str, Any]) -> None:
        event = pl.Event.from_wire(obj, max_bytes=1_000_000)
        expected = {key: value for key, value in obj.items() if value is not None}
        assert event.to_wire() == expected

    def test_unknown_keys_are_ignored(self) -> None:
        event = pl.Event.from_wire({**wire(3), "node": "n2"}, max_bytes=MAX_BYTES)
        assert event.seq == 3

    def test_an_event_of_exactly_the_size_limit_is_accepted(self) -> None:
        obj = wire(data={"text": "", "pad": ""})
        obj["data"]["text"] = "é" * ((MAX_BYTES - utf8_json_size(obj)) // 2)
        obj["data"]["pad"] = "x" * (MAX_BYTES - utf8_json_size(obj))
        assert utf8_json_size(obj) == MAX_BYTES
        assert pl.Event.from_wire(obj, max_bytes=MAX_BYTES).data == obj["data"]

    def test_size_is_measured_in_utf8_bytes_not_characters(self) -> None:
        obj = wire(data={"text": "é" * (MAX_BYTES // 2)})
        assert len(json.dumps(obj, ensure_ascii=False)) < MAX_BYTES < utf8_json_size(obj)
        with pytest.raises(pl.EventTooLarge):
            pl.Event.from_wire(obj, max_bytes=MAX_BYTES)

    def test_one_byte_over_the_limit_raises_event_too_large(self) -> None:
        obj = wire(data={"text": ""})
        obj["data"]["text"] = "x" * (MAX_BYTES + 1 - utf8_json_size(obj))
        assert utf8_json_size(obj) == MAX_BYTES + 1
        with pytest.raises(pl.EventTooLarge):
            pl.Event.from_wire(obj, max_bytes=MAX_BYTES)

    def test_event_too_large_is_an_invalid_event(self) -> None:
        assert issubclass(pl.EventTooLarge, pl.InvalidEvent)
        assert issubclass(pl.InvalidEvent, ValueError)


BAD_WIRE_DICTS: dict[str, object] = {
    "a list": [wire()],
    "missing runId": {k: v for k, v in wire().items() if k != "runId"},
    "missing data": {k: v for k, v in wire().items() if k != "data"},
    "blank runId": {**wire(), "runId": "  "},
    "int runId": {**wire(), "runId": 7},
    "bool seq": {**wire(), "seq": True},
    "float seq": {**wire(), "seq": 1.0},
    "str seq": {**wire(), "seq": "1"},
    "seq 0": {**wire(), "seq": 0},
    "negative seq": {**wire(), "seq": -3},
    "empty stream": {**wire(), "stream": ""},
    "none stream": {**wire(), "stream": None},
    "bool ts": {**wire(), "ts": False},
    "float ts": {**wire(), "ts": 1.5},
    "list data": {**wire(), "data": ["text"]},
    "str data": {**wire(), "data": "text"},
    "none data": {**wire(), "data": None},
    "int data key": {**wire(), "data": {1: "x"}},
    "nan data value": {**wire(), "data": {"x": math.nan}},
    "set data value": {**wire(), "data": {"x": {1, 2}}},
    "blank sessionKey": {**wire(), "sessionKey": ""},
    "int sessionKey": {**wire(), "sessionKey": 5},
    "oversized": wire(data={"text": "x" * MAX_BYTES}),
}


class TestIngestValidation:
    @pytest.mark.parametrize("obj", BAD_WIRE_DICTS.values(), ids=BAD_WIRE_DICTS.keys())
    async def test_a_malformed_wire_dict_is_rejected_and_the_bus_stays_healthy(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock, obj: object
    ) -> None:
        before = agent_bus.statistics()
        with trio.fail_after(10):
            with pytest.raises(pl.InvalidEvent):
                await agent_bus.ingest(obj)  # type: ignore[arg-type]
            after = agent_bus.statistics()
            assert (after.live_runs, after.runs_started, after.events_published) == (
                before.live_runs,
                before.runs_started,
                before.events_published,
            )
            async with agent_bus.subscribe(run_id="remote") as sub:
                assert await agent_bus.ingest(wire(1)) is True
                assert (await sub.receive()).seq == 1
            assert agent_bus.statistics().live_runs == before.live_runs + 1

    async def test_an_oversized_wire_dict_raises_event_too_large(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock
    ) -> None:
        with pytest.raises(pl.EventTooLarge):
            await agent_bus.ingest(wire(data={"text": "x" * MAX_BYTES}))

    async def test_a_malformed_event_object_raises_invalid_event(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock
    ) -> None:
        with pytest.raises(pl.InvalidEvent):
            await agent_bus.ingest(pl.Event("remote", 0, "assistant", 1, {}, "main"))
        assert agent_bus.statistics().live_runs == 0

    async def test_an_event_object_is_not_measured_against_max_event_bytes(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock
    ) -> None:
        big = pl.Event("remote", 1, "assistant", 1, {"text": "x" * MAX_BYTES * 2}, "main")
        assert await agent_bus.ingest(big) is True

    async def test_a_valid_event_object_is_published_as_it_is(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock
    ) -> None:
        event = pl.Event("remote", 5, "assistant", 123, {"text": "hi"}, "main")
        async with agent_bus.subscribe(session_key="main") as sub:
            with trio.fail_after(10):
                assert await agent_bus.ingest(event) is True
                assert await sub.receive() == event


# ---- sequencing ---------------------------------------------------------------------------------


class TestDuplicates:
    async def test_an_event_seen_before_is_dropped_and_counted(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock
    ) -> None:
        async with agent_bus.subscribe(run_id="remote") as sub:
            for seq in (1, 2):
                await agent_bus.ingest(wire(seq))
            assert await agent_bus.ingest(wire(2)) is False
            events = await published(sub)
        assert [e.seq for e in events] == [1, 2]
        assert agent_bus.statistics().duplicates == 1

    async def test_an_event_older_than_the_last_is_a_duplicate_too(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock
    ) -> None:
        async with agent_bus.subscribe(run_id="remote") as sub:
            for seq in (1, 2, 3):
                await agent_bus.ingest(wire(seq))
            assert await agent_bus.ingest(wire(1)) is False
            events = await published(sub)
        assert [e.seq for e in events] == [1, 2, 3]
        assert agent_bus.statistics().duplicates == 1

    async def test_a_duplicate_does_not_count_as_published(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock
    ) -> None:
        await agent_bus.ingest(wire(1))
        before = agent_bus.statistics().events_published
        await agent_bus.ingest(wire(1))
        assert agent_bus.statistics().events_published == before


class TestGaps:
    async def test_a_gap_publishes_a_seq_gap_error_before_the_event(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock
    ) -> None:
        async with agent_bus.subscribe(session_key="main") as sub:
            await agent_bus.ingest(wire(1))
            assert await agent_bus.ingest(wire(4)) is True
            events = await published(sub)
        assert [(e.stream, e.seq) for e in events] == [
            ("assistant", 1),
            ("error", 4),
            ("assistant", 4),
        ]
        assert events[1].data == {"reason": "seq gap", "expected": 2, "received": 4}
        assert events[1].run_id == "remote"

    async def test_the_run_goes_on_from_the_event_after_a_gap(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock
    ) -> None:
        async with agent_bus.subscribe(run_id="remote") as sub:
            for seq in (1, 4, 5):
                await agent_bus.ingest(wire(seq))
            events = await published(sub)
        assert [e.stream for e in events] == ["assistant", "error", "assistant", "assistant"]

    async def test_the_first_event_of_a_run_may_start_at_any_seq(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock
    ) -> None:
        async with agent_bus.subscribe(run_id="remote") as sub:
            await agent_bus.ingest(wire(40))
            events = await published(sub)
        assert [(e.stream, e.seq) for e in events] == [("assistant", 40)]

    async def test_consecutive_events_publish_no_gap_error(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock
    ) -> None:
        async with agent_bus.subscribe(run_id="remote") as sub:
            for seq in range(1, 6):
                await agent_bus.ingest(wire(seq))
            events = await published(sub)
        assert [e.stream for e in events] == ["assistant"] * 5


# ---- tracked runs -------------------------------------------------------------------------------


class TestTrackedRuns:
    async def test_an_event_for_an_unknown_run_starts_a_tracked_run(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock
    ) -> None:
        await agent_bus.ingest(wire(1))
        stats = agent_bus.statistics()
        assert (stats.live_runs, stats.runs_started) == (1, 1)

    async def test_more_events_of_a_tracked_run_start_no_other_run(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock
    ) -> None:
        for seq in (1, 2, 3):
            await agent_bus.ingest(wire(seq))
        assert agent_bus.statistics().runs_started == 1

    async def test_ingested_events_reach_subscribers_unchanged(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock
    ) -> None:
        obj = wire(7, stream="tool", data={"phase": "start", "name": "search"})
        async with agent_bus.subscribe(session_key="main") as sub:
            await agent_bus.ingest(obj)
            (event,) = await published(sub)
        assert event.to_wire() == obj

    async def test_a_tracked_run_counts_against_max_runs(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock
    ) -> None:
        for index in range(agent_bus.config.max_runs):
            await agent_bus.ingest(wire(1, run_id=f"remote-{index}"))
        with pytest.raises(pl.TooManyRuns):
            await agent_bus.ingest(wire(1, run_id="one-too-many"))
        with pytest.raises(pl.TooManyRuns):
            await agent_bus.start_run(trio.sleep_forever)  # type: ignore[arg-type]

    @pytest.mark.parametrize(
        ("terminal", "outcome"),
        [
            ({"phase": "end"}, "ok"),
            ({"phase": "end", "aborted": True, "stopReason": "rpc"}, "aborted"),
            ({"phase": "error", "error": "boom", "errorKind": "RuntimeError"}, "error"),
            ({"phase": "error", "error": "idle", "errorKind": "timeout"}, "timeout"),
        ],
    )
    async def test_a_terminal_lifecycle_event_ends_the_tracked_run(
        self,
        agent_bus: pl.Bus,
        autojump_clock: trio.testing.MockClock,
        terminal: dict[str, Any],
        outcome: str,
    ) -> None:
        await agent_bus.ingest(wire(1, stream="lifecycle", data={"phase": "start"}))
        await agent_bus.ingest(wire(2, stream="lifecycle", data=terminal))
        await trio.testing.wait_all_tasks_blocked()
        stats = agent_bus.statistics()
        assert stats.live_runs == 0
        assert stats.runs_by_outcome[outcome] == 1

    async def test_a_tracked_run_publishes_nothing_of_its_own_when_it_ends(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock
    ) -> None:
        async with agent_bus.subscribe(run_id="remote") as sub:
            await agent_bus.ingest(wire(1, stream="lifecycle", data={"phase": "start"}))
            await agent_bus.ingest(wire(2, stream="lifecycle", data={"phase": "end"}))
            events = await published(sub)
        assert [(e.stream, e.seq) for e in events] == [("lifecycle", 1), ("lifecycle", 2)]

    async def test_a_freed_slot_takes_a_new_run(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock
    ) -> None:
        for index in range(agent_bus.config.max_runs):
            await agent_bus.ingest(wire(1, run_id=f"remote-{index}"))
        await agent_bus.ingest(
            wire(2, run_id="remote-0", stream="lifecycle", data={"phase": "end"})
        )
        await trio.testing.wait_all_tasks_blocked()
        assert await agent_bus.ingest(wire(1, run_id="new")) is True

    async def test_a_tracked_run_can_be_aborted(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock
    ) -> None:
        async with agent_bus.subscribe(run_id="remote") as sub:
            await agent_bus.ingest(wire(1))
            assert agent_bus.abort("remote", reason="operator")
            with trio.fail_after(10):
                events = await collect_until(sub, is_terminal)
        assert events[-1].data["aborted"] is True
        assert events[-1].data["stopReason"] == "operator"
        assert events[-1].seq == 2
