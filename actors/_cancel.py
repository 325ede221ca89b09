"""Cheap checks for the two things every awaitable entry point must ask first.

Trio's rule is that every ``await`` on its API is at least a cancellation point: inside a
cancelled scope it raises :exc:`trio.Cancelled`. ``trio.lowlevel.checkpoint_if_cancelled()``
keeps that rule but costs about 0.4 µs per call (a coroutine and a task lookup), and
``trio.current_effective_deadline()`` about 1.4 µs; both are more than the rest of a mailbox
send. Hot paths therefore ask :func:`cancel_requested` first and yield only when it says so::

    if cancel_requested():
        await trio.lowlevel.checkpoint()  # raises Cancelled

Objects owned by one trio run (an actor's state, changed without locks) must also refuse
callers from other threads. :func:`current_run` names the calling thread's trio run;
:func:`cancel_requested_in` does both checks with one task lookup.

Both read trio's per-task state directly (``Task._cancel_status``, ``Task._runner``), which
trio does not export; the public, slower equivalents are kept as fallbacks.
"""

from __future__ import annotations

import math
from typing import Any

import trio

__all__ = ["RUN_CONTEXT", "WrongRun", "cancel_requested", "cancel_requested_in", "current_run"]

_current_task = trio.lowlevel.current_task


class _PublicRunContext:
    """The stand-in for trio's run context when its internals are not where we expect."""

    @property
    def task(self) -> trio.lowlevel.Task:
        try:
            return _current_task()
        except RuntimeError:
            raise AttributeError("task") from None


#: trio's per-thread run context: ``RUN_CONTEXT.task`` is the calling task, and raises
#: :exc:`AttributeError` outside any task. ``trio.lowlevel.current_task()`` is this lookup
#: inside a function call, and that call alone was 8% of a per-event read (callgrind: about
#: 320 of 4,200 instructions), so the hottest paths (``Subscription.__anext__``,
#: ``Run.emit``) read the context directly.
RUN_CONTEXT: Any
try:
    from trio._core._run_context import GLOBAL_RUN_CONTEXT as RUN_CONTEXT
except ImportError:  # pragma: no cover - another trio's internals
    RUN_CONTEXT = _PublicRunContext()


class WrongRun(RuntimeError):
    """Called from outside the trio run that owns the object (another thread, or no task)."""


def cancel_requested() -> bool:
    """True if the calling task is in an effectively cancelled scope (about 0.1 µs)."""
    try:
        return _current_task()._cancel_status.effectively_cancelled
    except AttributeError:  # pragma: no cover - another trio's internals
        return trio.current_effective_deadline() == -math.inf


def current_run() -> trio.lowlevel.TrioToken:
    """The calling thread's trio run (its token), for :func:`cancel_requested_in`."""
    return trio.lowlevel.current_trio_token()


def cancel_requested_in(run: trio.lowlevel.TrioToken, message: str = "") -> bool:
    """:func:`cancel_requested`, after checking that the caller belongs to trio run ``run``.

    The caller belongs to it when it is one of its tasks, or host code around it in the same
    thread (a guest-mode run's host loop, between trio's ticks: trio supports that, and there
    no cancellation is pending). Anything else (another thread, another trio run) raises
    :exc:`WrongRun` (a :exc:`RuntimeError`) with ``message``, before the caller changes
    anything.
    """
    try:
        task = _current_task()
    except RuntimeError:
        try:
            token = trio.lowlevel.current_trio_token()
        except RuntimeError:
            raise WrongRun(message or "called from outside any trio run") from None
        if token is not run:
            raise WrongRun(message or "called from another trio run") from None
        return False
    try:
        if task._runner.trio_token is not run:
            raise WrongRun(message or "called from another trio run")
        return task._cancel_status.effectively_cancelled
    except AttributeError:  # pragma: no cover - another trio's internals
        if trio.lowlevel.current_trio_token() is not run:
            raise WrongRun(message or "called from another trio run") from None
        return trio.current_effective_deadline() == -math.inf
