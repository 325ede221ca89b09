"""The helpers users test their own agents with."""

from __future__ import annotations

import pytest
import trio

import pipeline as pl
from pipeline.testing import collect_until, is_terminal, run_and_collect, texts


async def greeter(run: pl.Run) -> None:
    await run.emit("assistant", {"delta": "Hello"})
    await run.emit("assistant", {"delta": " there"})


@pytest.fixture
def agent_bus_config() -> pl.BusConfig:
    return pl.BusConfig(max_runs=3)


async def test_the_agent_bus_fixture_takes_its_config_from_agent_bus_config(
    agent_bus: pl.Bus,
) -> None:
    assert agent_bus.config.max_runs == 3


async def test_run_and_collect_returns_the_outcome_and_every_event_of_the_run(
    agent_bus: pl.Bus,
) -> None:
    with trio.fail_after(5):
        outcome, events = await run_and_collect(agent_bus, greeter, run_id="r1")
    assert outcome.status == "ok"
    assert texts(events) == ["Hello", " there"]
    assert is_terminal(events[-1])


async def test_run_and_collect_includes_the_chat_final_after_the_terminal_event(
    agent_bus: pl.Bus,
) -> None:
    with trio.fail_after(5):
        _, events = await run_and_collect(
            agent_bus, greeter, context=pl.RunContext(session_key="main")
        )
    assert events[-1].stream == "chat"
    assert events[-1].data["state"] == "final"
    assert events[-1].data["message"]["content"] == [{"type": "text", "text": "Hello there"}]


async def test_collect_until_stops_at_the_first_matching_event(agent_bus: pl.Bus) -> None:
    with trio.fail_after(5):
        async with agent_bus.subscribe(run_id="r1") as sub:
            await agent_bus.start_run(greeter, run_id="r1")
            events = await collect_until(sub, lambda e: e.stream == "assistant")
    assert [e.stream for e in events] == ["lifecycle", "assistant"]
