"""A small, generic actor toolkit for trio: bounded mailboxes, a supervisor, a router.

Nothing here knows about agents or events; ``pipeline`` builds the agent event bus on it.
"""

from ._broadcast import Group as Group
from ._broadcast import Member as Member
from ._cancel import RUN_CONTEXT as RUN_CONTEXT
from ._cancel import WrongRun as WrongRun
from ._cancel import cancel_requested as cancel_requested
from ._cancel import cancel_requested_in as cancel_requested_in
from ._cancel import current_run as current_run
from ._mailbox import SLOW_CONSUMER as SLOW_CONSUMER
from ._mailbox import Dropped as Dropped
from ._mailbox import Mailbox as Mailbox
from ._mailbox import MailboxStatistics as MailboxStatistics
from ._mailbox import Overflow as Overflow
from ._router import ROUTER_STOPPED as ROUTER_STOPPED
from ._router import SUBSCRIBER_FAILED as SUBSCRIBER_FAILED
from ._router import IndexEntry as IndexEntry
from ._router import Router as Router
from ._router import RouterStatistics as RouterStatistics
from ._router import Subscriber as Subscriber
from ._supervisor import Supervisor as Supervisor
from ._supervisor import SupervisorStatistics as SupervisorStatistics
from ._supervisor import open_supervisor as open_supervisor

__all__ = [
    "ROUTER_STOPPED",
    "RUN_CONTEXT",
    "SLOW_CONSUMER",
    "SUBSCRIBER_FAILED",
    "Dropped",
    "Group",
    "IndexEntry",
    "Mailbox",
    "MailboxStatistics",
    "Member",
    "Overflow",
    "Router",
    "RouterStatistics",
    "Subscriber",
    "Supervisor",
    "SupervisorStatistics",
    "WrongRun",
    "cancel_requested",
    "cancel_requested_in",
    "current_run",
    "open_supervisor",
]
