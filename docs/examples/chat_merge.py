"""Chat projection: streamed updates merge into one message, and no character is lost."""

import trio

import pipeline as pl
from pipeline.testing import run_and_collect


async def agent(run: pl.Run) -> None:
    for piece in ("The total is ", "100", "0", "..."):
        await run.emit("thinking", {"delta": piece})  # deltas alone: appended as they are
    await run.emit("assistant", {"text": "Let me", "delta": "Let me"})
    await run.emit("assistant", {"text": "Let me check.", "delta": " check."})  # extends: taken
    await run.emit("assistant", {"text": "Let me"})  # stale re-send: ignored
    await run.emit("assistant", {"text": "Let me check", "delta": " check"})  # stale: ignored too
    await run.emit("tool", {"phase": "start", "name": "sum", "toolCallId": "t1"})
    await run.emit("tool", {"phase": "result", "toolCallId": "t1", "result": "1000"})
    await run.emit("assistant", {"text": "It is", "delta": "It is"})  # a new segment
    await run.emit("assistant", {"delta": " 1000."})  # extends the new segment


async def main() -> None:
    async with pl.open_bus() as bus:
        context = pl.RunContext(session_key="main")
        outcome, events = await run_and_collect(bus, agent, context=context)
    assert outcome.status == "ok"
    final = next(e for e in events if e.stream == "chat" and e.data["state"] == "final")
    assert final.data["message"]["content"] == [
        {"type": "thinking", "thinking": "The total is 1000..."},
        {"type": "text", "text": "Let me check.\n\nIt is 1000."},
    ]


if __name__ == "__main__":
    trio.run(main)
