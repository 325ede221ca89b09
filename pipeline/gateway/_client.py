"""One WebSocket client of the gateway: handshake, requests, and its session subscriptions.

A client is one task reading frames (this module's :meth:`WebSocketClient.run`), a writer
task draining its :class:`~._wire.Outbox` while there is something to send, and one task per
subscribed session pumping a
``DROP_OLDEST`` bus subscription filtered on that session into frames. All of them live in
the client's own nursery, so closing the client (or losing it) ends every one of them.

Every subscription is filtered on a session key the token allows; there is no unfiltered
fan-out to a client. A drop in a subscription reaches the client as a ``gap`` frame, never
as a silent hole in the seq. A client that cannot keep up gets a 1008 "slow consumer" close
frame before its socket is closed.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import attrs
import trio

from actors import Overflow

from .._errors import PipelineError
from .._subscription import SLOW_CONSUMER
from ._hub import Hub, RunRefused
from ._replay import Deduper, frame_name, resume_map
from ._tokens import READ, WRITE, Grant
from ._websocket import (
    GOING_AWAY,
    INTERNAL_ERROR,
    POLICY_VIOLATION,
    WebSocketClose,
    WebSocketTransport,
    text_frame,
)
from ._wire import ClientGone, Outbox, SlowConsumer

__all__ = ["EVENTS", "METHODS", "PROTOCOL", "WebSocketClient"]

_log = logging.getLogger("pipeline.gateway")

PROTOCOL = 1
EVENTS = ("agent", "chat", "gap", "resync")
METHODS = (
    "sessions.list",
    "sessions.subscribe",
    "sessions.unsubscribe",
    "chat.send",
    "chat.abort",
    "agent.wait",
)
SLOW = "slow consumer"
#: ``agent.wait`` calls one client may have waiting at once.
_MAX_WAITS = 16
_RECV = 65_536


class RequestError(Exception):
    """A request refused with an error code (GATEWAY 1.3)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@attrs.define(eq=False)
