"""Redis outages: local service goes on, outbound events wait up to a bound, nodes reconnect
by themselves, and whatever was lost shows in band as a seq gap."""

from __future__ import annotations

import attrs
import trio

import pipeline as pl
import pipeline.cluster as plc
from pipeline.testing import collect_until, is_terminal

from .conftest import FAST, RedisServer, joined, queued, says_hi, wait_until


def is_gap(event: pl.Event) -> bool:
    return event.stream == "error" and event.data.get("reason") == "seq gap"


def assert_losses_are_reported(events: list[pl.Event]) -> None:
    """Agent events rise in seq; each skip is announced by a seq-gap event just before it."""
    last = 0
    for before, event in zip([None, *events], events, strict=False):
        if event.stream in ("chat", "error"):
            continue
        if last and event.seq != last + 1:
            assert before is not None
            assert is_gap(before), (before, event)
            assert before.data["expected"] == last + 1
        assert event.seq > last
        last = event.seq


class TestRestart:
    async def test_node_b_reconnects_by_itself_after_a_restart_and_the_run_goes_on(
        self, redis_server: RedisServer
    ) -> None:
        async def ticks(run: pl.Run) -> None:
            for n in range(60):
                await run.emit("assistant", {"delta": f"{n} "})
                await trio.sleep(0.01)

        with trio.fail_after(15):
            async with joined(redis_server.url, "a") as (bus_a, node_a):
                async with joined(redis_server.url, "b") as (bus_b, node_b):
                    async with bus_b.subscribe(run_id="r1", buffer=1000) as on_b:
                        handle = await bus_a.start_run(ticks, run_id="r1")
                        await wait_until(lambda: on_b.statistics().queued >= 10)
                        await redis_server.restart()
                        assert (await handle.wait()).status == "ok"
                        events = await collect_until(on_b, is_terminal)
                    stats_b = node_b.statistics()
                stats_a = node_a.statistics()
        assert events[-1].data == {**events[-1].data, "phase": "end"}
        assert "aborted" not in events[-1].data  # not taken for a lost node
        assert events[-1].seq == 62  # the start, 60 ticks and the end
        assert_losses_are_reported(events)
        assert stats_b.gaps == sum(is_gap(e) for e in events)
        assert stats_b.reconnects >= 1
        assert stats_b.server_restarts == 1
        assert stats_a.connected
        assert stats_b.connected
        assert (stats_a.dropped_outbound, stats_a.pending_outbound) == (0, 0)
        assert bus_b.statistics().runs_by_outcome["ok"] == 1


class TestOutboundBound:
    async def test_during_an_outage_the_oldest_pending_events_are_dropped_and_counted(
        self, redis_server: RedisServer
    ) -> None:
        config = attrs.evolve(FAST, max_pending=20)
        with trio.fail_after(15):
            async with joined(redis_server.url, "a", config) as (bus_a, node_a):
                async with joined(redis_server.url, "b") as (bus_b, node_b):
                    async with (
                        bus_a.subscribe(run_id="r1", buffer=1000) as on_a,
                        bus_b.subscribe(run_id="r1", buffer=1000) as on_b,
                    ):
                        async with bus_a.run(run_id="r1") as run:
                            for n in range(5):
                                await run.emit("assistant", {"delta": f"{n} "})
                            await wait_until(lambda: on_b.statistics().queued == 6)
                            await redis_server.stop()
                            for n in range(5, 55):
                                await run.emit("assistant", {"delta": f"{n} "})
                        local = queued(on_a)
                        await wait_until(lambda: node_a.statistics().dropped_outbound == 31)
                        await wait_until(lambda: not node_a.statistics().connected)
                        stats = node_a.statistics()
                        await redis_server.start()
                        remote = await collect_until(on_b, is_terminal)
                        await wait_until(lambda: node_a.statistics().pending_outbound == 0)
                    assert node_b.statistics().gaps == 1
        # The bus and its local subscribers never noticed: all 57 events, nothing dropped.
        assert [e.seq for e in local] == list(range(1, 58))
        bus_stats = bus_a.statistics()
        assert (bus_stats.drops, bus_stats.disconnects) == (0, 0)
        # 51 events (50 ticks and the end) met the outage; the newest 20 waited.
        assert (stats.pending_outbound, stats.dropped_outbound) == (20, 31)
        assert not stats.connected
        assert [e.seq for e in remote] == [*range(1, 7), 38, *range(38, 58)]
        assert is_gap(remote[6])
        assert remote[6].data == {"reason": "seq gap", "expected": 7, "received": 38}
        assert_losses_are_reported(remote)

    async def test_a_node_joins_while_redis_is_down_and_connects_when_it_comes(
        self, redis_server: RedisServer
    ) -> None:
        await redis_server.stop()
        with trio.fail_after(15):
            async with pl.open_bus() as bus_a:
                joining = trio.current_time()
                async with plc.join(bus_a, redis_server.url, node_id="a", config=FAST) as node:
                    assert trio.current_time() - joining < 0.5  # it does not wait for Redis
                    assert not node.statistics().connected
                    async with bus_a.run(run_id="local") as run:
                        await run.emit("assistant", {"delta": "served anyway"})
                    await redis_server.start()
                    await wait_until(lambda: node.statistics().connected)
                    async with joined(redis_server.url, "b") as (bus_b, _):
                        async with bus_b.subscribe(run_id="later") as on_b:
                            await bus_a.start_run(says_hi, run_id="later")
                            events = await collect_until(on_b, is_terminal)
        assert [e.stream for e in events] == ["lifecycle", "assistant", "lifecycle"]
        assert node.statistics().published == 3 + 3  # the run during the outage, then this
