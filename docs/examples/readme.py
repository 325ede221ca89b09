import trio

import pipeline as pl


async def agent(run: pl.Run) -> None:
    await run.emit("assistant", {"text": "Hello", "delta": "Hello"})
    await run.emit("tool", {"phase": "start", "name": "search", "toolCallId": "t1"})
    await run.emit("tool", {"phase": "result", "name": "search", "toolCallId": "t1"})


async def main() -> None:
    async with pl.open_bus(pl.BusConfig(max_runs=1000)) as bus:
        async with bus.subscribe(session_key="main", overflow=pl.Overflow.DROP_OLDEST) as sub:
            context = pl.RunContext(session_key="main")
            handle = await bus.start_run(agent, run_id="r1", context=context)
            async for event in sub:
                print(event.seq, event.stream, dict(event.data))
                # Lifecycle "end" or "error" ends every run, failed or aborted too
                # (chat "final" comes only when a run with a session key succeeds).
                if event.stream == "lifecycle" and event.data["phase"] in ("end", "error"):
                    break
            outcome = await handle.wait()
            print("outcome:", outcome.status)


if __name__ == "__main__":
    trio.run(main)
