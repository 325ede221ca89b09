"""The gateway server: one port for the viewer page, ``/ws``, event streams, health and metrics.

:func:`serve` (for ``nursery.start``) and :func:`open_gateway` (an async context manager)
listen, accept up to ``max_connections`` at once, and serve each connection in a task of the
gateway's own nursery. Cancelling it closes every WebSocket with 1001 and ends every task.

The HTTP and WebSocket protocols are parsed by h11 and wsproto, the sans-IO libraries under
Hypercorn and trio-websocket; this module and :mod:`._wire` are only the I/O around them.
``docs/gateway.md`` ("Why this stack") says why not Hypercorn itself.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from importlib import resources

import attrs
import trio

from .._bus import Bus
from ._client import WebSocketClient
from ._config import GatewayConfig
from ._http import BadRequest, Request, error_response, read_request, respond
from ._hub import GatewayStatistics, Hub
from ._metrics import CONTENT_TYPE, registry, render
from ._streams import serve_agui_run, serve_agui_session, serve_session_events
from ._tokens import ADMIN, READ, Grant
from ._websocket import WebSocketTransport
from ._wire import Outbox

_Handler = Callable[[], Awaitable[None]]

__all__ = ["Gateway", "open_gateway", "serve"]

_log = logging.getLogger("pipeline.gateway")

#: The viewer page's files: name -> content type.
_STATIC = {
    "index.html": "text/html; charset=utf-8",
    "viewer.js": "text/javascript; charset=utf-8",
    "viewer.css": "text/css; charset=utf-8",
}
#: Errors ``accept`` raises when the process is out of file descriptors or memory: wait, retry.
_ACCEPT_RETRY = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}


@attrs.define(eq=False)
class Gateway:
    """A running gateway: where it listens, and its counters."""

    _hub: Hub
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def statistics(self) -> GatewayStatistics:
        return self._hub.statistics()


async def serve(
    bus: Bus,
    config: GatewayConfig,
    *,
    task_status: trio.TaskStatus[Gateway] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``bus`` to clients until cancelled; ``nursery.start`` returns the :class:`Gateway`
    once it accepts connections."""
    async with open_gateway(bus, config) as gateway:
        task_status.started(gateway)
        await trio.sleep_forever()


@asynccontextmanager
async def open_gateway(bus: Bus, config: GatewayConfig) -> AsyncIterator[Gateway]:
    """Serve ``bus`` to clients while the block runs; leaving it closes every client."""
    if not isinstance(config, GatewayConfig):
        raise TypeError(f"config must be a GatewayConfig, not {config!r}")
    hub = Hub.create(bus, config)
    listeners = await trio.open_tcp_listeners(config.port, host=config.host)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(hub.recorder.run)
            server = _Server(hub, nursery, registry(hub))
            for listener in listeners:
                nursery.start_soon(server.accept, listener)
            port = listeners[0].socket.getsockname()[1]
            try:
                yield Gateway(hub, config.host, port)
            finally:
                nursery.cancel_scope.cancel()
    finally:
        for listener in listeners:
            await listener.aclose()


