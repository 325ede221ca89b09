"""The WebSocket protocol of ``/ws`` (GATEWAY 1.3): handshake, methods, errors, event frames.

Tests whose server closes the socket open it with ``_client.open_owned_ws`` (its docstring says
why).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
import trio.testing
from trio_websocket import CloseReason, ConnectionClosed, WebSocketConnection

import pipeline as pl

from ._client import (
    WsClient,
    agent_seqs,
    chat_send,
    connect,
    connect_owned,
    is_terminal,
    open_owned_ws,
)
from .conftest import ADMIN, ALICE, BOB_READ, Served

TIMEOUT = 15


@pytest.fixture
def real_time_clock() -> trio.testing.MockClock:
    """Real time that starts at 0 (so a test does not straddle a failure-budget minute) and
    that a test may move forward with ``jump`` (so a token bucket refills without a sleep)."""
    return trio.testing.MockClock(rate=1.0)


def connect_frame(token: str, **extra: Any) -> str:
    params: dict[str, Any] = {"auth": {"token": token}, **extra}
    return json.dumps({"type": "req", "id": "c1", "method": "connect", "params": params})


async def close_reason(ws: WebSocketConnection, send: str | bytes | None = None) -> CloseReason:
    """Send ``send`` (if given), then read until the server closes; its close reason. No
    response on the way may be a successful one."""

    async def send_and_read() -> None:
        if send is not None:
            await ws.send_message(send)
        while True:
            frame = json.loads(await ws.get_message())
            assert not (frame.get("type") == "res" and frame.get("ok")), frame

    with pytest.raises(ConnectionClosed) as closed:
        await send_and_read()
    reason = closed.value.reason
    assert reason is not None
    return reason


async def refusal(url: str, first: str | bytes) -> CloseReason:
    """Open a WebSocket and send ``first`` as its first message; the server's close reason."""
    async with open_owned_ws(url) as ws:
        return await close_reason(ws, first)


async def wait_status(client: WsClient, run_id: str, timeout_ms: int = 5000) -> dict[str, Any]:
    return await client.request("agent.wait", {"runId": run_id, "timeoutMs": timeout_ms})


def is_delta(frame: dict[str, Any], run_id: str, word: str) -> bool:
    payload = frame["payload"]
    return bool(
        frame["event"] == "agent"
        and payload["runId"] == run_id
        and payload["stream"] == "assistant"
        and payload["data"]["delta"] == word + " "
    )


