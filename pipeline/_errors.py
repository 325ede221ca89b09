"""The bus's errors: one base, a few specific kinds, builtin bases kept for old handlers."""

from __future__ import annotations

import trio

__all__ = [
    "BusClosed",
    "EventTooLarge",
    "InvalidEvent",
    "LimitExceeded",
    "PipelineError",
    "RunAlreadyActive",
    "TooManyRuns",
    "TooManySubscribers",
    "UnknownRun",
]


class PipelineError(Exception):
    """Base of every error the bus raises on purpose."""


class BusClosed(PipelineError, trio.ClosedResourceError):
    """The bus is closing or closed: no new runs, events or subscriptions."""


class LimitExceeded(PipelineError):
    """A configured limit (``BusConfig``) would be exceeded; nothing was changed."""


class TooManyRuns(LimitExceeded):
    """``max_runs`` runs are live already."""


class TooManySubscribers(LimitExceeded):
    """``max_subscribers`` subscriptions are open already."""


class RunAlreadyActive(PipelineError):
    """A run with this id is live (and not waiting in its retry grace)."""


class UnknownRun(PipelineError, LookupError):
    """No live run has this id, or the run has no running body to take events."""


class InvalidEvent(PipelineError, ValueError):
    """An event, or the data for one, is malformed; it was not published."""


class EventTooLarge(InvalidEvent):
    """An event arriving as wire data is larger than ``max_event_bytes``."""
