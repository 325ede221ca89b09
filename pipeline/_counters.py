"""The bus's own counters of runs: fixed in size, however many runs it serves.

``Bus.statistics()`` reads them together with the router's and the supervisor's counters.
"""

from __future__ import annotations

import attrs

__all__ = ["OUTCOMES", "Counters"]

#: Every status a body phase (or a tracked run) can end with, in the order statistics show them.
OUTCOMES = ("ok", "error", "aborted", "timeout")


@attrs.define(eq=False, on_setattr=attrs.setters.NO_OP, weakref_slot=False)
class Counters:
    """What the bus counts about runs; owned by the bus, changed only in its trio thread."""

    #: Runs claimed so far (a retry during the grace is not a new run).
    runs_started: int = 0
    #: Body phases (and tracked runs) ended, by outcome status.
    outcomes: dict[str, int] = attrs.field(factory=lambda: dict.fromkeys(OUTCOMES, 0))
    #: Ingested events dropped as duplicates.
    duplicates: int = 0
    #: Chat text or thinking updates cut to ``max_event_bytes`` characters.
    chat_truncations: int = 0

    def record(self, status: str) -> None:
        """Count one ended body phase (or tracked run) under ``status``."""
        self.outcomes[status] += 1
