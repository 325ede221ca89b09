"""Idle timeout: a run with no event for run_idle_timeout is cancelled and ends as "timeout"."""

import trio

import pipeline as pl
from pipeline.testing import collect_run

IDLE = 0.5


async def stuck(run: pl.Run) -> None:
    await run.emit("tool", {"phase": "start", "name": "slow_api"})
    await trio.sleep_forever()  # the tool never answers


async def main() -> None:
    async with pl.open_bus(pl.BusConfig(run_idle_timeout=IDLE)) as bus:
        async with bus.subscribe(run_id="stuck") as sub:
            handle = await bus.start_run(stuck, run_id="stuck")
            last_event_at = trio.current_time()
            outcome = await handle.wait()
            events = await collect_run(sub, "stuck")
        silence = trio.current_time() - last_event_at
        assert IDLE <= silence <= IDLE * (1 + 1 / 64) + 0.1  # never early; a little late
        assert (outcome.status, outcome.error) == ("timeout", "run idle timeout")
        terminal = events[-1]
        assert (terminal.data["phase"], terminal.data["errorKind"]) == ("error", "timeout")
        assert bus.statistics().runs_by_outcome["timeout"] == 1


if __name__ == "__main__":
    trio.run(main)
