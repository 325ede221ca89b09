"""Abort: the partial text is published as chat state "aborted"; no more deltas follow."""

import trio

import pipeline as pl
from pipeline.testing import collect_run, collect_until, is_terminal


async def storyteller(run: pl.Run) -> None:
    await run.emit("assistant", {"text": "Once upon", "delta": "Once upon"})
    await run.emit("assistant", {"text": "Once upon a time", "delta": " a time"})
    await trio.sleep_forever()  # a long generation, until someone presses stop


async def main() -> None:
    async with pl.open_bus() as bus, bus.subscribe(run_id="story") as sub:
        context = pl.RunContext(session_key="main")
        handle = await bus.start_run(storyteller, run_id="story", context=context)
        await collect_until(sub, lambda e: e.stream == "assistant" and e.seq == 3)
        handle.abort("user pressed stop")
        events = await collect_run(sub, "story")
        outcome = await handle.wait()
    assert outcome.status == "aborted"
    *_, aborted, terminal = events  # the chat "aborted", then the terminal lifecycle event
    assert is_terminal(terminal)
    assert terminal.data["aborted"] is True
    assert terminal.data["stopReason"] == "user pressed stop"
    assert aborted.stream == "chat"
    assert aborted.seq == terminal.seq
    assert aborted.data["state"] == "aborted"
    assert aborted.data["stopReason"] == "user pressed stop"
    content = aborted.data["message"]["content"]
    assert content == [{"type": "text", "text": "Once upon a time"}]


if __name__ == "__main__":
    trio.run(main)
