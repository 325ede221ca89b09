"""The WebSocket layer of one connection: the upgrade, incoming messages, outgoing frames.

wsproto parses: the upgrade handshake (``WSConnection``), then the frames the client sends
(its ``Connection``, kept alone once the handshake is done: the handshake's own h11 state is
dropped, a few KB per idle connection). Outgoing text frames are built here: a server frame is
a two-to-ten-byte header and the payload, unmasked and never fragmented, and building it in
one expression costs a fraction of a generic encoder's time per frame, which matters when one
event goes to a hundred clients. Close frames and pongs still come from wsproto.
"""

from __future__ import annotations

import base64

import attrs
import wsproto
from wsproto.connection import Connection, ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Request,
    TextMessage,
)
from wsproto.utilities import RemoteProtocolError

from ._http import BadRequest
from ._http import Request as HttpRequest

__all__ = [
    "GOING_AWAY",
    "INTERNAL_ERROR",
    "POLICY_VIOLATION",
    "PROTOCOL_ERROR",
    "TOO_BIG",
    "WebSocketClose",
    "WebSocketTransport",
    "text_frame",
]

#: Close codes (RFC 6455 7.4.1).
GOING_AWAY, PROTOCOL_ERROR, POLICY_VIOLATION, TOO_BIG = 1001, 1002, 1008, 1009
INTERNAL_ERROR = 1011


class WebSocketClose(Exception):
    """Close the connection with this code and reason."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def text_frame(payload: bytes) -> bytes:
    """One final, unmasked text frame carrying ``payload`` (RFC 6455 5.2)."""
    size = len(payload)
    if size < 126:
        return bytes((0x81, size)) + payload
    if size < 65_536:
        return b"\x81\x7e" + size.to_bytes(2, "big") + payload
    return b"\x81\x7f" + size.to_bytes(8, "big") + payload


def _check_key(key: str) -> None:
    """:exc:`BadRequest` unless ``key`` is 16 bytes in base64 (RFC 6455 4.1, 4.2.1)."""
    try:
        ok = len(base64.b64decode(key, validate=True)) == 16
    except ValueError:  # binascii.Error
        ok = False
    if not ok:
        raise BadRequest(400, "bad WebSocket upgrade: Sec-WebSocket-Key must be 16 bytes")


@attrs.define(eq=False)
class WebSocketTransport:
    """The frames of one accepted WebSocket: whole text messages in, frames out."""

    _conn: Connection
    max_payload: int
    #: The most bytes taken while :attr:`authenticated` is False.
    max_handshake_bytes: int
    authenticated: bool = False
    #: The client sent its close frame.
    peer_closed: bool = False
    #: Whole messages received and not yet taken (``""`` for a binary one).
    _inbox: list[str] = attrs.field(factory=list)
    _parts: list[str] = attrs.field(factory=list)
    _size: int = 0
    _received: int = 0

    @classmethod
    def accept(
        cls, request: HttpRequest, *, max_payload: int, max_handshake_bytes: int
    ) -> tuple[WebSocketTransport, bytes]:
        """Accept the upgrade ``request`` (no extensions: permessage-deflate would cost
        hundreds of KB per connection); the transport and the 101 response to send.
        :exc:`BadRequest` for a malformed upgrade."""
        _check_key(request.headers.get("sec-websocket-key", ""))
        ws = wsproto.WSConnection(wsproto.ConnectionType.SERVER)
        try:
            ws.initiate_upgrade_connection(request.raw_headers, request.target)
        except RemoteProtocolError as exc:  # a missing header or a wrong version
            raise BadRequest(400, f"bad WebSocket upgrade: {exc}") from exc
        if not any(isinstance(event, Request) for event in ws.events()):
            raise BadRequest(400, "bad WebSocket upgrade")  # pragma: no cover - wsproto's own
        response = ws.send(AcceptConnection())
        assert ws.connection is not None
        return cls(ws.connection, max_payload, max_handshake_bytes), response

    @property
    def is_open(self) -> bool:
        return self._conn.state is ConnectionState.OPEN

    def receive(self, data: bytes) -> list[bytes]:
        """Feed bytes from the socket; returns the frames to send back (pongs, the reply to
        the client's close). :exc:`WebSocketClose` for a violation."""
        self._received += len(data)
        if not self.authenticated and self._received > self.max_handshake_bytes:
            limit = self.max_handshake_bytes
            raise WebSocketClose(POLICY_VIOLATION, f"more than {limit / 1024:g} KiB before connect")
        conn = self._conn
        replies = []
        conn.receive_data(data)
        try:
            for event in conn.events():
                if isinstance(event, TextMessage | BytesMessage):
                    self._size += len(event.data)
                    if self._size > self.max_payload:
                        raise WebSocketClose(
                            TOO_BIG, f"a message is larger than {self.max_payload}"
                        )
                    self._parts.append(event.data if isinstance(event, TextMessage) else "")
                    if event.message_finished:
                        self._inbox.append("".join(self._parts))
                        self._parts.clear()
                        self._size = 0
                elif isinstance(event, Ping):
                    replies.append(conn.send(event.response()))
                elif isinstance(event, CloseConnection):
                    self.peer_closed = True
                    replies.append(conn.send(event.response()))
        except RemoteProtocolError as exc:
            raise WebSocketClose(PROTOCOL_ERROR, str(exc)[:100]) from exc
        return replies

    def take(self) -> str | None:
        """The oldest whole message received, if any."""
        return self._inbox.pop(0) if self._inbox else None

    def close_frame(self, code: int, reason: str) -> bytes | None:
        """The close frame to send, or ``None`` if the connection is no longer open."""
        if not self.is_open or self.peer_closed:
            return None
        return self._conn.send(CloseConnection(code=code, reason=reason))
