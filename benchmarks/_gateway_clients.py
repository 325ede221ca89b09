"""The WebSocket clients of the gateway benchmark, in a process of their own.

``python -m benchmarks._gateway_clients MODE --port P --token T ...``, started by
:mod:`benchmarks.gateway` so that the clients' CPU is not the server's. Light clients: trio
sockets and ``wsproto``, one ``json.loads`` per text message, nothing else parsed.

Every client opens ``/ws``, waits for ``connect.challenge``, sends ``connect`` with the token,
checks ``hello-ok``, subscribes to one session and checks the answer. The process talks to
the server on its stdout, one line each: ``ready {json}`` once every client is subscribed,
then ``result {json}``. Progress and errors go to stderr.

Modes:

- ``throughput``: ``--clients`` clients all subscribed to ``--session``; each reads until it
  has ``--events`` assistant deltas (or was told by ``gap`` frames that the rest were
  dropped). Reports when the last client was done, in ``time.monotonic_ns()``
  (CLOCK_MONOTONIC, the same clock in every process on Linux), and this process's CPU time.
- ``latency``: client ``i`` subscribes to ``{session}-{i}`` and reads ``--events`` deltas,
  each carrying ``data.t`` (``monotonic_ns`` at emit); reports every receive time minus
  ``t``, in microseconds.
- ``idle``: opens ``--warmup`` connections (each subscribed to a session of its own), says
  ready, waits for a line on stdin, opens ``--connections`` more, says ready, waits for a
  line (or end of file) on stdin, closes them all and reports.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import resource
import sys
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import trio
import wsproto
from wsproto.events import (
    CloseConnection,
    Event,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)

_RECV = 262_144
#: Attempts to open one connection (a refused SYN is retried after a short pause).
_ATTEMPTS = 5


class Closed(Exception):
    """The server closed the connection (or refused the upgrade)."""


class Client:
    """One WebSocket connection: a socket stream and its ``wsproto`` state."""

    __slots__ = ("_parts", "stream", "texts", "ws")

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        #: Whole text messages received and not yet taken.
        self.texts: collections.deque[str] = collections.deque()
        self._parts: list[str] = []

    async def send(self, event: Event) -> None:
        await self.stream.send_all(self.ws.send(event))

    async def send_json(self, frame: dict[str, Any]) -> None:
        await self.send(TextMessage(data=json.dumps(frame)))

    async def receive(self) -> list[str]:
        """The whole text messages in the next bytes from the socket (maybe none)."""
        data = await self.stream.receive_some(_RECV)
        if not data:
            raise Closed("the server closed the socket")
        self.ws.receive_data(data)
        texts: list[str] = []
        for event in self.ws.events():
            if isinstance(event, TextMessage):
                if event.message_finished and not self._parts:
                    texts.append(event.data)
                else:
                    self._parts.append(event.data)
                    if event.message_finished:
                        texts.append("".join(self._parts))
                        self._parts.clear()
            elif isinstance(event, Ping):
                await self.send(event.response())
            elif isinstance(event, CloseConnection):
                raise Closed(f"closed by the server: {event.code} {event.reason}")
            elif isinstance(event, RejectConnection):
                raise Closed(f"upgrade refused: {event.status_code}")
        return texts

    async def next_text(self) -> str:
        while not self.texts:
            self.texts.extend(await self.receive())
        return self.texts.popleft()

    async def request(self, request_id: str, method: str, params: dict[str, Any]) -> Any:
        await self.send_json({"type": "req", "id": request_id, "method": method, "params": params})
        while True:
            frame = json.loads(await self.next_text())
            if frame.get("type") == "res" and frame.get("id") == request_id:
                if not frame.get("ok"):
                    raise Closed(f"{method} refused: {frame.get('error')}")
                return frame.get("payload")

    async def aclose(self) -> None:
        await self.stream.aclose()


async def open_client(port: int, token: str, session: str) -> Client:
    """Connect, handshake and subscribe to ``session``."""
    sock = trio.socket.socket()
    try:
        await sock.connect(("127.0.0.1", port))
    except BaseException:
        sock.close()
        raise
    client = Client(trio.SocketStream(sock))
    try:
        await client.send(Request(host=f"127.0.0.1:{port}", target="/ws"))
        challenge = json.loads(await client.next_text())
        if challenge.get("event") != "connect.challenge":
            raise Closed(f"expected connect.challenge first, got {challenge!r}")
        hello = await client.request("1", "connect", {"auth": {"token": token}})
        if not isinstance(hello, dict) or hello.get("type") != "hello-ok":
            raise Closed(f"expected hello-ok, got {hello!r}")
        await client.request("2", "sessions.subscribe", {"sessionKey": session})
    except BaseException:
        await client.aclose()
        raise
    return client


async def open_clients(
    count: int, port: int, token: str, session: Callable[[int], str], *, batch: int
) -> tuple[list[Client], int]:
    """``count`` subscribed clients, opened ``batch`` at a time (so the listen backlog never
    overflows); and how many connection attempts were retried."""
    clients: list[Client | None] = [None] * count
    retries = 0

    async def one(index: int) -> None:
        nonlocal retries
        for attempt in range(_ATTEMPTS):
            try:
                clients[index] = await open_client(port, token, session(index))
                return
            except OSError:
                if attempt == _ATTEMPTS - 1:
                    raise
                retries += 1
                await trio.sleep(0.1 * (attempt + 1))

    for start in range(0, count, batch):
        async with trio.open_nursery() as nursery:
            for index in range(start, min(count, start + batch)):
                nursery.start_soon(one, index)
        if count >= 5_000 and (start // batch) % 10 == 9:
            say(f"  {min(count, start + batch):,} of {count:,} connections open")
    return [c for c in clients if c is not None], retries


def _numbered(prefix: str, base: int, index: int) -> str:
    return f"{prefix}-{base + index}"


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def tell(kind: str, payload: dict[str, Any]) -> None:
    """One line to the server: ``ready {...}`` or ``result {...}``."""
    print(f"{kind} {json.dumps(payload)}", flush=True)


async def stdin_line(stdin: trio.lowlevel.FdStream) -> None:
    """Wait for a line (or end of file) on stdin."""
    while True:
        data = await stdin.receive_some(4096)
        if not data or b"\n" in data:
            return


# ---- the modes -----------------------------------------------------------------------------


async def throughput(args: argparse.Namespace) -> None:
    began = time.monotonic()
    clients, retries = await open_clients(
        args.clients, args.port, args.token, lambda i: args.session, batch=args.batch
    )
    tell(
        "ready", {"clients": len(clients), "retries": retries, "seconds": time.monotonic() - began}
    )
    cpu = time.process_time()
    received = dropped = frames = 0
    last: list[int] = []

    async def drain(client: Client) -> None:
        nonlocal received, dropped, frames
        got = gaps = seen = 0
        loads = json.loads
        pending = list(client.texts)
        client.texts.clear()
        while got + gaps < args.events:
            texts = pending or await client.receive()
            pending = []
            for text in texts:
                seen += 1
                frame = loads(text)
                event = frame.get("event")
                if event == "agent":
                    got += frame["payload"]["stream"] == "assistant"
                elif event == "gap":
                    gaps += frame["payload"]["dropped"]
        last.append(time.monotonic_ns())
        received += got
        dropped += gaps
        frames += seen

    with trio.fail_after(args.timeout):
        async with trio.open_nursery() as nursery:
            for client in clients:
                nursery.start_soon(drain, client)
    result = {
        "clients": len(clients),
        "received": received,
        "dropped": dropped,
        "frames": frames,
        "last_ns": max(last),
        "cpu_seconds": time.process_time() - cpu,
    }
    for client in clients:
        await client.aclose()
    tell("result", result)


async def latency(args: argparse.Namespace) -> None:
    began = time.monotonic()
    clients, retries = await open_clients(
        args.clients, args.port, args.token, partial(_numbered, args.session, 0), batch=args.batch
    )
    tell(
        "ready", {"clients": len(clients), "retries": retries, "seconds": time.monotonic() - began}
    )
    samples: list[int] = []
    dropped = 0

    async def drain(client: Client) -> None:
        nonlocal dropped
        got = gaps = 0
        loads = json.loads
        pending = list(client.texts)
        client.texts.clear()
        while got + gaps < args.events:
            texts = pending or await client.receive()
            now = time.monotonic_ns()  # when these bytes reached this process
            pending = []
            for text in texts:
                frame = loads(text)
                event = frame.get("event")
                if event == "agent":
                    payload = frame["payload"]
                    if payload["stream"] == "assistant":
                        got += 1
                        samples.append((now - payload["data"]["t"]) // 1000)
                elif event == "gap":
                    gaps += frame["payload"]["dropped"]
        dropped += gaps

    with trio.fail_after(args.timeout):
        async with trio.open_nursery() as nursery:
            for client in clients:
                nursery.start_soon(drain, client)
    for client in clients:
        await client.aclose()
    tell("result", {"clients": len(clients), "dropped": dropped, "latency_us": samples})


async def idle(args: argparse.Namespace) -> None:
    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    clients: list[Client] = []
    opened = 0
    retries = 0
    for count in (args.warmup, args.connections):
        began = time.monotonic()
        more, tried = await open_clients(
            count,
            args.port,
            args.token,
            partial(_numbered, args.session, opened),
            batch=args.batch,
        )
        clients.extend(more)
        opened += count
        retries += tried
        seconds = time.monotonic() - began
        tell("ready", {"clients": len(clients), "retries": retries, "seconds": seconds})
        await stdin_line(stdin)
    for client in clients:
        await client.aclose()
    await stdin.aclose()
    tell("result", {"closed": len(clients), "retries": retries})


def raise_fd_limit() -> int:
    """Raise this process's soft limit of open files to the hard one; the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


MODES = {"throughput": throughput, "latency": latency, "idle": idle}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=sorted(MODES))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--session", default="bench")
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--events", type=int, default=1_000, help="deltas each client reads")
    parser.add_argument("--warmup", type=int, default=0, help="idle: connections opened first")
    parser.add_argument("--connections", type=int, default=0, help="idle: connections measured")
    parser.add_argument("--batch", type=int, default=200, help="connections opened at once")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to read events")
    args = parser.parse_args(argv)
    limit = raise_fd_limit()
    wanted = max(args.clients, args.warmup + args.connections) + 32
    if limit < wanted:
        say(f"gateway clients: {wanted:,} open files needed, the limit is {limit:,}")
        return 2
    trio.run(MODES[args.mode], args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
