"""Cluster: two nodes share runs through Redis; an abort on one ends the run on the other."""

import sys

import trio

import pipeline as pl
import pipeline.cluster


async def agent(run: pl.Run) -> None:
    await run.emit("assistant", {"text": "Working on it", "delta": "Working on it"})
    await trio.sleep_forever()  # until someone presses stop


async def main(url: str) -> None:
    context = pl.RunContext(session_key="main")
    async with pl.open_bus() as bus_a, pl.open_bus() as bus_b:
        async with (
            pipeline.cluster.join(bus_a, url, node_id="node-a") as node_a,
            pipeline.cluster.join(bus_b, url, node_id="node-b") as node_b,
        ):
            async with bus_b.subscribe(session_key="main") as on_b:
                handle = await bus_a.start_run(agent, run_id="r1", context=context)
                first = await on_b.receive()  # node B sees node A's run
                assert (first.run_id, first.data["phase"]) == ("r1", "start")
                assert bus_b.abort("r1", reason="user pressed stop")  # sent to node A
                outcome = await handle.wait()  # node A carried it out
                assert (outcome.status, outcome.error) == ("aborted", "user pressed stop")
                async for event in on_b:  # and node B sees the run's terminal event
                    if event.stream == "lifecycle" and event.data["phase"] == "end":
                        assert event.data["stopReason"] == "user pressed stop"
                        break
            assert node_b.statistics().remote_aborts_sent == 1
            assert node_a.statistics().remote_aborts_received == 1


if __name__ == "__main__":
    trio.run(main, sys.argv[1] if len(sys.argv) > 1 else "redis://127.0.0.1:6379")
