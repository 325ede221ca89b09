"""Event data: one strict check where data enters, read-only all the way down once inside."""

from __future__ import annotations

import copy
import json
import math
import pickle
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

import pipeline as pl
from pipeline._event import is_droppable
from pipeline.testing import collect_run

WIRE = {"runId": "r1", "seq": 1, "stream": "assistant", "ts": 1}

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


class TestReadOnlyData:
    async def test_a_subscriber_cannot_change_what_another_subscriber_sees(
        self, agent_bus: pl.Bus
    ) -> None:
        async with (
            agent_bus.subscribe(run_id="r1") as first,
            agent_bus.subscribe(run_id="r1") as second,
        ):
            async with agent_bus.run(run_id="r1") as run:
                await run.emit("tool", {"phase": "start", "args": {"q": ["a"]}})
            events = await collect_run(first, "r1")
            for event in events:
                with pytest.raises(TypeError):
                    event.data["phase"] = "changed"  # type: ignore[index]
                with pytest.raises(TypeError):
                    del event.data["phase"]  # type: ignore[attr-defined]
            with pytest.raises(TypeError):
                events[1].data["args"]["q"].append("b")
            assert [e.stream for e in await collect_run(second, "r1")] == [
                "lifecycle",
                "tool",
                "lifecycle",
            ]

    async def test_the_bus_own_events_are_read_only_too(self, agent_bus: pl.Bus) -> None:
        async with agent_bus.subscribe(session_key="s") as sub:
            async with agent_bus.run(run_id="r1", context=pl.RunContext("s")) as run:
                await run.emit("assistant", {"text": "hi", "delta": "hi"})
            events = await collect_run(sub, "r1")
            events += [sub.receive_nowait() for _ in range(sub.statistics().queued)]
        chat = [e for e in events if e.stream == "chat"]
        assert chat
        for event in [events[0], events[-1], *chat]:
            with pytest.raises(TypeError):
                event.data.clear()  # type: ignore[attr-defined]
        with pytest.raises(TypeError):
            chat[0].data["message"]["content"].clear()

    async def test_the_producer_keeps_its_own_dict(self, agent_bus: pl.Bus) -> None:
        mine: dict[str, Any] = {"delta": "x", "nested": {"a": 1}}
        async with agent_bus.run() as run:
            event = await run.emit("assistant", mine)
        mine["nested"]["a"] = 2
        assert event.data["nested"] == {"a": 1}

    @given(json_values)
    def test_read_only_data_equals_the_producer_data_and_dumps_as_json(self, value: Any) -> None:
        event = pl.Event.from_wire({**WIRE, "data": {"v": value}})
        assert event.data == {"v": value}
        assert json.loads(json.dumps(event.to_wire())) == json.loads(
            json.dumps({**WIRE, "data": {"v": value}})
        )

    def test_read_only_data_survives_copy_and_pickle(self) -> None:
        event = pl.Event.from_wire({**WIRE, "data": {"a": [1, {"b": 2}]}})
        assert copy.deepcopy(event) == event
        assert pickle.loads(pickle.dumps(event)) == event


