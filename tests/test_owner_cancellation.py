"""Cancelling the bus's owner is a normal trio shutdown: every run still ends in band."""

from __future__ import annotations

import trio
import trio.testing

import pipeline as pl
from pipeline.testing import drain, is_terminal

RUNS = 20


async def parked(run: pl.Run) -> None:
    await run.emit("assistant", {"delta": "thinking about it"})
    await trio.sleep_forever()


class TestOwnerCancellation:
    async def test_every_subscriber_receives_every_terminal_event_when_the_owner_is_cancelled(
        self,
    ) -> None:
        collected: dict[str, list[pl.Event]] = {}
        reasons: dict[str, str | None] = {}

        async def read(
            bus: pl.Bus, name: str, session_key: str | None, *, task_status: trio.TaskStatus[None]
        ) -> None:
            async with bus.subscribe(session_key=session_key) as sub:
                task_status.started()
                collected[name] = await drain(sub)
                reasons[name] = sub.closed_reason

        with trio.fail_after(30):
            async with trio.open_nursery() as readers:
                with trio.CancelScope() as owner:
                    async with pl.open_bus() as bus:
                        await readers.start(read, bus, "all", None)
                        await readers.start(read, bus, "s1", "s1")
                        for index in range(RUNS):
                            context = pl.RunContext(session_key=f"s{index % 2}")
                            await bus.start_run(parked, run_id=f"r{index}", context=context)
                        await trio.testing.wait_all_tasks_blocked()
                        owner.cancel()
                        await trio.sleep_forever()

        terminals = [e for e in collected["all"] if is_terminal(e)]
        assert sorted(e.run_id for e in terminals) == sorted(f"r{i}" for i in range(RUNS))
        assert {e.data.get("stopReason") for e in terminals} == {"shutdown"}
        assert len([e for e in collected["s1"] if is_terminal(e)]) == RUNS // 2
        assert reasons == {"all": pl.BUS_CLOSED, "s1": pl.BUS_CLOSED}

    async def test_runs_of_a_cancelled_owner_end_with_reason_shutdown(self) -> None:
        handles: list[pl.RunHandle] = []
        with trio.fail_after(30):
            with trio.CancelScope() as owner:
                async with pl.open_bus() as bus:
                    handles.append(await bus.start_run(parked))
                    await trio.testing.wait_all_tasks_blocked()
                    owner.cancel()
                    await trio.sleep_forever()
        outcome = handles[0].outcome
        assert outcome is not None
        assert (outcome.status, outcome.error) == ("aborted", "shutdown")

    async def test_chat_subscribers_receive_the_aborted_chat_when_the_owner_is_cancelled(
        self,
    ) -> None:
        seen: list[pl.Event] = []

        async def read(bus: pl.Bus, *, task_status: trio.TaskStatus[None]) -> None:
            async with bus.subscribe(session_key="s", streams=["chat"]) as sub:
                task_status.started()
                seen.extend(await drain(sub))

        with trio.fail_after(30):
            async with trio.open_nursery() as readers:
                with trio.CancelScope() as owner:
                    async with pl.open_bus() as bus:
                        await readers.start(read, bus)
                        await bus.start_run(parked, context=pl.RunContext(session_key="s"))
                        await trio.testing.wait_all_tasks_blocked()
                        owner.cancel()
                        await trio.sleep_forever()
        assert [e.data["state"] for e in seen][-1] == "aborted"
