"""update_context (SPEC 3, 4.1): only the given fields change, and the next event sees them."""

from __future__ import annotations

import pytest
import trio
import trio.testing

import pipeline as pl
from pipeline.testing import collect_until, is_terminal

MAIN = pl.RunContext(
    session_key="main", verbose_level="on", is_heartbeat=True, activity_source="cron"
)


class PausedRun:
    """A run that emits ``before``, waits for :meth:`resume`, then emits ``after`` and ends."""

    def __init__(self) -> None:
        self.go = trio.Event()
        self.seen: list[pl.RunContext] = []

    async def body(self, run: pl.Run) -> None:
        await run.emit("assistant", {"text": "before", "delta": "before"})
        await self.go.wait()
        self.seen.append(run.context)
        await run.emit("assistant", {"text": "before after", "delta": " after"})

    async def start(self, bus: pl.Bus, run_id: str = "r1") -> pl.RunHandle:
        handle = await bus.start_run(self.body, run_id=run_id, context=MAIN)
        await trio.testing.wait_all_tasks_blocked()
        return handle

    def resume(self) -> None:
        self.go.set()


async def events_around_update(bus: pl.Bus, **fields: object) -> list[pl.Event]:
    """The events of a run whose context is updated with ``fields`` between two emits."""
    paused = PausedRun()
    with trio.fail_after(10):
        async with bus.subscribe(run_id="r1") as sub:
            await paused.start(bus)
            bus.update_context("r1", **fields)
            paused.resume()
            return await collect_until(sub, is_terminal)


def assistant(events: list[pl.Event]) -> list[pl.Event]:
    return [e for e in events if e.stream == "assistant"]


class TestMerging:
    async def test_only_the_given_fields_change(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock
    ) -> None:
        paused = PausedRun()
        await paused.start(agent_bus)
        updated = agent_bus.update_context("r1", verbose_level="full")
        paused.resume()
        assert updated == pl.RunContext(
            session_key="main", verbose_level="full", is_heartbeat=True, activity_source="cron"
        )

    async def test_updates_accumulate(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock
    ) -> None:
        paused = PausedRun()
        await paused.start(agent_bus)
        agent_bus.update_context("r1", verbose_level="full")
        updated = agent_bus.update_context("r1", activity_source=None)
        paused.resume()
        assert (updated.verbose_level, updated.activity_source, updated.session_key) == (
            "full",
            None,
            "main",
        )

    async def test_the_body_sees_the_updated_context(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock
    ) -> None:
        paused = PausedRun()
        handle = await paused.start(agent_bus)
        agent_bus.update_context("r1", is_heartbeat=False)
        paused.resume()
        await handle.wait()
        assert paused.seen == [
            pl.RunContext(
                session_key="main", verbose_level="on", is_heartbeat=False, activity_source="cron"
            )
        ]

    async def test_the_body_can_update_its_own_context_the_same_way(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock
    ) -> None:
        contexts: list[pl.RunContext] = []

        async def body(run: pl.Run) -> None:
            contexts.append(run.update_context(verbose_level="off"))

        await (await agent_bus.start_run(body, context=MAIN)).wait()
        assert contexts == [
            pl.RunContext(
                session_key="main", verbose_level="off", is_heartbeat=True, activity_source="cron"
            )
        ]

    async def test_an_unknown_field_raises_type_error_and_changes_nothing(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock
    ) -> None:
        paused = PausedRun()
        await paused.start(agent_bus)
        with pytest.raises(TypeError):
            agent_bus.update_context("r1", verbose_level="full", colour="blue")
        unchanged = agent_bus.update_context("r1")
        paused.resume()
        assert unchanged == MAIN

    async def test_an_invalid_value_raises_value_error_and_changes_nothing(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock
    ) -> None:
        paused = PausedRun()
        await paused.start(agent_bus)
        with pytest.raises(ValueError, match="verbose_level"):
            agent_bus.update_context("r1", session_key="other", verbose_level="loud")
        unchanged = agent_bus.update_context("r1")
        paused.resume()
        assert unchanged == MAIN

    async def test_updating_an_unknown_run_raises_unknown_run(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock
    ) -> None:
        with pytest.raises(pl.UnknownRun):
            agent_bus.update_context("nobody", verbose_level="on")


class TestSessionKeyAndVisibility:
    async def test_a_new_session_key_applies_from_the_next_event(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock
    ) -> None:
        events = await events_around_update(agent_bus, session_key="other")
        assert [e.session_key for e in assistant(events)] == ["main", "other"]

    async def test_the_terminal_event_carries_the_new_session_key(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock
    ) -> None:
        events = await events_around_update(agent_bus, session_key="other")
        assert events[-1].session_key == "other"

    async def test_subscribers_of_the_new_session_see_the_run_from_then_on(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock
    ) -> None:
        paused = PausedRun()
        with trio.fail_after(10):
            async with (
                agent_bus.subscribe(session_key="main", streams={"assistant"}) as old,
                agent_bus.subscribe(session_key="other", streams={"assistant"}) as new,
            ):
                handle = await paused.start(agent_bus)
                agent_bus.update_context("r1", session_key="other")
                paused.resume()
                await handle.wait()
                await trio.testing.wait_all_tasks_blocked()
                assert (await old.receive()).data["delta"] == "before"
                assert (await new.receive()).data["delta"] == " after"
                assert (old.statistics().queued, new.statistics().queued) == (0, 0)

    async def test_hiding_a_run_removes_the_session_key_from_the_next_event(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock
    ) -> None:
        events = await events_around_update(agent_bus, control_ui_visible=False)
        assert [e.session_key for e in assistant(events)] == ["main", None]

    async def test_hiding_a_run_stops_its_chat_events(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock
    ) -> None:
        events = await events_around_update(agent_bus, control_ui_visible=False)
        first = assistant(events)[0]
        assert [e.seq for e in events if e.stream == "chat"] == [first.seq]

    async def test_showing_a_hidden_run_gives_the_next_event_its_session_key(
        self, agent_bus: pl.Bus, autojump_clock: trio.testing.MockClock
    ) -> None:
        paused = PausedRun()
        with trio.fail_after(10):
            async with agent_bus.subscribe(run_id="r1") as sub:
                await agent_bus.start_run(
                    paused.body,
                    run_id="r1",
                    context=pl.RunContext(session_key="main", control_ui_visible=False),
                )
                await trio.testing.wait_all_tasks_blocked()
                agent_bus.update_context("r1", control_ui_visible=True)
                paused.resume()
                events = await collect_until(sub, is_terminal)
        assert [e.session_key for e in assistant(events)] == [None, "main"]
