"""Slow clients (GATEWAY 1.4): a client that stops reading gets ``gap`` frames for what its
subscription dropped, then a 1008 "slow consumer" close frame that really reaches it; other
clients and the bus's own subscribers see every event.

The slow client is a raw socket whose WebSocket side is wsproto, with a small receive buffer
set before connecting, so that the server's sends block after a few kilobytes. The raw client
also serves the other raw-socket tests of this package (bad input, churn, limits).
"""

from __future__ import annotations

import collections
import itertools
import json
import socket
import struct
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import attrs
import pytest
import trio
import wsproto
from wsproto.events import AcceptConnection, CloseConnection, Request, TextMessage
from wsproto.events import Event as WsEvent

import pipeline as pl

from ._client import is_terminal
from .conftest import ALICE, Served

# ---- a raw WebSocket client on a socket the test controls --------------------------------------


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


# ---- checks on what a client saw ---------------------------------------------------------------


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


async def wait_until(condition: Callable[[], bool]) -> None:
    """Poll ``condition`` until it holds; bound it with fail_after. For counters that real
    sockets move, which no trio.Event reports."""
    while not condition():  # noqa: ASYNC110 - see the docstring
        await trio.sleep(0.005)


# ---- a paced bulky run -------------------------------------------------------------------------

DELTA = "x" * 1000


@attrs.define
class Progress:
    """How far a reader got (agent seq of one run); the run's body waits on it."""

    seen: int = 0
    _changed: trio.Event = attrs.field(factory=trio.Event)

    def advance(self, seq: int) -> None:
        self.seen = max(self.seen, seq)
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, seq: int) -> None:
        while self.seen < seq:
            await self._changed.wait()


def bulky_body(deltas: int | None, paced_by: Progress, *, step: int = 8) -> Callable[[pl.Run], Any]:
    """A run body emitting 1 KB assistant deltas (``deltas`` of them, or until aborted), ``step``
    at a time, each step once ``paced_by`` has read the previous one, so that a reader that keeps
    up never has more than ``step`` events in its mailbox."""

    async def body(run: pl.Run) -> None:
        for n in itertools.count(1) if deltas is None else range(1, deltas + 1):
            event = await run.emit("assistant", {"delta": f"{n:05d}{DELTA}"})
            if n % step == 0:
                await paced_by.wait_for(event.seq)

    return body


async def follow(client: RawClient, run_id: str, progress: Progress) -> list[dict[str, Any]]:
    """A well-behaved client's event frames through ``run_id``'s terminal event, reporting
    its progress to the run's body."""
    frames = []
    while True:
        frame = await client.frame()
        if frame["type"] != "event":
            continue
        frames.append(frame)
        if frame["event"] == "agent" and frame["payload"]["runId"] == run_id:
            progress.advance(frame["payload"]["seq"])
            if is_terminal(frame, run_id):
                return frames


async def collect_bus(
    bus: pl.Bus, run_id: str, into: list[pl.Event], *, task_status: trio.TaskStatus[None]
) -> None:
    """A plain (``BLOCK``) bus subscriber: every event of ``run_id``, through its end."""
    async with bus.subscribe(run_id=run_id) as sub:
        task_status.started()
        async for event in sub:
            into.append(event)
            if event.stream == "lifecycle" and event.data.get("phase") in ("end", "error"):
                return


SLOW = {"max_buffered_bytes": 32_768, "send_timeout": 1.0, "client_buffer": 16}


