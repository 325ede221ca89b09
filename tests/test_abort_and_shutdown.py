"""Abort is cancellation; closing the bus aborts live runs and then ends subscriptions."""

from __future__ import annotations

import pytest
import trio
import trio.testing

import pipeline as pl
from pipeline.testing import collect_run, drain, is_terminal


async def parked(run: pl.Run) -> None:
    await run.emit("assistant", {"delta": "thinking about it"})
    await trio.sleep_forever()


def readable_now(sub: pl.Subscription) -> list[pl.Event]:
    """What ``sub`` holds now, read without yielding to the scheduler."""
    events: list[pl.Event] = []
    while True:
        try:
            events.append(sub.receive_nowait())
        except trio.WouldBlock:
            return events


def terminals(events: list[pl.Event], run_id: str) -> list[pl.Event]:
    return [e for e in events if e.run_id == run_id and is_terminal(e)]


class TestAbort:
    async def test_aborting_a_run_cancels_its_body(self, agent_bus: pl.Bus) -> None:
        cancelled = False

        async def body(run: pl.Run) -> None:
            nonlocal cancelled
            try:
                await trio.sleep_forever()
            except trio.Cancelled:
                cancelled = True
                raise

        with trio.fail_after(5):
            handle = await agent_bus.start_run(body)
            assert agent_bus.abort(handle.id)
            outcome = await handle.wait()
        assert cancelled
        assert outcome.status == "aborted"
        assert outcome.error == "rpc"

    async def test_aborting_a_run_delivers_a_terminal_event_to_every_subscriber(
        self, agent_bus: pl.Bus
    ) -> None:
        context = pl.RunContext(session_key="main")
        with trio.fail_after(5):
            async with (
                agent_bus.subscribe() as everything,
                agent_bus.subscribe(session_key="main") as session,
                agent_bus.subscribe(run_id="r1", streams=["lifecycle"]) as lifecycle,
            ):
                handle = await agent_bus.start_run(parked, run_id="r1", context=context)
                handle.abort(reason="user stop")
                seen = [await collect_run(sub, "r1") for sub in (everything, session, lifecycle)]
        for events in seen:
            (terminal,) = terminals(events, "r1")
            assert terminal.data["aborted"] is True
            assert terminal.data["stopReason"] == "user stop"
            assert terminal.data["phase"] == "end"

    async def test_aborting_an_unknown_run_returns_false(self, agent_bus: pl.Bus) -> None:
        assert agent_bus.abort("nope") is False

    async def test_aborting_a_finished_run_through_its_handle_returns_false(
        self, agent_bus: pl.Bus
    ) -> None:
        async def quick(run: pl.Run) -> None:
            pass

        with trio.fail_after(5):
            handle = await agent_bus.start_run(quick)
            await handle.wait()
        assert handle.abort() is False

    async def test_an_old_handle_does_not_abort_a_new_run_with_the_same_id(
        self, agent_bus: pl.Bus
    ) -> None:
        async def quick(run: pl.Run) -> None:
            pass

        with trio.fail_after(5):
            old = await agent_bus.start_run(quick, run_id="r1")
            await old.wait()
            new = await agent_bus.start_run(parked, run_id="r1")
            assert old.abort() is False
            await trio.testing.wait_all_tasks_blocked()
            assert new.outcome is None
            new.abort()
            assert (await new.wait()).status == "aborted"

    async def test_abort_frees_the_run_slot_at_once(self, agent_bus: pl.Bus) -> None:
        with trio.fail_after(5):
            handle = await agent_bus.start_run(parked)
            handle.abort()
            await handle.wait()
        assert agent_bus.statistics().live_runs == 0

    async def test_an_abort_is_the_outcome_even_if_the_body_returns_before_noticing_it(
        self, agent_bus: pl.Bus
    ) -> None:
        async def body(run: pl.Run) -> None:
            agent_bus.abort(run.id)  # no checkpoint follows: the body returns normally

        with trio.fail_after(5):
            async with agent_bus.subscribe() as sub:
                handle = await agent_bus.start_run(body, run_id="r1")
                outcome = await handle.wait()
                events = await collect_run(sub, "r1")
        assert outcome.status == "aborted"
        assert len(terminals(events, "r1")) == 1

    async def test_the_terminal_event_is_published_by_abort_itself(self, agent_bus: pl.Bus) -> None:
        with trio.fail_after(5):
            handle = await agent_bus.start_run(parked, run_id="r1")
            await trio.testing.wait_all_tasks_blocked()
            published = agent_bus.statistics().events_published
            handle.abort()
            # No checkpoint yet: the body has not even seen its cancellation.
            assert agent_bus.statistics().events_published == published + 1
            assert handle.outcome is None
            outcome = await handle.wait()
        assert outcome.last_seq == 3  # start, the delta, the terminal

    async def test_every_subscriber_holds_the_terminal_events_when_abort_returns(
        self, agent_bus: pl.Bus
    ) -> None:
        context = pl.RunContext(session_key="main")
        with trio.fail_after(5):
            async with (
                agent_bus.subscribe() as everything,
                agent_bus.subscribe(session_key="main", streams=["chat"]) as chat,
            ):
                handle = await agent_bus.start_run(parked, run_id="r1", context=context)
                await trio.testing.wait_all_tasks_blocked()
                handle.abort("user stop")
                # No checkpoint: what the subscribers hold now was routed by abort() itself.
                held = [readable_now(everything), readable_now(chat)]
        assert [(e.stream, e.seq) for e in held[0]] == [
            ("lifecycle", 1),
            ("assistant", 2),
            ("chat", 2),
            ("chat", 3),
            ("lifecycle", 3),
        ]
        assert held[0][-1].data["aborted"] is True
        assert [e.data["state"] for e in held[1]] == ["delta", "aborted"]

    async def test_a_full_subscriber_still_gets_the_terminal_event_after_the_runs_events(
        self, agent_bus: pl.Bus
    ) -> None:
        with trio.fail_after(5):
            async with (
                agent_bus.subscribe(buffer=1) as cramped,
                agent_bus.subscribe() as roomy,
            ):
                handle = await agent_bus.start_run(parked, run_id="r1")
                await trio.testing.wait_all_tasks_blocked()
                handle.abort()
                events = [await collect_run(sub, "r1") for sub in (cramped, roomy)]
        for got in events:
            assert [(e.stream, e.seq) for e in got] == [
                ("lifecycle", 1),
                ("assistant", 2),
                ("lifecycle", 3),
            ]


