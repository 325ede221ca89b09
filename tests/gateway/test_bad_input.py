"""Bad input (GATEWAY 1.8): garbage, oversized and malformed requests and frames, floods of
requests, wrong tokens. Each gets an error response or a close, never a crash: afterwards a
fresh client still sees a run end to end, and a client connected all along is unaffected."""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
from wsproto.connection import ConnectionState
from wsproto.events import AcceptConnection, Ping, TextMessage

from ._client import agent_seqs, connect, is_terminal
from ._raw import (
    BINARY,
    CLOSE,
    CONTINUATION,
    TEXT,
    RawClient,
    http_exchange,
    raw_client,
    status_of,
    wait_until,
    ws_frame,
)
from .conftest import ADMIN, ALICE, Served

# ---- a client connected all along, and the check that the gateway still serves --------------


@pytest.fixture
async def bystander(served: Served) -> AsyncIterator[RawClient]:
    """A client subscribed to session alice before the bad input arrives."""
    async with raw_client(served.url, ALICE) as client:
        res = await client.request("sessions.subscribe", {"sessionKey": "alice"})
        assert res["ok"], res
        yield client


async def assert_still_serving(served: Served, bystander: RawClient) -> None:
    """A fresh client connects and sees a run end to end; the bystander sees the same run."""
    async with connect(served.url, ALICE) as fresh:
        res = await fresh.request("sessions.subscribe", {"sessionKey": "alice"})
        assert res["ok"], res
        res = await fresh.request("chat.send", {"sessionKey": "alice", "message": "all is well"})
        assert res["ok"], res
        run_id = res["payload"]["runId"]
        frames = await fresh.events_until(lambda f: is_terminal(f, run_id))
        assert agent_seqs(frames, run_id) == [1, 2, 3, 4, 5]
    while not bystander.frames or not is_terminal(bystander.frames[-1], run_id):
        await bystander.frame()
    assert agent_seqs(bystander.frames, run_id) == [1, 2, 3, 4, 5]
    assert bystander.close is None


