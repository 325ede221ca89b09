"""``Subscription.batches()``: the same events, order and drop markers as per-event reading."""

from __future__ import annotations

import contextlib

import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

import pipeline as pl

WIRE = {"runId": "r1", "ts": 1, "sessionKey": "s"}


def identity(event: pl.Event) -> tuple[object, ...]:
    return (event.run_id, event.seq, event.stream, event.data)


async def read_queued(sub: pl.Subscription) -> list[pl.Event]:
    events = []
    while True:
        try:
            events.append(sub.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            return events


class TestBatches:
    async def test_a_batch_holds_everything_queued_in_order(self, agent_bus: pl.Bus) -> None:
        async with agent_bus.subscribe() as sub:
            async with agent_bus.run(run_id="r1") as run:
                for index in range(5):
                    await run.emit("assistant", {"index": index})
            await trio.testing.wait_all_tasks_blocked()
            batch = await sub.batches().__anext__()
        assert [e.stream for e in batch] == ["lifecycle"] + ["assistant"] * 5 + ["lifecycle"]
        assert [e.seq for e in batch] == list(range(1, 8))

    async def test_batches_end_when_the_bus_closes(self) -> None:
        batches: list[list[pl.Event]] = []
        async with trio.open_nursery() as nursery:
            async with pl.open_bus() as bus:
                sub_ready = trio.Event()

                async def read() -> None:
                    async with bus.subscribe() as sub:
                        sub_ready.set()
                        async for batch in sub.batches():
                            batches.append(batch)

                nursery.start_soon(read)
                await sub_ready.wait()
                async with bus.run(run_id="r1") as run:
                    await run.emit("assistant", {"delta": "x"})
        assert [e.stream for batch in batches for e in batch] == [
            "lifecycle",
            "assistant",
            "lifecycle",
        ]
        assert all(batches)

    async def test_a_batch_starts_with_the_drop_marker(self, agent_bus: pl.Bus) -> None:
        async with agent_bus.subscribe(overflow=pl.Overflow.DROP_OLDEST, buffer=2) as sub:
            for seq in range(1, 6):
                await agent_bus.ingest({**WIRE, "seq": seq, "stream": "assistant", "data": {}})
            await trio.testing.wait_all_tasks_blocked()
            batch = await sub.batches().__anext__()
        assert [(e.stream, e.seq) for e in batch] == [
            ("dropped", 0),
            ("assistant", 4),
            ("assistant", 5),
        ]
        assert batch[0].data == {"count": 3}

    async def test_a_batch_read_in_a_cancelled_scope_raises_cancelled(
        self, agent_bus: pl.Bus
    ) -> None:
        async with agent_bus.subscribe() as sub:
            async with agent_bus.run():
                pass
            await trio.testing.wait_all_tasks_blocked()
            with trio.CancelScope() as scope:
                scope.cancel()
                await sub.batches().__anext__()
            assert scope.cancelled_caught
            assert sub.statistics().queued == 2

    @settings(max_examples=60, deadline=None)
    @given(
        chunks=st.lists(
            st.lists(st.sampled_from(["assistant", "tool-start", "tool-update"]), max_size=12),
            max_size=8,
        ),
        buffer=st.integers(1, 6),
        overflow=st.sampled_from([pl.Overflow.DROP_OLDEST, pl.Overflow.DROP_NEWEST]),
    )
    def test_batches_read_exactly_what_per_event_reading_reads(
        self, chunks: list[list[str]], buffer: int, overflow: pl.Overflow
    ) -> None:
        async def main() -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
            per_event: list[tuple[object, ...]] = []
            batched: list[tuple[object, ...]] = []
            async with pl.open_bus() as bus:
                async with (
                    bus.subscribe(overflow=overflow, buffer=buffer) as one,
                    bus.subscribe(overflow=overflow, buffer=buffer) as other,
                ):
                    seq = 0
                    batches = other.batches()
                    reported = 0
                    for chunk in chunks:
                        for kind in chunk:
                            seq += 1
                            stream, _, phase = kind.partition("-")
                            data = {"phase": phase} if phase else {"delta": "x"}
                            await bus.ingest({**WIRE, "seq": seq, "stream": stream, "data": data})
                        await trio.testing.wait_all_tasks_blocked()
                        per_event += [identity(e) for e in await read_queued(one)]
                        stats = other.statistics()
                        if stats.queued or stats.dropped > reported:
                            reported = stats.dropped
                            with contextlib.suppress(StopAsyncIteration):  # disconnected
                                batched += [identity(e) for e in await batches.__anext__()]
            return per_event, batched

        per_event, batched = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
        assert batched == per_event
