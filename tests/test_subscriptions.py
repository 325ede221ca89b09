"""Subscriptions: filters, ordering, overflow policies, drop markers, slow consumers, limits."""

from __future__ import annotations

import pytest
import trio
import trio.testing

import pipeline as pl
from pipeline.testing import collect_run, drain

MAIN = pl.RunContext(session_key="main")


def chatter(count: int) -> pl._run.RunBody:
    async def body(run: pl.Run) -> None:
        for i in range(count):
            await run.emit("assistant", {"delta": str(i)})

    return body


async def parked(run: pl.Run) -> None:
    await trio.sleep_forever()


def streams_of(events: list[pl.Event]) -> list[str]:
    return [e.stream for e in events]


class TestFilters:
    async def test_a_session_subscriber_never_sees_another_sessions_events(
        self, agent_bus: pl.Bus
    ) -> None:
        with trio.fail_after(5):
            async with agent_bus.subscribe(session_key="main") as sub:
                other = pl.RunContext(session_key="other")
                await (await agent_bus.start_run(chatter(3), context=other)).wait()
                await (await agent_bus.start_run(chatter(1), run_id="mine", context=MAIN)).wait()
                events = await collect_run(sub, "mine")
                final = await sub.receive()
        assert {e.session_key for e in [*events, final]} == {"main"}
        assert (final.run_id, final.data["state"]) == ("mine", "final")
        assert sub.statistics().queued == 0

    async def test_a_session_subscriber_does_not_see_hidden_runs(self, agent_bus: pl.Bus) -> None:
        hidden = pl.RunContext(session_key="main", control_ui_visible=False)
        with trio.fail_after(5):
            async with agent_bus.subscribe(session_key="main") as sub:
                await (await agent_bus.start_run(chatter(2), context=hidden)).wait()
                await trio.testing.wait_all_tasks_blocked()
                assert sub.statistics().queued == 0

    async def test_a_run_filter_takes_only_that_runs_events(self, agent_bus: pl.Bus) -> None:
        with trio.fail_after(5):
            async with agent_bus.subscribe(run_id="r2") as sub:
                await (await agent_bus.start_run(chatter(2), run_id="r1")).wait()
                await (await agent_bus.start_run(chatter(2), run_id="r2")).wait()
                events = await collect_run(sub, "r2")
        assert {e.run_id for e in events} == {"r2"}
        assert len(events) == 4

    async def test_a_streams_filter_takes_only_those_streams(self, agent_bus: pl.Bus) -> None:
        with trio.fail_after(5):
            async with agent_bus.subscribe(run_id="r1", streams={"lifecycle"}) as sub:
                await (await agent_bus.start_run(chatter(5), run_id="r1")).wait()
                events = await collect_run(sub, "r1")
        assert streams_of(events) == ["lifecycle", "lifecycle"]

    async def test_filters_combine(self, agent_bus: pl.Bus) -> None:
        with trio.fail_after(5):
            async with agent_bus.subscribe(
                run_id="r1", session_key="main", streams=["assistant", "lifecycle"]
            ) as sub:
                await (await agent_bus.start_run(chatter(1), run_id="r1", context=MAIN)).wait()
                events = await collect_run(sub, "r1")
        assert streams_of(events) == ["lifecycle", "assistant", "lifecycle"]

    async def test_a_single_str_for_streams_is_rejected(self, agent_bus: pl.Bus) -> None:
        with pytest.raises(TypeError, match="streams"):
            agent_bus.subscribe(streams="assistant")

    async def test_a_subscriber_sees_only_events_published_after_it_subscribed(
        self, agent_bus: pl.Bus
    ) -> None:
        with trio.fail_after(5):
            run_cm = agent_bus.run(run_id="r1")
            run = await run_cm.__aenter__()
            await run.emit("assistant", {"delta": "before"})
            async with agent_bus.subscribe(run_id="r1") as sub:
                await run.emit("assistant", {"delta": "after"})
                await run_cm.__aexit__(None, None, None)
                events = await collect_run(sub, "r1")
        assert [e.data.get("delta") for e in events if e.stream == "assistant"] == ["after"]