class TestShutdown:
    async def test_closing_the_bus_aborts_live_runs_with_reason_shutdown(self) -> None:
        with trio.fail_after(5):
            async with pl.open_bus() as bus:
                handle = await bus.start_run(parked, run_id="r1")
            outcome = await handle.wait()
        assert outcome.status == "aborted"
        assert outcome.error == "shutdown"

    async def test_subscribers_get_terminal_events_before_their_subscription_ends(self) -> None:
        received: list[pl.Event] = []
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery, pl.open_bus() as bus:
                sub_cm = bus.subscribe()
                sub = await sub_cm.__aenter__()

                async def reader() -> None:
                    try:
                        received.extend(await drain(sub))
                    finally:
                        await sub_cm.__aexit__(None, None, None)

                nursery.start_soon(reader)
                for run_id in ("r1", "r2"):
                    await bus.start_run(parked, run_id=run_id)
        assert sub.closed_reason == "bus closed"
        for run_id in ("r1", "r2"):
            (terminal,) = terminals(received, run_id)
            assert terminal.data["stopReason"] == "shutdown"
        assert received[-1].stream == "lifecycle"

    async def test_the_bus_refuses_new_work_once_closed(self) -> None:
        async with pl.open_bus() as bus:
            pass
        with trio.fail_after(5):
            with pytest.raises(pl.BusClosed):
                await bus.start_run(parked)
            with pytest.raises(trio.ClosedResourceError):
                await bus.ingest(_wire("x", 1))
        assert bus.statistics().live_runs == 0

    async def test_closing_twice_is_harmless(self) -> None:
        with trio.fail_after(5):
            async with pl.open_bus() as bus:
                await bus.aclose()
            await bus.aclose()
        assert bus.statistics().subscribers == 0

    async def test_cancelling_the_owner_nursery_still_ends_runs_with_a_terminal_event(
        self,
    ) -> None:
        events: list[pl.Event] = []
        with trio.fail_after(5):
            async with trio.open_nursery() as outer:
                async with pl.open_bus() as bus, bus.subscribe(run_id="r1") as sub:
                    await bus.start_run(parked, run_id="r1")
                    await trio.testing.wait_all_tasks_blocked()
                    outer.cancel_scope.cancel()
                    events.extend(sub.receive_nowait() for _ in range(sub.statistics().queued))
                    # The block is cancelled here; closing the bus still runs, shielded.
                    await trio.sleep_forever()
        assert bus.statistics().live_runs == 0
        assert bus.statistics().runs_by_outcome["aborted"] == 1


def _wire(run_id: str, seq: int) -> dict[str, object]:
    return {"runId": run_id, "seq": seq, "stream": "assistant", "ts": 1, "data": {}}
