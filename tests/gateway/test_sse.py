"""Server-Sent Events of a session (GATEWAY 1.6): ``GET /sessions/{key}/events``."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import httpx
import pytest
import trio

import pipeline as pl

from ._runs import stepped_run
from .conftest import ADMIN, ALICE, BOB_READ, Served, talker

TIMEOUT = 15
#: More events than any test here reads from one stream.
MAX_EVENTS = 100_000


@attrs.frozen
class Sse:
    """One server-sent event."""

    event: str
    data: str
    id: str | None = None

    def payload(self) -> Any:
        return json.loads(self.data)


async def parse_events(response: httpx.Response, events: trio.MemorySendChannel[Sse]) -> None:
    """Parse a ``text/event-stream`` response into :class:`Sse` events (comments and other
    fields are skipped; ``event`` defaults to ``message``)."""
    fields: dict[str, str] = {}
    data: list[str] = []
    async with events:
        async for line in response.aiter_lines():
            if not line:
                if data or fields:
                    # Without waiting: a cancellation must reach the read, so that it unwinds
                    # httpx's generators (see open_events).
                    events.send_nowait(
                        Sse(fields.get("event", "message"), "\n".join(data), fields.get("id"))
                    )
                fields, data = {}, []
            elif not line.startswith(":"):
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "data":
                    data.append(value)
                else:
                    fields[name] = value


@attrs.define(eq=False)
class SseReader:
    """The events of one stream, in order."""

    _events: trio.MemoryReceiveChannel[Sse]

    async def next(self) -> Sse:
        return await self._events.receive()

    async def until(self, done: Any) -> list[Sse]:
        """Events up to and including the first for which ``done(event)`` is true."""
        seen = []
        while True:
            event = await self.next()
            seen.append(event)
            if done(event):
                return seen


def request_args(
    token: str | None, in_query: bool, last_event_id: str | None = None
) -> dict[str, Any]:
    headers = {}
    params = {}
    if token is not None and in_query:
        params["token"] = token
    elif token is not None:
        headers["authorization"] = f"Bearer {token}"
    if last_event_id is not None:
        headers["last-event-id"] = last_event_id
    return {"headers": headers, "params": params}


@asynccontextmanager
async def open_events(
    url: str,
    session: str = "alice",
    *,
    token: str | None = ALICE,
    in_query: bool = False,
    last_event_id: str | None = None,
) -> AsyncIterator[tuple[httpx.Response, SseReader]]:
    """Open the session's event stream; yields once the response head has arrived (by then the
    gateway has subscribed).

    A task parses the stream and is cancelled at the end while it waits in the read (its only
    checkpoint): cancelling there unwinds httpx's nested async generators, which an abandoned
    iteration would leave to the garbage collector (a ``ResourceWarning`` under trio).
    """
    args = request_args(token, in_query, last_event_id)
    async with httpx.AsyncClient(timeout=None) as http:
        path = f"{url}/sessions/{session}/events"
        async with http.stream("GET", path, **args) as response:
            send, receive = trio.open_memory_channel[Sse](MAX_EVENTS)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(parse_events, response, send)
                yield response, SseReader(receive)
                nursery.cancel_scope.cancel()


async def get_events(url: str, session: str, **kwargs: Any) -> httpx.Response:
    """A plain GET of a session's event stream, for the refusals (whole responses)."""
    async with httpx.AsyncClient() as http:
        return await http.get(f"{url}/sessions/{session}/events", **request_args(**kwargs))


def is_end(run_id: str) -> Any:
    def done(event: Sse) -> bool:
        if event.event != "agent":
            return False
        payload = event.payload()
        return (
            payload["runId"] == run_id
            and payload["stream"] == "lifecycle"
            and payload["data"]["phase"] in ("end", "error")
        )

    return done


def is_final_chat(event: Sse) -> bool:
    return event.event == "chat" and bool(event.payload()["state"] == "final")


def agent_seqs(events: Iterable[Sse], run_id: str) -> list[int]:
    payloads = [e.payload() for e in events if e.event == "agent"]
    return [p["seq"] for p in payloads if p["runId"] == run_id]


async def talk(bus: pl.Bus, session: str, message: str) -> str:
    """Start a run of the ``talker`` agent in ``session``; its run id."""

    async def body(run: pl.Run) -> None:
        await talker(run, message)

    handle = await bus.start_run(body, context=pl.RunContext(session_key=session))
    return handle.id


