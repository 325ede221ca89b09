"""The error retry grace (SPEC 4.3): a failed run waits for a retry under the same run id."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
import trio
import trio.testing

import pipeline as pl
from pipeline.testing import collect_until, drain, is_terminal

GRACE = 10.0
MAIN = pl.RunContext(session_key="main")


@pytest.fixture
def agent_bus_config() -> pl.BusConfig:
    return pl.BusConfig(error_retry_grace=GRACE)


async def failing(run: pl.Run) -> None:
    await run.emit("assistant", {"text": "Hello", "delta": "Hello"})
    raise RuntimeError("model overloaded")


async def finishing(run: pl.Run) -> None:
    # Only a delta: the chat text shows whether the run continued ("Hello world") or not.
    await run.emit("assistant", {"delta": " world"})


def text_of(payload: Mapping[str, Any]) -> str:
    for block in payload["message"]["content"]:
        if block["type"] == "text":
            return str(block["text"])
    return ""


def drain_queued(sub: pl.Subscription) -> list[pl.Event]:
    events: list[pl.Event] = []
    while sub.statistics().queued:
        events.append(sub.receive_nowait())
    return events


async def run_until_terminal(
    bus: pl.Bus, sub: pl.Subscription, body: Any, run_id: str = "r1"
) -> list[pl.Event]:
    """Start ``body`` as ``run_id``; its events up to its terminal one, and what follows at once."""
    await bus.start_run(body, run_id=run_id, context=MAIN)
    events = await collect_until(sub, lambda e: e.run_id == run_id and is_terminal(e))
    await trio.testing.wait_all_tasks_blocked()
    return events + drain_queued(sub)


def chat_states(events: list[pl.Event]) -> list[str]:
    return [str(e.data["state"]) for e in events if e.stream == "chat"]


class TestFailedRun:
    async def test_waiting_for_a_failed_run_returns_at_once_not_after_the_grace(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock
    ) -> None:
        started = trio.current_time()
        with trio.fail_after(GRACE * 3):
            handle = await agent_bus.start_run(failing, run_id="r1", context=MAIN)
            outcome = await handle.wait()
        assert (outcome.status, outcome.error) == ("error", "model overloaded")
        assert trio.current_time() == started

    async def test_the_lifecycle_error_is_published_at_once(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock
    ) -> None:
        with trio.fail_after(GRACE * 3):
            async with agent_bus.subscribe(run_id="r1") as sub:
                events = await run_until_terminal(agent_bus, sub, failing)
        assert events[-1].stream == "lifecycle"
        assert events[-1].data["phase"] == "error"
        assert events[-1].data["error"] == "model overloaded"
        assert events[-1].data["errorKind"] == "RuntimeError"

    async def test_a_failed_run_stays_live_during_the_grace(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock
    ) -> None:
        with trio.fail_after(GRACE * 3):
            handle = await agent_bus.start_run(failing, run_id="r1", context=MAIN)
            await handle.wait()
            await trio.sleep(GRACE * 0.9)
        assert agent_bus.statistics().live_runs == 1

    async def test_a_failed_run_in_its_grace_counts_against_max_runs(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        async with pl.open_bus(pl.BusConfig(max_runs=1, error_retry_grace=GRACE)) as bus:
            with trio.fail_after(GRACE * 3):
                await (await bus.start_run(failing, run_id="r1", context=MAIN)).wait()
                with pytest.raises(pl.TooManyRuns):
                    await bus.start_run(finishing, run_id="other")

    async def test_the_chat_error_is_not_published_before_the_grace_expires(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock
    ) -> None:
        with trio.fail_after(GRACE * 3):
            async with agent_bus.subscribe(run_id="r1") as sub:
                events = await run_until_terminal(agent_bus, sub, failing)
                await trio.sleep(GRACE * 0.99)
                events += drain_queued(sub)
        assert "error" not in chat_states(events)

    async def test_the_chat_error_is_published_when_the_grace_expires(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock
    ) -> None:
        with trio.fail_after(GRACE * 3):
            async with agent_bus.subscribe(run_id="r1") as sub:
                events = await run_until_terminal(agent_bus, sub, failing)
                failed_at = trio.current_time()
                chat_error = await sub.receive()
        assert trio.current_time() - failed_at == pytest.approx(GRACE)
        assert chat_error.stream == "chat"
        assert chat_error.data == {
            "state": "error",
            "errorMessage": "model overloaded",
            "errorKind": "RuntimeError",
        }
        assert chat_error.seq == events[-1].seq

    async def test_after_the_grace_the_run_is_gone(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock
    ) -> None:
        with trio.fail_after(GRACE * 3):
            await (await agent_bus.start_run(failing, run_id="r1", context=MAIN)).wait()
            await trio.sleep(GRACE * 1.01)
        assert agent_bus.statistics().live_runs == 0
        assert agent_bus.abort("r1") is False
        with pytest.raises(pl.UnknownRun):
            agent_bus.update_context("r1", verbose_level="on")

    async def test_a_start_after_the_grace_is_a_fresh_run(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock
    ) -> None:
        with trio.fail_after(GRACE * 3):
            await (await agent_bus.start_run(failing, run_id="r1", context=MAIN)).wait()
            await trio.sleep(GRACE * 1.01)
            async with agent_bus.subscribe(run_id="r1") as sub:
                events = await run_until_terminal(agent_bus, sub, finishing)
        assert events[0].seq == 1
        final = next(e for e in events if e.stream == "chat" and e.data["state"] == "final")
        assert text_of(final.data) == " world"
        assert agent_bus.statistics().runs_started == 2


class TestRetryDuringTheGrace:
    @staticmethod
    async def fail_then_retry(bus: pl.Bus, wait: float = GRACE / 2) -> list[pl.Event]:
        """Fail ``r1``, retry it after ``wait``, and return the retry's events."""
        with trio.fail_after(GRACE * 3):
            async with bus.subscribe(run_id="r1", buffer=1024) as sub:
                await run_until_terminal(bus, sub, failing)
                await trio.sleep(wait)
                return await run_until_terminal(bus, sub, finishing)

    async def test_a_retry_publishes_a_new_lifecycle_start(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock
    ) -> None:
        events = await self.fail_then_retry(agent_bus)
        assert events[0].stream == "lifecycle"
        assert events[0].data["phase"] == "start"

    async def test_a_retry_continues_the_seq(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock
    ) -> None:
        # The failed stretch published start (1), assistant (2) and error (3).
        events = await self.fail_then_retry(agent_bus)
        assert [e.seq for e in events if e.stream != "chat"] == [4, 5, 6]

    async def test_a_block_run_under_the_same_id_resumes_the_run_too(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock
    ) -> None:
        with trio.fail_after(GRACE * 3):
            async with agent_bus.subscribe(run_id="r1") as sub:
                await run_until_terminal(agent_bus, sub, failing)
                async with agent_bus.run(run_id="r1") as run:
                    event = await run.emit("assistant", {"delta": "!"})
        assert event.seq == 5

    async def test_a_retry_continues_the_chat_text(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock
    ) -> None:
        events = await self.fail_then_retry(agent_bus)
        delta = next(e for e in events if e.stream == "chat" and e.data["state"] == "delta")
        assert text_of(delta.data) == "Hello world"

    async def test_a_retry_ends_with_a_final_and_no_chat_error(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock
    ) -> None:
        events = await self.fail_then_retry(agent_bus)
        assert chat_states(events) == ["delta", "final"]

    async def test_the_chat_error_of_a_retried_failure_is_never_published(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock
    ) -> None:
        with trio.fail_after(GRACE * 5):
            async with agent_bus.subscribe(run_id="r1", buffer=1024) as sub:
                events = await run_until_terminal(agent_bus, sub, failing)
                events += await run_until_terminal(agent_bus, sub, finishing)
                await trio.sleep(GRACE * 2)
                events += drain_queued(sub)
        assert "error" not in chat_states(events)

    async def test_a_retry_is_not_a_new_run(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock
    ) -> None:
        await self.fail_then_retry(agent_bus)
        stats = agent_bus.statistics()
        assert stats.runs_started == 1
        assert (stats.runs_by_outcome["error"], stats.runs_by_outcome["ok"]) == (1, 1)

    async def test_a_retry_needs_no_free_run_slot(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        async with pl.open_bus(pl.BusConfig(max_runs=1, error_retry_grace=GRACE)) as bus:
            events = await self.fail_then_retry(bus)
        terminal = next(e for e in events if is_terminal(e))
        assert terminal.data["phase"] == "end"

    async def test_a_retry_just_before_the_grace_expires_still_resumes(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock
    ) -> None:
        events = await self.fail_then_retry(agent_bus, wait=GRACE * 0.99)
        assert events[0].seq == 4

    async def test_a_retry_that_fails_again_gets_a_new_grace(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock
    ) -> None:
        with trio.fail_after(GRACE * 5):
            async with agent_bus.subscribe(run_id="r1", buffer=1024) as sub:
                await run_until_terminal(agent_bus, sub, failing)
                await trio.sleep(GRACE / 2)
                events = await run_until_terminal(agent_bus, sub, failing)
                retried_at = trio.current_time()
                await trio.sleep(GRACE * 0.9)
                assert "error" not in chat_states(events + drain_queued(sub))
                chat_error = await sub.receive()
        assert trio.current_time() - retried_at == pytest.approx(GRACE)
        assert chat_error.data["state"] == "error"
        assert chat_error.seq == events[-1].seq


async def parked(run: pl.Run) -> None:
    await trio.sleep_forever()


class TestRetryAsTheGraceExpires:
    async def test_a_retry_while_the_expired_grace_publishes_its_chat_error_waits_and_starts_anew(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Found by the chaos test: the retry used to resume the expiring run, which the grace
        keeper then released under it, so the new body's emits failed with UnknownRun."""
        config = pl.BusConfig(error_retry_grace=1.0, router_buffer=4, block_timeout=60.0)
        other = pl.RunContext(session_key="other")
        with trio.fail_after(30):
            async with pl.open_bus(config) as bus:
                assert (await (await bus.start_run(failing, run_id="r1")).wait()).status == "error"
                async with bus.subscribe(session_key="other", buffer=1) as stuck:
                    # An unread subscriber holds the router; leave the inbox 2 free: room for
                    # a start event (2), not for the expiring grace's chat error (3).
                    filler = await bus.start_run(parked, context=other)
                    for _ in range(3):
                        await bus.emit(filler.id, "assistant", {"delta": "x"})
                        await trio.testing.wait_all_tasks_blocked()
                    await trio.sleep(1.5)  # the grace expires; its chat error waits for room
                    handles: list[pl.RunHandle] = []
                    started = trio.Event()

                    async def retry() -> None:
                        handles.append(await bus.start_run(finishing, run_id="r1"))
                        started.set()

                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(retry)
                        await trio.testing.wait_all_tasks_blocked()
                        assert handles == []  # the retry waits for the closing run to end
                        nursery.start_soon(drain, stuck)
                        await started.wait()
                        outcome = await handles[0].wait()
                        filler.abort()
                        nursery.cancel_scope.cancel()
        assert (outcome.status, outcome.exception) == ("ok", None)
        assert outcome.last_seq == 3  # a new run: start, assistant, end; not a resumed one
