"""Defects found in review, one behaviour per test: each once crashed the gateway, leaked
another session's data, or broke a contract of GATEWAY.md section 1."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import trio

import pipeline as pl
import pipeline.gateway
from pipeline.gateway import GatewayConfig

from ._client import connect, is_terminal
from ._raw import address, http_exchange, status_of
from .conftest import ADMIN, ALICE, TOKENS, Served, talker

TIMEOUT = 20


# ---- helpers -------------------------------------------------------------------------------


async def assert_healthy(url: str) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.get(f"{url}/healthz")
    assert response.json() == {"ok": True}


async def start_talk(bus: pl.Bus, session: str, message: str) -> str:
    async def body(run: pl.Run) -> None:
        await talker(run, message)

    handle = await bus.start_run(body, context=pl.RunContext(session_key=session))
    return handle.id


def client_frame(payload: bytes) -> bytes:
    """One final text frame from a client, masked with a zero key."""
    size = len(payload)
    if size < 126:
        head = bytes([0x81, 0x80 | size])
    elif size < 65_536:
        head = bytes([0x81, 0x80 | 126]) + size.to_bytes(2, "big")
    else:
        head = bytes([0x81, 0x80 | 127]) + size.to_bytes(8, "big")
    return head + b"\0\0\0\0" + payload


async def upgraded_socket(url: str, *, rcvbuf: int | None = None) -> trio.socket.SocketType:
    """A socket upgraded to a WebSocket (the 101 response not read yet)."""
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    await sock.connect(address(url))
    await sock.send(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: MDEyMzQ1Njc4OWFiY2RlZg==\r\n\r\n"
    )
    return sock


@pytest.fixture
async def small_bus(nursery: trio.Nursery) -> AsyncIterator[Served]:
    """A gateway on a bus that allows only a few subscriptions at once."""
    config = GatewayConfig(tokens=TOKENS, port=0, agent=talker)
    async with pl.open_bus(pl.BusConfig(max_subscribers=4)) as bus:
        gateway = await nursery.start(pl.gateway.serve, bus, config)
        yield Served(bus, gateway)


# ---- client input that once escaped into the gateway's nursery -----------------------------


class TestCrashPaths:
    async def test_a_deeply_nested_json_frame_after_connect_gets_bad_request(
        self, served: Served
    ) -> None:
        with trio.fail_after(TIMEOUT):
            async with connect(served.url, ALICE) as client:
                await client.ws.send_message("[" * 100_000)
                frame = await client.frame()
                assert frame["type"] == "res"
                assert frame["id"] is None
                assert frame["error"]["code"] == "bad_request"
                res = await client.request("sessions.list")
                assert res["ok"], res
            await assert_healthy(served.url)

    async def test_a_deeply_nested_json_frame_instead_of_connect_is_closed_1008(
        self, served: Served
    ) -> None:
        with trio.fail_after(TIMEOUT):
            sock = await upgraded_socket(served.url)
            with sock:
                await sock.send(client_frame(b"[" * 50_000))
                received = b""
                while data := await sock.recv(65_536):
                    received += data
            # The close frame: opcode 8, then the code.
            close = received[received.rindex(b"\x88") :]
            assert int.from_bytes(close[2:4], "big") == 1008
            await assert_healthy(served.url)

    @pytest.mark.parametrize("gateway_config", [{"max_wait": 0.5}])
    @pytest.mark.parametrize("timeout_ms", ["NaN", "Infinity", "1" + "0" * 400])
    async def test_agent_wait_with_an_odd_timeout_is_answered_and_the_gateway_stays_up(
        self, served: Served, timeout_ms: str
    ) -> None:
        with trio.fail_after(TIMEOUT):
            run_id = await start_talk(served.bus, "alice", "hang")
            async with connect(served.url, ALICE) as client:
                frame = (
                    '{"type":"req","id":"w","method":"agent.wait","params":'
                    f'{{"runId":"{run_id}","timeoutMs":{timeout_ms}}}}}'
                )
                await client.ws.send_message(frame)
                got = await client.frame()
                assert got["id"] == "w"
                if got["ok"]:
                    assert got["payload"] == {"runId": run_id, "status": "pending"}
                else:
                    assert got["error"]["code"] == "bad_request"
                res = await client.request("sessions.list")
                assert res["ok"], res
            await assert_healthy(served.url)

    async def test_a_last_event_id_with_a_superscript_digit_is_ignored(
        self, served: Served
    ) -> None:
        request = (
            b"GET /sessions/alice/events HTTP/1.1\r\nHost: x\r\n"
            b"Authorization: Bearer " + ALICE.encode() + b"\r\n"
            b"Last-Event-ID: r1:\xb2\r\n\r\n"
        )
        with trio.fail_after(TIMEOUT):
            stream = await trio.open_tcp_stream(*address(served.url))
            async with stream:
                await stream.send_all(request)
                head = await stream.receive_some(65_536)
                assert head.startswith(b"HTTP/1.1 200"), head
            await assert_healthy(served.url)

    async def test_a_request_target_that_urlsplit_rejects_gets_a_400(self, served: Served) -> None:
        with trio.fail_after(TIMEOUT):
            response = await http_exchange(served.url, b"GET //[x/ws HTTP/1.1\r\nHost: x\r\n\r\n")
            assert status_of(response) == 400
            await assert_healthy(served.url)

    @pytest.mark.parametrize("kind", ["events", "agui"])
    async def test_a_session_stream_past_the_bus_subscriber_limit_gets_a_503(
        self, small_bus: Served, kind: str
    ) -> None:
        url = small_bus.url
        with trio.fail_after(TIMEOUT):
            async with trio.open_nursery() as nursery:
                held: list[trio.SocketStream] = []
                request = (
                    f"GET /sessions/alice/{kind} HTTP/1.1\r\nHost: x\r\n"
                    f"Authorization: Bearer {ALICE}\r\n\r\n"
                ).encode()
                # The recorder holds one subscription; three streams take the rest.
                for _ in range(3):
                    stream = await trio.open_tcp_stream(*address(url))
                    held.append(stream)
                    await stream.send_all(request)
                    assert (await stream.receive_some(65_536)).startswith(b"HTTP/1.1 200")
                response = await http_exchange(url, request)
                assert status_of(response) == 503
                await assert_healthy(url)
                for stream in held:
                    await stream.aclose()
                nursery.cancel_scope.cancel()

    async def test_post_agui_past_the_bus_subscriber_limit_gets_a_503(
        self, small_bus: Served
    ) -> None:
        url = small_bus.url
        with trio.fail_after(TIMEOUT):
            held: list[trio.SocketStream] = []
            request = (
                f"GET /sessions/alice/events HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: Bearer {ALICE}\r\n\r\n"
            ).encode()
            for _ in range(3):
                stream = await trio.open_tcp_stream(*address(url))
                held.append(stream)
                await stream.send_all(request)
                assert (await stream.receive_some(65_536)).startswith(b"HTTP/1.1 200")
            body: dict[str, Any] = {
                "threadId": "alice",
                "runId": "r-limit",
                "messages": [],
                "tools": [],
            }
            body |= {"context": [], "state": {}, "forwardedProps": {}}
            async with httpx.AsyncClient() as http:
                response = await http.post(
                    f"{url}/agui", json=body, headers={"authorization": f"Bearer {ALICE}"}
                )
            assert response.status_code == 503
            await assert_healthy(url)
            for stream in held:
                await stream.aclose()

    async def test_an_agui_stream_of_text_with_a_lone_surrogate_finishes_its_run(
        self, served: Served
    ) -> None:
        body: dict[str, Any] = {
            "threadId": "alice",
            "runId": "r-surrogate",
            "tools": [],
            "context": [],
        }
        body |= {"state": {}, "forwardedProps": {}}
        body["messages"] = [{"id": "m1", "role": "user", "content": "odd \ud800 text"}]
        with trio.fail_after(TIMEOUT):
            async with httpx.AsyncClient() as http:
                response = await http.post(
                    f"{served.url}/agui",
                    content=json.dumps(body),  # escaped: httpx's json= writes raw UTF-8
                    headers={
                        "authorization": f"Bearer {ALICE}",
                        "content-type": "application/json",
                    },
                )
            kinds = [
                json.loads(line[6:])["type"]
                for line in response.text.splitlines()
                if line.startswith("data: ")
            ]
            assert kinds[0] == "RUN_STARTED"
            assert kinds[-1] == "RUN_FINISHED"
            await assert_healthy(served.url)


# ---- isolation -------------------------------------------------------------------------------


async def sse_events(url: str, session: str, token: str, last_event_id: str) -> list[str]:
    """The event names a stream sends until it has been quiet for a moment."""
    names: list[str] = []
    headers = {"authorization": f"Bearer {token}", "last-event-id": last_event_id}
    async with httpx.AsyncClient(timeout=None) as http:
        path = f"{url}/sessions/{session}/events"
        async with http.stream("GET", path, headers=headers) as response:
            assert response.status_code == 200
            lines = response.aiter_lines()
            while True:
                with trio.move_on_after(0.5) as quiet:
                    line = await lines.__anext__()
                if quiet.cancelled_caught:
                    break
                if line.startswith("event: "):
                    names.append(line[7:])
            await lines.aclose()  # type: ignore[attr-defined]
    return names


class TestIsolation:
    async def test_a_last_event_id_naming_another_sessions_run_reveals_nothing_of_it(
        self, served: Served
    ) -> None:
        with trio.fail_after(TIMEOUT):
            async with connect(served.url, ADMIN) as watcher:
                await watcher.request("sessions.subscribe", {"sessionKey": "bob"})
                bob_run = await start_talk(served.bus, "bob", "secret words of bob")
                await watcher.events_until(lambda f: is_terminal(f, bob_run))
            names = await sse_events(served.url, "alice", ALICE, f"{bob_run}:0")
        assert names == []

    async def test_post_agui_with_a_run_id_of_another_sessions_run_is_refused(
        self, served: Served
    ) -> None:
        async def failing(run: pl.Run) -> None:
            await run.emit("assistant", {"delta": "secret of bob"})
            raise RuntimeError("bob's run fails")

        with trio.fail_after(TIMEOUT):
            handle = await served.bus.start_run(failing, context=pl.RunContext(session_key="bob"))
            with trio.move_on_after(1):
                await handle.wait()
            # In its retry grace: still live, in session bob.
            assert served.bus.live_runs().get(handle.id) is not None
            body: dict[str, Any] = {
                "threadId": "alice",
                "runId": handle.id,
                "tools": [],
                "context": [],
            }
            body |= {"state": {}, "forwardedProps": {}, "messages": []}
            async with httpx.AsyncClient() as http:
                response = await http.post(
                    f"{served.url}/agui", json=body, headers={"authorization": f"Bearer {ALICE}"}
                )
            assert response.status_code == 409
            context = served.bus.live_runs().get(handle.id)
            assert context is None or context.session_key == "bob"


# ---- a replay larger than the outbox -----------------------------------------------------------

#: Each delta is about 1 KB on the wire; 200 of them pass a 64 KiB outbox three times over.
_BIG = {"max_buffered_bytes": 65_536}


async def wordy_run(bus: pl.Bus, session: str, count: int) -> str:
    async def body(run: pl.Run) -> None:
        for index in range(count):
            await run.emit("assistant", {"delta": f"{index:04} " + "x" * 1000})

    handle = await bus.start_run(body, context=pl.RunContext(session_key=session))
    await handle.wait()
    return handle.id


class TestReplayBeyondTheOutbox:
    @pytest.mark.parametrize("gateway_config", [_BIG])
    async def test_a_websocket_resume_larger_than_the_outbox_is_replayed_to_a_reading_client(
        self, served: Served
    ) -> None:
        with trio.fail_after(TIMEOUT):
            async with connect(served.url, ALICE) as client:
                await client.request("sessions.subscribe", {"sessionKey": "alice"})
                run_id = await wordy_run(served.bus, "alice", 200)
                await client.events_until(lambda f: is_terminal(f, run_id))
            async with connect(served.url, ALICE) as client:
                res = await client.request(
                    "sessions.subscribe", {"sessionKey": "alice", "resume": {run_id: 1}}
                )
                assert res["ok"], res
                frames = await client.events_until(lambda f: is_terminal(f, run_id))
        seqs = [f["payload"]["seq"] for f in frames if f["event"] == "agent"]
        assert seqs == list(range(2, 203))

    @pytest.mark.parametrize("gateway_config", [_BIG])
    async def test_an_sse_resume_larger_than_the_outbox_is_replayed_to_a_reading_client(
        self, served: Served
    ) -> None:
        with trio.fail_after(TIMEOUT):
            async with connect(served.url, ALICE) as client:
                await client.request("sessions.subscribe", {"sessionKey": "alice"})
                run_id = await wordy_run(served.bus, "alice", 200)
                await client.events_until(lambda f: is_terminal(f, run_id))
            names = await sse_events(served.url, "alice", ALICE, f"{run_id}:1")
            await assert_healthy(served.url)
        assert names.count("agent") == 201


# ---- shutdown --------------------------------------------------------------------------------


async def stalled_websocket(url: str) -> trio.socket.SocketType:
    """A WebSocket subscribed to session alice that reads nothing after its answer, on a
    socket with a small receive window."""
    sock = await upgraded_socket(url, rcvbuf=4096)
    for method, params in (
        ("connect", {"auth": {"token": ALICE}}),
        ("sessions.subscribe", {"sessionKey": "alice"}),
    ):
        payload = json.dumps({"type": "req", "id": method, "method": method, "params": params})
        await sock.send(client_frame(payload.encode()))
    received = b""
    while b'"id":"sessions.subscribe"' not in received:
        received += await sock.recv(65_536)
    return sock


async def test_cancelling_serve_ends_within_close_timeout_even_with_a_stalled_client() -> None:
    close_timeout = 1.0
    config = GatewayConfig(tokens=TOKENS, port=0, close_timeout=close_timeout)
    with trio.fail_after(TIMEOUT):
        async with pl.open_bus() as bus:
            async with trio.open_nursery() as nursery:
                gateway = await nursery.start(pl.gateway.serve, bus, config)
                sock = await stalled_websocket(gateway.url)
                await wordy_run(bus, "alice", 2000)
                # Until the writer is stuck: no frame has gone out for a while.
                sent = -1
                while sent != (sent := gateway.statistics().frames_sent):  # noqa: ASYNC110
                    await trio.sleep(0.2)
                started = trio.current_time()
                nursery.cancel_scope.cancel()
            elapsed = trio.current_time() - started
            sock.close()
    assert elapsed < close_timeout * 1.5


async def test_a_bug_serving_one_client_closes_it_1011_and_the_gateway_stays_up(
    served: Served, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(*args: object) -> None:
        raise RuntimeError("a bug in a handler")

    monkeypatch.setitem(pipeline.gateway._client._HANDLERS, "sessions.list", broken)
    with trio.fail_after(TIMEOUT):
        sock = await upgraded_socket(served.url)
        with sock:
            for method in ("connect", "sessions.list"):
                params = {"auth": {"token": ALICE}}
                frame = {"type": "req", "id": method, "method": method, "params": params}
                await sock.send(client_frame(json.dumps(frame).encode()))
            received = b""
            while data := await sock.recv(65_536):
                received += data
        close = received[received.rindex(b"\x88") :]
        assert int.from_bytes(close[2:4], "big") == 1011
        await assert_healthy(served.url)
    assert "a bug in a handler" in caplog.text
