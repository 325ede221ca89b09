"""A supervisor: a nursery whose children fail alone.

In a plain trio nursery, one child's exception cancels all its siblings. That is right for work
that is one unit; it is wrong for a server's independent actors, where one actor's bug must not
end every other. The supervisor runs each child under a guard that logs an ``Exception`` (with
its traceback, through :mod:`logging`), counts it, and lets the siblings go on. ``BaseException``
(cancellation, ``KeyboardInterrupt``) is never caught.

When its block ends, the supervisor gives the children ``shutdown_timeout`` seconds to finish,
then cancels them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio

__all__ = ["Supervisor", "SupervisorStatistics", "open_supervisor"]

_log = logging.getLogger("actors.supervisor")


@attrs.frozen
class SupervisorStatistics:
    """A snapshot of a supervisor's counters."""

    #: Children started so far.
    started: int
    #: Children running now.
    running: int
    #: Children that ended with an exception (each was logged).
    failed: int


@attrs.define(eq=False, on_setattr=attrs.setters.NO_OP)
class Supervisor:
    """Runs children in a nursery it owns; a failing child is reported, not propagated.

    Create one with :func:`open_supervisor`.
    """

    _nursery: trio.Nursery
    name: str = "supervisor"
    logger: logging.Logger = _log
    _started: int = attrs.field(init=False, default=0)
    _running: int = attrs.field(init=False, default=0)
    _failed: int = attrs.field(init=False, default=0)

    def start_soon(self, fn: Callable[..., Awaitable[object]], *args: Any, name: str) -> None:
        """Run ``fn(*args)`` as a supervised child; its failure is logged and isolated."""
        self._nursery.start_soon(self._guard, fn, args, name, name=name)

    async def start(self, fn: Callable[..., Awaitable[object]], *args: Any, name: str) -> Any:
        """Run ``fn(*args, task_status=...)`` and return the value it passes to ``started()``.

        An exception raised before ``started()`` is the caller's: it propagates from here, as
        with :meth:`trio.Nursery.start`. One raised after it is logged and isolated.
        """
        return await self._nursery.start(self._guard_started, fn, args, name, name=name)

    def start_soon_self_guarded(
        self, fn: Callable[..., Awaitable[object]], *args: Any, name: str
    ) -> None:
        """Like :meth:`start_soon`, for a child that is its own guard: no guard coroutine wraps
        it.

        For children that live long and in great numbers (a bus's runs): the guard coroutine
        :meth:`start_soon` adds costs about 0.4 KB per live child. ``fn(*args)`` must call
        :meth:`child_started` first and :meth:`child_ended` in a ``finally``, and catch every
        ``Exception`` and pass it to :meth:`child_failed` instead of raising it.
        """
        self._nursery.start_soon(fn, *args, name=name)

    def child_started(self) -> None:
        """Count a self-guarded child (:meth:`start_soon_self_guarded`) as started, running."""
        self._started += 1
        self._running += 1

    def child_ended(self) -> None:
        """Count a self-guarded child as no longer running (call it in its ``finally``)."""
        self._running -= 1

    def child_failed(self, name: str) -> None:
        """Log and count the ``Exception`` being handled, raised by the self-guarded ``name``."""
        self._report(name)

    def cancel(self) -> None:
        """Cancel every child now."""
        self._nursery.cancel_scope.cancel()

    def cancel_after(self, seconds: float) -> None:
        """Cancel the children that are still running ``seconds`` from now."""
        scope = self._nursery.cancel_scope
        scope.deadline = min(scope.deadline, trio.current_time() + seconds)

    def statistics(self) -> SupervisorStatistics:
        return SupervisorStatistics(
            started=self._started, running=self._running, failed=self._failed
        )

    async def _guard(
        self, fn: Callable[..., Awaitable[object]], args: tuple[Any, ...], name: str
    ) -> None:
        self._started += 1
        self._running += 1
        try:
            await fn(*args)
        except Exception:
            self._report(name)
        finally:
            self._running -= 1

    async def _guard_started(
        self,
        fn: Callable[..., Awaitable[object]],
        args: tuple[Any, ...],
        name: str,
        *,
        task_status: trio.TaskStatus[Any],
    ) -> None:
        status = _TrackedStatus(task_status)
        # Once started, the child outlives trio's temporary start scope: hold no reference to
        # it (it would keep that scope alive, about 1 KB, for the child's whole life).
        del task_status
        self._started += 1
        self._running += 1
        try:
            await fn(*args, task_status=status)
        except Exception:
            if not status.has_started:
                raise
            self._report(name)
        finally:
            self._running -= 1

    def _report(self, name: str) -> None:
        self._failed += 1
        self.logger.exception("%s: child %r failed; its siblings go on", self.name, name)


@attrs.define(eq=False, on_setattr=attrs.setters.NO_OP, weakref_slot=False)
class _TrackedStatus:
    """A task status that remembers whether ``started()`` was called."""

    _inner: trio.TaskStatus[Any] | None
    has_started: bool = False

    def started(self, value: Any = None) -> None:
        if self._inner is None:
            raise RuntimeError("called 'started' twice on the same task status")
        inner, self._inner = self._inner, None
        inner.started(value)
        self.has_started = True


@asynccontextmanager
async def open_supervisor(
    *, shutdown_timeout: float = 5.0, name: str = "supervisor", logger: logging.Logger = _log
) -> AsyncIterator[Supervisor]:
    """Open a supervisor whose children live at most ``shutdown_timeout`` past the block.

    ``shutdown_timeout=math.inf`` waits for the children however long they take.
    """
    if not shutdown_timeout > 0:
        raise ValueError(f"shutdown_timeout must be positive, not {shutdown_timeout!r}")
    async with trio.open_nursery() as nursery:
        supervisor = Supervisor(nursery, name=name, logger=logger)
        try:
            yield supervisor
        finally:
            if shutdown_timeout != math.inf:
                supervisor.cancel_after(shutdown_timeout)
