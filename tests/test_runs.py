"""Runs: starting, sequencing, enrichment, lifecycle events, outcomes and bad input."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
import trio

import pipeline as pl
from pipeline.testing import collect_run, run_and_collect

Body = Callable[[pl.Run], Awaitable[None]]


def emitting(*texts: str) -> Body:
    async def body(run: pl.Run) -> None:
        for text in texts:
            await run.emit("assistant", {"delta": text})

    return body


async def failing(run: pl.Run) -> None:
    await run.emit("assistant", {"delta": "partial"})
    raise RuntimeError("model crashed")


async def parked(run: pl.Run) -> None:
    await trio.sleep_forever()


def lifecycle_phases(events: list[pl.Event]) -> list[str]:
    return [e.data["phase"] for e in events if e.stream == "lifecycle"]


class TestSequencing:
    async def test_seq_starts_at_one_and_rises_by_one_for_every_agent_event(
        self, agent_bus: pl.Bus
    ) -> None:
        with trio.fail_after(5):
            _, events = await run_and_collect(agent_bus, emitting("a", "b", "c"), run_id="r1")
        assert [e.seq for e in events] == [1, 2, 3, 4, 5]

    async def test_lifecycle_start_and_end_wrap_the_body_events(self, agent_bus: pl.Bus) -> None:
        with trio.fail_after(5):
            _, events = await run_and_collect(agent_bus, emitting("a"), run_id="r1")
        assert [e.stream for e in events] == ["lifecycle", "assistant", "lifecycle"]
        assert lifecycle_phases(events) == ["start", "end"]
        assert events[0].data["startedAt"] == events[-1].data["startedAt"]
        assert events[-1].data["endedAt"] >= events[-1].data["startedAt"]

    async def test_every_event_carries_the_run_id_and_an_epoch_ms_timestamp(
        self, agent_bus: pl.Bus
    ) -> None:
        with trio.fail_after(5):
            _, events = await run_and_collect(agent_bus, emitting("a"), run_id="r1")
        assert {e.run_id for e in events} == {"r1"}
        assert all(e.ts > 1_600_000_000_000 for e in events)

    async def test_emit_returns_the_published_event(self, agent_bus: pl.Bus) -> None:
        seen: list[pl.Event] = []

        async def body(run: pl.Run) -> None:
            seen.append(await run.emit("assistant", {"delta": "x"}))

        with trio.fail_after(5):
            _, events = await run_and_collect(agent_bus, body, run_id="r1")
        assert seen == [events[1]]

    async def test_a_missing_run_id_is_generated(self, agent_bus: pl.Bus) -> None:
        with trio.fail_after(5):
            handle = await agent_bus.start_run(emitting())
            outcome = await handle.wait()
        assert handle.id
        assert outcome.run_id == handle.id


class TestEnrichment:
    async def test_the_context_session_key_is_stamped_on_events(self, agent_bus: pl.Bus) -> None:
        context = pl.RunContext(session_key="main")
        with trio.fail_after(5):
            _, events = await run_and_collect(agent_bus, emitting("a"), context=context)
        assert {e.session_key for e in events} == {"main"}

    async def test_an_events_own_session_key_overrides_the_context(self, agent_bus: pl.Bus) -> None:
        async def body(run: pl.Run) -> None:
            await run.emit("assistant", {"delta": "a"}, session_key="other")

        context = pl.RunContext(session_key="main")
        with trio.fail_after(5):
            _, events = await run_and_collect(agent_bus, body, context=context)
        assert events[1].session_key == "other"

    async def test_a_blank_own_session_key_falls_back_to_the_context(
        self, agent_bus: pl.Bus
    ) -> None:
        async def body(run: pl.Run) -> None:
            await run.emit("assistant", {"delta": "a"}, session_key="  ")

        context = pl.RunContext(session_key="main")
        with trio.fail_after(5):
            _, events = await run_and_collect(agent_bus, body, context=context)
        assert events[1].session_key == "main"

    async def test_a_run_hidden_from_the_control_ui_has_no_session_key(
        self, agent_bus: pl.Bus
    ) -> None:
        async def body(run: pl.Run) -> None:
            await run.emit("assistant", {"delta": "a"}, session_key="other")

        context = pl.RunContext(session_key="main", control_ui_visible=False)
        with trio.fail_after(5):
            _, events = await run_and_collect(agent_bus, body, context=context)
        assert {e.session_key for e in events} == {None}

    async def test_event_data_is_a_read_only_copy(self, agent_bus: pl.Bus) -> None:
        data = {"delta": "a"}
        published: list[pl.Event] = []

        async def body(run: pl.Run) -> None:
            published.append(await run.emit("assistant", data))
            data["delta"] = "changed"

        with trio.fail_after(5):
            await run_and_collect(agent_bus, body)
        assert published[0].data["delta"] == "a"
        with pytest.raises(TypeError):
            published[0].data["delta"] = "b"  # type: ignore[index]


class TestOutcomes:
    async def test_a_body_that_returns_ends_ok(self, agent_bus: pl.Bus) -> None:
        with trio.fail_after(5):
            outcome, events = await run_and_collect(agent_bus, emitting("a"), run_id="r1")
        assert outcome.status == "ok"
        assert outcome.error is None
        assert outcome.last_seq == events[-1].seq == 3
        assert outcome.started_at <= outcome.ended_at

    async def test_a_body_that_raises_ends_with_a_lifecycle_error(self, agent_bus: pl.Bus) -> None:
        with trio.fail_after(5):
            outcome, events = await run_and_collect(agent_bus, failing, run_id="r1")
        assert outcome.status == "error"
        assert outcome.error == "model crashed"
        terminal = events[-1]
        assert terminal.data["phase"] == "error"
        assert terminal.data["error"] == "model crashed"
        assert terminal.data["errorKind"] == "RuntimeError"

    async def test_wait_returns_at_once_for_a_failed_body_despite_the_retry_grace(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock
    ) -> None:
        with trio.fail_after(5):
            handle = await agent_bus.start_run(failing)
            start = trio.current_time()
            await handle.wait()
        assert trio.current_time() - start < agent_bus.config.error_retry_grace

    async def test_a_failing_body_ends_only_its_own_run(self, agent_bus: pl.Bus) -> None:
        release = trio.Event()

        async def steady(run: pl.Run) -> None:
            await release.wait()
            await run.emit("assistant", {"delta": "still here"})

        with trio.fail_after(5):
            async with agent_bus.subscribe(run_id="steady") as sub:
                steady_handle = await agent_bus.start_run(steady, run_id="steady")
                failed = await (await agent_bus.start_run(failing)).wait()
                release.set()
                events = await collect_run(sub, "steady")
                outcome = await steady_handle.wait()
        assert failed.status == "error"
        assert outcome.status == "ok"
        assert [e.stream for e in events] == ["lifecycle", "assistant", "lifecycle"]

    async def test_the_outcome_is_counted_in_statistics(self, agent_bus: pl.Bus) -> None:
        with trio.fail_after(5):
            await (await agent_bus.start_run(emitting())).wait()
            await (await agent_bus.start_run(failing)).wait()
        counts = agent_bus.statistics().runs_by_outcome
        assert (counts["ok"], counts["error"]) == (1, 1)


class TestRunBlock:
    async def test_the_callers_block_is_the_body(self, agent_bus: pl.Bus) -> None:
        with trio.fail_after(5):
            async with agent_bus.subscribe(run_id="r1") as sub:
                async with agent_bus.run(run_id="r1") as run:
                    await run.emit("assistant", {"delta": "hi"})
                events = await collect_run(sub, "r1")
        assert [e.seq for e in events] == [1, 2, 3]
        assert lifecycle_phases(events) == ["start", "end"]

    async def test_an_exception_in_the_block_is_published_and_propagates(
        self, agent_bus: pl.Bus
    ) -> None:
        with trio.fail_after(5):
            async with agent_bus.subscribe(run_id="r1") as sub:
                with pytest.raises(KeyError):
                    async with agent_bus.run(run_id="r1"):
                        raise KeyError("lost")
                events = await collect_run(sub, "r1")
        assert events[-1].data["phase"] == "error"
        assert events[-1].data["errorKind"] == "KeyError"

    async def test_aborting_cancels_the_block_and_execution_goes_on_after_it(
        self, agent_bus: pl.Bus
    ) -> None:
        reached = False
        with trio.fail_after(5):
            async with agent_bus.run(run_id="r1") as run:
                assert agent_bus.abort(run.id, reason="user")
                await trio.sleep_forever()
            reached = True
        assert reached
        assert agent_bus.statistics().live_runs == 0

    async def test_a_run_object_is_unusable_after_its_block(self, agent_bus: pl.Bus) -> None:
        with trio.fail_after(5):
            async with agent_bus.run() as run:
                pass
            with pytest.raises(pl.UnknownRun):
                await run.emit("assistant", {"delta": "late"})


class TestEmitFromOutside:
    async def test_bus_emit_publishes_into_a_running_body(self, agent_bus: pl.Bus) -> None:
        with trio.fail_after(5):
            async with agent_bus.subscribe(run_id="r1") as sub:
                handle = await agent_bus.start_run(parked, run_id="r1")
                event = await agent_bus.emit("r1", "tool", {"phase": "update"})
                handle.abort()
                events = await collect_run(sub, "r1")
        assert event.seq == 2
        assert events[1] == event

    async def test_bus_emit_to_an_unknown_run_raises_unknown_run(self, agent_bus: pl.Bus) -> None:
        with pytest.raises(pl.UnknownRun):
            await agent_bus.emit("nope", "assistant", {"delta": "x"})

    async def test_unknown_run_is_also_a_lookup_error(self, agent_bus: pl.Bus) -> None:
        with pytest.raises(LookupError):
            await agent_bus.emit("nope", "assistant", {"delta": "x"})


class TestBadInput:
    @pytest.mark.parametrize(
        "data", [None, "text", ["a"], 3, {1: "int key"}], ids=lambda d: type(d).__name__
    )
    async def test_data_that_is_not_a_str_keyed_mapping_raises_invalid_event_and_the_run_goes_on(
        self, agent_bus: pl.Bus, data: object
    ) -> None:
        errors: list[Exception] = []

        async def body(run: pl.Run) -> None:
            try:
                await run.emit("assistant", data)
            except pl.InvalidEvent as exc:
                errors.append(exc)
            await run.emit("assistant", {"delta": "fine"})

        with trio.fail_after(5):
            outcome, events = await run_and_collect(agent_bus, body)
        assert len(errors) == 1
        assert isinstance(errors[0], ValueError)
        assert outcome.status == "ok"
        assert [e.seq for e in events] == [1, 2, 3]

    @pytest.mark.parametrize("stream", ["lifecycle", "chat", "dropped", "", "  ", 7])
    async def test_a_reserved_or_blank_stream_raises_invalid_event(
        self, agent_bus: pl.Bus, stream: object
    ) -> None:
        async def body(run: pl.Run) -> None:
            with pytest.raises(pl.InvalidEvent):
                await run.emit(stream, {"phase": "end"})  # type: ignore[arg-type]

        with trio.fail_after(5):
            outcome, _ = await run_and_collect(agent_bus, body)
        assert outcome.status == "ok"

    async def test_a_live_duplicate_run_id_raises_run_already_active(
        self, agent_bus: pl.Bus
    ) -> None:
        with trio.fail_after(5):
            handle = await agent_bus.start_run(parked, run_id="r1")
            with pytest.raises(pl.RunAlreadyActive):
                await agent_bus.start_run(parked, run_id="r1")
            handle.abort()
            assert (await handle.wait()).status == "aborted"

    async def test_a_finished_run_id_can_be_used_again(self, agent_bus: pl.Bus) -> None:
        with trio.fail_after(5):
            await (await agent_bus.start_run(emitting(), run_id="r1")).wait()
            again = await (await agent_bus.start_run(emitting("x"), run_id="r1")).wait()
        assert again.last_seq == 3

    @pytest.mark.parametrize("run_id", ["", "   ", 42])
    async def test_a_blank_or_non_str_run_id_is_rejected(
        self, agent_bus: pl.Bus, run_id: object
    ) -> None:
        with pytest.raises(ValueError, match="run_id"):
            await agent_bus.start_run(parked, run_id=run_id)  # type: ignore[arg-type]


class TestLimits:
    async def test_starting_more_than_max_runs_raises_too_many_runs(self) -> None:
        with trio.fail_after(5):
            async with pl.open_bus(pl.BusConfig(max_runs=2)) as bus:
                handles = [await bus.start_run(parked) for _ in range(2)]
                with pytest.raises(pl.TooManyRuns):
                    await bus.start_run(parked)
                assert bus.statistics().live_runs == 2
                for handle in handles:
                    handle.abort()

    async def test_too_many_runs_is_a_limit_exceeded_pipeline_error(self) -> None:
        assert issubclass(pl.TooManyRuns, pl.LimitExceeded)
        assert issubclass(pl.LimitExceeded, pl.PipelineError)

    async def test_a_freed_slot_can_be_used_again(self) -> None:
        with trio.fail_after(5):
            async with pl.open_bus(pl.BusConfig(max_runs=1)) as bus:
                await (await bus.start_run(emitting())).wait()
                outcome = await (await bus.start_run(emitting())).wait()
        assert outcome.status == "ok"

    async def test_emit_nowait_raises_would_block_when_the_router_is_full(self) -> None:
        config = pl.BusConfig(router_buffer=4)
        with trio.fail_after(5):
            async with pl.open_bus(config) as bus, bus.run() as run:
                # The router has not run yet: the start event and two emits fill its inbox
                # past the room one more emit needs (an agent event plus a chat event).
                run.emit_nowait("assistant", {"delta": "1"})
                run.emit_nowait("assistant", {"delta": "2"})
                with pytest.raises(trio.WouldBlock):
                    run.emit_nowait("assistant", {"delta": "3"})
                event = await run.emit("assistant", {"delta": "3"})
        assert event.seq == 4


async def test_live_runs_lists_the_running_runs_of_one_session_and_forgets_ended_ones() -> None:
    async with pl.open_bus() as bus:
        release = trio.Event()

        async def body(run: pl.Run) -> None:
            await release.wait()

        a = await bus.start_run(body, run_id="a", context=pl.RunContext(session_key="s1"))
        await bus.start_run(body, run_id="b", context=pl.RunContext(session_key="s2"))
        assert set(bus.live_runs()) == {"a", "b"}
        assert list(bus.live_runs(session_key="s1")) == ["a"]
        assert bus.live_runs(session_key="s1")["a"].session_key == "s1"
        release.set()
        await a.wait()
        assert bus.live_runs(session_key="s1") == {}
