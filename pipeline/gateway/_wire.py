"""Bytes to and from one client's socket: a bounded outbox written with a progress deadline.

Everything a client is sent goes through its :class:`Outbox`, written by one writer task, so
frames never interleave. The outbox is bounded in bytes (``max_buffered_bytes``); producers of
droppable traffic wait below half of it (:meth:`Outbox.wait_room`), so their bus subscription
drops the oldest deltas instead, and a client whose socket takes nothing for
``send_timeout`` is a slow consumer.

Why not ``SocketStream.send_all`` under a timeout: cancelling it part-way through a frame
leaves the stream mid-frame, after which no close frame can be sent. The writer sends with
``socket.send``, which either sends some bytes or (cancelled) none, so it always knows where
it stopped; closing finishes the frame in flight, then sends the close frame (GATEWAY 1.4:
the close frame goes out before teardown, unlike the reference gateway's ``terminate()``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import attrs
import trio

__all__ = ["ClientGone", "Outbox", "SlowConsumer"]

#: At most this many queued bytes are joined into one ``send`` call.
_COALESCE = 65_536


class SlowConsumer(Exception):
    """The client cannot keep up: its outbox overflowed, or its socket made no progress."""


class ClientGone(Exception):
    """The client's socket is closed or reset."""


_GONE = (OSError, trio.ClosedResourceError, trio.BrokenResourceError)


@attrs.define(eq=False)
class Outbox:
    """The bytes queued for one client, and the writer that sends them.

    With ``start_writer`` set, the writer is a task started on demand: :meth:`put` starts it
    when bytes arrive and none is running, and it ends after ``writer_idle`` seconds with
    nothing to send, so an idle connection holds no writer task (about 3 KB less each).
    """

    sock: trio.socket.SocketType
    max_bytes: int
    send_timeout: float
    #: Starts a task running :meth:`run_writer` (``None``: the owner runs it itself).
    start_writer: Callable[[], None] | None = None
    writer_idle: float = 5.0
    _queue: list[bytes] = attrs.field(factory=list)
    #: Bytes in ``_queue`` plus the unsent rest of the chunk in flight.
    buffered: int = 0
    #: The unsent rest of the chunk the writer is sending.
    _rest: memoryview | None = None
    #: Set when bytes arrive for a waiting writer, and when room frees for waiting producers
    #: (made only while someone waits).
    _wakeup: trio.Event | None = None
    _room: trio.Event | None = None
    _writing: bool = False
    #: No more frames are accepted (a close is under way).
    closing: bool = False
    #: When :meth:`finish` gives up: the close, lingering included, ends by then.
    close_deadline: float | None = None
    bytes_sent: int = 0

    def put(self, data: bytes) -> None:
        """Queue ``data``; :exc:`SlowConsumer` if more than ``max_bytes`` were queued already.

        The bound is on the backlog before ``data``, so one frame larger than ``max_bytes``
        (a chat snapshot of a long answer, a big tool result) is taken by a client that keeps
        up; a client that does not take it is caught by ``send_timeout``.
        """
        if self.closing:
            return
        backlog = self.buffered
        self.buffered += len(data)
        self._queue.append(data)
        if self._wakeup is not None:
            self._wakeup.set()
        elif not self._writing and self.start_writer is not None:
            self._writing = True
            self.start_writer()
        if backlog > self.max_bytes:
            raise SlowConsumer(f"{backlog} bytes buffered (max {self.max_bytes})")

    def has_room(self) -> bool:
        return self.buffered <= self.max_bytes // 2

    async def wait_room(self) -> None:
        """Wait until at most half of ``max_bytes`` is queued (a cancellation point)."""
        while not self.has_room():
            if self._room is None:
                self._room = trio.Event()
            await self._room.wait()
        await trio.lowlevel.checkpoint_if_cancelled()

    async def run_writer(self) -> None:
        """Send queued bytes: until cancelled, or (started on demand) until idle for
        ``writer_idle``. :exc:`SlowConsumer` when the socket takes nothing for
        ``send_timeout``, :exc:`ClientGone` when the peer is gone."""
        self._writing = True
        idle = self.writer_idle if self.start_writer is not None else math.inf
        try:
            while True:
                if not self._queue:
                    self._wakeup = trio.Event()
                    with trio.move_on_after(idle):
                        await self._wakeup.wait()
                    self._wakeup = None
                    if not self._queue:
                        return
                await self._send_chunk(self._next_chunk(), self.send_timeout)
        finally:
            self._writing = False
            self._wakeup = None

    def _next_chunk(self) -> bytes:
        queue = self._queue
        if len(queue) == 1 or len(queue[0]) >= _COALESCE:
            return queue.pop(0)
        size = count = 0
        for part in queue:
            if count and size + len(part) > _COALESCE:
                break
            size += len(part)
            count += 1
        chunk = b"".join(queue[:count])
        del queue[:count]
        return chunk

    async def _send_chunk(self, chunk: bytes, stall_limit: float) -> None:
        """Send ``chunk``; the unsent rest stays in ``_rest`` if this is cancelled or fails."""
        view = self._rest = memoryview(chunk)
        while view:
            sent = 0
            with trio.move_on_after(stall_limit) as scope:
                try:
                    sent = await self.sock.send(view)
                except _GONE as exc:
                    raise ClientGone(str(exc)) from exc
            if scope.cancelled_caught:
                raise SlowConsumer(f"the socket took nothing for {stall_limit} s")
            view = self._rest = view[sent:]
            self.buffered -= sent
            self.bytes_sent += sent
            if self._room is not None and self.has_room():
                self._room.set()
                self._room = None
        self._rest = None

    async def finish(self, last: bytes | None, grace: float, *, flush: bool = True) -> bool:
        """Stop taking frames, send what is queued (or drop it unless ``flush``), finish the
        chunk in flight and send ``last`` (a close frame), all within ``grace`` seconds;
        whether everything went out.

        Call it once the writer task is stopped; it shields itself from cancellation.
        """
        self.closing = True
        self.close_deadline = trio.current_time() + grace
        rest, self._rest = self._rest, None
        parts = [bytes(rest)] if rest is not None and len(rest) else []
        if flush:
            parts.extend(self._queue)
        self._queue.clear()
        if last is not None:
            parts.append(last)
        with trio.move_on_after(grace, shield=True):
            try:
                for part in parts:
                    await self._send_chunk(part, grace)
            except (SlowConsumer, ClientGone):
                return False
            return True
        return False
