"""Chat projection: streamed assistant and thinking updates merge into one message."""

import trio

import pipeline as pl
from pipeline.testing import run_and_collect


async def agent(run: pl.Run) -> None:
    await run.emit("thinking", {"text": "The user", "delta": "The user"})
    await run.emit("thinking", {"delta": "user greets me"})  # the overlap "user" is not repeated
    await run.emit("assistant", {"text": "Hel", "delta": "Hel"})
    await run.emit("assistant", {"text": "Hello", "delta": "lo"})  # extends the text: taken
    await run.emit("assistant", {"text": "Hel"})  # stale and without a delta: ignored
    await run.emit("assistant", {"delta": "lo, world"})  # the overlap "lo" is not repeated


async def main() -> None:
    async with pl.open_bus() as bus:
        context = pl.RunContext(session_key="main")
        outcome, events = await run_and_collect(bus, agent, context=context)
    assert outcome.status == "ok"
    final = next(e for e in events if e.stream == "chat" and e.data["state"] == "final")
    assert final.data["message"]["content"] == [
        {"type": "thinking", "thinking": "The user greets me"},
        {"type": "text", "text": "Hello, world"},
    ]


if __name__ == "__main__":
    trio.run(main)