class TestHandshake:
    async def test_the_server_speaks_first_with_a_challenge_carrying_a_nonce_and_a_time(
        self, served: Served
    ) -> None:
        with trio.fail_after(TIMEOUT):
            async with open_owned_ws(served.url) as ws:
                frame = json.loads(await ws.get_message())
        assert frame["type"] == "event"
        assert frame["event"] == "connect.challenge"
        assert isinstance(frame["payload"]["nonce"], str)
        assert len(frame["payload"]["nonce"]) >= 16
        assert isinstance(frame["payload"]["ts"], int)
        assert isinstance(frame["seq"], int)

    async def test_each_connection_gets_a_fresh_nonce(self, served: Served) -> None:
        nonces = set()
        with trio.fail_after(TIMEOUT):
            for _ in range(3):
                async with open_owned_ws(served.url) as ws:
                    nonces.add(json.loads(await ws.get_message())["payload"]["nonce"])
        assert len(nonces) == 3

    async def test_a_good_token_gets_hello_ok_with_protocol_server_features_and_policy(
        self, served: Served
    ) -> None:
        with trio.fail_after(TIMEOUT):
            async with connect(served.url, ALICE) as client:
                hello = client.hello
        assert hello["type"] == "hello-ok"
        assert hello["protocol"] == 1
        assert isinstance(hello["server"]["version"], str)
        assert isinstance(hello["server"]["connId"], str)
        assert hello["server"]["connId"]
        methods = set(hello["features"]["methods"])
        assert {
            "sessions.subscribe",
            "sessions.unsubscribe",
            "chat.send",
            "chat.abort",
            "agent.wait",
        } <= methods
        assert {"agent", "chat", "gap", "resync"} <= set(hello["features"]["events"])
        assert hello["policy"]["maxPayload"] == 262_144
        assert hello["policy"]["maxBufferedBytes"] == 1_048_576

    @pytest.mark.parametrize(
        "gateway_config", [{"max_payload": 5000, "max_buffered_bytes": 70_000}]
    )
    async def test_the_policy_reports_the_configured_limits(self, served: Served) -> None:
        with trio.fail_after(TIMEOUT):
            async with connect(served.url, ALICE) as client:
                policy = client.hello["policy"]
        assert policy == {"maxPayload": 5000, "maxBufferedBytes": 70_000}

    async def test_two_connections_get_different_conn_ids(self, served: Served) -> None:
        with trio.fail_after(TIMEOUT):
            async with connect(served.url, ALICE) as one, connect(served.url, ALICE) as two:
                assert one.hello["server"]["connId"] != two.hello["server"]["connId"]

    async def test_a_bad_token_closes_the_socket_with_1008_and_a_reason(
        self, served: Served
    ) -> None:
        with trio.fail_after(TIMEOUT):
            reason = await refusal(served.url, connect_frame("not-a-token-at-all"))
        assert reason.code == 1008
        assert reason.reason
        assert "token" in reason.reason

    async def test_a_connect_without_a_token_closes_the_socket_with_1008(
        self, served: Served
    ) -> None:
        frame = json.dumps({"type": "req", "id": "1", "method": "connect", "params": {}})
        with trio.fail_after(TIMEOUT):
            reason = await refusal(served.url, frame)
        assert reason.code == 1008
        assert reason.reason

    async def test_a_first_request_other_than_connect_closes_the_socket_with_1008(
        self, served: Served
    ) -> None:
        frame = {"type": "req", "id": "1", "method": "sessions.subscribe", "params": {}}
        with trio.fail_after(TIMEOUT):
            reason = await refusal(served.url, json.dumps(frame))
        assert reason.code == 1008
        assert "connect" in (reason.reason or "")

    @pytest.mark.parametrize("garbage", ["{{{ not json", "[]", '"connect"', b"\x00\xffbinary"])
    async def test_a_garbage_first_frame_closes_the_socket_with_1008(
        self, served: Served, garbage: str | bytes
    ) -> None:
        with trio.fail_after(TIMEOUT):
            reason = await refusal(served.url, garbage)
        assert reason.code == 1008
        assert reason.reason

    async def test_more_than_64_KiB_before_connect_closes_the_socket_with_1008(
        self, served: Served
    ) -> None:
        # A good token in a connect padded past 64 KiB: the size alone is refused.
        frame = connect_frame(ALICE, padding="x" * 70_000)
        with trio.fail_after(TIMEOUT):
            reason = await refusal(served.url, frame)
        assert reason.code == 1008
        assert "64 KiB" in (reason.reason or "")

    async def test_a_connect_just_under_64_KiB_is_accepted(self, served: Served) -> None:
        frame = connect_frame(ALICE, padding="x" * 60_000)
        with trio.fail_after(TIMEOUT):
            async with open_owned_ws(served.url) as ws:
                await ws.get_message()  # the challenge
                await ws.send_message(frame)
                response = json.loads(await ws.get_message())
        assert response["ok"], response
        assert response["payload"]["type"] == "hello-ok"


class TestFailedHandshakeBudget:
    @pytest.mark.parametrize("gateway_config", [{"max_auth_failures_per_minute": 3}])
    async def test_a_peer_past_its_failure_budget_is_refused_even_with_a_good_token(
        self, served: Served, real_time_clock: trio.testing.MockClock
    ) -> None:
        with trio.fail_after(TIMEOUT):
            for _ in range(3):
                assert (await refusal(served.url, connect_frame("wrong-token-xx"))).code == 1008
            reason = await refusal(served.url, connect_frame(ALICE))
        assert reason.code == 1008
        assert "too many" in (reason.reason or "")

    @pytest.mark.parametrize("gateway_config", [{"max_auth_failures_per_minute": 3}])
    async def test_failures_within_the_budget_do_not_refuse_a_good_token(
        self, served: Served, real_time_clock: trio.testing.MockClock
    ) -> None:
        with trio.fail_after(TIMEOUT):
            for _ in range(2):
                assert (await refusal(served.url, connect_frame("wrong-token-xx"))).code == 1008
            async with connect_owned(served.url, ALICE) as client:
                assert client.hello["type"] == "hello-ok"

    @pytest.mark.parametrize("gateway_config", [{"max_auth_failures_per_minute": 2}])
    async def test_a_refused_peer_may_try_again_the_next_minute(
        self, served: Served, real_time_clock: trio.testing.MockClock
    ) -> None:
        with trio.fail_after(TIMEOUT):
            for _ in range(2):
                assert (await refusal(served.url, connect_frame("wrong-token-xx"))).code == 1008
            assert (await refusal(served.url, connect_frame(ALICE))).code == 1008
        real_time_clock.jump(60)  # outside any deadline: a jump past one would cancel it
        with trio.fail_after(TIMEOUT):
            async with connect_owned(served.url, ALICE) as client:
                assert client.hello["type"] == "hello-ok"