class TestDropPolicies:
    async def test_drop_oldest_reports_the_loss_before_the_remaining_events(
        self, agent_bus: pl.Bus
    ) -> None:
        with trio.fail_after(5):
            async with agent_bus.subscribe(overflow=pl.Overflow.DROP_OLDEST, buffer=3) as sub:
                await (await agent_bus.start_run(chatter(10), run_id="r1")).wait()
                await trio.testing.wait_all_tasks_blocked()
                first = sub.receive_nowait()
                rest = [sub.receive_nowait() for _ in range(sub.statistics().queued)]
        assert first.stream == "dropped"
        assert first.data == {"count": 9}
        assert first.run_id == ""
        assert streams_of(rest) == ["lifecycle", "assistant", "lifecycle"]
        assert rest[1].data["delta"] == "9"
        assert sub.statistics().dropped == 9

    async def test_drop_newest_keeps_the_oldest_events(self, agent_bus: pl.Bus) -> None:
        with trio.fail_after(5):
            async with agent_bus.subscribe(overflow=pl.Overflow.DROP_NEWEST, buffer=3) as sub:
                await (await agent_bus.start_run(chatter(10), run_id="r1")).wait()
                await trio.testing.wait_all_tasks_blocked()
                events = [sub.receive_nowait() for _ in range(sub.statistics().queued + 1)]
        assert events[0].data == {"count": 9}
        assert streams_of(events[1:]) == ["lifecycle", "assistant", "lifecycle"]
        assert events[2].data["delta"] == "0"

    async def test_terminal_events_are_never_dropped(self, agent_bus: pl.Bus) -> None:
        with trio.fail_after(5):
            async with agent_bus.subscribe(overflow=pl.Overflow.DROP_OLDEST, buffer=2) as sub:
                await (await agent_bus.start_run(chatter(50), run_id="r1")).wait()
                events = await collect_run(sub, "r1")
        assert [e.data["phase"] for e in events if e.stream == "lifecycle"] == ["start", "end"]
        assert sub.closed_reason is None

    async def test_a_drop_policy_disconnects_when_only_undroppable_events_are_left(
        self, agent_bus: pl.Bus
    ) -> None:
        async def tools(run: pl.Run) -> None:
            await run.emit("tool", {"phase": "start", "name": "search"})
            await run.emit("tool", {"phase": "result", "name": "search"})

        with trio.fail_after(5):
            async with agent_bus.subscribe(overflow=pl.Overflow.DROP_OLDEST, buffer=1) as sub:
                await (await agent_bus.start_run(tools)).wait()
                events = await drain(sub)
        assert events == []
        assert sub.closed_reason == "slow consumer"
        assert agent_bus.statistics().disconnects == 1

    async def test_tool_progress_is_droppable_but_tool_start_is_not(
        self, agent_bus: pl.Bus
    ) -> None:
        async def tools(run: pl.Run) -> None:
            await run.emit("tool", {"phase": "start", "name": "t"})
            for i in range(5):
                await run.emit("tool", {"phase": "update", "progress": i})

        with trio.fail_after(5):
            async with agent_bus.subscribe(overflow=pl.Overflow.DROP_NEWEST, buffer=3) as sub:
                await (await agent_bus.start_run(tools, run_id="r1")).wait()
                events = await collect_run(sub, "r1")
        phases = [e.data.get("phase") for e in events]
        assert phases == [None, "start", "start", "end"]  # marker, lifecycle, tool, lifecycle

    async def test_a_slow_subscriber_does_not_slow_or_starve_a_fast_one(
        self, agent_bus: pl.Bus
    ) -> None:
        with trio.fail_after(5):
            async with (
                agent_bus.subscribe(overflow=pl.Overflow.DROP_OLDEST, buffer=1) as slow,
                agent_bus.subscribe(buffer=1000) as fast,
            ):
                await (await agent_bus.start_run(chatter(200), run_id="r1")).wait()
                events = await collect_run(fast, "r1")
        assert len(events) == 202
        assert slow.statistics().dropped > 0


class TestDisconnect:
    async def test_the_disconnect_policy_ends_the_subscription_as_a_slow_consumer(
        self, agent_bus: pl.Bus
    ) -> None:
        with trio.fail_after(5):
            async with agent_bus.subscribe(overflow=pl.Overflow.DISCONNECT, buffer=2) as sub:
                await (await agent_bus.start_run(chatter(5))).wait()
                events = await drain(sub)
        assert events == []
        assert sub.closed_reason == "slow consumer"

    async def test_a_blocking_subscriber_that_never_reads_is_disconnected_after_block_timeout(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        config = pl.BusConfig(block_timeout=2.0, subscriber_buffer=2)
        with trio.fail_after(60):
            async with pl.open_bus(config) as bus:
                async with bus.subscribe() as stuck, bus.subscribe(buffer=100) as healthy:
                    start = trio.current_time()
                    await (await bus.start_run(chatter(5), run_id="r1")).wait()
                    events = await collect_run(healthy, "r1")
                    waited = trio.current_time() - start
                    assert stuck.closed_reason == "slow consumer"
        assert len(events) == 7
        assert 2.0 <= waited < 3.0
        assert bus.statistics().disconnects == 1

    async def test_a_disconnected_subscriber_does_not_affect_producers(
        self, agent_bus: pl.Bus
    ) -> None:
        with trio.fail_after(5):
            async with agent_bus.subscribe(overflow=pl.Overflow.DISCONNECT, buffer=1):
                outcome = await (await agent_bus.start_run(chatter(100))).wait()
        assert outcome.status == "ok"
        assert outcome.last_seq == 102


class TestAccounting:
    async def test_statistics_count_deliveries_drops_and_subscribers(
        self, agent_bus: pl.Bus
    ) -> None:
        with trio.fail_after(5):
            async with (
                agent_bus.subscribe(buffer=100) as full,
                agent_bus.subscribe(overflow=pl.Overflow.DROP_NEWEST, buffer=2) as lossy,
            ):
                await (await agent_bus.start_run(chatter(4), run_id="r1")).wait()
                await collect_run(full, "r1")
                await collect_run(lossy, "r1")
                stats = agent_bus.statistics()
        assert stats.subscribers == 2
        assert stats.events_published == 6
        assert stats.deliveries == 6 + 2
        assert stats.drops == 4
        assert lossy.statistics() == pl.SubscriptionStatistics(delivered=2, dropped=4, queued=0)

    async def test_more_than_max_subscribers_raises_too_many_subscribers(self) -> None:
        with trio.fail_after(5):
            async with pl.open_bus(pl.BusConfig(max_subscribers=1)) as bus:
                async with bus.subscribe():
                    with pytest.raises(pl.TooManySubscribers):
                        async with bus.subscribe():
                            pass
                async with bus.subscribe():
                    assert bus.statistics().subscribers == 1

    @pytest.mark.parametrize("buffer", [0, -1, True, 1.5])
    async def test_an_invalid_buffer_is_rejected(self, agent_bus: pl.Bus, buffer: object) -> None:
        with pytest.raises(ValueError, match="buffer"):
            agent_bus.subscribe(buffer=buffer)  # type: ignore[arg-type]

    async def test_an_invalid_overflow_is_rejected(self, agent_bus: pl.Bus) -> None:
        with pytest.raises(TypeError, match="overflow"):
            agent_bus.subscribe(overflow="drop")  # type: ignore[arg-type]
