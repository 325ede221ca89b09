"""The gateway's limits: connections, sessions per client, the replay buffer's bounds, message
sizes, and the policy hello-ok announces."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
import trio
from wsproto.events import AcceptConnection

import pipeline as pl
from pipeline.gateway import GatewayConfig

from ._client import connect
from ._raw import TEXT, http_exchange, raw_client, status_of, wait_until, ws_frame
from .conftest import ADMIN, ALICE, Served


class TestConnections:
    @pytest.mark.parametrize("gateway_config", [{"max_connections": 3}])
    async def test_a_connection_past_max_connections_gets_a_503_and_is_counted(
        self, served: Served
    ) -> None:
        with trio.fail_after(10):
            async with (
                raw_client(served.url, ALICE),
                raw_client(served.url, ALICE),
                raw_client(served.url, ALICE) as third,
            ):
                assert served.gateway.statistics().connections == 3
                response = await http_exchange(
                    served.url, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
                )
                assert status_of(response) == 503
                response = await http_exchange(served.url, b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n")
                assert status_of(response) == 503
                stats = served.gateway.statistics()
                assert (stats.connections_refused, stats.connections_total) == (2, 3)
                # The three are unaffected, and a slot freed is a slot usable.
                res = await third.request("sessions.subscribe", {"sessionKey": "alice"})
                assert res["ok"], res
                await third.close_normally()
                await wait_until(lambda: served.gateway.statistics().connections == 2)
                response = await http_exchange(
                    served.url, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
                )
                assert status_of(response) == 200
            await wait_until(lambda: served.gateway.statistics().connections == 0)
            assert served.gateway.statistics().connections_refused == 2


class TestSessionsPerClient:
    @pytest.mark.parametrize("gateway_config", [{"max_sessions_per_client": 2}])
    async def test_subscribing_past_max_sessions_per_client_is_refused_with_limit(
        self, served: Served
    ) -> None:
        with trio.fail_after(10):
            async with connect(served.url, ADMIN) as client:
                for key in ("a", "b"):
                    res = await client.request("sessions.subscribe", {"sessionKey": key})
                    assert res["ok"], res
                res = await client.request("sessions.subscribe", {"sessionKey": "c"})
                assert not res["ok"]
                assert res["error"]["code"] == "limit"
                # Subscribing again to one it has is no new session; leaving one frees a slot.
                res = await client.request("sessions.subscribe", {"sessionKey": "a"})
                assert res["ok"], res
                res = await client.request("sessions.unsubscribe", {"sessionKey": "b"})
                assert res["payload"]["unsubscribed"], res
                res = await client.request("sessions.subscribe", {"sessionKey": "c"})
                assert res["ok"], res
                res = await client.request("sessions.subscribe", {"sessionKey": "b"})
                assert res["error"]["code"] == "limit"
                # The refused session sends nothing; the kept ones do.
                for key in ("b", "c"):
                    res = await client.request(
                        "chat.send", {"sessionKey": key, "message": f"hello {key}"}
                    )
                    assert res["ok"], res
                frame = await client.event()
                assert frame["payload"]["sessionKey"] == "c", frame
            # Another client has slots of its own.
            async with connect(served.url, ADMIN) as other:
                for key in ("a", "b"):
                    res = await other.request("sessions.subscribe", {"sessionKey": key})
                    assert res["ok"], res


#: A table of 16 recent runs, and a request budget for one agent.wait per run.
_MANY_RUNS: dict[str, Any] = {"recent_runs": 16, "max_requests_per_second": 1000.0}


class TestReplayBuffer:
    @pytest.mark.parametrize(
        "gateway_config",
        [
            pytest.param({"replay_events": 50, **_MANY_RUNS}, id="by-events"),
            pytest.param({"replay_bytes": 20_000, **_MANY_RUNS}, id="by-bytes"),
        ],
    )
    async def test_the_replay_buffer_stays_within_its_bounds_over_many_runs(
        self, served: Served, gateway_config: dict[str, Any]
    ) -> None:
        config = GatewayConfig(tokens=pl.gateway.Tokens.from_json({"tokens": []}), **gateway_config)

        async def body(run: pl.Run) -> None:
            for n in range(10):
                await run.emit("assistant", {"delta": f"{n} " + "y" * 300})

        with trio.fail_after(20):
            async with connect(served.url, ADMIN) as client:
                for n in range(60):
                    run_id = f"run-{n}"
                    context = pl.RunContext(session_key=f"s{n % 7}")
                    await served.bus.start_run(body, run_id=run_id, context=context)
                    # agent.wait answers once the replay recorder has the run's end.
                    res = await client.request("agent.wait", {"runId": run_id, "timeoutMs": 5000})
                    assert res["ok"], res
                    assert res["payload"]["status"] == "ok", res
                    stats = served.gateway.statistics()
                    assert stats.replay_events <= config.replay_events
                    assert stats.replay_bytes <= config.replay_bytes
                    assert stats.replay_runs <= config.recent_runs
            stats = served.gateway.statistics()
            # 60 runs of 10 deltas, lifecycle and chat events: far more than either bound.
            assert stats.replay_evicted > 500
            if "replay_events" in gateway_config:
                assert stats.replay_events == config.replay_events
            else:
                assert stats.replay_bytes > config.replay_bytes - 2_000
            assert stats.replay_runs == config.recent_runs


class TestMessageSizes:
    @pytest.mark.parametrize("gateway_config", [{"max_payload": 10_000}])
    async def test_a_message_over_max_payload_is_closed_1009(self, served: Served) -> None:
        with trio.fail_after(10):
            async with raw_client(served.url, ALICE) as client:
                res = await client.request("sessions.subscribe", {"sessionKey": "alice"})
                assert res["ok"], res
                params = {"sessionKey": "alice", "pad": "p" * 9_000}
                res = await client.request("sessions.subscribe", params)
                assert res["ok"], res  # just under the limit
                await client.send(ws_frame(TEXT, b" " * 10_001))
                close = await client.closed()
                assert close.code == 1009

    async def test_more_than_64_kib_before_connect_is_closed_1008(self, served: Served) -> None:
        with trio.fail_after(10):
            async with raw_client(served.url) as client:
                assert isinstance(await client.upgrade(), AcceptConnection)
                assert (await client.frame())["event"] == "connect.challenge"
                connect_frame = {
                    "type": "req",
                    "id": "1",
                    "method": "connect",
                    "params": {"auth": {"token": ALICE}, "pad": "p" * 70_000},
                }
                await client.send_json(connect_frame)
                close = await client.closed()
                assert close.code == 1008
                assert "64 KiB" in str(close.reason)


class TestPolicy:
    @pytest.mark.parametrize(
        "gateway_config",
        [
            pytest.param({}, id="defaults"),
            pytest.param({"max_payload": 12_345, "max_buffered_bytes": 54_321}, id="set"),
        ],
    )
    async def test_hello_ok_announces_the_configured_limits(
        self, served: Served, gateway_config: dict[str, Any]
    ) -> None:
        fields = attrs.fields(GatewayConfig)
        max_payload = gateway_config.get("max_payload", fields.max_payload.default)
        max_buffered = gateway_config.get("max_buffered_bytes", fields.max_buffered_bytes.default)
        with trio.fail_after(10):
            async with connect(served.url, ALICE) as client:
                assert client.hello["policy"] == {
                    "maxPayload": max_payload,
                    "maxBufferedBytes": max_buffered,
                }
                assert client.hello["type"] == "hello-ok"
                assert client.hello["protocol"] == 1


async def test_keepalive_probes_a_silent_peer_after_the_configured_idle_time() -> None:
    import socket

    from pipeline.gateway._server import _keepalive

    sock = trio.socket.socket()
    try:
        _keepalive(sock, 30.0)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        if hasattr(socket, "TCP_KEEPIDLE"):
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 30
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 3
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 3
    finally:
        sock.close()
