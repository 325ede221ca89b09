"""The publisher: every local event of the bus, written to its run's shard stream in batches.

Two tasks, so the bus never waits on Redis:

- the *drain* reads a ``local_only`` subscription of every event (events of runs this bus
  knows from ``ingest`` are left out, so nothing ingested is echoed back) and moves each into
  the :class:`~pipeline.cluster._outbox.Outbox`, which never waits;
- the *writer* takes up to ``batch_size`` entries at a time and writes the events in one round
  trip, an ``XADD ev:{n} MAXLEN ~ maxlen`` each inside one script call (control entries go to
  ``ctl``). A batch that fails goes back to the front of the outbox and is written again after
  the reconnect; if Redis did take it (the reply was lost), the readers' ``ingest`` drops the
  copies as duplicates.

The subscription uses ``Overflow.BLOCK`` with a large buffer (``subscription_buffer``): its
reader only moves events between two in-memory queues, so it falls behind only if it cannot
get the CPU, and then blocking the router briefly is the right back-pressure; forwarding stays
lossless for droppable events (deltas) too, which ``DROP_OLDEST`` would turn into seq gaps on
the other nodes. If it still falls ``block_timeout`` behind, the bus cuts it off as a slow
consumer without harm to anyone else; the drain counts that and subscribes again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import attrs
import trio
from coredis.tokens import PureToken

from actors import Overflow

from .._bus import Bus
from .._event import DROPPED_STREAM
from .._subscription import SLOW_CONSUMER, SUBSCRIBER_FAILED
from ._config import ClusterConfig, Counters
from ._layout import CONTROL_STREAM, XADD_EVENTS, event_batch
from ._link import Client, Link
from ._outbox import Outbox

__all__ = ["Publisher"]

_log = logging.getLogger("pipeline.cluster")

#: Why a subscription may end while the bus is open: then the drain subscribes again.
_RESUBSCRIBE = frozenset({SLOW_CONSUMER, SUBSCRIBER_FAILED})


@attrs.define(eq=False)
class Publisher:
    """Forwards the bus's local events to the shard streams (and control entries to ``ctl``)."""

    bus: Bus
    config: ClusterConfig
    counters: Counters
    outbox: Outbox
    link: Link
    #: This node's id, as the ``origin`` field of its entries.
    origin: bytes

    async def drain(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Move every local event into the outbox; started once subscribed, so every event
        published after ``nursery.start`` returns is forwarded."""
        bus = self.bus
        outbox = self.outbox
        while True:
            async with bus.subscribe(
                local_only=True, overflow=Overflow.BLOCK, buffer=self.config.subscription_buffer
            ) as subscription:
                task_status.started()
                task_status = trio.TASK_STATUS_IGNORED
                async for batch in subscription.batches():
                    for event in batch:
                        if event.stream != DROPPED_STREAM:  # none under BLOCK; never ingestible
                            outbox.put_event(event)
            if subscription.closed_reason not in _RESUBSCRIBE:
                return  # the bus is closing: nothing more to forward
            self.counters.resubscribes += 1
            _log.warning(
                "cluster publisher: the bus cut off its subscription (%s); subscribing again",
                subscription.closed_reason,
            )

    async def serve(self) -> None:
        """The writer, reconnecting by itself until cancelled."""
        await self.link.serve(self._write)

    async def _write(self, client: Client, ready: Callable[[], None]) -> None:
        outbox = self.outbox
        config = self.config
        ready()
        busy = False
        while True:
            await outbox.wait_nonempty()
            # Under load (the last batch was at least a quarter full), wait flush_interval
            # for a fuller batch; otherwise write at once: entries arriving during a write
            # form the next batch anyway, and a lone event need not wait (latency).
            if busy and len(outbox) < config.batch_size and config.flush_interval > 0:
                await trio.sleep(config.flush_interval)
            busy = len(outbox) >= config.batch_size // 4
            await self.write_batch(client)

    async def write_batch(self, client: Client) -> None:
        """Write up to ``batch_size`` pending entries (events in one round trip); on failure
        they all go back to the front of the outbox and the failure propagates."""
        config = self.config
        control, events = self.outbox.take(config.batch_size)
        try:
            with trio.fail_after(config.command_timeout):
                for fields in control:  # rare: one round trip each is fine
                    await client.xadd(
                        CONTROL_STREAM,
                        fields,
                        trim_strategy=PureToken.MAXLEN,
                        threshold=config.control_maxlen,
                        trim_operator=PureToken.APPROXIMATELY,
                    )
                if events:
                    keys, args = event_batch(self.origin, events, config.shards, config.maxlen)
                    await client.register_script(XADD_EVENTS)(keys=keys, args=args)
        except BaseException:
            self.outbox.put_back(control, events)
            raise
        self.outbox.done(control, events)
        self.counters.published += len(events)

    async def flush(self, client: Client) -> None:
        """Write everything pending (leaving the cluster); a failure propagates."""
        while len(self.outbox):
            await self.write_batch(client)