class WebSocketClient:
    """The server side of one ``/ws`` connection."""

    hub: Hub
    sock: trio.socket.SocketType
    peer: str
    outbox: Outbox
    transport: WebSocketTransport
    conn_id: str = attrs.field(factory=lambda: secrets.token_hex(8))
    grant: Grant | None = None
    #: The outer ``seq`` of the last event frame.
    frame_seq: int = 0
    #: session key -> the cancel scope of its pump task.
    sessions: dict[str, trio.CancelScope] = attrs.field(factory=dict)
    _nursery: trio.Nursery | None = None
    _close: tuple[int, str] | None = None
    _waits: int = 0
    #: Request budget (a token bucket of ``max_requests_per_second``).
    _budget: float = 0.0
    _budget_at: float = 0.0

    # ---- the connection ----------------------------------------------------------------------

    async def run(self, accept: bytes, first: bytes) -> None:
        """Send the upgrade's ``accept`` response, serve the client until either side closes
        (``first``: bytes that came with the upgrade request), then close."""
        hub = self.hub
        self._budget = hub.config.max_requests_per_second
        hub.counters.websockets += 1
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self.outbox.start_writer = functools.partial(nursery.start_soon, self._write)
                self.outbox.put(accept)
                try:
                    await self._serve(first)
                except WebSocketClose as close:
                    self.close(close.code, close.reason)
                except SlowConsumer:
                    self.close(POLICY_VIOLATION, SLOW)
                except ClientGone:
                    self.transport.peer_closed = True
                nursery.cancel_scope.cancel()
        except Exception:
            # A bug serving one client ends that client, never the gateway (its nursery).
            _log.exception("WebSocket client %s failed", self.conn_id)
            self._close = (INTERNAL_ERROR, "internal error")
        finally:
            hub.counters.websockets -= 1
            await self._finish()

    def close(self, code: int, reason: str) -> None:
        """Close the connection with ``code`` and ``reason`` (the first call wins)."""
        if self._close is None:
            self._close = (code, reason)
            if code == POLICY_VIOLATION and reason == SLOW:
                self.hub.counters.slow_consumer_closes += 1
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    async def _finish(self) -> None:
        code, reason = self._close or (GOING_AWAY, "server shutting down")
        frame = self.transport.close_frame(code, reason)
        slow = self._close == (POLICY_VIOLATION, SLOW)
        await self.outbox.finish(frame, self.hub.config.close_timeout, flush=not slow)
        self.hub.counters.bytes_sent += self.outbox.bytes_sent

    async def _write(self) -> None:
        try:
            await self.outbox.run_writer()
        except SlowConsumer:
            self.close(POLICY_VIOLATION, SLOW)
        except ClientGone:
            self.transport.peer_closed = True
            self.close(GOING_AWAY, "client gone")

    async def _serve(self, first: bytes) -> None:
        hub = self.hub
        config = hub.config
        self._event("connect.challenge", {"nonce": secrets.token_hex(16), "ts": _now_ms()})
        if hub.failures.blocked(self.peer, trio.current_time()):
            hub.counters.auth_failures += 1
            raise WebSocketClose(POLICY_VIOLATION, "too many failed handshakes; try again later")
        self._receive(first)
        text = None
        with trio.move_on_after(config.handshake_timeout):
            text = await self._next_message()
        if text is None:
            raise WebSocketClose(POLICY_VIOLATION, "no connect request in time")
        self._connect(text)
        self.transport.authenticated = True
        while (text := await self._next_message()) is not None:
            await self._request(text)

    async def _next_message(self) -> str | None:
        """The client's next whole text message (``""`` for a binary one); ``None`` once the
        client has closed the WebSocket."""
        transport = self.transport
        while (text := transport.take()) is None:
            if transport.peer_closed:
                return None
            try:
                data = await self.sock.recv(_RECV)
            except OSError as exc:
                raise ClientGone(str(exc)) from exc
            if not data:
                raise ClientGone("the client closed its socket")
            self._receive(data)
        return text

    def _receive(self, data: bytes) -> None:
        if data:
            for reply in self.transport.receive(data):
                self.outbox.put(reply)

    # ---- frames ------------------------------------------------------------------------------

    def _send(self, text: str) -> None:
        if not self.transport.is_open:
            return  # the client closed: a frame after the close is not allowed (RFC 6455 5.5.1)
        try:
            self.outbox.put(text_frame(text.encode()))
        except SlowConsumer:
            self.close(POLICY_VIOLATION, SLOW)

    def _event(self, name: str, payload: Mapping[str, Any]) -> None:
        self._event_json(name, json.dumps(payload, separators=(",", ":")))

    def _event_json(self, name: str, payload: str) -> None:
        self.frame_seq += 1
        self.hub.counters.frames_sent += 1
        self._send(
            f'{{"type":"event","event":"{name}","payload":{payload},"seq":{self.frame_seq}}}'
        )

    def _respond(self, request_id: object, payload: Mapping[str, Any]) -> None:
        frame = {"type": "res", "id": request_id, "ok": True, "payload": payload}
        self._send(json.dumps(frame, separators=(",", ":")))

    def _error(self, request_id: object, code: str, message: str) -> None:
        if code == "bad_request":
            self.hub.counters.bad_requests += 1
        error = {"code": code, "message": message}
        frame = {"type": "res", "id": request_id, "ok": False, "error": error}
        self._send(json.dumps(frame, separators=(",", ":")))

    # ---- the handshake -----------------------------------------------------------------------

    def _connect(self, text: str) -> None:
        hub = self.hub
        frame = _parse(text)
        if frame is None or frame.get("type") != "req" or frame.get("method") != "connect":
            hub.counters.auth_failures += 1
            hub.failures.record(self.peer, trio.current_time())
            raise WebSocketClose(POLICY_VIOLATION, "the first frame must be a connect request")
        params = frame.get("params")
        auth = params.get("auth") if isinstance(params, Mapping) else None
        token = auth.get("token") if isinstance(auth, Mapping) else None
        grant = hub.config.tokens.grant(token)
        if grant is None:
            hub.counters.auth_failures += 1
            hub.failures.record(self.peer, trio.current_time())
            raise WebSocketClose(POLICY_VIOLATION, "unauthorized: unknown token")
        self.grant = grant
        config = hub.config
        self._respond(
            frame.get("id"),
            {
                "type": "hello-ok",
                "protocol": PROTOCOL,
                "server": {"version": _version(), "connId": self.conn_id},
                "features": {"methods": list(METHODS), "events": list(EVENTS)},
                "policy": {
                    "maxPayload": config.max_payload,
                    "maxBufferedBytes": config.max_buffered_bytes,
                },
                "auth": grant.to_wire(),
            },
        )

    # ---- requests ----------------------------------------------------------------------------

    async def _request(self, text: str) -> None:
        frame = _parse(text)
        request_id = frame.get("id") if frame is not None else None
        if not isinstance(request_id, str | int) or isinstance(request_id, bool):
            request_id = None
        if frame is None or frame.get("type") != "req" or not isinstance(frame.get("method"), str):
            self._error(request_id, "bad_request", "expected {type: req, id, method, params}")
            return
        if not self._take_budget():
            self.hub.counters.rate_limited += 1
            self._error(request_id, "rate_limited", "too many requests; slow down")
            return
        params = frame.get("params", {})
        handler = _HANDLERS.get(frame["method"])
        if not isinstance(params, Mapping) or handler is None:
            code = "bad_request" if handler is not None else "unknown_method"
            self._error(request_id, code, f"unknown method or bad params: {frame['method']!r}")
            return
        try:
            payload = await handler(self, request_id, params)
        except RequestError as exc:
            self._error(request_id, exc.code, str(exc))
        else:
            if payload is not None:
                self._respond(request_id, payload)

    def _take_budget(self) -> bool:
        rate = self.hub.config.max_requests_per_second
        now = trio.current_time()
        self._budget = min(rate, self._budget + (now - self._budget_at) * rate)
        self._budget_at = now
        if self._budget < 1:
            return False
        self._budget -= 1
        return True

    def _session(self, params: Mapping[str, Any], scope: str = READ) -> str:
        key = params.get("sessionKey")
        if not isinstance(key, str) or not key.strip() or len(key) > 512:
            raise RequestError("bad_request", "sessionKey must be a non-blank string")
        assert self.grant is not None
        if not self.grant.allows(key, scope):
            raise RequestError("forbidden", f"this token may not {scope} session {key!r}")
        return key

    async def _sessions_list(self, request_id: object, params: Mapping[str, Any]) -> Any:
        assert self.grant is not None
        live: dict[str, int] = {}
        for context in self.hub.bus.live_runs().values():
            if context.session_key is not None:
                live[context.session_key] = live.get(context.session_key, 0) + 1
        keys = set(live) | self.hub.replay.sessions()
        allowed = sorted(k for k in keys if self.grant.allows(k))
        return {"sessions": [{"sessionKey": k, "liveRuns": live.get(k, 0)} for k in allowed]}

    async def _subscribe(self, request_id: object, params: Mapping[str, Any]) -> Any:
        key = self._session(params)
        try:
            resume = resume_map(params.get("resume"))
        except ValueError as exc:
            raise RequestError("bad_request", str(exc)) from exc
        if key in self.sessions:
            return {"sessionKey": key, "replayed": 0}
        if len(self.sessions) >= self.hub.config.max_sessions_per_client:
            raise RequestError("limit", "this connection has subscribed to too many sessions")
        assert self._nursery is not None
        try:
            await self._nursery.start(self._pump, key, resume, request_id)
        except PipelineError as exc:  # too many subscribers, the bus closed
            raise RequestError("unavailable", str(exc)) from exc
        return None  # the pump answered, before its replay

    async def _unsubscribe(self, request_id: object, params: Mapping[str, Any]) -> Any:
        key = self._session(params)
        scope = self.sessions.pop(key, None)
        if scope is not None:
            scope.cancel()
        return {"sessionKey": key, "unsubscribed": scope is not None}

    async def _chat_send(self, request_id: object, params: Mapping[str, Any]) -> Any:
        key = self._session(params, WRITE)
        message = params.get("message")
        idempotency = params.get("idempotencyKey")
        if not isinstance(message, str):
            raise RequestError("bad_request", "message must be a string")
        if idempotency is not None and (not isinstance(idempotency, str) or len(idempotency) > 256):
            raise RequestError("bad_request", "idempotencyKey must be a string")
        try:
            run_id = await self.hub.start_agent_run(
                key, message, run_id=None, idempotency_key=idempotency
            )
        except RunRefused as exc:
            raise RequestError("unavailable", str(exc)) from exc
        return {"runId": run_id, "sessionKey": key}

    async def _chat_abort(self, request_id: object, params: Mapping[str, Any]) -> Any:
        key = self._session(params, WRITE)
        run_id = params.get("runId")
        if run_id is not None and not isinstance(run_id, str):
            raise RequestError("bad_request", "runId must be a string")
        bus = self.hub.bus
        live = bus.live_runs(session_key=key)
        targets = [run_id] if run_id is not None else list(live)
        aborted = [r for r in targets if r in live and bus.abort(r, reason="rpc")]
        return {"aborted": aborted}

    async def _agent_wait(self, request_id: object, params: Mapping[str, Any]) -> Any:
        run_id = params.get("runId")
        timeout_ms = params.get("timeoutMs", 30_000)
        # NaN and Infinity parse as JSON numbers; a huge int overflows a float division.
        finite = type(timeout_ms) in (int, float) and 0 <= timeout_ms < math.inf
        if not isinstance(run_id, str) or not finite:
            raise RequestError("bad_request", "agent.wait takes {runId, timeoutMs >= 0}")
        seconds = min(timeout_ms, self.hub.config.max_wait * 1000) / 1000
        hub = self.hub
        await hub.recorder.wait_caught_up()
        known, key = hub.run_session(run_id)
        assert self.grant is not None
        if not known:
            raise RequestError("not_found", f"no live or recent run {run_id!r}")
        if key is None or not self.grant.allows(key):
            raise RequestError("forbidden", "this token may not read that run's session")
        if self._waits >= _MAX_WAITS:
            raise RequestError("limit", f"at most {_MAX_WAITS} agent.wait calls at once")
        record = hub.replay.touch(run_id, key)
        if record.status is not None:
            return {"runId": run_id, "status": record.status}
        assert self._nursery is not None
        self._waits += 1
        self._nursery.start_soon(self._wait_for, request_id, run_id, record, seconds)
        return None

    async def _wait_for(self, request_id: object, run_id: str, record: Any, seconds: float) -> None:
        try:
            with trio.move_on_after(seconds):
                await record.ended.wait()
            status = record.status or "pending"
            self._respond(request_id, {"runId": run_id, "status": status})
        finally:
            self._waits -= 1

    # ---- a session's events ------------------------------------------------------------------

    async def _pump(
        self,
        key: str,
        resume: Mapping[str, int] | None,
        request_id: object,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        hub = self.hub
        config = hub.config
        with trio.CancelScope() as scope:
            subscription = hub.bus.subscribe(
                session_key=key, overflow=Overflow.DROP_OLDEST, buffer=config.client_buffer
            )
            async with subscription as sub:
                self.sessions[key] = scope
                dedupe = Deduper()
                replay: list[tuple[str, str]] = []
                if resume is not None:
                    await hub.recorder.wait_caught_up()
                    replay = self._replay(key, resume, dedupe)
                task_status.started()
                replayed = sum(1 for name, _ in replay if name != "resync")
                self._respond(request_id, {"sessionKey": key, "replayed": replayed})
                outbox = self.outbox
                # The replay goes out as the client takes it (it may hold far more than
                # max_buffered_bytes); meanwhile the subscription buffers or drops live deltas.
                for name, payload in replay:
                    if not outbox.has_room():
                        await outbox.wait_room()
                    self._event_json(name, payload)
                replay.clear()
                async for batch in sub.batches():
                    for event in batch:
                        # Room is checked per event, not per batch: a batch of big events
                        # would overflow the outbox (a slow-consumer close) where waiting
                        # lets the subscription drop deltas (a gap) instead.
                        if not outbox.has_room():
                            await outbox.wait_room()
                        frame = hub.frame(key, event, dedupe)
                        if frame is not None:
                            self._event_json(*frame)
                if sub.closed_reason == SLOW_CONSUMER:
                    self.close(POLICY_VIOLATION, SLOW)
        if self.sessions.get(key) is scope:
            del self.sessions[key]

    def _replay(
        self, key: str, resume: Mapping[str, int], dedupe: Deduper
    ) -> list[tuple[str, str]]:
        """The frames that bring a resuming client up to date, and what they cover."""
        replay = self.hub.replay
        frames: list[tuple[str, str]] = []
        for run_id, last_seq in resume.items():
            record = replay.run(run_id)
            if record is None or record.session_key != key:
                continue
            if record.forgotten_through > last_seq:
                frames.append(("resync", self.hub.resync(key, run_id, record)))
        for entry in replay.session(key):
            event = entry.event
            have = resume.get(event.run_id)
            if have is not None and event.seq <= have:
                continue
            dedupe.sent(event)
            frames.append((frame_name(event), entry.payload))
        return frames


_Handler = Callable[[WebSocketClient, object, Mapping[str, Any]], Awaitable[Any]]
_HANDLERS: dict[str, _Handler] = {
    "sessions.list": WebSocketClient._sessions_list,
    "sessions.subscribe": WebSocketClient._subscribe,
    "sessions.unsubscribe": WebSocketClient._unsubscribe,
    "chat.send": WebSocketClient._chat_send,
    "chat.abort": WebSocketClient._chat_abort,
    "agent.wait": WebSocketClient._agent_wait,
}


def _parse(text: str) -> dict[str, Any] | None:
    try:
        frame = json.loads(text)
    except (ValueError, RecursionError):  # not JSON; nested deeper than the parser recurses
        return None
    return frame if isinstance(frame, dict) else None


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@functools.cache
def _version() -> str:
    try:
        return version("trio-agent-bus")
    except PackageNotFoundError:  # pragma: no cover - run from a source tree
        return "0"
