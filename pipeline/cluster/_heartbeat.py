"""Heartbeats, and the watch over the nodes that own this node's tracked runs.

Every ``heartbeat_interval`` a node sets its key ``node:{id}`` (its epoch ms as the value)
with a time to live of ``heartbeat_ttl``, then checks (``EXISTS``, pipelined) the keys of the
nodes that own runs it tracks. A node whose key is gone has died, hung, lost Redis for longer
than the TTL, or left: each of its tracked runs here is ended with stop reason
``"node lost"``, rather than waiting for the run's idle timeout.

Not at once, though: what the node wrote before it went may still be in the streams, unread
here, its runs' terminal events among it (a node that leaves writes what it has, then deletes
its key). So a node whose key is missing is first a *suspect*, with the streams' ends at that
moment; it is lost at a later check that still finds its key missing, once this node's reader
has read past those ends. With the defaults a dead node's runs end within
``heartbeat_ttl + 2 * heartbeat_interval`` (10 s) of its last heartbeat.

After this node (re)connects it judges nobody for ``heartbeat_ttl + reconnect_max``: a
restarted server has lost every key, and the other nodes need up to a backoff and an interval
to set theirs again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import attrs
import trio

from .._bus import Bus
from ._config import ClusterConfig, Counters
from ._layout import last_entry_id, node_key, stream_keys
from ._link import Client, Link
from ._owners import Owners
from ._reader import Reader

__all__ = ["NODE_LOST", "Heartbeat"]

_log = logging.getLogger("pipeline.cluster")

#: The stop reason of tracked runs ended because their owner node was lost (GATEWAY 2).
NODE_LOST = "node lost"


@attrs.define(eq=False)
class Heartbeat:
    """Keeps this node's heartbeat key alive and ends the runs of lost nodes."""

    bus: Bus
    config: ClusterConfig
    counters: Counters
    link: Link
    owners: Owners
    reader: Reader
    #: This node's id (as its entries' ``origin`` field carries it).
    origin: bytes
    #: Owner nodes found without a heartbeat, and the streams' ends when they were found.
    _suspects: dict[bytes, dict[bytes, bytes]] = attrs.field(factory=dict)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Beat until cancelled, reconnecting by itself; started after the first heartbeat
        (or the first failed connection)."""
        await self.link.serve(self._beat, task_status=task_status)

    async def _beat(self, client: Client, ready: Callable[[], None]) -> None:
        config = self.config
        key = node_key(self.origin)
        ttl_ms = max(1, round(config.heartbeat_ttl * 1000))
        judge_from = trio.current_time() + config.heartbeat_ttl + config.reconnect_max
        while True:
            with trio.fail_after(config.command_timeout):
                await client.set(key, b"%d" % (time.time_ns() // 1_000_000), px=ttl_ms)
            ready()
            if trio.current_time() >= judge_from:
                await self._watch(client)
            await trio.sleep(config.heartbeat_interval)

    async def _watch(self, client: Client) -> None:
        """End the tracked runs of every owner node whose heartbeat key has stayed gone
        while this node read everything written before it went."""
        nodes = self.owners.by_node(self.bus.live_runs())
        suspects = self._suspects
        for gone in suspects.keys() - nodes.keys():
            del suspects[gone]  # no runs of theirs left to end
        if not nodes:
            return
        owners = list(nodes)
        keys = stream_keys(self.config.shards)
        with trio.fail_after(self.config.command_timeout):
            async with client.pipeline(transaction=False) as pipe:
                exists = [pipe.exists([node_key(owner)]) for owner in owners]
                lasts = [pipe.xrevrange(key, count=1) for key in keys]
            alive = [await request for request in exists]
            ends = {key: last_entry_id(await last) for key, last in zip(keys, lasts, strict=True)}
        for owner, count in zip(owners, alive, strict=True):
            if count:
                suspects.pop(owner, None)
            elif owner not in suspects:
                suspects[owner] = ends
            elif self.reader.has_read(suspects[owner]):
                del suspects[owner]
                self._lost(owner, nodes[owner])

    def _lost(self, owner: bytes, runs: list[str]) -> None:
        self.counters.nodes_lost += 1
        ended = 0
        for run_id in runs:
            self.owners.forget(run_id)
            if self.bus._end_tracked(run_id, NODE_LOST):
                ended += 1
        self.counters.runs_lost += ended
        _log.warning(
            "cluster: node %r lost (its heartbeat lapsed); ended %d of its runs here",
            owner.decode(errors="replace"),
            ended,
        )