class TestSubscriptions:
    async def test_subscribing_twice_to_a_session_is_idempotent(self, served: Served) -> None:
        with trio.fail_after(TIMEOUT):
            async with connect(served.url, ALICE) as client:
                for _ in range(2):
                    response = await client.request("sessions.subscribe", {"sessionKey": "alice"})
                    assert response["ok"], response
                run_id = await chat_send(client, "one two three")
                frames = await client.events_until(lambda f: is_terminal(f, run_id))
        assert agent_seqs(frames, run_id) == [1, 2, 3, 4, 5]

    async def test_unsubscribing_stops_the_sessions_events(self, served: Served) -> None:
        with trio.fail_after(TIMEOUT):
            async with connect(served.url, ALICE) as client:
                await client.request("sessions.subscribe", {"sessionKey": "alice"})
                response = await client.request("sessions.unsubscribe", {"sessionKey": "alice"})
                assert response["ok"], response
                unseen = await chat_send(client, "while away")
                assert (await wait_status(client, unseen))["payload"]["status"] == "ok"
                # Subscribe again and watch a later run: what the first subscription would
                # have sent about the earlier run comes before it, if at all.
                await client.request("sessions.subscribe", {"sessionKey": "alice"})
                later = await chat_send(client, "back again")
                frames = await client.events_until(lambda f: is_terminal(f, later))
        assert all(f["payload"]["runId"] != unseen for f in frames)
        assert agent_seqs(frames, later) == [1, 2, 3, 4]


class TestChatSend:
    async def test_chat_send_answers_the_run_id_of_the_run_it_started(self, served: Served) -> None:
        with trio.fail_after(TIMEOUT):
            async with connect(served.url, ALICE) as client:
                await client.request("sessions.subscribe", {"sessionKey": "alice"})
                run_id = await chat_send(client, "hello world")
                frames = await client.events_until(lambda f: is_terminal(f, run_id))
        deltas = [
            f["payload"]["data"]["delta"]
            for f in frames
            if f["event"] == "agent" and f["payload"]["stream"] == "assistant"
        ]
        assert deltas == ["hello ", "world "]
        assert {f["payload"]["runId"] for f in frames} == {run_id}

    async def test_chat_send_needs_the_write_scope(self, served: Served) -> None:
        params = {"sessionKey": "bob", "message": "hi", "idempotencyKey": "k"}
        with trio.fail_after(TIMEOUT):
            async with connect(served.url, BOB_READ) as client:
                response = await client.request("chat.send", params)
        assert response["ok"] is False
        assert response["error"]["code"] == "forbidden"
        assert served.bus.statistics().runs_started == 0

    async def test_reusing_an_idempotency_key_gives_the_same_run_id_and_starts_one_run(
        self, served: Served
    ) -> None:
        with trio.fail_after(TIMEOUT):
            async with connect(served.url, ALICE) as client:
                first = await chat_send(client, "hang on", key="same-key")
                second = await chat_send(client, "hang on", key="same-key")
                assert second == first
                await client.request("chat.abort", {"sessionKey": "alice", "runId": first})
                assert (await wait_status(client, first))["payload"]["status"] == "aborted"
                third = await chat_send(client, "hang on", key="same-key")
        assert third == first
        assert served.bus.statistics().runs_started == 1

    async def test_concurrent_sends_with_one_idempotency_key_start_one_run(
        self, served: Served
    ) -> None:
        """Two connections send at once (a client retrying on a new connection while its
        first send is in flight): both get the run the first one started."""
        answers: list[str] = []
        with trio.fail_after(TIMEOUT):
            async with connect(served.url, ALICE) as one, connect(served.url, ALICE) as two:
                for attempt in range(3):
                    params = {
                        "sessionKey": "alice",
                        "message": "hang",
                        "idempotencyKey": f"k{attempt}",
                    }
                    frame = json.dumps(
                        {"type": "req", "id": "s", "method": "chat.send", "params": params}
                    )
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(one.ws.send_message, frame)
                        nursery.start_soon(two.ws.send_message, frame)
                    answers += [(await c.frame())["payload"]["runId"] for c in (one, two)]
                await one.request("chat.abort", {"sessionKey": "alice"})
        assert answers[0::2] == answers[1::2]
        assert served.bus.statistics().runs_started == 3

    async def test_different_idempotency_keys_start_different_runs(self, served: Served) -> None:
        with trio.fail_after(TIMEOUT):
            async with connect(served.url, ALICE) as client:
                first = await chat_send(client, "hi", key="k1")
                second = await chat_send(client, "hi", key="k2")
        assert first != second
        assert served.bus.statistics().runs_started == 2