class TestSlowConsumer:
    @pytest.mark.parametrize("gateway_config", [SLOW])
    async def test_a_client_that_stops_reading_gets_gaps_then_a_slow_consumer_close(
        self, served: Served, nursery: trio.Nursery
    ) -> None:
        bus = served.bus
        with trio.fail_after(20):
            # The good client is a raw one too: the chat snapshots of a 2 MB answer (cut at 1 Mi
            # characters) pass the 1 MiB message limit of trio-websocket's client.
            async with (
                raw_client(served.url, ALICE) as good,
                raw_client(served.url, ALICE, rcvbuf=4096) as slow,
            ):
                for client in (good, slow):
                    res = await client.request("sessions.subscribe", {"sessionKey": "alice"})
                    assert res["ok"], res
                # Phase 1: the slow client reads nothing while deltas stream until its
                # subscription drops some (the bus counts it), then reads again.
                paced = Progress()
                on_bus: list[pl.Event] = []
                await nursery.start(collect_bus, bus, "r1", on_bus)
                context = pl.RunContext(session_key="alice")
                handle = await bus.start_run(bulky_body(2000, paced), run_id="r1", context=context)

                async def slow_reads() -> None:
                    await wait_until(lambda: bus.statistics().drops > 0)
                    while not slow.frames or not is_terminal(slow.frames[-1], "r1"):
                        await slow.frame()

                async with trio.open_nursery() as inner:
                    inner.start_soon(slow_reads)
                    seen_by_good = await follow(good, "r1", paced)
                await handle.wait()

                assert agent_seqs(seen_by_good, "r1") == list(range(1, 2003))
                assert not [f for f in seen_by_good if f["event"] == "gap"]
                assert len(on_bus) >= 2002
                assert [e.seq for e in on_bus if e.stream != "chat"] == list(range(1, 2003))
                dropped = check_no_silent_hole(slow.frames)
                assert dropped.get("alice", 0) > 0, "the slow client saw no gap"
                # Every event of the run was either sent or counted in a gap (the counts may
                # include chat deltas as well).
                assert len(agent_seqs(slow.frames, "r1")) + dropped["alice"] >= 2002
                stats = served.gateway.statistics()
                assert stats.events_dropped == dropped["alice"]
                assert stats.slow_consumer_closes == 0

                # Phase 2: it stops reading again while a run streams until aborted: the
                # gateway gives up on it and sends the close frame, which it reads on resuming.
                paced = Progress()
                await bus.start_run(bulky_body(None, paced), run_id="r2", context=context)
                seen: list[dict[str, Any]] = []
                async with trio.open_nursery() as inner:

                    async def good_reads() -> None:
                        seen.extend(await follow(good, "r2", paced))

                    inner.start_soon(good_reads)
                    await wait_until(lambda: served.gateway.statistics().slow_consumer_closes > 0)
                    close = await slow.closed()
                    assert bus.abort("r2")
                assert (close.code, close.reason) == (1008, "slow consumer")
                check_no_silent_hole(slow.frames)
                seqs = agent_seqs(seen, "r2")
                assert seqs == list(range(1, len(seqs) + 1))
                assert not [f for f in seen if f["event"] == "gap"]
                assert bus.statistics().disconnects == 0
                stats = served.gateway.statistics()
                assert stats.slow_consumer_closes == 1
                assert stats.websockets == 1
            await wait_until(lambda: served.gateway.statistics().connections == 0)
        assert served.gateway.statistics().websockets == 0

    @pytest.mark.parametrize("gateway_config", [{"max_buffered_bytes": 16_384}])
    async def test_a_frame_larger_than_max_buffered_bytes_reaches_a_client_that_keeps_up(
        self, served: Served
    ) -> None:
        big = "z" * 100_000

        async def body(run: pl.Run) -> None:
            await run.emit("assistant", {"delta": big})
            await run.emit("tool", {"phase": "result", "toolCallId": "t1", "result": big})

        with trio.fail_after(10):
            async with raw_client(served.url, ALICE) as client:
                res = await client.request("sessions.subscribe", {"sessionKey": "alice"})
                assert res["ok"], res
                context = pl.RunContext(session_key="alice")
                await served.bus.start_run(body, run_id="big", context=context)
                final = None
                while final is None:  # the chat final follows the lifecycle end
                    frame = await client.frame()
                    if frame.get("event") == "chat" and frame["payload"]["state"] == "final":
                        final = frame["payload"]
                assert agent_seqs(client.frames, "big") == [1, 2, 3, 4]
                assert final["message"]["content"][0]["text"] == big
            assert served.gateway.statistics().slow_consumer_closes == 0
