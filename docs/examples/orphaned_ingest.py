"""Idle timeout: a tracked run whose node went quiet is reclaimed, freeing its max_runs slot."""

import trio
import trio.testing

import pipeline as pl
from pipeline.testing import collect_until, is_terminal


async def quick(run: pl.Run) -> None:
    await run.emit("assistant", {"text": "done"})


async def main() -> None:
    config = pl.BusConfig(run_idle_timeout=0.5, max_runs=1)
    async with pl.open_bus(config) as bus:
        async with bus.subscribe(run_id="remote-1") as sub:
            event = {"runId": "remote-1", "seq": 7, "stream": "assistant", "ts": 0, "data": {}}
            await bus.ingest(event)  # ...and the node that sent it never sends another
            try:
                await bus.start_run(quick)
            except pl.TooManyRuns:
                pass  # the orphan holds the only slot
            else:
                raise AssertionError("max_runs was not enforced")
            events = await collect_until(sub, is_terminal)
        terminal = events[-1]
        assert (terminal.seq, terminal.data["errorKind"]) == (8, "timeout")
        await trio.testing.wait_all_tasks_blocked()
        assert bus.statistics().live_runs == 0
        outcome = await (await bus.start_run(quick)).wait()  # the slot is free again
        assert outcome.status == "ok"


if __name__ == "__main__":
    trio.run(main)
