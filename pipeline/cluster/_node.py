"""Joining a bus to a cluster: the node handle, ``join``, and leaving.

A node is three tasks in a nursery of its own, each with its own reconnecting connection:
the publisher (local events out to the shard streams), the reader (other nodes' events into
the bus, and aborts addressed to this node), and the heartbeat (this node's key, and the watch
over the owners of its tracked runs). While joined, the bus's ``remote_abort`` hook is this
node's: aborting a run tracked from another node writes an abort entry for its owner instead
of ending the copy here; every node then sees the owner's terminal events in the stream.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import final
from urllib.parse import urlsplit

import attrs
import trio

from .._bus import Bus
from .._errors import PipelineError
from ._config import ClusterConfig, ClusterStatistics, Counters
from ._heartbeat import Heartbeat
from ._layout import abort_entry, node_key
from ._link import FAILURES, Link, new_client
from ._outbox import Outbox
from ._owners import Owners
from ._publisher import Publisher
from ._reader import Reader

__all__ = ["ClusterError", "Node", "join"]

_log = logging.getLogger("pipeline.cluster")

_SCHEMES = frozenset({"redis", "rediss", "unix"})


class ClusterError(PipelineError):
    """A cluster node cannot be set up as asked (for example, the bus has joined already)."""


@final
@attrs.define(eq=False)
class Node:
    """A bus's membership in a cluster; made by :func:`join` only."""

    #: This node's id: its entries' ``origin`` and its heartbeat key ``node:{id}``.
    node_id: str
    config: ClusterConfig
    _bus: Bus
    _counters: Counters
    _outbox: Outbox
    _owners: Owners
    _publisher: Publisher
    _reader: Reader
    _heartbeat: Heartbeat
    _origin: bytes

    def statistics(self) -> ClusterStatistics:
        """A snapshot of the node's counters."""
        c = self._counters
        return ClusterStatistics(
            published=c.published,
            pending_outbound=self._outbox.pending,
            dropped_outbound=c.dropped_outbound,
            resubscribes=c.resubscribes,
            ingested=c.ingested,
            duplicates=c.duplicates,
            gaps=c.gaps,
            skipped_own=c.skipped_own,
            invalid_entries=c.invalid_entries,
            rejected_entries=c.rejected_entries,
            remote_aborts_sent=c.remote_aborts_sent,
            remote_aborts_received=c.remote_aborts_received,
            nodes_lost=c.nodes_lost,
            runs_lost=c.runs_lost,
            reconnects=c.reconnects,
            connection_errors=c.connection_errors,
            server_restarts=c.server_restarts,
            connected=self._publisher.link.up and self._reader.link.up,
        )

    def _remote_abort(self, run_id: str, reason: str) -> bool:
        """The bus's ``remote_abort`` hook: ask the owner of tracked run ``run_id`` to abort
        it. False if the owner is unknown (the run was not ingested from the cluster)."""
        owner = self._owners.get(run_id)
        if owner is None:
            return False
        self._outbox.put_control(abort_entry(self._origin, run_id, reason, owner))
        self._counters.remote_aborts_sent += 1
        return True

    async def _leave(self) -> None:
        """Write what is pending, then delete the heartbeat key, so the other nodes end the
        runs this node still has within about two heartbeat intervals (once they have read
        what it wrote); bounded by ``close_timeout``, shielded from cancellation."""
        config = self.config
        with trio.CancelScope(shield=True), trio.move_on_after(config.close_timeout) as scope:
            client = new_client(self._publisher.link.url, config)
            try:
                async with client:
                    try:
                        await self._publisher.flush(client)
                        await client.delete([node_key(self._origin)])
                    except FAILURES as exc:
                        _log.warning("cluster: leaving without a clean goodbye (%r)", exc)
            except* FAILURES as group:
                _log.warning("cluster: leaving without a clean goodbye (%r)", group)
        if scope.cancelled_caught:
            _log.warning("cluster: leaving took over close_timeout; pending entries are lost")


@asynccontextmanager
async def join(
    bus: Bus,
    url: str,
    *,
    node_id: str | None = None,
    shards: int | None = None,
    config: ClusterConfig | None = None,
) -> AsyncIterator[Node]:
    """Join ``bus`` to the cluster of nodes sharing the Redis (or Valkey) at ``url``.

    ``async with pipeline.cluster.join(bus, "redis://host:6379") as node:`` forwards every
    local event of the bus to the other nodes and ingests theirs, until the block ends.
    ``node_id`` defaults to a random unique id; ``shards`` (default 16) overrides
    ``config.shards`` and must be the same on every node.

    It returns once the node reads from the streams (only what is written from then on), or
    at once if Redis cannot be reached: the bus is served either way, and the node connects
    by itself when Redis comes. Leaving writes what is pending and deletes the node's
    heartbeat key (within ``close_timeout``), so the other nodes end its runs promptly.
    Raises :exc:`ClusterError` if the bus has joined a cluster already.
    """
    config, origin = _checked(url, node_id, shards, config)
    core = bus._core
    core.check_thread()
    core.check_open()
    if core.remote_abort is not None:
        raise ClusterError("this bus has joined a cluster already")
    node = _new_node(bus, url, origin, config)
    core.remote_abort = node._remote_abort
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(node._publisher.drain)
            nursery.start_soon(node._publisher.serve)
            await nursery.start(node._heartbeat.serve)
            await nursery.start(node._reader.serve)
            try:
                yield node
            finally:
                nursery.cancel_scope.cancel()
    finally:
        if core.remote_abort == node._remote_abort:
            core.remote_abort = None
        await node._leave()


def _checked(
    url: str, node_id: str | None, shards: int | None, config: ClusterConfig | None
) -> tuple[ClusterConfig, bytes]:
    if not isinstance(url, str) or urlsplit(url).scheme not in _SCHEMES:
        raise ValueError(f"url must be a redis://, rediss:// or unix:// URL, not {url!r}")
    if node_id is None:
        node_id = uuid.uuid4().hex
    if not isinstance(node_id, str) or not node_id.strip():
        raise ValueError(f"node_id must be a non-blank str, not {node_id!r}")
    if config is None:
        config = ClusterConfig()
    if not isinstance(config, ClusterConfig):
        raise TypeError(f"config must be a ClusterConfig, not {config!r}")
    if shards is not None:
        config = attrs.evolve(config, shards=shards)
    return config, node_id.encode()


def _new_node(bus: Bus, url: str, origin: bytes, config: ClusterConfig) -> Node:
    counters = Counters()
    outbox = Outbox(config.max_pending, counters)
    owners = Owners()

    def link(name: str) -> Link:
        return Link(name, url, config, counters)

    reader = Reader(bus, config, counters, link("reader"), owners, origin)
    return Node(
        node_id=origin.decode(),
        config=config,
        bus=bus,
        counters=counters,
        outbox=outbox,
        owners=owners,
        publisher=Publisher(bus, config, counters, outbox, link("publisher"), origin),
        reader=reader,
        heartbeat=Heartbeat(bus, config, counters, link("heartbeat"), owners, reader, origin),
        origin=origin,
    )
