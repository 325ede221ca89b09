"""Plain HTTP endpoints (GATEWAY 1.6): the viewer page, health, metrics, and what an unknown or
garbled request gets."""

from __future__ import annotations

import httpx
import pytest
import trio

from ._raw import address, http_exchange
from .conftest import ADMIN, ALICE, Served

TIMEOUT = 15


async def get(url: str, path: str, token: str | None = None) -> httpx.Response:
    headers = {"authorization": f"Bearer {token}"} if token is not None else {}
    async with httpx.AsyncClient() as http:
        return await http.get(url + path, headers=headers)


class TestHealth:
    async def test_healthz_answers_ok_true(self, served: Served) -> None:
        with trio.fail_after(TIMEOUT):
            response = await get(served.url, "/healthz")
        assert response.status_code == 200
        assert response.json() == {"ok": True}
        assert response.headers["content-type"].startswith("application/json")

    async def test_healthz_needs_no_token(self, served: Served) -> None:
        with trio.fail_after(TIMEOUT):
            response = await get(served.url, "/healthz", token="not-a-token")
        assert response.status_code == 200


class TestMetrics:
    async def test_metrics_without_a_token_get_401(self, served: Served) -> None:
        with trio.fail_after(TIMEOUT):
            response = await get(served.url, "/metrics")
        assert response.status_code == 401

    async def test_metrics_with_an_unknown_token_get_401(self, served: Served) -> None:
        with trio.fail_after(TIMEOUT):
            response = await get(served.url, "/metrics", token="not-a-token")
        assert response.status_code == 401

    async def test_metrics_without_the_admin_scope_get_403(self, served: Served) -> None:
        with trio.fail_after(TIMEOUT):
            response = await get(served.url, "/metrics", token=ALICE)
        assert response.status_code == 403
        assert "agent_bus" not in response.text

    async def test_metrics_for_an_admin_are_prometheus_text_of_the_bus_and_gateway(
        self, served: Served
    ) -> None:
        with trio.fail_after(TIMEOUT):
            response = await get(served.url, "/metrics", token=ADMIN)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        samples = dict(
            line.rsplit(" ", 1)
            for line in response.text.splitlines()
            if line and not line.startswith("#")
        )
        assert "agent_bus_live_runs" in samples
        assert "gateway_websockets" in samples
        assert "# TYPE agent_bus_live_runs gauge" in response.text

    async def test_metrics_count_live_runs(self, served: Served) -> None:
        async def hang(run: object) -> None:
            await trio.sleep_forever()

        with trio.fail_after(TIMEOUT):
            handle = await served.bus.start_run(hang)
            response = await get(served.url, "/metrics", token=ADMIN)
            handle.abort()
        assert "agent_bus_live_runs 1.0" in response.text.splitlines()


class TestPages:
    async def test_the_root_serves_the_viewer_page_as_html(self, served: Served) -> None:
        with trio.fail_after(TIMEOUT):
            response = await get(served.url, "/")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/html")
        assert "<html" in response.text.lower()

    @pytest.mark.parametrize("path", ["/nope", "/sessions", "/sessions/alice", "/ws/x"])
    async def test_an_unknown_path_gets_404(self, served: Served, path: str) -> None:
        with trio.fail_after(TIMEOUT):
            response = await get(served.url, path, token=ADMIN)
        assert response.status_code == 404

    async def test_ws_without_an_upgrade_is_refused(self, served: Served) -> None:
        with trio.fail_after(TIMEOUT):
            response = await get(served.url, "/ws")
        assert 400 <= response.status_code < 500


class TestBadRequests:
    @pytest.mark.parametrize(
        "request_bytes",
        [
            b"GARBAGE\r\n\r\n",
            b"\x00\x01\x02\xff\r\n\r\n",
            b"GET / HTTP/1.1\r\nno colon here\r\n\r\n",
        ],
    )
    async def test_a_garbage_request_gets_400(self, served: Served, request_bytes: bytes) -> None:
        with trio.fail_after(TIMEOUT):
            answer = await http_exchange(served.url, request_bytes)
        assert answer.startswith(b"HTTP/1.1 400 ")

    async def test_the_server_keeps_serving_after_a_garbage_request(self, served: Served) -> None:
        with trio.fail_after(TIMEOUT):
            await http_exchange(served.url, b"GARBAGE\r\n\r\n")
            response = await get(served.url, "/healthz")
        assert response.json() == {"ok": True}

    async def test_a_client_that_hangs_up_mid_request_does_not_stop_the_server(
        self, served: Served
    ) -> None:
        with trio.fail_after(TIMEOUT):
            async with await trio.open_tcp_stream(*address(served.url)) as stream:
                await stream.send_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
            response = await get(served.url, "/healthz")
        assert response.status_code == 200
