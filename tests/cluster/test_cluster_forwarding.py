"""Two nodes on one Redis: a run on node A reaches node B's subscribers, lossless and once."""

from __future__ import annotations

import coredis
import trio

import pipeline as pl
import pipeline.cluster as plc
from pipeline.testing import collect_until, is_terminal

from .conftest import RedisServer, is_final, joined, queued, wait_until


def identity(event: pl.Event) -> tuple[object, ...]:
    return (event.run_id, event.seq, event.stream, event.ts, event.data, event.session_key)


async def talks(run: pl.Run) -> None:
    await run.emit("thinking", {"delta": "Let me look"})
    await run.emit("assistant", {"text": "Hel", "delta": "Hel"})
    await run.emit("tool", {"phase": "start", "name": "search", "toolCallId": "t1"})
    await run.emit("tool", {"phase": "update", "name": "search", "toolCallId": "t1"})
    await run.emit("tool", {"phase": "result", "name": "search", "toolCallId": "t1"})
    for piece in ("lo", ", ", "wor", "ld"):
        await run.emit("assistant", {"delta": piece})


class TestForwarding:
    async def test_a_run_on_node_a_reaches_node_b_with_every_event_in_order(
        self, redis_server: RedisServer
    ) -> None:
        context = pl.RunContext(session_key="s")
        with trio.fail_after(10):
            async with joined(redis_server.url, "a") as (bus_a, _):
                async with joined(redis_server.url, "b") as (bus_b, _):
                    async with (
                        bus_a.subscribe(session_key="s", buffer=1000) as on_a,
                        bus_b.subscribe(session_key="s", buffer=1000) as on_b,
                    ):
                        await bus_a.start_run(talks, run_id="r1", context=context)
                        original = await collect_until(on_a, is_final)
                        copies = await collect_until(on_b, is_final)
        assert [identity(e) for e in copies] == [identity(e) for e in original]
        assert {e.stream for e in original} >= {"lifecycle", "assistant", "thinking", "tool"}
        assert "chat" in {e.stream for e in original}

    async def test_node_b_never_publishes_an_event_twice(self, redis_server: RedisServer) -> None:
        context = pl.RunContext(session_key="s")
        with trio.fail_after(10):
            async with joined(redis_server.url, "a") as (bus_a, node_a):
                async with joined(redis_server.url, "b") as (bus_b, node_b):
                    async with bus_b.subscribe(session_key="s", buffer=1000) as on_b:
                        for n in range(5):
                            await bus_a.start_run(talks, run_id=f"r{n}", context=context)
                        await wait_until(lambda: bus_b.statistics().runs_by_outcome["ok"] == 5)
                        await trio.sleep(0.3)  # anything more would have arrived by now
                        events = queued(on_b)
                    stats_b = node_b.statistics()
                stats_a = node_a.statistics()
        keys = [(e.run_id, e.seq, e.stream, e.data.get("state")) for e in events]
        assert len(keys) == len(set(keys))
        assert bus_b.statistics().duplicates == 0
        assert (stats_b.ingested, stats_b.duplicates) == (len(events), 0)
        # Each node reads its own entries back and skips them unparsed.
        assert stats_a.skipped_own == stats_a.published == len(events)
        assert stats_b.skipped_own == stats_b.published == 0

    async def test_runs_of_node_b_reach_node_a_too(self, redis_server: RedisServer) -> None:
        with trio.fail_after(10):
            async with joined(redis_server.url, "a") as (bus_a, _):
                async with joined(redis_server.url, "b") as (bus_b, _):
                    async with bus_a.subscribe(run_id="from-b") as on_a:
                        await bus_b.start_run(talks, run_id="from-b")
                        events = await collect_until(on_a, is_terminal)
        assert events[-1].data["phase"] == "end"
        assert bus_a.statistics().runs_by_outcome["ok"] == 1


class TestBadEntries:
    async def test_a_garbage_entry_is_counted_and_skipped(self, redis_server: RedisServer) -> None:
        garbage = [
            (b"ev:0", {b"origin": b"intruder", b"run": b"x", b"wire": b"not json"}),
            (b"ev:1", {b"origin": b"intruder", b"run": b"x", b"wire": b'{"runId": ""}'}),
            (b"ev:2", {b"run": b"x", b"wire": b"{}"}),  # no origin
            (b"ev:3", {b"origin": b"intruder", b"run": b"x"}),  # no wire
            (b"ctl", {b"origin": b"intruder", b"op": b"reboot", b"target": b"b"}),
        ]
        raw = coredis.Redis.from_url(redis_server.url, decode_responses=False)
        with trio.fail_after(10):
            async with joined(redis_server.url, "a") as (bus_a, _):
                async with joined(redis_server.url, "b") as (bus_b, node_b):
                    async with raw:
                        for key, fields in garbage:
                            await raw.xadd(key, fields)
                    async with bus_b.subscribe(run_id="after") as on_b:
                        await bus_a.start_run(talks, run_id="after")
                        events = await collect_until(on_b, is_terminal)
                    stats = node_b.statistics()
        assert stats.invalid_entries == len(garbage)
        assert events[-1].data["phase"] == "end"  # the reader went on
        assert bus_b.statistics().events_published == stats.ingested

    async def test_an_entry_the_full_bus_refuses_is_counted_and_skipped(
        self, redis_server: RedisServer
    ) -> None:
        with trio.fail_after(10):
            async with joined(redis_server.url, "a") as (bus_a, _):
                async with pl.open_bus(pl.BusConfig(max_runs=1)) as bus_b:
                    async with plc.join(bus_b, redis_server.url, node_id="b") as node_b:
                        async with bus_b.run(run_id="local"):  # bus B is full
                            await bus_a.start_run(talks, run_id="remote")
                            # Every event of the run: its start, 9 emits and its end.
                            await wait_until(lambda: node_b.statistics().rejected_entries == 11)
                            assert node_b.statistics().ingested == 0
                            assert bus_b.live_runs() == {"local": pl.RunContext()}
