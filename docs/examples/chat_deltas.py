"""Chat projection: throttled deltas, each with its cause's seq, then the final."""

import trio

import pipeline as pl
from pipeline.testing import run_and_collect


async def agent(run: pl.Run) -> None:
    text = ""
    for word in ("Hello", " there", ",", " world"):  # all within one interval
        text += word
        await run.emit("assistant", {"text": text, "delta": word})
    await trio.sleep(0.6)  # longer than chat_delta_interval
    await run.emit("assistant", {"text": text + "!", "delta": "!"})
    run.set_stop_reason("end_turn")


async def main() -> None:
    async with pl.open_bus(pl.BusConfig(chat_delta_interval=0.5)) as bus:
        context = pl.RunContext(session_key="main")
        outcome, events = await run_and_collect(bus, agent, context=context)
    assert outcome.status == "ok"
    chat = [e for e in events if e.stream == "chat"]
    assert [(e.seq, e.data["state"]) for e in chat] == [(2, "delta"), (6, "delta"), (7, "final")]
    first, second, final = (e.data for e in chat)
    assert first["message"]["content"] == [{"type": "text", "text": "Hello"}]
    assert second["message"]["content"] == [{"type": "text", "text": "Hello there, world!"}]
    assert final["stopReason"] == "end_turn"
    assert final["message"]["content"] == second["message"]["content"]
    end = next(e for e in events if e.stream == "lifecycle" and e.data["phase"] == "end")
    assert (end.seq, end.data["stopReason"]) == (7, "end_turn")


if __name__ == "__main__":
    trio.run(main)
