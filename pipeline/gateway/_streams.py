"""Event streams over plain HTTP: Server-Sent Events of a session, and AG-UI (GATEWAY 1.6).

Each stream is a chunked ``text/event-stream`` response written through the client's
:class:`~._wire.Outbox`, fed by a ``DROP_OLDEST`` bus subscription filtered on one session
(or one run, for ``POST /agui``). A watcher task notices the client hanging up. A slow client
is cut off (an event stream has no close frame to send; its next ``EventSource`` reconnect
resumes with ``Last-Event-ID``).

SSE ids: an agent event's id is ``runId:seq``; an annotation sharing its cause's seq (a chat
event, a seq-gap report) adds its kind, ``runId:seq:final``, so every id names one event and
``Last-Event-ID`` resumes right after it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterable

import h11
import trio
from ag_ui.core import BaseEvent

from actors import Overflow

from .. import _event
from .._errors import PipelineError
from .._event import Event
from .._subscription import Subscription
from ._agui import AguiTranslator, encode, last_user_message, parse_run_input
from ._http import Request, respond, response_head, stream_chunk
from ._hub import Hub, RunRefused
from ._replay import Deduper, Entry, frame_name
from ._tokens import READ, WRITE, Grant
from ._wire import ClientGone, Outbox, SlowConsumer

__all__ = ["event_id", "serve_agui_run", "serve_agui_session", "serve_session_events"]

_SSE = "text/event-stream; charset=utf-8"


def event_id(event: Event) -> str:
    """The SSE id of ``event`` (see the module docstring)."""
    kind = _event.annotation_kind(event)
    base = f"{event.run_id}:{event.seq}"
    return base if kind is None else f"{base}:{kind}"


def _sse(name: str, data: str, ident: str | None = None) -> bytes:
    head = f"id: {ident}\n" if ident is not None else ""
    return f"{head}event: {name}\ndata: {data}\n\n".encode()


async def _stream(
    hub: Hub,
    sock: trio.socket.SocketType,
    outbox: Outbox,
    feed: Callable[[], Awaitable[None]],
    last: Callable[[], bytes | None] = lambda: None,
) -> None:
    """Run ``feed`` (which queues chunks) with a writer and a hang-up watcher until one ends,
    then send what is queued and ``last()``."""

    async def watch() -> None:
        try:
            while await sock.recv(1024):
                pass
        except OSError:
            pass

    async def write() -> None:
        try:
            await outbox.run_writer()
        except SlowConsumer:
            hub.counters.slow_consumer_closes += 1
        except ClientGone:
            pass

    hub.counters.event_streams += 1
    try:
        async with trio.open_nursery() as nursery:

            async def first_to_end(fn: Callable[[], Awaitable[None]]) -> None:
                await fn()
                nursery.cancel_scope.cancel()

            nursery.start_soon(first_to_end, watch)
            nursery.start_soon(first_to_end, write)
            nursery.start_soon(first_to_end, feed)
    finally:
        hub.counters.event_streams -= 1
        # The last chunks (a stream's end) go out within close_timeout.
        await outbox.finish(last(), hub.config.close_timeout)
        hub.counters.bytes_sent += outbox.bytes_sent


def _resume_point(last_event_id: str | None) -> tuple[str, int, str] | None:
    """``(run id, seq, kind)`` from a ``Last-Event-ID`` (kind ``""`` for an agent event)."""
    if not last_event_id:
        return None
    head, _, tail = last_event_id.rpartition(":")
    kind = ""
    if not _is_seq(tail):
        kind = tail
        head, _, tail = head.rpartition(":")
    if not head or not _is_seq(tail):
        return None
    return head, int(tail), kind


def _is_seq(text: str) -> bool:
    """Whether ``text`` is a seq: ASCII digits (``"²".isdigit()`` is true, ``int("²")`` fails)."""
    return text.isascii() and text.isdigit()


def _after(entries: Iterable[Entry], point: tuple[str, int, str]) -> tuple[list[Entry], bool]:
    """The entries after the one ``point`` names, and whether it was found."""
    entries = list(entries)
    run_id, seq, kind = point
    for index, entry in enumerate(entries):
        event = entry.event
        same_run = event.run_id == run_id and event.seq == seq
        if same_run and (_event.annotation_kind(event) or "") == kind:
            return entries[index + 1 :], True
    return entries, False


async def serve_session_events(
    hub: Hub, sock: trio.socket.SocketType, outbox: Outbox, request: Request, key: str
) -> None:
    """``GET /sessions/{key}/events``: the session's events as SSE, resumable."""
    point = _resume_point(request.headers.get("last-event-id") or request.query.get("lastEventId"))
    async with contextlib.AsyncExitStack() as stack:
        sub = await _subscribe(hub, stack, session_key=key)
        if isinstance(sub, str):
            return await _unavailable(hub, outbox, request, sub)
        outbox.put(response_head(request, 200, _SSE, {"x-accel-buffering": "no"}))
        outbox.put(stream_chunk(request, b": connected\n\n"))
        dedupe = Deduper()
        entries: list[Entry] = []
        if point is not None:
            await hub.recorder.wait_caught_up()
            entries, found = _after(hub.replay.session(key), point)
            record = hub.replay.run(point[0])
            # Only a run of this session: the id may name any run, and a resync carries its text.
            if record is not None and record.session_key != key:
                record = None
            if not found and record is not None and record.forgotten_through >= point[1]:
                resync = hub.resync(key, point[0], record)
                outbox.put(stream_chunk(request, _sse("resync", resync)))
            for entry in entries:
                dedupe.sent(entry.event)

        async def feed() -> None:
            # The replay goes out as the client takes it (it may hold far more than the
            # outbox's bound), while the subscription buffers or drops live deltas (a gap).
            for entry in entries:
                if not outbox.has_room():
                    await outbox.wait_room()
                outbox.put(stream_chunk(request, _frame(entry.event, entry.payload)))
            entries.clear()
            async for batch in sub.batches():
                for event in batch:
                    # Per event, as the WebSocket pump does: see _client.WebSocketClient._pump.
                    if not outbox.has_room():
                        await outbox.wait_room()
                    frame = hub.frame(key, event, dedupe)
                    if frame is not None:
                        hub.counters.frames_sent += 1
                        ident = None if frame[0] == "gap" else event_id(event)
                        outbox.put(stream_chunk(request, _sse(*frame, ident)))

        await _stream(hub, sock, outbox, _guarded(feed))