def upgrade_request(headers: dict[str, str]) -> bytes:
    lines = ["GET /ws HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


GOOD_UPGRADE = {
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": base64.b64encode(b"0123456789abcdef").decode(),
}


# ---- HTTP ----------------------------------------------------------------------------------


class TestBadHttp:
    async def test_garbage_bytes_instead_of_a_request_get_a_400(
        self, served: Served, bystander: RawClient
    ) -> None:
        with trio.fail_after(10):
            response = await http_exchange(
                served.url, b"\x16\x03\x01\x02\x00\x01\xff garbage\r\n\r\n"
            )
            assert status_of(response) == 400
            response = await http_exchange(served.url, bytes(range(256)) * 4)
            assert status_of(response) == 400
            assert served.gateway.statistics().bad_requests == 2
            await assert_still_serving(served, bystander)

    async def test_a_request_with_huge_headers_gets_a_431(
        self, served: Served, bystander: RawClient
    ) -> None:
        with trio.fail_after(10):
            headers = dict(GOOD_UPGRADE, **{"X-Padding": "a" * 40_000})
            response = await http_exchange(served.url, upgrade_request(headers))
            assert status_of(response) == 431
            many = {f"X-H{i}": "b" * 100 for i in range(400)}
            response = await http_exchange(served.url, upgrade_request(many))
            assert status_of(response) == 431
            await assert_still_serving(served, bystander)

    async def test_a_request_that_ends_half_way_is_dropped(
        self, served: Served, bystander: RawClient
    ) -> None:
        with trio.fail_after(10):
            response = await http_exchange(
                served.url, b"GET /ws HTTP/1.1\r\nHost: x\r\n", shut=True
            )
            assert response == b"" or status_of(response) == 400
            await assert_still_serving(served, bystander)


class TestBadUpgrade:
    @pytest.mark.parametrize(
        "headers",
        [
            pytest.param(dict(GOOD_UPGRADE, **{"Sec-WebSocket-Key": "not base64 !!"}), id="junk"),
            pytest.param(
                dict(GOOD_UPGRADE, **{"Sec-WebSocket-Key": base64.b64encode(b"short").decode()}),
                id="short",
            ),
            pytest.param(
                {k: v for k, v in GOOD_UPGRADE.items() if k != "Sec-WebSocket-Key"}, id="missing"
            ),
            pytest.param(dict(GOOD_UPGRADE, **{"Sec-WebSocket-Version": "8"}), id="version"),
            pytest.param(
                {k: v for k, v in GOOD_UPGRADE.items() if k != "Connection"}, id="no-connection"
            ),
        ],
    )
    async def test_an_upgrade_with_a_bad_handshake_gets_a_4xx(
        self, served: Served, bystander: RawClient, headers: dict[str, str]
    ) -> None:
        with trio.fail_after(10):
            response = await http_exchange(served.url, upgrade_request(headers))
            assert 400 <= status_of(response) < 500, response
            assert served.gateway.statistics().websockets == 1  # the bystander only
            await assert_still_serving(served, bystander)

    async def test_a_good_upgrade_request_is_accepted(self, served: Served) -> None:
        with trio.fail_after(10):
            response = await http_exchange(served.url, upgrade_request(GOOD_UPGRADE), shut=True)
            assert status_of(response) == 101


# ---- WebSocket frames ----------------------------------------------------------------------


class TestBadFrames:
    async def test_a_binary_frame_after_connect_gets_a_bad_request_error(
        self, served: Served, bystander: RawClient
    ) -> None:
        with trio.fail_after(10):
            async with raw_client(served.url, ALICE) as client:
                await client.send(ws_frame(BINARY, b'{"type":"req","id":"1","method":"x"}'))
                await client.send(ws_frame(BINARY, b"\x00\xff\xfe garbage"))
                for _ in range(2):
                    frame = await client.frame()
                    assert frame["type"] == "res", frame
                    assert not frame["ok"], frame
                    assert frame["id"] is None
                    assert frame["error"]["code"] == "bad_request"
                res = await client.request("sessions.subscribe", {"sessionKey": "alice"})
                assert res["ok"], res
            await assert_still_serving(served, bystander)

    async def test_a_binary_frame_instead_of_connect_is_closed_1008(
        self, served: Served, bystander: RawClient
    ) -> None:
        with trio.fail_after(10):
            async with raw_client(served.url) as client:
                assert isinstance(await client.upgrade(), AcceptConnection)
                assert (await client.frame())["event"] == "connect.challenge"
                await client.send(ws_frame(BINARY, b"\x00\x01\x02"))
                close = await client.closed()
                assert close.code == 1008
            await assert_still_serving(served, bystander)

    @pytest.mark.parametrize(
        "payload", [b"\xff\xfe", b'{"type":"req","id":"1\xc3\x28"}', b"\xed\xa0\x80"]
    )
    async def test_invalid_utf8_in_a_text_frame_is_closed_1007(
        self, served: Served, bystander: RawClient, payload: bytes
    ) -> None:
        with trio.fail_after(10):
            async with raw_client(served.url, ALICE) as client:
                await client.send(ws_frame(TEXT, payload))
                close = await client.closed()
                assert close.code == 1007
            await assert_still_serving(served, bystander)

    @pytest.mark.parametrize("gateway_config", [{"max_payload": 4096}])
    async def test_a_fragmented_message_over_max_payload_is_closed_1009(
        self, served: Served, bystander: RawClient
    ) -> None:
        with trio.fail_after(10):
            async with raw_client(served.url, ALICE) as client:
                await client.send(ws_frame(TEXT, b"[" + b"1," * 500, fin=False))
                for _ in range(4):
                    await client.send(ws_frame(CONTINUATION, b"1," * 500, fin=False))
                close = await client.closed()
                assert close.code == 1009
            await assert_still_serving(served, bystander)

    @pytest.mark.parametrize("gateway_config", [{"max_payload": 4096}])
    async def test_a_frame_claiming_a_gigantic_length_is_closed_1009(
        self, served: Served, bystander: RawClient
    ) -> None:
        with trio.fail_after(10):
            async with raw_client(served.url, ALICE) as client:
                header = ws_frame(TEXT, b"", length=2**62)
                await client.send(header + b" " * 8192)  # the server stops at max_payload
                close = await client.closed()
                assert close.code == 1009
            await assert_still_serving(served, bystander)

    async def test_a_frame_length_with_the_top_bit_set_is_closed_1002(
        self, served: Served, bystander: RawClient
    ) -> None:
        with trio.fail_after(10):
            async with raw_client(served.url, ALICE) as client:
                await client.send(ws_frame(TEXT, b"", length=2**63 + 5))
                close = await client.closed()
                assert close.code == 1002
            await assert_still_serving(served, bystander)

    @pytest.mark.parametrize(
        "tail",
        [
            pytest.param(b"\xff\xff garbage", id="garbage"),
            pytest.param(ws_frame(CLOSE, b"\x03\xe8again"), id="second-close"),
            pytest.param(ws_frame(0x9, b"ping"), id="ping"),
            pytest.param(ws_frame(TEXT, b'{"type":"req","id":"9","method":"x"}'), id="text"),
        ],
    )
    async def test_bytes_after_the_clients_close_frame_are_ignored(
        self, served: Served, bystander: RawClient, tail: bytes
    ) -> None:
        with trio.fail_after(10):
            async with raw_client(served.url, ALICE) as client:
                await client.send(ws_frame(CLOSE, b"\x03\xe8bye") + tail)
                close = await client.closed()
                assert close.code == 1000
            await assert_still_serving(served, bystander)

    async def test_pings_are_answered_and_unsolicited_pongs_ignored(
        self, served: Served, bystander: RawClient
    ) -> None:
        with trio.fail_after(10):
            async with raw_client(served.url, ALICE) as client:
                await client.send(ws_frame(0xA, b"unsolicited") + ws_frame(0x9, b"are you there"))
                await client.send(client.ws.send(Ping(b"again")))
                res = await client.request("sessions.subscribe", {"sessionKey": "alice"})
                assert res["ok"], res
            await assert_still_serving(served, bystander)


# ---- floods and wrong tokens ---------------------------------------------------------------


class TestFloods:
    async def test_a_flood_of_requests_is_answered_in_order_and_rate_limited(
        self, served: Served, bystander: RawClient
    ) -> None:
        with trio.fail_after(15):
            async with raw_client(served.url, ALICE) as client:
                requests = [
                    client.ws.send(TextMessage(data=_request(n, "sessions.list")))
                    for n in range(2000)
                ]
                await client.send(b"".join(requests))  # nothing read meanwhile
                answers = [await client.frame() for _ in range(2000)]
                assert [a["id"] for a in answers] == [str(n) for n in range(2000)]
                codes = [a["error"]["code"] for a in answers if not a["ok"]]
                assert set(codes) == {"rate_limited"}
                assert len(codes) >= 1900
                assert served.gateway.statistics().rate_limited == len(codes)
            await assert_still_serving(served, bystander)

    async def test_a_flood_of_malformed_frames_gets_an_error_each(
        self, served: Served, bystander: RawClient
    ) -> None:
        with trio.fail_after(15):
            async with raw_client(served.url, ALICE) as client:
                junk = [b"{", b"[]", b'"x"', b"null", b'{"type":"res"}', b"\xc3\xa9t\xc3\xa9"]
                frames = [ws_frame(TEXT, junk[n % len(junk)]) for n in range(2000)]
                await client.send(b"".join(frames))
                answers = [await client.frame() for _ in range(2000)]
                assert {a["error"]["code"] for a in answers} == {"bad_request"}
                assert all(a["id"] is None for a in answers)
                res = await client.request("sessions.subscribe", {"sessionKey": "alice"})
                assert res["ok"], res
            await assert_still_serving(served, bystander)

    @pytest.mark.parametrize("gateway_config", [{"max_buffered_bytes": 65_536}])
    async def test_a_flood_that_never_reads_its_answers_is_closed_as_a_slow_consumer(
        self, served: Served, bystander: RawClient
    ) -> None:
        with trio.fail_after(15):
            async with raw_client(served.url, ALICE, rcvbuf=4096) as client:
                request = client.ws.send(TextMessage(data=_request(0, "nope", pad=2000)))

                async def flood() -> None:
                    with contextlib.suppress(trio.BrokenResourceError):
                        for _ in range(2000):
                            await client.send(request)

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(flood)
                    # It reads nothing until the gateway gave up on it, then finds the close.
                    await wait_until(lambda: served.gateway.statistics().slow_consumer_closes > 0)
                    close = await client.closed()
                    nursery.cancel_scope.cancel()
                assert (close.code, close.reason) == (1008, "slow consumer")
                assert all(f["type"] == "res" for f in client.frames[1:])
            assert served.gateway.statistics().slow_consumer_closes == 1
            await assert_still_serving(served, bystander)

    @pytest.mark.parametrize("gateway_config", [{"max_auth_failures_per_minute": 5}])
    async def test_wrong_tokens_are_closed_and_then_the_peer_is_refused(
        self, served: Served, bystander: RawClient
    ) -> None:
        attacker = "127.0.0.2"
        with trio.fail_after(15):
            reasons = []
            for token in ["wrong-token-000", "", ALICE + "x", ADMIN.upper(), "x" * 5000] * 3:
                async with raw_client(served.url, bind=attacker) as client:
                    assert isinstance(await client.upgrade(), AcceptConnection)
                    assert (await client.frame())["event"] == "connect.challenge"
                    await _send_quietly(client, _connect(token))
                    close = await client.closed()
                    assert close.code == 1008
                    reasons.append(close.reason)
            assert "unauthorized: unknown token" in reasons
            assert "too many failed handshakes" in str(reasons[-1])
            # The peer is refused even with a good token now; other peers are not.
            async with raw_client(served.url, bind=attacker) as client:
                assert isinstance(await client.upgrade(), AcceptConnection)
                assert (await client.frame())["event"] == "connect.challenge"
                await _send_quietly(client, _connect(ALICE))
                close = await client.closed()
                assert close.code == 1008
            assert served.gateway.statistics().auth_failures == 16
            assert bystander.close is None
            await assert_still_serving(served, bystander)

    async def test_a_first_frame_that_is_not_connect_is_closed_1008(
        self, served: Served, bystander: RawClient
    ) -> None:
        with trio.fail_after(10):
            for first in [b"{}", b"hello", b'{"type":"req","id":"1","method":"chat.send"}']:
                async with raw_client(served.url) as client:
                    assert isinstance(await client.upgrade(), AcceptConnection)
                    await client.send(ws_frame(TEXT, first))
                    close = await client.closed()
                    assert close.code == 1008
            await assert_still_serving(served, bystander)


def _request(n: int, method: str, *, pad: int = 0) -> str:
    params: dict[str, Any] = {"pad": "p" * pad} if pad else {}
    return json.dumps({"type": "req", "id": str(n), "method": method, "params": params})


def _connect(token: str) -> dict[str, Any]:
    return {"type": "req", "id": "c", "method": "connect", "params": {"auth": {"token": token}}}


async def _send_quietly(client: RawClient, frame: object) -> None:
    """Send ``frame``, unless the server has closed already (a refused peer)."""
    if client.ws.state is not ConnectionState.OPEN:
        return
    with contextlib.suppress(trio.BrokenResourceError):
        await client.send_json(frame)
