"""The bus seen from other threads: a portal that hands each call to the bus's trio thread.

A bus, its runs and its subscriptions belong to the trio thread that opened the bus: their
state is changed without locks, and waking a trio task from another thread corrupts trio.
Threads (``trio.to_thread`` workers, plain ``threading.Thread``\\ s, a synchronous SDK's
callbacks) go through a :class:`BusPortal` instead. Each call blocks only the calling thread
until the bus's thread has done the work, and raises what the trio method would.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import attrs
import trio

from ._config import RunContext
from ._errors import BusClosed
from ._event import Event

if TYPE_CHECKING:
    from ._bus import Bus
    from ._run import RunBody

__all__ = ["BusPortal"]

T = TypeVar("T")


@attrs.frozen
class BusPortal:
    """Emit, abort and start runs from threads other than the bus's. Get one with
    :meth:`Bus.portal` (in the bus's trio thread), then use it from any other thread.

    Every method raises :exc:`RuntimeError` when called from the bus's own trio thread (it
    would deadlock: call the bus directly there), and :exc:`BusClosed` once the bus's trio
    run has ended.
    """

    _bus: Bus = attrs.field(repr=False)
    _token: trio.lowlevel.TrioToken = attrs.field(repr=False)
    _thread: int

    def emit(self, run_id: str, stream: str, data: Any, *, session_key: str | None = None) -> Event:
        """:meth:`Bus.emit` from another thread: the published event.

        When the router has room (the usual case) the event is published by a plain callback
        in the bus's thread; only when it is full does the call start a task there to wait.
        """
        try:
            return self._run_sync(lambda: self._bus._emit_nowait(run_id, stream, data, session_key))
        except trio.WouldBlock:
            return self._run(lambda: self._bus.emit(run_id, stream, data, session_key=session_key))

    def abort(self, run_id: str, *, reason: str = "rpc") -> bool:
        """:meth:`Bus.abort` from another thread: False if no such live run."""
        return self._run_sync(lambda: self._bus.abort(run_id, reason=reason))

    def start_run(
        self,
        body: RunBody,
        *,
        run_id: str | None = None,
        context: RunContext | None = None,
    ) -> str:
        """:meth:`Bus.start_run` from another thread; returns the run id once it has started.

        ``body`` is a trio async function: it runs in the bus's thread like any run body.
        """

        async def start() -> str:
            handle = await self._bus.start_run(body, run_id=run_id, context=context)
            return handle.id

        return self._run(start)

    def _run_sync(self, call: Callable[[], T]) -> T:
        self._check_thread()
        try:
            return trio.from_thread.run_sync(call, trio_token=self._token)
        except (trio.RunFinishedError, trio.Cancelled) as exc:
            raise BusClosed("the bus's trio run has ended") from exc

    def _run(self, call: Callable[[], Awaitable[T]]) -> T:
        self._check_thread()
        try:
            return trio.from_thread.run(call, trio_token=self._token)
        except (trio.RunFinishedError, trio.Cancelled) as exc:
            raise BusClosed("the bus's trio run has ended") from exc

    def _check_thread(self) -> None:
        if threading.get_ident() == self._thread:
            raise RuntimeError(
                "BusPortal is for other threads; in the bus's trio thread, call the bus itself"
            )