class TestOpening:
    async def test_a_bearer_token_opens_the_sessions_event_stream(self, served: Served) -> None:
        with trio.fail_after(TIMEOUT):
            async with open_events(served.url) as (response, events):
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("text/event-stream")
                run_id = await talk(served.bus, "alice", "hello there")
                got = await events.until(is_end(run_id))
        assert agent_seqs(got, run_id) == [1, 2, 3, 4]

    async def test_a_token_in_the_query_opens_the_stream(self, served: Served) -> None:
        with trio.fail_after(TIMEOUT):
            async with open_events(served.url, in_query=True) as (response, events):
                assert response.status_code == 200
                run_id = await talk(served.bus, "alice", "hi")
                got = await events.until(is_end(run_id))
        assert agent_seqs(got, run_id) == [1, 2, 3]

    async def test_a_read_only_token_opens_its_own_sessions_stream(self, served: Served) -> None:
        with trio.fail_after(TIMEOUT):
            async with open_events(served.url, "bob", token=BOB_READ) as (response, events):
                assert response.status_code == 200
                run_id = await talk(served.bus, "bob", "hi")
                got = await events.until(is_end(run_id))
        assert agent_seqs(got, run_id) == [1, 2, 3]


class TestRefusals:
    async def test_no_token_gets_401(self, served: Served) -> None:
        with trio.fail_after(TIMEOUT):
            response = await get_events(served.url, "alice", token=None, in_query=False)
        assert response.status_code == 401
        assert response.headers["www-authenticate"].lower().startswith("bearer")

    @pytest.mark.parametrize("in_query", [False, True])
    async def test_an_unknown_token_gets_401(self, served: Served, in_query: bool) -> None:
        with trio.fail_after(TIMEOUT):
            response = await get_events(
                served.url, "alice", token="not-a-real-token", in_query=in_query
            )
        assert response.status_code == 401

    @pytest.mark.parametrize(("token", "session"), [(ALICE, "bob"), (BOB_READ, "alice")])
    async def test_a_token_for_another_session_gets_403(
        self, served: Served, token: str, session: str
    ) -> None:
        with trio.fail_after(TIMEOUT):
            response = await get_events(served.url, session, token=token, in_query=False)
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "forbidden"


class TestEvents:
    async def test_agent_event_ids_are_the_run_id_and_seq(self, served: Served) -> None:
        with trio.fail_after(TIMEOUT):
            async with open_events(served.url) as (_, events):
                run_id = await talk(served.bus, "alice", "one two three")
                got = await events.until(is_end(run_id))
        agents = [e for e in got if e.event == "agent"]
        assert len(agents) == 5
        for event in agents:
            payload = event.payload()
            assert event.id == f"{payload['runId']}:{payload['seq']}"

    async def test_every_event_has_an_id_of_its_own(self, served: Served) -> None:
        with trio.fail_after(TIMEOUT):
            async with open_events(served.url) as (_, events):
                run_id = await talk(served.bus, "alice", "one two three")
                got = await events.until(is_final_chat)
        ids = [e.id for e in got]
        assert None not in ids
        assert len(ids) == len(set(ids))
        assert all(i is not None and i.startswith(f"{run_id}:") for i in ids)

    async def test_agent_data_is_the_websockets_agent_payload(self, served: Served) -> None:
        with trio.fail_after(TIMEOUT):
            async with open_events(served.url) as (_, events):
                run_id = await talk(served.bus, "alice", "wire")
                got = await events.until(is_end(run_id))
        delta = next(e.payload() for e in got if e.event == "agent" and '"assistant"' in e.data)
        assert set(delta) == {"runId", "seq", "stream", "ts", "data", "sessionKey"}
        assert delta["data"] == {"delta": "wire "}
        assert delta["sessionKey"] == "alice"

    async def test_chat_data_is_the_flat_chat_payload(self, served: Served) -> None:
        with trio.fail_after(TIMEOUT):
            async with open_events(served.url) as (_, events):
                run_id = await talk(served.bus, "alice", "flat chat")
                got = await events.until(is_final_chat)
        final = got[-1].payload()
        assert final["runId"] == run_id
        assert final["sessionKey"] == "alice"
        assert final["message"]["content"][0]["text"] == "flat chat "
        assert "data" not in final

    async def test_a_stream_carries_only_its_own_session(self, served: Served) -> None:
        with trio.fail_after(TIMEOUT):
            async with open_events(served.url, token=ADMIN) as (_, events):
                bob_run = await talk(served.bus, "bob", "secret for bob")
                alice_run = await talk(served.bus, "alice", "for alice")
                got = await events.until(is_end(alice_run))
        assert {e.payload()["sessionKey"] for e in got} == {"alice"}
        assert all(bob_run not in e.data and "secret" not in e.data for e in got)

    @pytest.mark.parametrize("gateway_config", [{"client_buffer": 4}])
    async def test_a_drop_in_the_subscription_arrives_as_a_gap_event(self, served: Served) -> None:
        async def burst(run: pl.Run) -> None:
            for i in range(50):  # all at once: the stream's 4-event buffer overflows
                run.emit_nowait("assistant", {"delta": f"w{i} "})

        with trio.fail_after(TIMEOUT):
            async with open_events(served.url) as (_, events):
                handle = await served.bus.start_run(
                    burst, context=pl.RunContext(session_key="alice")
                )
                got = await events.until(is_end(handle.id))
        gaps = [e for e in got if e.event == "gap"]
        assert gaps
        for gap in gaps:
            assert gap.payload()["sessionKey"] == "alice"
            assert gap.payload()["dropped"] > 0
        seqs = agent_seqs(got, handle.id)
        missing = set(range(1, seqs[-1] + 1)) - set(seqs)
        assert sum(g.payload()["dropped"] for g in gaps) >= len(missing) > 0


