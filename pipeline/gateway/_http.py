"""HTTP/1.1 on one socket, parsed by h11: read a request, answer it, or stream a response.

The gateway answers one request per connection (``Connection: close``): its clients are
WebSockets and event streams that hold the connection anyway, and a page load is three small
requests. Headers are bounded (``max_incomplete_event_size``), bodies by ``max_payload``, and
the whole request by ``handshake_timeout``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import attrs
import h11
import trio

__all__ = ["BadRequest", "Request", "read_request", "respond", "response_head", "stream_chunk"]

#: The largest request line plus headers accepted.
MAX_HEADER_BYTES = 16_384
_RECV = 65_536


class BadRequest(Exception):
    """The client sent something that is not an acceptable HTTP request."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@attrs.define(eq=False)
class Request:
    """One parsed request, and the h11 state to answer it with."""

    method: str
    path: str
    query: dict[str, str]
    #: Lower-case names; a repeated header keeps its last value.
    headers: dict[str, str]
    raw_headers: list[tuple[bytes, bytes]]
    target: bytes
    body: bytes
    peer: str
    conn: h11.Connection
    #: Bytes the client sent after the request (the first WebSocket frames, if any).
    trailing: bytes = b""

    @property
    def is_websocket(self) -> bool:
        return self.headers.get("upgrade", "").lower() == "websocket"

    def bearer_token(self) -> str | None:
        """The token from ``Authorization: Bearer``, else from ``?token=``."""
        auth = self.headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            return auth[7:].strip()
        return self.query.get("token")


async def read_request(
    sock: trio.socket.SocketType, peer: str, *, max_body: int, deadline: float
) -> Request:
    """Read one request by ``deadline``; :exc:`BadRequest` for anything unacceptable, and
    :exc:`trio.TooSlowError` past the deadline."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
    with trio.fail_at(deadline):
        event = await _next(sock, conn)
        if not isinstance(event, h11.Request):
            raise BadRequest(400, "expected an HTTP request")
        # h11 bounds only an incomplete head: one that arrived whole in a read is not checked.
        size = len(event.target) + sum(len(k) + len(v) + 4 for k, v in event.headers)
        if size > MAX_HEADER_BYTES:
            raise BadRequest(431, f"the request line and headers pass {MAX_HEADER_BYTES} bytes")
        target = event.target
        try:
            split = urlsplit(target.decode("ascii", "replace"))
        except ValueError as exc:  # "Invalid IPv6 URL": a "[" in an authority h11 let through
            raise BadRequest(400, f"bad request target: {exc}") from exc
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in event.headers}
        request = Request(
            method=event.method.decode("ascii"),
            path=unquote(split.path),
            query=dict(parse_qsl(split.query)),
            headers=headers,
            raw_headers=list(event.headers),
            target=target,
            body=b"",
            peer=peer,
            conn=conn,
        )
        if request.is_websocket:
            request.trailing = conn.trailing_data[0]
            return request
        body = bytearray()
        while True:
            part = await _next(sock, conn)
            if isinstance(part, h11.Data):
                body += part.data
                if len(body) > max_body:
                    raise BadRequest(413, f"the body is larger than {max_body} bytes")
            elif isinstance(part, h11.EndOfMessage):
                request.body = bytes(body)
                return request
            else:
                raise BadRequest(400, "the request ended early")


async def _next(sock: trio.socket.SocketType, conn: h11.Connection) -> Any:
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise BadRequest(exc.error_status_hint, str(exc)) from exc
        if event is h11.NEED_DATA:
            try:
                data = await sock.recv(_RECV)
            except OSError as exc:
                raise BadRequest(400, f"connection lost: {exc}") from exc
            conn.receive_data(data)
            if not data:
                raise BadRequest(400, "the client closed the connection")
            continue
        if event is h11.PAUSED:
            return h11.EndOfMessage()
        return event


_REASONS = {200: b"OK", 400: b"Bad Request", 401: b"Unauthorized", 403: b"Forbidden"}


def response_head(
    request: Request, status: int, content_type: str, headers: Mapping[str, str] | None = None
) -> bytes:
    """The status line and headers of a streamed (chunked) response."""
    fields = [("content-type", content_type), ("cache-control", "no-store")]
    fields += list((headers or {}).items())
    fields.append(("connection", "close"))
    return request.conn.send(h11.Response(status_code=status, headers=fields)) or b""


def stream_chunk(request: Request, data: bytes) -> bytes:
    """One chunk of a streamed response body."""
    return request.conn.send(h11.Data(data=data)) or b""


def respond(
    request: Request,
    status: int,
    body: bytes | str | Mapping[str, Any],
    content_type: str = "application/json",
    headers: Mapping[str, str] | None = None,
) -> bytes:
    """A whole response: status, headers, ``body`` (a mapping is sent as JSON)."""
    if isinstance(body, Mapping):
        data = json.dumps(body).encode()
    elif isinstance(body, str):
        data = body.encode()
    else:
        data = body
    fields = [
        ("content-type", content_type),
        ("content-length", str(len(data))),
        ("cache-control", "no-store"),
        ("x-content-type-options", "nosniff"),
        ("connection", "close"),
    ]
    fields += list((headers or {}).items())
    conn = request.conn
    head = conn.send(h11.Response(status_code=status, headers=fields)) or b""
    return head + (conn.send(h11.Data(data=data)) or b"") + (conn.send(h11.EndOfMessage()) or b"")


def error_response(status: int, message: str) -> bytes:
    """A response to a request h11 could not parse (so no :class:`Request` exists)."""
    conn = h11.Connection(h11.SERVER)
    # h11 answers only after a request: feed it a minimal one to get a server state.
    conn.receive_data(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
    conn.next_event()
    data = json.dumps({"error": {"code": "bad_request", "message": message}}).encode()
    head = h11.Response(
        status_code=status,
        headers=[
            ("content-type", "application/json"),
            ("content-length", str(len(data))),
            ("connection", "close"),
        ],
    )
    return (conn.send(head) or b"") + (conn.send(h11.Data(data=data)) or b"")
