"""Forwarding is lossless: bus B ingesting what a subscriber of bus A read republishes it all."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing

import pipeline as pl

Body = Callable[[pl.Run], Awaitable[None]]
CONFIG = pl.BusConfig(error_retry_grace=1.0, chat_delta_interval=0.0, run_idle_timeout=60.0)


def identity(event: pl.Event) -> tuple[object, ...]:
    return (event.run_id, event.seq, event.stream, event.ts, event.data, event.session_key)


def queued(sub: pl.Subscription) -> list[pl.Event]:
    return [sub.receive_nowait() for _ in range(sub.statistics().queued)]


async def talks(run: pl.Run) -> None:
    await run.emit("assistant", {"text": "Hel", "delta": "Hel"})
    await run.emit("tool", {"phase": "start", "name": "search", "toolCallId": "t1"})
    await run.emit("tool", {"phase": "result", "name": "search", "toolCallId": "t1"})
    await run.emit("assistant", {"delta": "lo"})


async def parks(run: pl.Run) -> None:
    await run.emit("assistant", {"delta": "half a thought"})
    await trio.sleep_forever()


async def fails(run: pl.Run) -> None:
    await run.emit("assistant", {"delta": "oops"})
    raise RuntimeError("model overloaded")


async def events_of_a_run_on_bus_a(body: Body, *, abort: bool = False) -> list[pl.Event]:
    """Every event a session subscriber of a fresh bus A reads for one run, chat included."""
    async with pl.open_bus(CONFIG) as bus_a:
        async with bus_a.subscribe(session_key="s", buffer=1000) as sub:
            handle = await bus_a.start_run(body, run_id="r1", context=pl.RunContext("s"))
            if abort:
                await trio.testing.wait_all_tasks_blocked()
                handle.abort("user pressed stop")
            await handle.wait()
            await trio.sleep(CONFIG.error_retry_grace * 2)  # a failed run's chat error
            return queued(sub)


async def forwarded(events: list[pl.Event]) -> tuple[list[pl.Event], pl.BusStatistics]:
    """What a subscriber of a fresh bus B reads after B ingests ``events``, and B's counters
    once the forwarded runs have had time to end."""
    async with pl.open_bus(CONFIG) as bus_b:
        async with bus_b.subscribe(buffer=1000) as sub:
            for event in events:
                await bus_b.ingest(event)
            await trio.testing.wait_all_tasks_blocked()
            return queued(sub), bus_b.statistics()


class TestLosslessForwarding:
    @pytest.mark.parametrize(
        ("body", "abort"),
        [(talks, False), (parks, True), (fails, False)],
        ids=["ended", "aborted", "failed"],
    )
    async def test_bus_b_publishes_exactly_the_events_bus_a_delivered(
        self, autojump_clock: trio.testing.MockClock, body: Body, abort: bool
    ) -> None:
        original = await events_of_a_run_on_bus_a(body, abort=abort)
        copies, _ = await forwarded(original)
        assert [identity(e) for e in copies] == [identity(e) for e in original]
        assert "chat" in {e.stream for e in original}

    @pytest.mark.parametrize(
        ("body", "abort", "status"),
        [(talks, False, "ok"), (parks, True, "aborted"), (fails, False, "error")],
        ids=["ended", "aborted", "failed"],
    )
    async def test_a_forwarded_run_ends_on_bus_b_with_its_last_event(
        self, autojump_clock: trio.testing.MockClock, body: Body, abort: bool, status: str
    ) -> None:
        original = await events_of_a_run_on_bus_a(body, abort=abort)
        _, stats = await forwarded(original)
        assert stats.live_runs == 0
        assert stats.duplicates == 0
        assert stats.runs_by_outcome[status] == 1
        assert sum(stats.runs_by_outcome.values()) == 1

    async def test_chat_events_sharing_a_seq_with_their_agent_event_are_not_duplicates(
        self, agent_bus: pl.Bus
    ) -> None:
        wire = {"runId": "r1", "ts": 1, "sessionKey": "s"}
        delta = {"state": "delta", "message": {"role": "assistant", "content": []}}
        assert await agent_bus.ingest({**wire, "seq": 1, "stream": "assistant", "data": {}})
        assert await agent_bus.ingest({**wire, "seq": 1, "stream": "chat", "data": delta})
        assert agent_bus.statistics().duplicates == 0

    async def test_an_annotation_ingested_twice_is_a_duplicate(self, agent_bus: pl.Bus) -> None:
        wire = {"runId": "r1", "ts": 1, "sessionKey": "s"}
        delta = {"state": "delta", "message": {"role": "assistant", "content": []}}
        await agent_bus.ingest({**wire, "seq": 1, "stream": "assistant", "data": {}})
        assert await agent_bus.ingest({**wire, "seq": 1, "stream": "chat", "data": delta})
        assert not await agent_bus.ingest({**wire, "seq": 1, "stream": "chat", "data": delta})
        assert agent_bus.statistics().duplicates == 1

    async def test_a_chain_of_buses_reports_a_gap_once(self, agent_bus: pl.Bus) -> None:
        async with agent_bus.subscribe() as sub_b:
            for seq in (1, 3):
                await agent_bus.ingest(
                    {"runId": "r1", "seq": seq, "stream": "assistant", "ts": 1, "data": {}}
                )
            await trio.testing.wait_all_tasks_blocked()
            from_b = queued(sub_b)
        assert [e.stream for e in from_b] == ["assistant", "error", "assistant"]
        async with pl.open_bus() as bus_c:
            async with bus_c.subscribe() as sub_c:
                for event in from_b:
                    await bus_c.ingest(event)
                await trio.testing.wait_all_tasks_blocked()
                from_c = queued(sub_c)
        assert [identity(e) for e in from_c] == [identity(e) for e in from_b]

    async def test_a_chat_event_for_a_run_that_is_not_live_tracks_nothing(
        self, agent_bus: pl.Bus
    ) -> None:
        final = {"runId": "gone", "seq": 4, "stream": "chat", "ts": 1, "data": {"state": "final"}}
        async with agent_bus.subscribe() as sub:
            assert await agent_bus.ingest(final)
            await trio.testing.wait_all_tasks_blocked()
            assert [e.data["state"] for e in queued(sub)] == ["final"]
        assert agent_bus.statistics().live_runs == 0


class TestLocalOnlySubscriptions:
    async def test_a_local_only_subscriber_never_sees_ingested_events(
        self, agent_bus: pl.Bus
    ) -> None:
        async with agent_bus.subscribe(local_only=True) as local, agent_bus.subscribe() as every:
            await agent_bus.ingest(
                {"runId": "remote", "seq": 1, "stream": "assistant", "ts": 1, "data": {}}
            )
            agent_bus.abort("remote")  # the tracked copy's own closing events are not local
            async with agent_bus.run(run_id="here") as run:
                await run.emit("assistant", {"delta": "hi"})
            await trio.testing.wait_all_tasks_blocked()
            assert {e.run_id for e in queued(local)} == {"here"}
            assert {e.run_id for e in queued(every)} == {"here", "remote"}

    async def test_a_bridge_of_local_events_does_not_echo(self) -> None:
        async with pl.open_bus() as bus_a, pl.open_bus() as bus_b:
            async with (
                bus_a.subscribe(local_only=True) as out_a,
                bus_b.subscribe(local_only=True) as out_b,
            ):
                async with bus_a.run(run_id="a-run") as run:
                    await run.emit("assistant", {"delta": "hi"})
                for event in queued(out_a):
                    await bus_b.ingest(event)
                await trio.testing.wait_all_tasks_blocked()
                assert queued(out_b) == []

    async def test_local_only_must_be_a_bool(self, agent_bus: pl.Bus) -> None:
        with pytest.raises(TypeError):
            agent_bus.subscribe(local_only="yes")  # type: ignore[arg-type]


async def test_a_run_with_more_text_than_max_event_bytes_still_forwards_every_chat_event() -> None:
    # Each buffer keeps up to max_event_bytes characters, and "é" takes two bytes of JSON, so
    # without the projection's size check the chat events would be refused by bus B's ingest.
    config = pl.BusConfig(max_event_bytes=20_000, chat_delta_interval=0.0)

    async def long_answer(run: pl.Run) -> None:
        for _ in range(30):
            await run.emit("assistant", {"delta": "é" * 1000})

    async with pl.open_bus(config) as a, pl.open_bus(config) as b:
        async with a.subscribe(buffer=256) as from_a, b.subscribe(buffer=256) as on_b:
            handle = await a.start_run(
                long_answer, run_id="r1", context=pl.RunContext(session_key="s")
            )
            await handle.wait()
            sent = queued(from_a)
            for event in sent:
                await b.ingest(event.to_wire())
            await trio.testing.wait_all_tasks_blocked()
            chats = [e for e in sent if e.stream == "chat"]
            assert chats[-1].data["state"] == "final"
            assert all(
                len(json.dumps(e.to_wire(), ensure_ascii=False).encode()) <= 20_000 for e in chats
            )
            assert [identity(e) for e in queued(on_b)] == [identity(e) for e in sent]
            assert a.statistics().chat_truncations > 0