async def _subscribe(
    hub: Hub,
    stack: contextlib.AsyncExitStack,
    *,
    session_key: str | None = None,
    run_id: str | None = None,
) -> Subscription | str:
    """A ``DROP_OLDEST`` subscription entered on ``stack``, or why the bus refused it
    (``max_subscribers`` reached, the bus closing)."""
    subscription = hub.bus.subscribe(
        session_key=session_key,
        run_id=run_id,
        overflow=Overflow.DROP_OLDEST,
        buffer=hub.config.client_buffer,
    )
    try:
        return await stack.enter_async_context(subscription)
    except PipelineError as exc:
        return str(exc)


async def _unavailable(hub: Hub, outbox: Outbox, request: Request, message: str) -> None:
    outbox.put(respond(request, 503, _error("unavailable", message)))
    await outbox.finish(None, hub.config.close_timeout)


def _frame(event: Event, payload: str) -> bytes:
    return _sse(frame_name(event), payload, event_id(event))


def _guarded(feed: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
    """``feed``, ending quietly when the client's outbox overflows (a slow consumer)."""

    async def run() -> None:
        with contextlib.suppress(SlowConsumer):
            await feed()

    return run


async def serve_agui_session(
    hub: Hub, sock: trio.socket.SocketType, outbox: Outbox, request: Request, key: str
) -> None:
    """``GET /sessions/{key}/agui``: the session's runs as an AG-UI event stream."""
    async with contextlib.AsyncExitStack() as stack:
        sub = await _subscribe(hub, stack, session_key=key)
        if isinstance(sub, str):
            return await _unavailable(hub, outbox, request, sub)
        outbox.put(response_head(request, 200, _SSE))
        translator = AguiTranslator(thread_id=key)

        async def feed() -> None:
            async for batch in sub.batches():
                for event in batch:
                    if not outbox.has_room():
                        await outbox.wait_room()
                    _put_agui(outbox, request, translator.translate(event.to_wire()))

        await _stream(hub, sock, outbox, _guarded(feed), _agui_end(request, translator))


async def serve_agui_run(
    hub: Hub, sock: trio.socket.SocketType, outbox: Outbox, request: Request, grant: Grant
) -> bytes | None:
    """``POST /agui``: start a run of the agent from a ``RunAgentInput``; stream its AG-UI
    events until it ends. Returns an error response instead when the run cannot start."""
    try:
        run_input = parse_run_input(request.body)
    except ValueError as exc:
        return respond(request, 400, _error("bad_request", str(exc)))
    key = run_input.thread_id
    if not grant.allows(key, WRITE) or not grant.allows(key, READ):
        return respond(request, 403, _error("forbidden", f"this token may not run in {key!r}"))
    # A run id live or recent in another session is not taken over: starting it would resume
    # a run in its retry grace under this session, or mix two runs in one record.
    await hub.recorder.wait_caught_up()
    known, owner = hub.run_session(run_input.run_id)
    if known and owner != key:
        return respond(request, 409, _error("unavailable", "that run id is in use"))
    async with contextlib.AsyncExitStack() as stack:
        sub = await _subscribe(hub, stack, run_id=run_input.run_id)
        if isinstance(sub, str):
            return respond(request, 503, _error("unavailable", sub))
        try:
            await hub.start_agent_run(
                key, last_user_message(run_input), run_id=run_input.run_id, idempotency_key=None
            )
        except RunRefused as exc:
            return respond(request, 409, _error("unavailable", str(exc)))
        outbox.put(response_head(request, 200, _SSE))
        translator = AguiTranslator(thread_id=key, run_id=run_input.run_id)

        async def feed() -> None:
            async for batch in sub.batches():
                for event in batch:
                    if not outbox.has_room():
                        await outbox.wait_room()
                    _put_agui(outbox, request, translator.translate(event.to_wire()))
                if translator.done:
                    outbox.put(request.conn.send(h11.EndOfMessage()) or b"")
                    return

        await _stream(hub, sock, outbox, _guarded(feed), _agui_end(request, translator))
    return None


def _agui_end(request: Request, translator: AguiTranslator) -> Callable[[], bytes | None]:
    """The end of an AG-UI response cut short (the gateway closing, the bus closing, a slow
    client): its open run ended with ``RUN_ERROR`` (:meth:`AguiTranslator.close`), then the
    body's end, so that a client sees a run that failed rather than a broken response.
    Nothing once the response has ended (``POST /agui`` after its run)."""

    def last() -> bytes | None:
        if request.conn.our_state is not h11.SEND_BODY:
            return None
        events = translator.close("the gateway closed the stream")
        chunks = [stream_chunk(request, encode(event)) for event in events]
        return b"".join(chunks) + (request.conn.send(h11.EndOfMessage()) or b"")

    return last


def _put_agui(outbox: Outbox, request: Request, events: list[BaseEvent]) -> None:
    for event in events:
        outbox.put(stream_chunk(request, encode(event)))


def _error(code: str, message: str) -> dict[str, object]:
    return {"error": {"code": code, "message": message}}
