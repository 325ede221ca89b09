"""Resume (GATEWAY 1.5): ``sessions.subscribe`` with ``resume`` replays what a reconnecting
client missed from the replay buffer, then live events follow with no gap and no duplicate;
what the buffer no longer holds comes as ``resync``."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from ._client import WsClient, agent_seqs, chat_send, connect, finish, is_terminal
from ._runs import stepped_run
from .conftest import ALICE, Served

TIMEOUT = 15


def chat_positions(frames: list[dict[str, Any]], run_id: str) -> list[tuple[int, str]]:
    return [
        (f["payload"]["seq"], f["payload"]["state"])
        for f in frames
        if f["event"] == "chat" and f["payload"]["runId"] == run_id
    ]


def at_seq(run_id: str, seq: int) -> Any:
    def done(frame: dict[str, Any]) -> bool:
        payload = frame["payload"]
        return bool(
            frame["event"] == "agent" and payload["runId"] == run_id and payload["seq"] == seq
        )

    return done


async def subscribe(client: WsClient, resume: dict[str, int] | None = None) -> dict[str, Any]:
    params: dict[str, Any] = {"sessionKey": "alice"}
    if resume is not None:
        params["resume"] = resume
    response = await client.request("sessions.subscribe", params)
    assert response["ok"], response
    return response


class TestResumeOfOneRun:
    # Room for every event the run emits while racing the resume: a drop would be a gap.
    @pytest.mark.parametrize("gateway_config", [{"client_buffer": 10_000}])
    async def test_a_reconnecting_client_gets_the_rest_of_the_run_once_with_no_gap(
        self, served: Served
    ) -> None:
        """Part of the run is read, part is missed while away, more is emitted all the while
        the resume is handled, and the rest is live."""
        with trio.fail_after(TIMEOUT):
            async with stepped_run(served.bus) as run:
                async with connect(served.url, ALICE) as first:
                    await subscribe(first)
                    await run.step(3)
                    await first.events_until(at_seq(run.run_id, 4))
                await run.step(3)  # seqs 5-7, missed
                async with connect(served.url, ALICE) as second:
                    resumed = trio.Event()
                    await run.step(resumed)
                    await subscribe(second, {run.run_id: 4})
                    resumed.set()
                    await run.step(2)
                    await run.end()
                    frames = await second.events_until(lambda f: is_terminal(f, run.run_id))
        end = 1 + run.emitted[0] + 1
        assert agent_seqs(frames, run.run_id) == list(range(5, end + 1))

    @pytest.mark.parametrize("gateway_config", [{"client_buffer": 10_000}])
    async def test_chat_events_are_not_repeated_across_replay_and_live(
        self, served: Served
    ) -> None:
        with trio.fail_after(TIMEOUT):
            async with stepped_run(served.bus) as run:
                async with connect(served.url, ALICE) as first:
                    await subscribe(first)
                    await run.step(2)
                    await first.events_until(at_seq(run.run_id, 3))
                await run.step(2)
                async with connect(served.url, ALICE) as second:
                    resumed = trio.Event()
                    await run.step(resumed)
                    await subscribe(second, {run.run_id: 3})
                    resumed.set()
                    await run.end()
                    frames = await second.events_until(is_final_chat)
        positions = chat_positions(frames, run.run_id)
        assert positions
        assert len(positions) == len(set(positions))
        assert all(seq > 3 for seq, _ in positions)

    async def test_a_resume_at_a_finished_runs_last_seq_replays_nothing_of_it(
        self, served: Served
    ) -> None:
        with trio.fail_after(TIMEOUT):
            async with connect(served.url, ALICE) as client:
                await subscribe(client)
                run_id = await chat_send(client, "all seen")
                seen = await client.events_until(lambda f: is_terminal(f, run_id))
                last = agent_seqs(seen, run_id)[-1]
            async with connect(served.url, ALICE) as client:
                await subscribe(client, {run_id: last})
                later = await chat_send(client, "something new")
                frames = await client.events_until(lambda f: is_terminal(f, later))
        assert agent_seqs(frames, run_id) == []
        assert all(f["event"] != "resync" for f in frames)
        assert agent_seqs(frames, later) == [1, 2, 3, 4]


def is_final_chat(frame: dict[str, Any]) -> bool:
    return bool(frame["event"] == "chat" and frame["payload"]["state"] == "final")


class TestResumeOfASession:
    async def test_an_empty_resume_replays_the_sessions_recent_runs_then_live_events(
        self, served: Served
    ) -> None:
        with trio.fail_after(TIMEOUT):
            async with connect(served.url, ALICE) as client:
                one = await chat_send(client, "first run")
                await finish(client, one)
                two = await chat_send(client, "second run here")
                await finish(client, two)
                response = await subscribe(client, {})
                replayed = await client.events_until(lambda f: is_terminal(f, two))
                three = await chat_send(client, "third")
                live = await client.events_until(lambda f: is_terminal(f, three))
        assert response["payload"]["replayed"] > 0
        assert agent_seqs(replayed, one) == [1, 2, 3, 4]
        assert agent_seqs(replayed, two) == [1, 2, 3, 4, 5]
        assert agent_seqs(live, three) == [1, 2, 3]
        assert agent_seqs(live, one) == agent_seqs(live, two) == []

    async def test_subscribing_without_resume_gives_only_live_events(self, served: Served) -> None:
        with trio.fail_after(TIMEOUT):
            async with connect(served.url, ALICE) as client:
                earlier = await chat_send(client, "before subscribing")
                await finish(client, earlier)
                response = await subscribe(client)
                later = await chat_send(client, "after")
                frames = await client.events_until(lambda f: is_terminal(f, later))
        assert response["payload"].get("replayed", 0) == 0
        assert {f["payload"]["runId"] for f in frames} == {later}
        assert agent_seqs(frames, later) == [1, 2, 3]


class TestResync:
    @pytest.mark.parametrize("gateway_config", [{"replay_events": 5}])
    async def test_a_resume_older_than_the_buffer_gets_resync_with_the_chat_snapshot(
        self, served: Served
    ) -> None:
        words = "a b c d e f g h"
        with trio.fail_after(TIMEOUT):
            async with connect(served.url, ALICE) as client:
                run_id = await chat_send(client, words)
                await finish(client, run_id)
                await subscribe(client, {run_id: 1})
                frame = await client.event()
        assert frame["event"] == "resync"
        payload = frame["payload"]
        assert payload["sessionKey"] == "alice"
        assert payload["runId"] == run_id
        chat = payload["chat"]
        assert chat["runId"] == run_id
        assert chat["state"] == "final"
        assert chat["message"]["content"][0]["text"] == words + " "

    @pytest.mark.parametrize("gateway_config", [{"replay_events": 5}])
    async def test_after_a_resync_only_events_the_buffer_holds_are_replayed_in_order(
        self, served: Served
    ) -> None:
        with trio.fail_after(TIMEOUT):
            async with connect(served.url, ALICE) as client:
                run_id = await chat_send(client, "a b c d e f g h")
                await finish(client, run_id)
                response = await subscribe(client, {run_id: 1})
                later = await chat_send(client, "x")
                frames = await client.events_until(lambda f: is_terminal(f, later))
        assert frames[0]["event"] == "resync"
        seqs = agent_seqs(frames, run_id)
        assert seqs == sorted(seqs)
        assert len(seqs) < 10  # the run had 10 agent events; the buffer holds 5 events
        assert response["payload"]["replayed"] <= 5

    async def test_a_resume_the_buffer_still_covers_gets_no_resync(self, served: Served) -> None:
        with trio.fail_after(TIMEOUT):
            async with connect(served.url, ALICE) as client:
                run_id = await chat_send(client, "a b c d e f g h")
                await finish(client, run_id)
                await subscribe(client, {run_id: 1})
                frames = await client.events_until(lambda f: is_terminal(f, run_id))
        assert all(f["event"] != "resync" for f in frames)
        assert agent_seqs(frames, run_id) == list(range(2, 11))