@attrs.define(eq=False)
class _Server:
    hub: Hub
    nursery: trio.Nursery
    metrics: object

    async def accept(self, listener: trio.SocketListener) -> None:
        counters = self.hub.counters
        limit = self.hub.config.max_connections
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in _ACCEPT_RETRY:
                    raise
                _log.error("accept failed (%s); retrying in 100 ms", exc)
                await trio.sleep(0.1)
                continue
            if counters.connections >= limit:
                counters.connections_refused += 1
                with trio.move_on_after(0.05), contextlib.suppress(trio.BrokenResourceError):
                    await stream.send_all(error_response(503, "too many connections"))
                await stream.aclose()
                continue
            counters.connections += 1
            counters.connections_total += 1
            _keepalive(stream.socket, self.hub.config.keepalive_idle)
            self.nursery.start_soon(self._connection, stream.socket)

    async def _connection(self, sock: trio.socket.SocketType) -> None:
        hub = self.hub
        config = hub.config
        try:
            peer = str(sock.getpeername()[0])
        except OSError:
            peer = "?"
        outbox = Outbox(sock, config.max_buffered_bytes, config.send_timeout)
        try:
            deadline = trio.current_time() + config.handshake_timeout
            request = await read_request(sock, peer, max_body=config.max_payload, deadline=deadline)
            handler = self._route(request, sock, outbox)
            # A WebSocket lives long: its handler keeps what it needs, not the request (and
            # the request's h11 state), a few KB per idle connection.
            del request
            await handler()
        except BadRequest as exc:
            hub.counters.bad_requests += 1
            outbox.put(error_response(exc.status, str(exc)))
            await outbox.finish(None, config.close_timeout)
        except trio.TooSlowError:
            pass
        except Exception:
            # A bug serving one connection ends that connection, never the gateway.
            _log.exception("connection from %s failed", peer)
        finally:
            # One close_timeout for the whole close: the close frame and the lingering after
            # it (a stalled client would otherwise hold shutdown for twice as long).
            until = outbox.close_deadline
            if until is None:
                until = trio.current_time() + config.close_timeout
            with trio.move_on_at(until, shield=True):
                await _linger(sock)
            hub.counters.connections -= 1
            sock.close()

    def _route(self, request: Request, sock: trio.socket.SocketType, outbox: Outbox) -> _Handler:
        """What serves ``request``: an async callable; :exc:`BadRequest` for a bad upgrade."""
        hub = self.hub
        path, method = request.path, request.method
        if path == "/ws":
            if not request.is_websocket:
                return self._reply(outbox, respond(request, 426, _error("upgrade required")))
            config = hub.config
            transport, accept = WebSocketTransport.accept(
                request,
                max_payload=config.max_payload,
                max_handshake_bytes=config.max_handshake_bytes,
            )
            client = WebSocketClient(hub, sock, request.peer, outbox, transport)
            return functools.partial(client.run, accept, request.trailing)
        if method == "GET" and path in ("/", "/index.html", "/viewer.js", "/viewer.css"):
            name = "index.html" if path == "/" else path[1:]
            body = resources.files(__package__).joinpath("static", name).read_bytes()
            return self._reply(outbox, respond(request, 200, body, _STATIC[name]))
        if method == "GET" and path == "/healthz":
            return self._reply(outbox, respond(request, 200, {"ok": True}))
        if method == "GET" and path == "/metrics":
            grant = self._grant(request)
            if grant is None or ADMIN not in grant.scopes:
                return self._refuse(request, outbox, grant, "metrics need the admin scope")
            body = render(self.metrics)  # type: ignore[arg-type]
            return self._reply(outbox, respond(request, 200, body, CONTENT_TYPE))
        if method == "POST" and path == "/agui":
            grant = self._grant(request)
            if grant is None:
                return self._refuse(request, outbox, grant, "a token is required")
            return functools.partial(self._agui_run, request, sock, outbox, grant)
        parts = path.split("/")
        if method == "GET" and len(parts) == 4 and parts[1] == "sessions" and parts[2]:
            key, kind = parts[2], parts[3]
            if kind in ("events", "agui"):
                grant = self._grant(request)
                if grant is None or not grant.allows(key, READ):
                    return self._refuse(request, outbox, grant, f"may not read {key!r}")
                serve_stream = serve_session_events if kind == "events" else serve_agui_session
                return functools.partial(serve_stream, hub, sock, outbox, request, key)
        return self._reply(outbox, respond(request, 404, _error("no such endpoint")))

    async def _agui_run(
        self, request: Request, sock: trio.socket.SocketType, outbox: Outbox, grant: Grant
    ) -> None:
        refusal = await serve_agui_run(self.hub, sock, outbox, request, grant)
        if refusal is not None:
            await self._reply(outbox, refusal)()

    def _grant(self, request: Request) -> Grant | None:
        hub = self.hub
        if hub.failures.blocked(request.peer, trio.current_time()):
            return None
        grant = hub.config.tokens.grant(request.bearer_token())
        if grant is None:
            hub.counters.auth_failures += 1
            hub.failures.record(request.peer, trio.current_time())
        return grant

    def _refuse(
        self, request: Request, outbox: Outbox, grant: Grant | None, message: str
    ) -> _Handler:
        if grant is None:
            body = _error("unauthorized: a valid token is required", "unauthorized")
            response = respond(request, 401, body, headers={"www-authenticate": "Bearer"})
        else:
            response = respond(request, 403, _error(message, "forbidden"))
        return self._reply(outbox, response)

    def _reply(self, outbox: Outbox, response: bytes) -> _Handler:
        """A handler that sends ``response`` and ends the connection."""

        async def reply() -> None:
            outbox.put(response)
            await outbox.finish(None, self.hub.config.close_timeout)

        return reply


def _keepalive(sock: trio.socket.SocketType, idle: float) -> None:
    """Turn on TCP keepalive: probes after ``idle`` seconds of silence, then every tenth of
    that, and the connection fails after 3 unanswered probes (where the platform allows)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for option, value in (
            ("TCP_KEEPIDLE", idle),
            ("TCP_KEEPINTVL", max(idle / 10, 1)),
            ("TCP_KEEPCNT", 3),
        ):
            if hasattr(socket, option):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), max(int(value), 1))
    except OSError:  # the client is gone already; the connection task will see it
        pass


async def _linger(sock: trio.socket.SocketType) -> None:
    """Half-close ``sock`` and read until the client closes too. Closing a socket with unread
    input sends a reset, which destroys what is still on its way to the client: the close
    frame of a slow consumer that was still sending (GATEWAY 1.4), an error response."""
    try:
        sock.shutdown(socket.SHUT_WR)
        while await sock.recv(65_536):
            pass
    except OSError:  # the client is gone already
        pass


def _error(message: str, code: str = "bad_request") -> dict[str, object]:
    return {"error": {"code": code, "message": message}}
