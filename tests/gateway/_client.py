"""A small test client of the gateway's WebSocket protocol, on trio-websocket."""

from __future__ import annotations

import collections
import itertools
import json
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import attrs
import trio
from trio_websocket import WebSocketConnection, open_websocket_url, wrap_client_stream

__all__ = [
    "WsClient",
    "agent_seqs",
    "chat_send",
    "check_no_silent_hole",
    "connect",
    "connect_owned",
    "finish",
    "handshake",
    "is_terminal",
    "open_owned_ws",
    "open_ws",
]


@attrs.define(eq=False)
class WsClient:
    """A connected client: requests get their response; events queue up in order."""

    ws: WebSocketConnection
    hello: dict[str, Any] = attrs.field(factory=dict)
    events: list[dict[str, Any]] = attrs.field(factory=list)
    _ids: Any = attrs.field(factory=lambda: itertools.count(1))

    async def frame(self) -> dict[str, Any]:
        frame: dict[str, Any] = json.loads(await self.ws.get_message())
        return frame

    async def request(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send a request and return its response frame; events read meanwhile are kept."""
        request_id = str(next(self._ids))
        frame = {"type": "req", "id": request_id, "method": method, "params": params or {}}
        await self.ws.send_message(json.dumps(frame))
        while True:
            got = await self.frame()
            if got["type"] == "res" and got["id"] == request_id:
                return got
            self.events.append(got)

    async def event(self) -> dict[str, Any]:
        """The next event frame (queued ones first)."""
        if self.events:
            return self.events.pop(0)
        while True:
            got = await self.frame()
            if got["type"] == "event":
                return got

    async def events_until(self, done: Any) -> list[dict[str, Any]]:
        """Event frames up to and including the first for which ``done(frame)`` is true."""
        seen = []
        while True:
            frame = await self.event()
            seen.append(frame)
            if done(frame):
                return seen


def is_terminal(frame: dict[str, Any], run_id: str | None = None) -> bool:
    """Whether ``frame`` is an ``agent`` lifecycle end/error (of ``run_id`` when given)."""
    if frame.get("event") != "agent":
        return False
    payload = frame["payload"]
    if run_id is not None and payload["runId"] != run_id:
        return False
    return payload["stream"] == "lifecycle" and payload["data"]["phase"] in ("end", "error")


def check_no_silent_hole(frames: Iterable[dict[str, Any]]) -> dict[str, int]:
    """Assert the outer seqs of event frames are consecutive, and that each run's agent seqs
    are consecutive except across a ``gap`` frame; the dropped counts of the gaps, by session."""
    outer = [f["seq"] for f in frames if f["type"] == "event"]
    assert outer == list(range(outer[0], outer[0] + len(outer))), "outer seq has a hole"
    last: dict[str, int] = {}
    gapped: set[str] = set()
    dropped: dict[str, int] = collections.Counter()
    for frame in frames:
        if frame.get("event") == "gap":
            payload = frame["payload"]
            assert payload["dropped"] >= 1, payload
            dropped[payload["sessionKey"]] += payload["dropped"]
            gapped.update(last)  # any run of the session may have lost events here
        elif frame.get("event") == "agent":
            payload = frame["payload"]
            run_id, seq = payload["runId"], payload["seq"]
            if run_id in last and run_id not in gapped:
                assert seq == last[run_id] + 1, f"silent hole in {run_id}: {last[run_id]} -> {seq}"
            assert run_id not in last or seq > last[run_id], "seq went backwards"
            last[run_id] = seq
            gapped.discard(run_id)
    return dict(dropped)


def agent_seqs(frames: Iterable[dict[str, Any]], run_id: str) -> list[int]:
    return [
        f["payload"]["seq"]
        for f in frames
        if f.get("event") == "agent" and f["payload"]["runId"] == run_id
    ]


@asynccontextmanager
async def open_ws(url: str) -> AsyncIterator[WebSocketConnection]:
    ws_url = url.replace("http://", "ws://") + "/ws"
    async with open_websocket_url(ws_url) as ws:
        yield ws


@asynccontextmanager
async def open_owned_ws(url: str) -> AsyncIterator[WebSocketConnection]:
    """A WebSocket to ``url``'s ``/ws`` on a TCP stream this helper closes.

    For tests whose server closes the socket: trio-websocket 0.12 never closes a client's TCP
    stream when the server closes first (its ``aclose`` returns early once a close reason is
    set), which leaks the socket, and ``filterwarnings = error`` turns the ``ResourceWarning``
    into a failure. Owning the stream closes it whatever happens.
    """
    split = urlsplit(url)
    assert split.hostname is not None
    assert split.port is not None
    stream = await trio.open_tcp_stream(split.hostname, split.port)
    async with stream, trio.open_nursery() as nursery:
        ws = await wrap_client_stream(nursery, stream, split.hostname, "/ws")
        try:
            yield ws
        finally:
            with trio.move_on_after(2):
                await ws.aclose()
            nursery.cancel_scope.cancel()


async def handshake(ws: WebSocketConnection, token: str) -> WsClient:
    """Answer the challenge on ``ws`` with ``token``; the client, after hello-ok."""
    client = WsClient(ws)
    challenge = await client.frame()
    assert challenge["event"] == "connect.challenge"
    response = await client.request("connect", {"auth": {"token": token}})
    assert response["ok"], response
    client.hello = response["payload"]
    return client


@asynccontextmanager
async def connect(url: str, token: str) -> AsyncIterator[WsClient]:
    """Connect, answer the challenge with ``token``, and yield the client after hello-ok."""
    async with open_ws(url) as ws:
        yield await handshake(ws, token)


@asynccontextmanager
async def connect_owned(url: str, token: str) -> AsyncIterator[WsClient]:
    """Like :func:`connect`, on a stream of :func:`open_owned_ws`."""
    async with open_owned_ws(url) as ws:
        yield await handshake(ws, token)


# ---- requests most tests make ------------------------------------------------------------------


async def chat_send(client: WsClient, message: str, session: str = "alice", key: str = "") -> str:
    """``chat.send`` ``message`` (the idempotency key defaults to the message); the run id."""
    params = {"sessionKey": session, "message": message, "idempotencyKey": key or message}
    response = await client.request("chat.send", params)
    assert response["ok"], response
    run_id: str = response["payload"]["runId"]
    return run_id


async def finish(client: WsClient, run_id: str) -> None:
    """``agent.wait`` for ``run_id``, which must end ``ok`` within 10 s."""
    response = await client.request("agent.wait", {"runId": run_id, "timeoutMs": 10_000})
    assert response["payload"]["status"] == "ok", response
