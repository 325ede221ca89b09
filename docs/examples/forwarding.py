"""Forwarding: bus B republishes exactly what a subscriber of bus A read, chat included."""

import trio
import trio.testing

import pipeline as pl


async def agent(run: pl.Run) -> None:
    await run.emit("assistant", {"text": "Hel", "delta": "Hel"})
    await run.emit("tool", {"phase": "start", "name": "search", "toolCallId": "t1"})
    await run.emit("assistant", {"delta": "lo"})


async def bridge(source: pl.Subscription, target: pl.Bus) -> None:
    """Forward every event ``source`` reads into ``target``, in order."""
    async for event in source:
        await target.ingest(event)


async def main() -> None:
    context = pl.RunContext(session_key="main")
    async with trio.open_nursery() as nursery:
        async with pl.open_bus() as bus_b:
            async with bus_b.subscribe(session_key="main") as on_b:
                async with pl.open_bus() as bus_a:
                    # local_only: a two-way bridge would not echo B's runs back to B.
                    async with bus_a.subscribe(local_only=True) as on_a:
                        nursery.start_soon(bridge, on_a, bus_b)
                        await (await bus_a.start_run(agent, run_id="r1", context=context)).wait()
                # Bus A closed, so the bridge has forwarded everything A delivered.
                await trio.testing.wait_all_tasks_blocked()
                forwarded = [on_b.receive_nowait() for _ in range(on_b.statistics().queued)]
            assert [(e.stream, e.seq, e.data.get("state")) for e in forwarded] == [
                ("lifecycle", 1, None),
                ("assistant", 2, None),
                ("chat", 2, "delta"),  # a chat event shares its agent event's seq
                ("tool", 3, None),
                ("assistant", 4, None),
                ("lifecycle", 5, None),
                ("chat", 5, "delta"),  # the unsent growth, flushed before the final
                ("chat", 5, "final"),  # arrives after the run ended on B: published as is
            ]
            stats = bus_b.statistics()
            assert (stats.duplicates, stats.live_runs) == (0, 0)
            assert stats.runs_by_outcome["ok"] == 1  # B's tracked copy ended with the run


if __name__ == "__main__":
    trio.run(main)