class TestStrictValidation:
    @pytest.mark.parametrize(
        "data",
        [
            {"x": math.nan},
            {"x": math.inf},
            {"x": {1, 2}},
            {"x": b"bytes"},
            {"x": object()},
            {"x": [1, {"y": -math.inf}]},
            {1: "int key"},
        ],
        ids=["nan", "inf", "set", "bytes", "object", "nested-inf", "int-key"],
    )
    def test_from_wire_rejects_data_that_is_not_json(self, data: dict[Any, Any]) -> None:
        with pytest.raises(pl.InvalidEvent):
            pl.Event.from_wire({**WIRE, "data": data})

    def test_from_wire_rejects_cyclic_data(self) -> None:
        cyclic: dict[str, Any] = {}
        cyclic["self"] = cyclic
        with pytest.raises(pl.InvalidEvent, match="cyclic"):
            pl.Event.from_wire({**WIRE, "data": cyclic})

    async def test_emit_rejects_data_that_is_not_json_and_the_run_goes_on(
        self, agent_bus: pl.Bus
    ) -> None:
        async with agent_bus.run() as run:
            with pytest.raises(pl.InvalidEvent):
                await run.emit("assistant", {"x": math.nan})
            event = await run.emit("assistant", {"x": 1.5})
        assert event.seq == 2

    async def test_ingest_rejects_data_that_is_not_json(self, agent_bus: pl.Bus) -> None:
        with pytest.raises(pl.InvalidEvent):
            await agent_bus.ingest({**WIRE, "data": {"x": {1}}})
        assert agent_bus.statistics().live_runs == 0

    @pytest.mark.parametrize("key", ["", "   "])
    def test_a_blank_context_session_key_is_rejected(self, key: str) -> None:
        with pytest.raises(ValueError, match="session_key"):
            pl.RunContext(session_key=key)

    async def test_every_event_of_the_bus_survives_a_wire_round_trip(
        self, agent_bus: pl.Bus
    ) -> None:
        async with agent_bus.subscribe() as sub:
            context = pl.RunContext(session_key="s")
            async with agent_bus.run(run_id="r1", context=context) as run:
                await run.emit("assistant", {"text": "a", "delta": "a", "n": [1.5, None]})
                await run.emit("tool", {"phase": "start", "args": {"deep": {"er": True}}})
            await trio.testing.wait_all_tasks_blocked()
            events = [sub.receive_nowait() for _ in range(sub.statistics().queued)]
        for event in events:
            assert pl.Event.from_wire(json.loads(json.dumps(event.to_wire()))) == event

    def test_to_wire_of_a_hand_built_event_is_json_ready(self) -> None:
        event = pl.Event("r1", 1, "assistant", 1, {"nested": ({"a": 1},)})
        assert json.loads(json.dumps(event.to_wire()))["data"] == {"nested": [{"a": 1}]}


class TestDroppability:
    @pytest.mark.parametrize("phase", [["start"], {"a": 1}, 3, None])
    def test_droppability_never_raises_on_odd_phases(self, phase: object) -> None:
        event = pl.Event("r1", 1, "tool", 1, {"phase": phase})
        assert is_droppable(event) is True

    async def test_an_unhashable_phase_does_not_disconnect_a_full_drop_subscriber(
        self, agent_bus: pl.Bus
    ) -> None:
        async with agent_bus.subscribe(overflow=pl.Overflow.DROP_OLDEST, buffer=2) as sub:
            for seq in range(1, 6):
                await agent_bus.ingest(
                    {**WIRE, "seq": seq, "stream": "tool", "data": {"phase": ["x"]}}
                )
            await trio.testing.wait_all_tasks_blocked()
            assert sub.closed_reason is None
            assert sub.receive_nowait().stream == "dropped"
        assert agent_bus.statistics().disconnects == 0


class TestTheEventValue:
    def test_an_event_is_immutable(self) -> None:
        event = pl.Event("r1", 1, "assistant", 1, {"delta": "x"})
        with pytest.raises(AttributeError):
            event.seq = 2
        with pytest.raises(AttributeError):
            del event.stream

    def test_the_bus_own_events_are_immutable_too(self) -> None:
        from pipeline._event import make_event

        event = make_event("r1", 1, "assistant", 1, {"delta": "x"})
        assert type(event) is pl.Event
        with pytest.raises(AttributeError):
            event.seq = 2

    def test_equality_ignores_the_ingested_mark(self) -> None:
        local = pl.Event("r1", 1, "assistant", 1, {"delta": "x"}, "s")
        assert local == pl.Event("r1", 1, "assistant", 1, {"delta": "x"}, "s", ingested=True)
        assert local != pl.Event("r1", 2, "assistant", 1, {"delta": "x"}, "s")
        assert local != ("r1", 1, "assistant", 1, {"delta": "x"}, "s")

    def test_an_event_is_not_a_sequence(self) -> None:
        event = pl.Event("r1", 1, "assistant", 1)
        with pytest.raises(TypeError):
            iter(event)  # type: ignore[call-overload]

    def test_evolve_makes_a_changed_copy(self) -> None:
        event = pl.Event("r1", 1, "assistant", 1, {"delta": "x"}, "s", ingested=True)
        changed = event.evolve(seq=2)
        assert (changed.seq, changed.run_id, changed.ingested, event.seq) == (2, "r1", True, 1)
        with pytest.raises(TypeError, match="nope"):
            event.evolve(nope=1)

    def test_repr_shows_the_wire_fields(self) -> None:
        event = pl.Event("r1", 1, "assistant", 1, {}, "s")
        assert repr(event) == (
            "Event(run_id='r1', seq=1, stream='assistant', ts=1, data={}, session_key='s')"
        )
