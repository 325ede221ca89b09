"""A raw WebSocket client on a socket the test controls byte for byte: its WebSocket side is
wsproto, and the socket's receive buffer and local address may be set before connecting (so a
client can be made slow, or come from another 127.x peer). Also raw HTTP exchanges, and the
polling the tests of real sockets need.

For the tests that send what a well-behaved client would not (bad input, churn, limits, slow
clients); the others use :mod:`._client`.
"""

from __future__ import annotations

import collections
import itertools
import json
import socket
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import attrs
import trio
import wsproto
from wsproto.events import AcceptConnection, CloseConnection, Request, TextMessage
from wsproto.events import Event as WsEvent

__all__ = [
    "BINARY",
    "CLOSE",
    "CONTINUATION",
    "TEXT",
    "Closed",
    "RawClient",
    "address",
    "http_exchange",
    "open_socket",
    "raw_client",
    "status_of",
    "wait_until",
    "ws_frame",
]


def address(url: str) -> tuple[str, int]:
    split = urlsplit(url)
    assert split.hostname is not None
    assert split.port is not None
    return split.hostname, split.port


async def open_socket(
    url: str, *, rcvbuf: int | None = None, bind: str | None = None
) -> trio.SocketStream:
    """A TCP connection to the gateway; ``rcvbuf`` is set before connecting (so the window
    the client advertises stays small), ``bind`` picks the local address (any 127.x works)."""
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if bind is not None:
            await sock.bind((bind, 0))
        await sock.connect(address(url))
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


def ws_frame(opcode: int, payload: bytes, *, fin: bool = True, length: int | None = None) -> bytes:
    """One masked client frame; ``length`` overrides the length the header claims."""
    claimed = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | opcode])
    if claimed < 126:
        head += bytes([0x80 | claimed])
    elif claimed < 65_536:
        head += bytes([0x80 | 126]) + struct.pack("!H", claimed)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", claimed)
    mask = b"\x01\x02\x03\x04"
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


TEXT, BINARY, CONTINUATION, CLOSE = 0x1, 0x2, 0x0, 0x8


class Closed(Exception):
    """The server closed the WebSocket (or the socket) while a frame was expected."""

    def __init__(self, code: int, reason: str | None) -> None:
        super().__init__(f"closed {code} {reason!r}")
        self.code = code
        self.reason = reason


@attrs.define(eq=False)
class RawClient:
    """A WebSocket client whose reads and writes the test controls byte for byte."""

    stream: trio.SocketStream
    url: str
    ws: wsproto.WSConnection = attrs.field(
        factory=lambda: wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    )
    #: Every text frame read, parsed, in order.
    frames: list[dict[str, Any]] = attrs.field(factory=list)
    close: CloseConnection | None = None
    _pending: collections.deque[WsEvent] = attrs.field(factory=collections.deque)
    _parts: list[str] = attrs.field(factory=list)
    _ids: Any = attrs.field(factory=lambda: itertools.count(1))
    _eof: bool = False

    @classmethod
    async def open(
        cls, url: str, *, rcvbuf: int | None = None, bind: str | None = None
    ) -> RawClient:
        return cls(await open_socket(url, rcvbuf=rcvbuf, bind=bind), url)

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def upgrade(self) -> WsEvent:
        """Send the upgrade request; the server's answer (accept or reject)."""
        host, port = address(self.url)
        await self.send(self.ws.send(Request(host=f"{host}:{port}", target="/ws")))
        return await self.next_event()

    async def next_event(self) -> WsEvent:
        """The next wsproto event; a ``CloseConnection(1006)`` once the socket ends."""
        while not self._pending:
            self._pending.extend(self.ws.events())
            if self._pending:
                break
            if self._eof:
                raise EOFError("the server closed the socket")
            try:
                data = await self.stream.receive_some(65_536)
            except trio.BrokenResourceError:
                data = b""
            if not data:
                self._eof = True
            if self.ws.state is wsproto.connection.ConnectionState.CLOSED:
                continue
            self.ws.receive_data(data or None)
        return self._pending.popleft()

    async def frame(self) -> dict[str, Any]:
        """The next text message, parsed; :exc:`Closed` if a close comes first."""
        while True:
            event = await self.next_event()
            if isinstance(event, CloseConnection):
                self.close = event
                raise Closed(event.code, event.reason)
            if isinstance(event, TextMessage):
                self._parts.append(event.data)
                if event.message_finished:
                    frame: dict[str, Any] = json.loads("".join(self._parts))
                    self._parts.clear()
                    self.frames.append(frame)
                    return frame

    async def closed(self) -> CloseConnection:
        """Read (and keep) frames until the server's close."""
        while True:
            try:
                await self.frame()
            except Closed:
                assert self.close is not None
                return self.close

    async def send_json(self, frame: object) -> None:
        await self.send(self.ws.send(TextMessage(data=json.dumps(frame))))

    async def request(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send a request, and read frames up to its response."""
        request_id = str(next(self._ids))
        await self.send_json({"type": "req", "id": request_id, "method": method, "params": params})
        while True:
            frame = await self.frame()
            if frame["type"] == "res" and frame["id"] == request_id:
                return frame

    async def connect(self, token: str) -> dict[str, Any]:
        """Upgrade, answer the challenge with ``token``; the hello-ok payload."""
        assert isinstance(await self.upgrade(), AcceptConnection)
        challenge = await self.frame()
        assert challenge["event"] == "connect.challenge", challenge
        response = await self.request("connect", {"auth": {"token": token}})
        assert response["ok"], response
        payload: dict[str, Any] = response["payload"]
        return payload

    async def close_normally(self) -> CloseConnection:
        """Send a close frame, read up to the server's answer, and close the socket."""
        await self.send(self.ws.send(CloseConnection(code=1000, reason="bye")))
        close = await self.closed()
        await self.aclose()
        return close

    def abort(self) -> None:
        """Vanish: reset the TCP connection, no close frame (SO_LINGER 0 makes close an RST)."""
        sock = self.stream.socket
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()

    async def aclose(self) -> None:
        await self.stream.aclose()


@asynccontextmanager
async def raw_client(
    url: str, token: str | None = None, *, rcvbuf: int | None = None, bind: str | None = None
) -> AsyncIterator[RawClient]:
    """A raw client (connected with ``token`` when given), its socket closed on exit."""
    client = await RawClient.open(url, rcvbuf=rcvbuf, bind=bind)
    try:
        if token is not None:
            await client.connect(token)
        yield client
    finally:
        await client.aclose()


# ---- raw HTTP, and waiting on what sockets move ------------------------------------------


async def http_exchange(url: str, data: bytes, *, shut: bool = False) -> bytes:
    """Send raw bytes on a new connection and read whatever comes back until the server
    closes it."""
    stream = await open_socket(url)
    async with stream:
        try:
            await stream.send_all(data)
            if shut:
                await stream.send_eof()
        except trio.BrokenResourceError:
            pass
        received = bytearray()
        while True:
            try:
                chunk = await stream.receive_some(65_536)
            except trio.BrokenResourceError:  # reset: the server closed with unread input
                break
            if not chunk:
                break
            received += chunk
        return bytes(received)


def status_of(response: bytes) -> int:
    assert response.startswith(b"HTTP/1.1 "), response[:200]
    return int(response[9:12])


async def wait_until(condition: Callable[[], bool]) -> None:
    """Poll ``condition`` until it holds; bound it with fail_after. For counters that real
    sockets move, which no trio.Event reports."""
    while not condition():  # noqa: ASYNC110 - see the docstring
        await trio.sleep(0.005)
