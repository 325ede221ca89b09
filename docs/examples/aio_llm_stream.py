"""asyncio: stream an LLM SDK's tokens through the bus while an asyncio consumer prints them."""

import asyncio
from collections.abc import AsyncGenerator
from contextlib import aclosing

import pipeline as pl
from pipeline import aio


async def completion_stream(prompt: str) -> AsyncGenerator[str]:
    """Stands in for an asyncio LLM SDK's streaming call (no network here)."""
    for token in ["The", " answer", " is", " 42", "."]:
        await asyncio.sleep(0.01)  # the network, between two tokens
        yield token


async def agent(run: aio.Run) -> None:
    async with aclosing(completion_stream("What is the answer?")) as tokens:
        async for token in tokens:
            await run.emit("assistant", {"delta": token})


async def main() -> None:
    async with aio.open_bus() as bus, bus.subscribe(session_key="main") as sub:
        context = pl.RunContext(session_key="main")
        handle = await bus.start_run(agent, run_id="chat-1", context=context)
        async for event in sub:
            if event.stream == "assistant":
                print(event.data["delta"], end="", flush=True)
            elif event.stream == "chat" and event.data["state"] == "final":
                print()  # the chat projection's final message ends the reply
                final = event.data["message"]["content"][0]["text"]
                break
        outcome = await handle.wait()
    assert outcome.status == "ok"
    assert final == "The answer is 42."


if __name__ == "__main__":
    asyncio.run(main())
