"""The idle timeout (SPEC 4.2, 4.4): a run with no event for ``run_idle_timeout`` is ended.

The deadline is refreshed coarsely (at most once per ``T / 64``), so a run ends between ``T``
and ``T * (1 + 1/64)`` after its last event, never earlier. ``T = 64`` makes that step 1 s.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

import pipeline as pl
from pipeline.testing import collect_until, is_terminal

IDLE = 64.0
STEP = IDLE / 64
MAIN = pl.RunContext(session_key="main")


@pytest.fixture
def agent_bus_config() -> pl.BusConfig:
    return pl.BusConfig(run_idle_timeout=IDLE, max_runs=2)


async def idle(run: pl.Run) -> None:
    await trio.sleep_forever()


def wire(seq: int, run_id: str = "remote") -> dict[str, object]:
    return {
        "runId": run_id,
        "seq": seq,
        "stream": "assistant",
        "ts": 1_700_000_000_000,
        "data": {"text": "x"},
        "sessionKey": "main",
    }


class TestIdleLocalRun:
    async def test_an_idle_runs_body_is_cancelled(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock
    ) -> None:
        cancelled = trio.Event()

        async def body(run: pl.Run) -> None:
            try:
                await trio.sleep_forever()
            except trio.Cancelled:
                cancelled.set()
                raise

        with trio.fail_after(IDLE * 3):
            await agent_bus.start_run(body, run_id="r1")
            await cancelled.wait()

    async def test_an_idle_run_ends_with_outcome_timeout(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock
    ) -> None:
        with trio.fail_after(IDLE * 3):
            outcome = await (await agent_bus.start_run(idle, run_id="r1")).wait()
        assert outcome.status == "timeout"
        assert agent_bus.statistics().runs_by_outcome["timeout"] == 1

    async def test_an_idle_run_publishes_a_lifecycle_error_of_kind_timeout(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock
    ) -> None:
        with trio.fail_after(IDLE * 3):
            async with agent_bus.subscribe(run_id="r1") as sub:
                await agent_bus.start_run(idle, run_id="r1")
                events = await collect_until(sub, is_terminal)
        assert events[-1].data["phase"] == "error"
        assert events[-1].data["errorKind"] == "timeout"
        assert events[-1].seq == 2

    async def test_a_timed_out_visible_run_publishes_a_chat_error_of_kind_timeout(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock
    ) -> None:
        with trio.fail_after(IDLE * 3):
            async with agent_bus.subscribe(run_id="r1", streams={"chat"}) as sub:
                await agent_bus.start_run(idle, run_id="r1", context=MAIN)
                chat_error = await sub.receive()
        assert chat_error.data["state"] == "error"
        assert chat_error.data["errorKind"] == "timeout"

    async def test_a_timed_out_run_is_released(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock
    ) -> None:
        with trio.fail_after(IDLE * 3):
            await (await agent_bus.start_run(idle, run_id="r1")).wait()
            await trio.testing.wait_all_tasks_blocked()
        assert agent_bus.statistics().live_runs == 0
        assert agent_bus.abort("r1") is False

    @pytest.mark.parametrize(
        "pauses",
        [[], [0.5], [0.75, 0.25], [0.5, 0.75, 0.5], [3.0], [0.25] * 12],
        ids=repr,
    )
    async def test_the_timeout_fires_between_t_and_t_plus_a_64th_after_the_last_event(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock, pauses: list[float]
    ) -> None:
        last_event_at: list[float] = []

        async def body(run: pl.Run) -> None:
            last_event_at.append(trio.current_time())  # the lifecycle start
            for pause in pauses:
                await trio.sleep(pause)
                await run.emit("assistant", {"delta": "x"})
                last_event_at.append(trio.current_time())
            await trio.sleep_forever()

        with trio.fail_after(IDLE * 3):
            outcome = await (await agent_bus.start_run(body, run_id="r1")).wait()
        silence = trio.current_time() - last_event_at[-1]
        assert outcome.status == "timeout"
        assert IDLE <= silence <= IDLE + STEP

    async def test_a_run_that_keeps_emitting_outlives_the_timeout(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock
    ) -> None:
        async def body(run: pl.Run) -> None:
            for _ in range(6):
                await trio.sleep(IDLE / 2)
                await run.emit("assistant", {"delta": "x"})

        with trio.fail_after(IDLE * 10):
            outcome = await (await agent_bus.start_run(body, run_id="r1")).wait()
        assert outcome.status == "ok"

    async def test_events_emitted_from_outside_keep_a_run_alive(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock
    ) -> None:
        with trio.fail_after(IDLE * 10):
            handle = await agent_bus.start_run(idle, run_id="r1")
            for _ in range(6):
                await trio.sleep(IDLE / 2)
                await agent_bus.emit("r1", "assistant", {"delta": "x"})
            assert handle.outcome is None
            assert handle.abort()
            outcome = await handle.wait()
        assert outcome.status == "aborted"

    async def test_a_timeout_of_none_lets_a_run_idle_for_ever(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        async with pl.open_bus(pl.BusConfig(run_idle_timeout=None)) as bus:
            handle = await bus.start_run(idle, run_id="r1")
            await trio.sleep(80_000)  # far past any idle timeout
            assert handle.outcome is None
            assert bus.statistics().live_runs == 1

    async def test_an_idle_block_run_is_cancelled_and_execution_goes_on(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock
    ) -> None:
        with trio.fail_after(IDLE * 3):
            async with agent_bus.subscribe(run_id="r1") as sub:
                async with agent_bus.run(run_id="r1"):
                    await trio.sleep_forever()
                events = await collect_until(sub, is_terminal)
        assert events[-1].data["errorKind"] == "timeout"


class TestOrphanedIngestedRun:
    async def test_an_orphaned_ingested_run_is_ended_after_the_timeout(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock
    ) -> None:
        with trio.fail_after(IDLE * 3):
            async with agent_bus.subscribe(run_id="remote") as sub:
                await agent_bus.ingest(wire(5))
                ingested_at = trio.current_time()
                events = await collect_until(sub, is_terminal)
        silence = trio.current_time() - ingested_at
        assert IDLE <= silence <= IDLE + STEP
        assert events[-1].stream == "lifecycle"
        assert events[-1].data["phase"] == "error"
        assert events[-1].data["errorKind"] == "timeout"
        assert events[-1].seq == 6

    async def test_an_orphaned_ingested_run_counts_as_a_timeout(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock
    ) -> None:
        await agent_bus.ingest(wire(1))
        await trio.sleep(IDLE + 2 * STEP)
        assert agent_bus.statistics().runs_by_outcome["timeout"] == 1

    async def test_reclaiming_an_orphaned_run_frees_its_max_runs_slot(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock
    ) -> None:
        await agent_bus.ingest(wire(1, run_id="remote-a"))
        await agent_bus.ingest(wire(1, run_id="remote-b"))
        with pytest.raises(pl.TooManyRuns):
            await agent_bus.start_run(idle, run_id="local")
        await trio.sleep(IDLE + 2 * STEP)
        assert agent_bus.statistics().live_runs == 0
        handle = await agent_bus.start_run(idle, run_id="local")
        assert handle.abort()

    async def test_ingested_events_keep_a_tracked_run_alive(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock
    ) -> None:
        for seq in range(1, 7):
            await agent_bus.ingest(wire(seq))
            await trio.sleep(IDLE / 2)
        stats = agent_bus.statistics()
        assert stats.live_runs == 1
        assert stats.runs_by_outcome["timeout"] == 0