class TestChatAbort:
    async def test_aborting_a_hanging_run_answers_its_run_id(self, served: Served) -> None:
        with trio.fail_after(TIMEOUT):
            async with connect(served.url, ALICE) as client:
                run_id = await chat_send(client, "please hang")
                response = await client.request(
                    "chat.abort", {"sessionKey": "alice", "runId": run_id}
                )
                assert response["ok"], response
                assert response["payload"] == {"aborted": [run_id]}
                assert (await wait_status(client, run_id))["payload"]["status"] == "aborted"

    async def test_an_aborted_run_reaches_a_subscriber_as_chat_aborted_then_lifecycle_end(
        self, served: Served
    ) -> None:
        with trio.fail_after(TIMEOUT):
            async with connect(served.url, ADMIN) as watcher, connect(served.url, ALICE) as alice:
                await watcher.request("sessions.subscribe", {"sessionKey": "alice"})
                run_id = await chat_send(alice, "please hang")
                await watcher.events_until(lambda f: is_delta(f, run_id, "hang"))
                await alice.request("chat.abort", {"sessionKey": "alice", "runId": run_id})
                frames = await watcher.events_until(lambda f: is_terminal(f, run_id))
        chats = [f for f in frames if f["event"] == "chat" and f["payload"]["state"] == "aborted"]
        assert len(chats) == 1
        assert frames.index(chats[0]) < len(frames) - 1  # before the lifecycle end
        end = frames[-1]["payload"]
        assert end["data"]["phase"] == "end"
        assert end["data"]["aborted"] is True

    async def test_aborting_when_nothing_is_live_answers_an_empty_list(
        self, served: Served
    ) -> None:
        with trio.fail_after(TIMEOUT):
            async with connect(served.url, ALICE) as client:
                everything = await client.request("chat.abort", {"sessionKey": "alice"})
                finished = await chat_send(client, "done soon")
                await wait_status(client, finished)
                one = await client.request("chat.abort", {"sessionKey": "alice", "runId": finished})
        assert everything["payload"] == {"aborted": []}
        assert one["payload"] == {"aborted": []}

    async def test_aborting_without_a_run_id_aborts_every_live_run_of_that_session_only(
        self, served: Served
    ) -> None:
        with trio.fail_after(TIMEOUT):
            async with connect(served.url, ADMIN) as client:
                alice_runs = [await chat_send(client, f"hang {i}", "alice") for i in range(2)]
                bob_run = await chat_send(client, "hang bob", "bob")
                response = await client.request("chat.abort", {"sessionKey": "alice"})
                statuses = [(await wait_status(client, r))["payload"]["status"] for r in alice_runs]
                assert bob_run in served.bus.live_runs()
                await client.request("chat.abort", {"sessionKey": "bob"})
        assert sorted(response["payload"]["aborted"]) == sorted(alice_runs)
        assert statuses == ["aborted", "aborted"]

    async def test_aborting_a_run_of_another_session_by_id_aborts_nothing(
        self, served: Served
    ) -> None:
        with trio.fail_after(TIMEOUT):
            async with connect(served.url, ADMIN) as client:
                bob_run = await chat_send(client, "hang bob", "bob")
                response = await client.request(
                    "chat.abort", {"sessionKey": "alice", "runId": bob_run}
                )
                assert bob_run in served.bus.live_runs()
                await client.request("chat.abort", {"sessionKey": "bob"})
        assert response["payload"] == {"aborted": []}


