"""update_context: only the given fields change, and the next event sees the change."""

import trio

import pipeline as pl
from pipeline.testing import collect_run, collect_until


async def main() -> None:
    handed_over = trio.Event()

    async def agent(run: pl.Run) -> None:
        await run.emit("assistant", {"delta": "Step 1"})
        await handed_over.wait()
        await run.emit("assistant", {"delta": "Step 2"})

    async with pl.open_bus() as bus, bus.subscribe(run_id="job") as sub:
        context = pl.RunContext(session_key="alice", verbose_level="on")
        await bus.start_run(agent, run_id="job", context=context)
        before = await collect_until(sub, lambda e: e.stream == "assistant")
        updated = bus.update_context("job", session_key="bob")
        assert updated == pl.RunContext(session_key="bob", verbose_level="on")  # merged
        handed_over.set()
        after = await collect_run(sub, "job")
    agent_events = [e for e in before + after if e.stream != "chat"]
    assert [(e.stream, e.session_key) for e in agent_events] == [
        ("lifecycle", "alice"),
        ("assistant", "alice"),
        ("assistant", "bob"),  # the first event after the update
        ("lifecycle", "bob"),
    ]


if __name__ == "__main__":
    trio.run(main)
