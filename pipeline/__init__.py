"""An embeddable trio event bus for AI-agent runs.

Each run is a supervised task that owns its own state; a router actor fans events out to
subscribers through bounded mailboxes; aborting a run cancels it. See ``docs/``.
"""

from actors import Overflow as Overflow

from ._bus import Bus as Bus
from ._bus import BusStatistics as BusStatistics
from ._bus import open_bus as open_bus
from ._config import BusConfig as BusConfig
from ._config import RunContext as RunContext
from ._errors import BusClosed as BusClosed
from ._errors import EventTooLarge as EventTooLarge
from ._errors import InvalidEvent as InvalidEvent
from ._errors import LimitExceeded as LimitExceeded
from ._errors import PipelineError as PipelineError
from ._errors import RunAlreadyActive as RunAlreadyActive
from ._errors import TooManyRuns as TooManyRuns
from ._errors import TooManySubscribers as TooManySubscribers
from ._errors import UnknownRun as UnknownRun
from ._event import Event as Event
from ._portal import BusPortal as BusPortal
from ._run import Run as Run
from ._run import RunHandle as RunHandle
from ._run import RunOutcome as RunOutcome
from ._subscription import BUS_CLOSED as BUS_CLOSED
from ._subscription import ROUTER_STOPPED as ROUTER_STOPPED
from ._subscription import SLOW_CONSUMER as SLOW_CONSUMER
from ._subscription import SUBSCRIBER_FAILED as SUBSCRIBER_FAILED
from ._subscription import Batches as Batches
from ._subscription import Subscription as Subscription
from ._subscription import SubscriptionStatistics as SubscriptionStatistics

__all__ = [
    "BUS_CLOSED",
    "ROUTER_STOPPED",
    "SLOW_CONSUMER",
    "SUBSCRIBER_FAILED",
    "Batches",
    "Bus",
    "BusClosed",
    "BusConfig",
    "BusPortal",
    "BusStatistics",
    "Event",
    "EventTooLarge",
    "InvalidEvent",
    "LimitExceeded",
    "Overflow",
    "PipelineError",
    "Run",
    "RunAlreadyActive",
    "RunContext",
    "RunHandle",
    "RunOutcome",
    "Subscription",
    "SubscriptionStatistics",
    "TooManyRuns",
    "TooManySubscribers",
    "UnknownRun",
    "open_bus",
]
