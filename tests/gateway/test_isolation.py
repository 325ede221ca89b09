"""Session isolation (GATEWAY 1.2): a client never receives anything about a session its token
does not allow or that it did not subscribe to, and every request outside its token is refused
with ``forbidden``."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import attrs
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

import pipeline as pl
import pipeline.gateway
from pipeline.gateway import GatewayConfig, Tokens

from ._client import WsClient, chat_send, connect, finish, is_terminal
from .conftest import ADMIN, ALICE, BOB_READ, Served, talker

TIMEOUT = 15
#: Session keys no one of which is a substring of another, so a leak shows in the raw text.
SESSIONS = ("amber", "birch", "cedar", "dunes")


async def frames_until_barrier(
    client: WsClient, barrier: str, expected: set[str]
) -> list[dict[str, Any]]:
    """Event frames until the terminal events of ``barrier`` and of every run in ``expected``
    have arrived."""
    waiting = {barrier, *expected}
    frames: list[dict[str, Any]] = []
    while waiting:
        frame = await client.event()
        frames.append(frame)
        if is_terminal(frame):
            waiting.discard(frame["payload"]["runId"])
    return frames


@attrs.frozen
class Viewer:
    """One client of a generated example: what its token allows and what it asks for."""

    allowed: frozenset[str]
    everything: bool
    write: bool
    subscribes: frozenset[str]

    def may_read(self, session: str) -> bool:
        return self.everything or session in self.allowed


sessions = st.frozensets(st.sampled_from(SESSIONS))
viewers = st.builds(Viewer, sessions, st.booleans(), st.booleans(), sessions)
runs = st.lists(st.tuples(st.sampled_from(SESSIONS), st.integers(1, 3)), min_size=1, max_size=6)


def example_tokens(clients: list[Viewer]) -> Tokens:
    entries: list[dict[str, Any]] = [
        {"token": ADMIN, "sessions": ["*"], "scopes": ["read", "write", "admin"]}
    ]
    for index, viewer in enumerate(clients):
        keys = ["*"] if viewer.everything else [*sorted(viewer.allowed), f"own{index}"]
        scopes = ["read", "write"] if viewer.write else ["read"]
        entries.append({"token": f"viewer-token-{index}", "sessions": keys, "scopes": scopes})
    return Tokens.from_json({"tokens": entries})


class TestIsolationInvariant:
    @settings(max_examples=15, deadline=None)
    @given(clients=st.lists(viewers, min_size=1, max_size=3), plan=runs)
    async def test_a_client_receives_only_the_sessions_it_may_read_and_subscribed_to(
        self, clients: list[Viewer], plan: list[tuple[str, int]]
    ) -> None:
        config = GatewayConfig(tokens=example_tokens(clients), port=0, agent=talker)
        with trio.fail_after(TIMEOUT):
            async with pl.open_bus() as bus, pipeline.gateway.open_gateway(bus, config) as gw:
                await self._check(gw.url, clients, plan)

    async def _check(self, url: str, clients: list[Viewer], plan: list[tuple[str, int]]) -> None:
        async with connect(url, ADMIN) as admin, contextlib.AsyncExitStack() as stack:
            opened: list[WsClient] = []
            wanted: list[set[str]] = []
            for index, viewer in enumerate(clients):
                client = await stack.enter_async_context(connect(url, f"viewer-token-{index}"))
                opened.append(client)
                wanted.append(await self._subscribe(client, index, viewer))
            run_sessions: dict[str, str] = {}
            for number, (session, words) in enumerate(plan):
                message = " ".join([f"{session}-{number}"] * words)
                run_id = await chat_send(admin, message, session)
                run_sessions[run_id] = session
                await finish(admin, run_id)
            barriers = [await chat_send(admin, "barrier", f"own{i}") for i in range(len(clients))]
            for index, client in enumerate(opened):
                readable = wanted[index] | {f"own{index}"}
                expected = {r for r, s in run_sessions.items() if s in readable}
                frames = await frames_until_barrier(client, barriers[index], expected)
                for frame in frames:
                    payload = frame["payload"]
                    assert payload["sessionKey"] in readable, frame
                    if frame["event"] in ("agent", "chat"):
                        assert payload["runId"] in expected | {barriers[index]}, frame
                    text = json.dumps(frame)
                    for session in set(SESSIONS) - readable:
                        assert session not in text, frame

    async def _subscribe(self, client: WsClient, index: int, viewer: Viewer) -> set[str]:
        """Subscribe as ``viewer`` asks; check refusals; the sessions subscribed."""
        subscribed = set()
        own = await client.request("sessions.subscribe", {"sessionKey": f"own{index}"})
        assert own["ok"], own
        for session in sorted(viewer.subscribes):
            response = await client.request("sessions.subscribe", {"sessionKey": session})
            if viewer.may_read(session):
                assert response["ok"], response
                subscribed.add(session)
            else:
                assert response["error"]["code"] == "forbidden", response
        for session in SESSIONS:
            if viewer.may_read(session) and viewer.write:
                continue
            send = {"sessionKey": session, "message": "x", "idempotencyKey": f"x{index}"}
            for method, params in (
                ("chat.send", send),
                ("chat.abort", {"sessionKey": session}),
            ):
                response = await client.request(method, params)
                assert response["error"]["code"] == "forbidden", (method, response)
        return subscribed


class TestForbiddenRequests:
    async def test_subscribing_to_a_session_outside_the_token_is_forbidden(
        self, served: Served
    ) -> None:
        with trio.fail_after(TIMEOUT):
            async with connect(served.url, ALICE) as client:
                response = await client.request("sessions.subscribe", {"sessionKey": "bob"})
        assert response["ok"] is False
        assert response["error"]["code"] == "forbidden"

    async def test_nothing_of_a_forbidden_session_reaches_the_client_that_asked_for_it(
        self, served: Served
    ) -> None:
        with trio.fail_after(TIMEOUT):
            async with connect(served.url, ADMIN) as admin, connect(served.url, ALICE) as alice:
                await alice.request("sessions.subscribe", {"sessionKey": "bob"})
                await alice.request("sessions.subscribe", {"sessionKey": "alice"})
                bob_run = await chat_send(admin, "secret words for bob", "bob")
                await finish(admin, bob_run)
                barrier = await chat_send(admin, "barrier", "alice")
                frames = await frames_until_barrier(alice, barrier, set())
        assert all(f["payload"]["sessionKey"] == "alice" for f in frames)
        assert "secret" not in json.dumps(frames)
        assert bob_run not in json.dumps(frames)

    async def test_sending_in_a_session_outside_the_token_is_forbidden_and_starts_nothing(
        self, served: Served
    ) -> None:
        params = {"sessionKey": "bob", "message": "hi", "idempotencyKey": "k"}
        with trio.fail_after(TIMEOUT):
            async with connect(served.url, ALICE) as client:
                response = await client.request("chat.send", params)
        assert response["error"]["code"] == "forbidden"
        assert served.bus.statistics().runs_started == 0

    async def test_aborting_in_a_session_outside_the_token_is_forbidden_and_leaves_it_live(
        self, served: Served
    ) -> None:
        with trio.fail_after(TIMEOUT):
            async with connect(served.url, ADMIN) as admin, connect(served.url, ALICE) as alice:
                bob_run = await chat_send(admin, "hang on", "bob")
                by_id = await alice.request("chat.abort", {"sessionKey": "bob", "runId": bob_run})
                every = await alice.request("chat.abort", {"sessionKey": "bob"})
                assert bob_run in served.bus.live_runs()
                await admin.request("chat.abort", {"sessionKey": "bob"})
        assert by_id["error"]["code"] == "forbidden"
        assert every["error"]["code"] == "forbidden"

    async def test_a_read_only_token_may_watch_but_not_abort_its_session(
        self, served: Served
    ) -> None:
        with trio.fail_after(TIMEOUT):
            async with connect(served.url, ADMIN) as admin, connect(served.url, BOB_READ) as bob:
                subscribed = await bob.request("sessions.subscribe", {"sessionKey": "bob"})
                bob_run = await chat_send(admin, "hang on", "bob")
                response = await bob.request("chat.abort", {"sessionKey": "bob", "runId": bob_run})
                assert bob_run in served.bus.live_runs()
                await admin.request("chat.abort", {"sessionKey": "bob"})
        assert subscribed["ok"], subscribed
        assert response["error"]["code"] == "forbidden"

    async def test_a_resume_naming_another_sessions_run_replays_nothing_of_it(
        self, served: Served
    ) -> None:
        with trio.fail_after(TIMEOUT):
            async with connect(served.url, ADMIN) as admin, connect(served.url, ALICE) as alice:
                bob_run = await chat_send(admin, "secret words", "bob")
                await finish(admin, bob_run)
                response = await alice.request(
                    "sessions.subscribe", {"sessionKey": "alice", "resume": {bob_run: 0}}
                )
                barrier = await chat_send(admin, "barrier", "alice")
                frames = await frames_until_barrier(alice, barrier, set())
        assert response["ok"], response
        assert bob_run not in json.dumps(frames)

    async def test_sessions_list_names_only_sessions_the_token_allows(self, served: Served) -> None:
        with trio.fail_after(TIMEOUT):
            async with connect(served.url, ADMIN) as admin, connect(served.url, ALICE) as alice:
                for session in ("alice", "bob"):
                    await finish(admin, await chat_send(admin, "hello", session))
                listed = await alice.request("sessions.list")
        keys = [entry["sessionKey"] for entry in listed["payload"]["sessions"]]
        assert keys == ["alice"]