class TestAgentWait:
    async def test_waiting_for_a_finished_run_answers_ok(self, served: Served) -> None:
        with trio.fail_after(TIMEOUT):
            async with connect(served.url, ALICE) as client:
                run_id = await chat_send(client, "short answer")
                response = await wait_status(client, run_id)
        assert response["ok"], response
        assert response["payload"]["status"] == "ok"
        assert response["payload"]["runId"] == run_id

    async def test_waiting_for_a_hanging_run_answers_pending_once_the_timeout_passes(
        self, served: Served
    ) -> None:
        with trio.fail_after(TIMEOUT):
            async with connect(served.url, ALICE) as client:
                run_id = await chat_send(client, "hang")
                began = trio.current_time()
                response = await wait_status(client, run_id, timeout_ms=100)
                took = trio.current_time() - began
                await client.request("chat.abort", {"sessionKey": "alice"})
        assert response["payload"]["status"] == "pending"
        assert 0.09 <= took < 5

    async def test_waiting_answers_as_soon_as_the_run_ends(self, served: Served) -> None:
        wait = {"runId": "", "timeoutMs": 60_000}
        with trio.fail_after(TIMEOUT):
            async with connect(served.url, ALICE) as client, connect(served.url, ALICE) as other:
                run_id = await chat_send(client, "hang")
                wait["runId"] = run_id
                frame = {"type": "req", "id": "w", "method": "agent.wait", "params": wait}
                await other.ws.send_message(json.dumps(frame))
                # One connection's requests are handled in order: the wait has begun.
                await other.request("sessions.list")
                await client.request("chat.abort", {"sessionKey": "alice", "runId": run_id})
                response = await other.frame()
        assert response["id"] == "w"
        assert response["payload"] == {"runId": run_id, "status": "aborted"}

    async def test_waiting_for_an_unknown_run_answers_not_found(self, served: Served) -> None:
        with trio.fail_after(TIMEOUT):
            async with connect(served.url, ALICE) as client:
                response = await wait_status(client, "no-such-run")
        assert response["ok"] is False
        assert response["error"]["code"] == "not_found"

    async def test_waiting_for_another_sessions_run_is_forbidden(self, served: Served) -> None:
        with trio.fail_after(TIMEOUT):
            async with connect(served.url, ADMIN) as admin, connect(served.url, ALICE) as alice:
                bob_run = await chat_send(admin, "bob says", "bob")
                await wait_status(admin, bob_run)
                response = await wait_status(alice, bob_run)
        assert response["ok"] is False
        assert response["error"]["code"] == "forbidden"
        assert bob_run not in json.dumps(response["error"]["message"])


