"""Retry grace: a failed run waits error_retry_grace for a retry under the same run id."""

import trio
import trio.testing

import pipeline as pl
from pipeline.testing import collect_run, collect_until

GRACE = 1.0
CONTEXT = pl.RunContext(session_key="main")


async def first_attempt(run: pl.Run) -> None:
    await run.emit("assistant", {"text": "Hello", "delta": "Hello"})
    raise ConnectionError("upstream reset")


async def second_attempt(run: pl.Run) -> None:
    await run.emit("assistant", {"delta": " world"})  # continues the failed attempt's text


def chat_states(events: list[pl.Event]) -> list[str]:
    return [e.data["state"] for e in events if e.stream == "chat"]


async def retried(bus: pl.Bus) -> None:
    async with bus.subscribe(run_id="r1") as sub:
        handle = await bus.start_run(first_attempt, run_id="r1", context=CONTEXT)
        assert (await handle.wait()).status == "error"  # at once, not after the grace
        failed = await collect_run(sub, "r1")
        retry = await bus.start_run(second_attempt, run_id="r1", context=CONTEXT)
        assert (await retry.wait()).status == "ok"
        resumed = await collect_run(sub, "r1")
        trailing = await collect_until(sub, lambda e: e.data.get("state") == "final")
    final = trailing[-1].data  # the chat final follows the terminal event
    assert [e.seq for e in failed if e.stream != "chat"] == [1, 2, 3]
    assert failed[-1].data["phase"] == "error"
    assert [e.seq for e in resumed if e.stream != "chat"] == [4, 5, 6]  # seq continues
    assert resumed[0].data["phase"] == "start"  # a new lifecycle start
    assert final["state"] == "final"
    assert final["message"]["content"] == [{"type": "text", "text": "Hello world"}]  # continued
    assert "error" not in chat_states(failed + resumed)  # no chat error: the retry came


async def not_retried(bus: pl.Bus) -> None:
    async with bus.subscribe(run_id="r2") as sub:
        await (await bus.start_run(first_attempt, run_id="r2", context=CONTEXT)).wait()
        failed = await collect_run(sub, "r2")
        assert chat_states(failed) == ["delta"]  # the chat error waits for the grace
        failed_at = trio.current_time()
        chat_error = await sub.receive()
    assert trio.current_time() - failed_at >= GRACE / 2
    assert chat_error.seq == failed[-1].seq
    assert chat_error.data == {
        "state": "error",
        "errorMessage": "upstream reset",
        "errorKind": "ConnectionError",
    }
    await trio.testing.wait_all_tasks_blocked()
    assert bus.abort("r2") is False  # after the grace, the run is gone


async def main() -> None:
    async with pl.open_bus(pl.BusConfig(error_retry_grace=GRACE)) as bus:
        await retried(bus)
        await not_retried(bus)


if __name__ == "__main__":
    trio.run(main)
