"""Every await of the public API is at least a cancellation point, as in trio itself."""

from __future__ import annotations

import pytest
import trio

import pipeline as pl


async def parked(run: pl.Run) -> None:
    await trio.sleep_forever()


class TestCancellationPoints:
    async def test_emit_in_a_cancelled_scope_raises_cancelled_and_publishes_nothing(
        self, agent_bus: pl.Bus
    ) -> None:
        async with agent_bus.run() as run:
            with trio.CancelScope() as scope:
                scope.cancel()
                for _ in range(300):
                    await run.emit("assistant", {"delta": "x"})
            assert scope.cancelled_caught
        assert agent_bus.statistics().events_published == 2  # start and end only

    async def test_bus_emit_in_a_cancelled_scope_raises_cancelled(self, agent_bus: pl.Bus) -> None:
        await agent_bus.start_run(parked, run_id="r1")
        with trio.CancelScope() as scope:
            scope.cancel()
            await agent_bus.emit("r1", "assistant", {})
        assert scope.cancelled_caught
        agent_bus.abort("r1")

    async def test_ingest_in_a_cancelled_scope_raises_cancelled(self, agent_bus: pl.Bus) -> None:
        with trio.CancelScope() as scope:
            scope.cancel()
            await agent_bus.ingest({"runId": "r", "seq": 1, "stream": "a", "ts": 0, "data": {}})
        assert scope.cancelled_caught
        assert agent_bus.statistics().live_runs == 0

    async def test_reading_a_subscription_with_events_queued_in_a_cancelled_scope_raises(
        self, agent_bus: pl.Bus
    ) -> None:
        async with agent_bus.subscribe() as sub:
            await agent_bus.start_run(parked, run_id="r1")
            await trio.testing.wait_all_tasks_blocked()
            assert sub.statistics().queued == 1
            with trio.CancelScope() as scope:
                scope.cancel()
                await sub.receive()
            assert scope.cancelled_caught
            with trio.CancelScope() as scope:
                scope.cancel()
                await sub.__anext__()
            assert scope.cancelled_caught
            assert sub.statistics().queued == 1
            agent_bus.abort("r1")

    async def test_opening_a_subscription_in_a_cancelled_scope_raises(
        self, agent_bus: pl.Bus
    ) -> None:
        with trio.CancelScope() as scope:
            scope.cancel()
            async with agent_bus.subscribe():
                pytest.fail("subscribed inside a cancelled scope")
        assert scope.cancelled_caught
        assert agent_bus.statistics().subscribers == 0

    async def test_starting_a_run_block_in_a_cancelled_scope_raises(
        self, agent_bus: pl.Bus
    ) -> None:
        with trio.CancelScope() as scope:
            scope.cancel()
            async with agent_bus.run():
                pytest.fail("ran a body inside a cancelled scope")
        assert scope.cancelled_caught
        assert agent_bus.statistics().runs_started == 0