class TestRequestErrors:
    async def test_an_unknown_method_gets_unknown_method_with_the_request_id(
        self, served: Served
    ) -> None:
        with trio.fail_after(TIMEOUT):
            async with connect(served.url, ALICE) as client:
                response = await client.request("no.such.method", {})
        assert response["ok"] is False
        assert response["error"]["code"] == "unknown_method"
        assert isinstance(response["error"]["message"], str)

    @pytest.mark.parametrize(
        "frame",
        [
            "{{{ not json",
            "[1, 2, 3]",
            '"a string"',
            "null",
            '{"type": "req", "method": "sessions.subscribe"}',
            '{"type": "req", "id": null, "method": 42}',
            '{"type": "req", "id": {"nested": 1}, "method": "agent.wait"}',
        ],
    )
    async def test_a_malformed_frame_gets_a_bad_request_error_with_a_null_id(
        self, served: Served, frame: str
    ) -> None:
        with trio.fail_after(TIMEOUT):
            async with connect(served.url, ALICE) as client:
                await client.ws.send_message(frame)
                response = await client.frame()
        assert response == {
            "type": "res",
            "id": None,
            "ok": False,
            "error": {"code": "bad_request", "message": response["error"]["message"]},
        }

    @pytest.mark.parametrize(
        "frame",
        [
            {"type": "req", "id": "r7"},
            {"type": "event", "id": "r7", "method": "agent.wait"},
            {"type": "req", "id": "r7", "method": "sessions.subscribe", "params": [1]},
            {"type": "req", "id": "r7", "method": "sessions.subscribe", "params": {}},
            {"type": "req", "id": "r7", "method": "chat.send", "params": {"sessionKey": "alice"}},
            {"type": "req", "id": "r7", "method": "agent.wait", "params": {"runId": 5}},
        ],
    )
    async def test_a_malformed_request_with_an_id_gets_bad_request_with_that_id(
        self, served: Served, frame: dict[str, Any]
    ) -> None:
        with trio.fail_after(TIMEOUT):
            async with connect(served.url, ALICE) as client:
                await client.ws.send_message(json.dumps(frame))
                response = await client.frame()
        assert response["id"] == "r7"
        assert response["ok"] is False
        assert response["error"]["code"] == "bad_request"

    async def test_the_connection_stays_usable_after_malformed_frames(self, served: Served) -> None:
        with trio.fail_after(TIMEOUT):
            async with connect(served.url, ALICE) as client:
                for garbage in ("{{{", b"\x00\x01", "[]"):
                    await client.ws.send_message(garbage)
                    assert (await client.frame())["error"]["code"] == "bad_request"
                response = await client.request("sessions.subscribe", {"sessionKey": "alice"})
                assert response["ok"], response
                run_id = await chat_send(client, "still here")
                frames = await client.events_until(lambda f: is_terminal(f, run_id))
        assert agent_seqs(frames, run_id) == [1, 2, 3, 4]

    @pytest.mark.parametrize("gateway_config", [{"max_payload": 1024}])
    async def test_a_frame_bigger_than_max_payload_closes_the_socket_with_1009(
        self, served: Served
    ) -> None:
        big = json.dumps({"type": "req", "id": "1", "method": "x", "params": {"p": "y" * 2000}})
        with trio.fail_after(TIMEOUT):
            async with connect_owned(served.url, ALICE) as client:
                reason = await close_reason(client.ws, big)
        assert reason.code == 1009
        assert reason.reason

    @pytest.mark.parametrize("gateway_config", [{"max_payload": 1024}])
    async def test_a_frame_within_max_payload_is_served(self, served: Served) -> None:
        with trio.fail_after(TIMEOUT):
            async with connect_owned(served.url, ALICE) as client:
                response = await client.request("agent.wait", {"runId": "r" * 900})
        assert response["error"]["code"] == "not_found"


class TestRateLimit:
    @pytest.mark.parametrize("gateway_config", [{"max_requests_per_second": 5}])
    async def test_requests_past_the_rate_get_rate_limited_errors(
        self, served: Served, real_time_clock: trio.testing.MockClock
    ) -> None:
        with trio.fail_after(TIMEOUT):
            async with connect(served.url, ALICE) as client:
                for i in range(15):
                    frame = {"type": "req", "id": i, "method": "sessions.list", "params": {}}
                    await client.ws.send_message(json.dumps(frame))
                responses = [await client.frame() for _ in range(15)]
        assert [r["id"] for r in responses] == list(range(15))
        limited = [r for r in responses if not r["ok"]]
        assert len(limited) >= 9
        assert {r["error"]["code"] for r in limited} == {"rate_limited"}
        assert all(r["ok"] for r in responses[:5])

    @pytest.mark.parametrize("gateway_config", [{"max_requests_per_second": 5}])
    async def test_a_rate_limited_connection_is_served_again_once_its_budget_refills(
        self, served: Served, real_time_clock: trio.testing.MockClock
    ) -> None:
        with trio.fail_after(TIMEOUT):
            async with connect(served.url, ALICE) as client:
                codes = [(await client.request("sessions.list"))["ok"] for _ in range(10)]
                assert codes.count(False) >= 4
                real_time_clock.jump(1.0)  # within the deadline: 15 s minus a second is plenty
                response = await client.request("sessions.subscribe", {"sessionKey": "alice"})
        assert response["ok"], response


