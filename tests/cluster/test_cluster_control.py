"""Across nodes: an abort is carried out by the run's owner; a lost node's runs end elsewhere."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import trio

import pipeline as pl
import pipeline.cluster as plc
from pipeline.testing import collect_until, is_terminal

from .conftest import FAST, RedisServer, joined, queued, wait_until, waits

ROOT = Path(__file__).resolve().parents[2]
CONTEXT = pl.RunContext(session_key="s")


def is_aborted_chat(event: pl.Event) -> bool:
    return event.stream == "chat" and event.data.get("state") == "aborted"


class TestAbortAcrossNodes:
    async def test_aborting_on_node_b_a_run_of_node_a_ends_it_on_node_a(
        self, redis_server: RedisServer
    ) -> None:
        with trio.fail_after(10):
            async with joined(redis_server.url, "a") as (bus_a, node_a):
                async with joined(redis_server.url, "b") as (bus_b, node_b):
                    async with bus_b.subscribe(session_key="s", buffer=1000) as on_b:
                        handle = await bus_a.start_run(waits, run_id="r1", context=CONTEXT)
                        await wait_until(lambda: "r1" in bus_b.live_runs())
                        assert bus_b.abort("r1", reason="user pressed stop")
                        outcome = await handle.wait()
                        events = await collect_until(on_b, is_terminal)
                        await trio.sleep(0.3)  # a second terminal event would be here by now
                        later = queued(on_b)
                    assert (node_b.statistics().remote_aborts_sent, bus_b.live_runs()) == (1, {})
                assert node_a.statistics().remote_aborts_received == 1
        assert (outcome.status, outcome.error) == ("aborted", "user pressed stop")
        terminal = events[-1]
        assert terminal.data["aborted"] is True
        assert terminal.data["stopReason"] == "user pressed stop"
        assert [is_aborted_chat(e) for e in events].count(True) == 1
        assert later == []
        assert bus_b.statistics().runs_by_outcome["aborted"] == 1

    async def test_aborting_a_local_run_stays_local(self, redis_server: RedisServer) -> None:
        with trio.fail_after(10):
            async with joined(redis_server.url, "a") as (bus_a, node_a):
                handle = await bus_a.start_run(waits, run_id="r1")
                await trio.testing.wait_all_tasks_blocked()
                assert bus_a.abort("r1")
                assert (await handle.wait()).status == "aborted"
                assert node_a.statistics().remote_aborts_sent == 0

    async def test_an_abort_for_another_node_is_ignored(self, redis_server: RedisServer) -> None:
        with trio.fail_after(10):
            async with joined(redis_server.url, "a") as (bus_a, node_a):
                async with joined(redis_server.url, "b") as (_, node_b):
                    async with joined(redis_server.url, "c") as (bus_c, _):
                        handle = await bus_a.start_run(waits, run_id="r1")
                        await wait_until(lambda: "r1" in bus_c.live_runs())
                        assert bus_c.abort("r1", reason="stop")
                        assert (await handle.wait()).status == "aborted"
                        assert node_a.statistics().remote_aborts_received == 1
                        assert node_b.statistics().remote_aborts_received == 0


class TestNodeLoss:
    async def test_a_node_that_leaves_has_its_runs_ended_elsewhere_as_node_lost(
        self, redis_server: RedisServer
    ) -> None:
        with trio.fail_after(10):
            async with pl.open_bus() as bus_a:
                async with joined(redis_server.url, "b") as (bus_b, node_b):
                    async with bus_b.subscribe(session_key="s") as on_b:
                        with trio.CancelScope() as leave:
                            async with plc.join(bus_a, redis_server.url, node_id="a"):
                                await bus_a.start_run(waits, run_id="r1", context=CONTEXT)
                                await wait_until(lambda: "r1" in bus_b.live_runs())
                                leave.cancel()
                        assert "r1" in bus_a.live_runs()  # it runs on, unseen by the cluster
                        events = await collect_until(on_b, is_terminal)
                    stats = node_b.statistics()
        assert events[-1].data["stopReason"] == plc.NODE_LOST == "node lost"
        assert events[-1].data["aborted"] is True
        assert (stats.nodes_lost, stats.runs_lost) == (1, 1)

    async def test_a_node_that_left_is_not_lost_while_its_last_events_are_unread_here(
        self, redis_server: RedisServer
    ) -> None:
        async def talks(run: pl.Run) -> None:
            for n in range(50):
                await run.emit("assistant", {"delta": f"{n} "})

        # Bus B's router waits for a subscriber that reads nothing, so its reader falls behind.
        config_b = pl.BusConfig(router_buffer=4, block_timeout=30.0, run_idle_timeout=60.0)
        with trio.fail_after(15):
            async with pl.open_bus(config_b) as bus_b:
                async with plc.join(bus_b, redis_server.url, node_id="b", config=FAST) as node_b:
                    async with bus_b.subscribe(buffer=1) as stuck:
                        async with joined(redis_server.url, "a") as (bus_a, _):
                            await (await bus_a.start_run(talks, run_id="r1")).wait()
                        # Node A has left: its key is gone, its run's end unread on B.
                        await trio.sleep(8 * FAST.heartbeat_interval)
                        assert "r1" in bus_b.live_runs()
                        events = await collect_until(stuck, is_terminal)
                    stats = node_b.statistics()
        assert events[-1].data["phase"] == "end"
        assert "aborted" not in events[-1].data
        assert (stats.nodes_lost, stats.runs_lost) == (0, 0)
        assert bus_b.statistics().runs_by_outcome["ok"] == 1

    async def test_killing_a_node_process_ends_its_runs_on_the_others_as_node_lost(
        self, redis_server: RedisServer
    ) -> None:
        command = [sys.executable, "-m", "tests.cluster._crashing_node", redis_server.url]
        with trio.fail_after(20):
            async with joined(redis_server.url, "b") as (bus_b, node_b):
                async with bus_b.subscribe(session_key="s") as on_b:
                    process = await trio.lowlevel.open_process(
                        command, cwd=ROOT, stdout=subprocess.PIPE
                    )
                    assert process.stdout is not None
                    try:
                        assert (await process.stdout.receive_some(64)).startswith(b"ready")
                        await wait_until(lambda: "doomed" in bus_b.live_runs())
                    finally:
                        process.kill()
                        with trio.CancelScope(shield=True):
                            await process.wait()
                            await process.stdout.aclose()
                    killed_at = trio.current_time()
                    events = await collect_until(on_b, is_terminal)
                    detected_in = trio.current_time() - killed_at
                stats = node_b.statistics()
        assert [e.stream for e in events][-1] == "lifecycle"
        assert events[-1].data["stopReason"] == "node lost"
        assert (stats.nodes_lost, stats.runs_lost) == (1, 1)
        # The key lapses within its TTL (0.6 s); two checks 0.2 s apart find it gone.
        assert detected_in < 0.6 + 2 * 0.2 + 0.5
        assert bus_b.statistics().runs_by_outcome["aborted"] == 1
