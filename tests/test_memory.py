"""The seed bug cannot happen: finished runs leave nothing behind in the bus."""

from __future__ import annotations

import gc
import logging
import tracemalloc

import trio
import trio.testing

import pipeline as pl

#: Runs of each kind per batch: ok with chat, failed (through the retry grace), aborted,
#: idle timeout, and ingested from elsewhere.
KINDS = 5


async def chatty(run: pl.Run) -> None:
    await run.emit("assistant", {"text": "Hello", "delta": "Hello"})
    await run.emit("tool", {"phase": "start", "name": "search", "toolCallId": "t1"})
    await run.emit("tool", {"phase": "result", "name": "search", "toolCallId": "t1"})
    await run.emit("assistant", {"delta": " world"})


async def failing(run: pl.Run) -> None:
    await run.emit("assistant", {"delta": "partial"})
    raise RuntimeError("model crashed")


async def parked(run: pl.Run) -> None:
    await run.emit("thinking", {"delta": "hm"})
    await trio.sleep_forever()


async def one_batch(bus: pl.Bus, batch: int) -> None:
    context = pl.RunContext(session_key=f"s{batch % 7}")
    await (await bus.start_run(chatty, context=context)).wait()
    await (await bus.start_run(failing, context=context)).wait()
    aborted = await bus.start_run(parked, context=context)
    aborted.abort()
    await aborted.wait()
    await (await bus.start_run(parked, context=context)).wait()  # ends by idle timeout
    run_id = f"remote-{batch}"
    for seq, (stream, data) in enumerate(
        [("lifecycle", {"phase": "start"}), ("assistant", {"delta": "x"})], start=1
    ):
        wire = {"runId": run_id, "seq": seq, "stream": stream, "ts": 1, "data": data}
        await bus.ingest(wire)
    # This remote run never sends its end: only the idle timeout reclaims it.


async def run_batches(bus: pl.Bus, count: int, start: int) -> None:
    for batch in range(start, start + count):
        await one_batch(bus, batch)
    # Let retry graces and idle timeouts expire (virtual time).
    config = bus.config
    assert config.run_idle_timeout is not None
    await trio.sleep(config.error_retry_grace + config.run_idle_timeout * 1.1)
    await trio.testing.wait_all_tasks_blocked()


def retained() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


async def test_retained_memory_does_not_grow_with_completed_runs(
    autojump_clock: trio.testing.MockClock,
) -> None:
    config = pl.BusConfig(error_retry_grace=1.0, run_idle_timeout=10.0)
    # Each failed body is logged with its traceback, and pytest's log capture keeps every
    # record: that is pytest's memory, not the bus's, so the run log is silenced here.
    logging.getLogger("pipeline.run").disabled = True
    tracemalloc.start()
    try:
        with trio.fail_after(100_000):  # virtual seconds: each batch waits out an idle timeout
            async with trio.open_nursery() as nursery, pl.open_bus(config) as bus:
                async with bus.subscribe(overflow=pl.Overflow.DROP_OLDEST) as sub:

                    async def drain() -> None:
                        async for _ in sub:
                            pass

                    nursery.start_soon(drain)
                    await run_batches(bus, 200, start=0)
                    before = retained()
                    await run_batches(bus, 800, start=200)
                    after = retained()
                    stats = bus.statistics()
    finally:
        tracemalloc.stop()
        logging.getLogger("pipeline.run").disabled = False

    runs = 800 * KINDS
    assert stats.live_runs == 0
    assert stats.runs_started == 1000 * KINDS
    outcomes = stats.runs_by_outcome
    assert outcomes["timeout"] == 2000
    assert outcomes["aborted"] == 1000
    # A leak of one small dict entry per run (~100 B) would add ~400 KB here.
    assert after - before < runs * 4, f"retained {after - before} B more after {runs} runs"
