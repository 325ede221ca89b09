"""A cheap test for a pending cancellation, for awaits that usually need not yield.

Trio's rule is that every ``await`` on its API is at least a cancellation point: inside a
cancelled scope it raises :exc:`trio.Cancelled`. ``trio.lowlevel.checkpoint_if_cancelled()``
keeps that rule but costs about 0.4 µs per call (a coroutine and a task lookup), and
``trio.current_effective_deadline()`` about 1.4 µs; both are more than the rest of a mailbox
send. Hot paths therefore ask :func:`cancel_requested` first and yield only when it says so::

    if cancel_requested():
        await trio.lowlevel.checkpoint()  # raises Cancelled
"""

from __future__ import annotations

import math

import trio

__all__ = ["cancel_requested"]

_current_task = trio.lowlevel.current_task


def cancel_requested() -> bool:
    """True if the calling task is in an effectively cancelled scope (about 0.1 µs).

    It reads trio's per-task cancel status directly; on a trio without that attribute it
    falls back to the public (slower) effective-deadline test.
    """
    try:
        return _current_task()._cancel_status.effectively_cancelled
    except AttributeError:  # pragma: no cover - another trio's internals
        return trio.current_effective_deadline() == -math.inf