class TestEventFrames:
    async def test_an_agent_payload_is_the_bus_events_wire_form(self, served: Served) -> None:
        with trio.fail_after(TIMEOUT):
            async with served.bus.subscribe(session_key="alice") as sub:
                async with connect(served.url, ALICE) as client:
                    await client.request("sessions.subscribe", {"sessionKey": "alice"})
                    run_id = await chat_send(client, "wire form")
                    frames = await client.events_until(lambda f: is_terminal(f, run_id))
                    bus_events: list[pl.Event] = []
                    while not bus_events or bus_events[-1].data.get("phase") != "end":
                        event = await sub.receive()
                        if event.stream != "chat":
                            bus_events.append(event)
        agents = [f["payload"] for f in frames if f["event"] == "agent"]
        assert agents == [json.loads(json.dumps(e.to_wire())) for e in bus_events]
        for payload in agents:
            assert set(payload) == {"runId", "seq", "stream", "ts", "data", "sessionKey"}
            assert payload["sessionKey"] == "alice"

    async def test_a_chat_payload_is_flat_with_run_session_seq_and_state(
        self, served: Served
    ) -> None:
        with trio.fail_after(TIMEOUT):
            async with connect(served.url, ALICE) as client:
                await client.request("sessions.subscribe", {"sessionKey": "alice"})
                run_id = await chat_send(client, "chat form")
                frames = await client.events_until(
                    lambda f: f["event"] == "chat" and f["payload"]["state"] == "final"
                )
        chats = [f["payload"] for f in frames if f["event"] == "chat"]
        allowed = {
            "runId",
            "sessionKey",
            "seq",
            "state",
            "message",
            "stopReason",
            "errorMessage",
            "errorKind",
        }
        for payload in chats:
            assert {"runId", "sessionKey", "seq", "state"} <= set(payload) <= allowed
            assert payload["runId"] == run_id
            assert payload["sessionKey"] == "alice"
            assert isinstance(payload["seq"], int)
        final = chats[-1]
        assert final["message"]["role"] == "assistant"
        assert final["message"]["content"][0]["text"] == "chat form "

    async def test_the_outer_seq_rises_by_one_per_event_frame(self, served: Served) -> None:
        with trio.fail_after(TIMEOUT):
            async with open_owned_ws(served.url) as ws:
                client = WsClient(ws)
                events = [await client.frame()]  # the challenge
                await client.request("connect", {"auth": {"token": ALICE}})
                await client.request("sessions.subscribe", {"sessionKey": "alice"})
                first = await chat_send(client, "one two")
                events += await client.events_until(lambda f: is_terminal(f, first))
                second = await chat_send(client, "three")
                events += await client.events_until(lambda f: is_terminal(f, second))
                events += client.events
        seqs = [f["seq"] for f in events]
        assert len(seqs) > 10
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))

    async def test_responses_carry_no_seq(self, served: Served) -> None:
        with trio.fail_after(TIMEOUT):
            async with connect(served.url, ALICE) as client:
                ok = await client.request("sessions.subscribe", {"sessionKey": "alice"})
                error = await client.request("no.such.method")
        assert "seq" not in ok
        assert "seq" not in error

    @pytest.mark.parametrize("gateway_config", [{"client_buffer": 4}])
    async def test_a_drop_in_a_subscription_arrives_as_a_gap_frame(self, served: Served) -> None:
        async def burst(run: pl.Run) -> None:
            for i in range(50):  # all at once: the client's 4-event buffer overflows
                run.emit_nowait("assistant", {"delta": f"w{i} "})

        with trio.fail_after(TIMEOUT):
            async with connect(served.url, ALICE) as client:
                await client.request("sessions.subscribe", {"sessionKey": "alice"})
                handle = await served.bus.start_run(
                    burst, context=pl.RunContext(session_key="alice")
                )
                frames = await client.events_until(lambda f: is_terminal(f, handle.id))
        gaps = [f["payload"] for f in frames if f["event"] == "gap"]
        seqs = agent_seqs(frames, handle.id)
        assert gaps
        assert all(g["sessionKey"] == "alice" for g in gaps)
        # Every seq missing from what arrived is accounted for by a gap.
        missing = set(range(1, seqs[-1] + 1)) - set(seqs)
        assert sum(g["dropped"] for g in gaps) >= len(missing) > 0
