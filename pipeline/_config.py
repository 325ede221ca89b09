"""Configuration values: the bus's limits and timers, and a run's context."""

from __future__ import annotations

from typing import Any, Literal

import attrs

__all__ = ["BusConfig", "RunContext", "VerboseLevel"]

VerboseLevel = Literal["off", "on", "full"]

#: The most events one call into a run can publish at once (an agent event plus the chat event
#: it causes); the router's inbox must hold at least this many, plus room to spare.
MIN_ROUTER_BUFFER = 4


def _count(minimum: int) -> Any:
    def check(inst: object, attribute: attrs.Attribute[int], value: object) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{attribute.name} must be an int >= {minimum}, not {value!r}")

    return check


def _seconds(*, allow_zero: bool = False, allow_none: bool = False) -> Any:
    def check(inst: object, attribute: attrs.Attribute[float], value: object) -> None:
        if value is None and allow_none:
            return
        ok = (
            not isinstance(value, bool)
            and isinstance(value, int | float)
            and value == value  # not NaN
            and value != float("inf")
            and (value >= 0 if allow_zero else value > 0)
        )
        if not ok:
            what = "a finite number >= 0" if allow_zero else "a finite number > 0"
            raise ValueError(f"{attribute.name} must be {what}, not {value!r}")

    return check


@attrs.frozen
class BusConfig:
    """Every limit and timer of a bus. Invalid values raise :exc:`ValueError` here."""

    #: Live runs at once (running, in retry grace, or tracked from ingest).
    max_runs: int = attrs.field(default=10_000, validator=_count(1))
    #: Open subscriptions at once.
    max_subscribers: int = attrs.field(default=1_000, validator=_count(1))
    #: Events waiting for the router; emitters wait (or get ``WouldBlock``) when it is full.
    router_buffer: int = attrs.field(default=1024, validator=_count(MIN_ROUTER_BUFFER))
    #: Default mailbox size of a subscription.
    subscriber_buffer: int = attrs.field(default=256, validator=_count(1))
    #: How long the router waits for a full ``BLOCK`` subscriber before disconnecting it.
    block_timeout: float = attrs.field(default=5.0, validator=_seconds())
    #: A run with no event for this long is ended with outcome ``"timeout"``; ``None`` disables.
    run_idle_timeout: float | None = attrs.field(default=600.0, validator=_seconds(allow_none=True))
    #: How long a failed run keeps its state for a retry under the same run id.
    error_retry_grace: float = attrs.field(default=15.0, validator=_seconds(allow_zero=True))
    #: At most one chat ``delta`` per run per this many seconds.
    chat_delta_interval: float = attrs.field(default=0.150, validator=_seconds(allow_zero=True))
    #: The largest event accepted as wire data (UTF-8 JSON bytes).
    max_event_bytes: int = attrs.field(default=1_048_576, validator=_count(1))
    #: How long closing the bus waits for runs and the router before cancelling them.
    shutdown_timeout: float = attrs.field(default=5.0, validator=_seconds())


def _optional_str(inst: object, attribute: attrs.Attribute[str | None], value: object) -> None:
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{attribute.name} must be a str or None, not {value!r}")


def _session_key(inst: object, attribute: attrs.Attribute[str | None], value: object) -> None:
    if value is not None and not (isinstance(value, str) and value.strip()):
        raise ValueError(f"{attribute.name} must be a non-blank str or None, not {value!r}")


def _boolean(inst: object, attribute: attrs.Attribute[bool], value: object) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{attribute.name} must be a bool, not {value!r}")


def _verbose(inst: object, attribute: attrs.Attribute[str], value: object) -> None:
    if value not in ("off", "on", "full"):
        raise ValueError(f"{attribute.name} must be 'off', 'on' or 'full', not {value!r}")


@attrs.frozen
class RunContext:
    """What the bus knows about a run besides its events. Invalid values raise ``ValueError``."""

    #: The session whose subscribers see this run's events (unless an event names its own).
    session_key: str | None = attrs.field(default=None, validator=_session_key)
    verbose_level: VerboseLevel = attrs.field(default="off", validator=_verbose)
    is_heartbeat: bool = attrs.field(default=False, validator=_boolean)
    activity_source: str | None = attrs.field(default=None, validator=_optional_str)
    #: When False, events carry no session key, so no session-filtered subscriber sees them.
    control_ui_visible: bool = attrs.field(default=True, validator=_boolean)

    def updated(self, **fields: Any) -> RunContext:
        """A copy with only ``fields`` changed; unknown names raise :exc:`TypeError`."""
        unknown = set(fields) - set(attrs.fields_dict(RunContext))
        if unknown:
            raise TypeError(f"RunContext has no field(s) {', '.join(sorted(unknown))}")
        return attrs.evolve(self, **fields)
