"""Chat projection: unsent text is flushed before a tool starts and before the final."""

import trio

import pipeline as pl
from pipeline.testing import run_and_collect


async def agent(run: pl.Run) -> None:
    await run.emit("assistant", {"text": "Let me", "delta": "Let me"})
    await run.emit("assistant", {"text": "Let me search.", "delta": " search."})
    await run.emit("tool", {"phase": "start", "name": "search", "toolCallId": "t1"})
    await run.emit("tool", {"phase": "result", "toolCallId": "t1", "result": "42"})
    await run.emit("assistant", {"text": "Let me search. It is 42.", "delta": " It is 42."})


async def main() -> None:
    # A long interval: only the first delta goes out on its own; the rest are flushes.
    async with pl.open_bus(pl.BusConfig(chat_delta_interval=60.0)) as bus:
        context = pl.RunContext(session_key="main")
        outcome, events = await run_and_collect(bus, agent, context=context)
    assert outcome.status == "ok"
    summary = [(e.seq, e.stream, e.data.get("state") or e.data.get("phase")) for e in events]
    assert summary == [
        (1, "lifecycle", "start"),
        (2, "assistant", None),
        (2, "chat", "delta"),  # "Let me"
        (3, "assistant", None),  # " search." is throttled...
        (4, "chat", "delta"),  # ...and flushed just before the tool starts, with its seq
        (4, "tool", "start"),
        (5, "tool", "result"),
        (6, "assistant", None),  # " It is 42." is throttled...
        (7, "lifecycle", "end"),
        (7, "chat", "delta"),  # ...and flushed before the final
        (7, "chat", "final"),
    ]
    assert events[4].data["message"]["content"] == [{"type": "text", "text": "Let me search."}]
    last = events[-1].data["message"]["content"]
    assert last == [{"type": "text", "text": "Let me search. It is 42."}]


if __name__ == "__main__":
    trio.run(main)