class TestLastEventId:
    # Room for every event the run emits while racing the reconnect: a drop would be a gap.
    @pytest.mark.parametrize("gateway_config", [{"client_buffer": 10_000}])
    async def test_reconnecting_with_last_event_id_continues_right_after_that_event(
        self, served: Served
    ) -> None:
        with trio.fail_after(TIMEOUT):
            async with stepped_run(served.bus) as run:
                async with open_events(served.url) as (_, events):
                    await run.step(3)
                    seen = await events.until(
                        lambda e: e.event == "agent" and e.payload()["seq"] == 3
                    )
                last_id = seen[-1].id
                assert last_id == f"{run.run_id}:3"
                await run.step(3)  # missed
                racing = trio.Event()
                await run.step(racing)
                async with open_events(served.url, last_event_id=last_id) as (_, events):
                    racing.set()
                    await run.step(2)
                    await run.end()
                    got = await events.until(is_end(run.run_id))
        end = 1 + run.emitted[0] + 1
        assert agent_seqs(got, run.run_id) == list(range(4, end + 1))

    async def test_reconnecting_after_a_chat_event_id_repeats_nothing(self, served: Served) -> None:
        with trio.fail_after(TIMEOUT):
            async with stepped_run(served.bus) as run:
                async with open_events(served.url) as (_, events):
                    await run.step(2)
                    seen = await events.until(lambda e: e.event == "chat")
                await run.step(2)
                async with open_events(served.url, last_event_id=seen[-1].id) as (_, events):
                    await run.end()
                    got = await events.until(is_end(run.run_id))
        before = {e.id for e in seen}
        assert not before & {e.id for e in got}
        agents_before = agent_seqs(seen, run.run_id)
        assert agent_seqs(got, run.run_id) == list(range(agents_before[-1] + 1, 7))

    async def test_a_stream_without_last_event_id_starts_with_live_events(
        self, served: Served
    ) -> None:
        async def body(run: pl.Run) -> None:
            await talker(run, "before the stream")

        with trio.fail_after(TIMEOUT):
            handle = await served.bus.start_run(body, context=pl.RunContext(session_key="alice"))
            await handle.wait()
            earlier = handle.id
            async with open_events(served.url) as (_, events):
                later = await talk(served.bus, "alice", "after")
                got = await events.until(is_end(later))
        assert all(earlier not in e.data for e in got)

    @pytest.mark.parametrize("gateway_config", [{"replay_events": 5}])
    async def test_a_last_event_id_older_than_the_buffer_gets_resync(self, served: Served) -> None:
        with trio.fail_after(TIMEOUT):
            async with open_events(served.url) as (_, events):
                run_id = await talk(served.bus, "alice", "a b c d e f g h")
                await events.until(is_final_chat)
            async with open_events(served.url, last_event_id=f"{run_id}:1") as (_, events):
                first = await events.next()
        assert first.event == "resync"
        assert first.payload()["runId"] == run_id
        assert first.payload()["chat"]["message"]["content"][0]["text"] == "a b c d e f g h "
