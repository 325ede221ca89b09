"""A cluster node's limits and timers, its counters, and the snapshot ``statistics()`` returns."""

from __future__ import annotations

from typing import Any

import attrs
from attrs.validators import ge, gt, instance_of

__all__ = ["ClusterConfig", "ClusterStatistics", "Counters"]

# Typed Any: attrs' validator types cannot say "an int field checked as a number".
_count: Any = [instance_of(int), ge(1)]
_seconds: Any = [instance_of((int, float)), gt(0)]


@attrs.frozen(kw_only=True)
class ClusterConfig:
    """Every limit and timer of a cluster node (:func:`pipeline.cluster.join`).

    Every buffer and table of a node is bounded by one of these fields. With the defaults, a
    node's runs end on the other nodes within ``heartbeat_ttl + 2 * heartbeat_interval``
    (10 s) of its last heartbeat, under the 15 s GATEWAY 2 asks for.
    """

    #: Event streams ``ev:0 .. ev:{shards-1}``; every node of a cluster must use the same.
    shards: int = attrs.field(default=16, validator=_count)
    #: Entries each event stream keeps (``XADD ... MAXLEN ~``, so approximately): how far a
    #: node that was away can catch up from where it left off.
    maxlen: int = attrs.field(default=100_000, validator=_count)
    #: Entries the control stream keeps (approximately).
    control_maxlen: int = attrs.field(default=10_000, validator=_count)
    #: Entries written in one pipelined round trip at most.
    batch_size: int = attrs.field(default=100, validator=_count)
    #: How long the publisher waits for a batch to fill before it writes a part-full one;
    #: 0 writes whatever is queued at once (batches still form while a write is in flight).
    #: It adds up to this much latency: at 1,000 events/s between two processes here, p50
    #: was 3-4 ms with 0, 5-6 ms with 2 ms and 8-10 ms with 5 ms.
    flush_interval: float = attrs.field(default=0.002, validator=[instance_of((int, float)), ge(0)])
    #: Outbound entries (local events and control entries) queued for Redis at most, during
    #: an outage or when Redis is slower than the bus (one batch in flight comes on top).
    #: Past it the oldest are dropped and counted (``dropped_outbound``): the other nodes see
    #: a seq gap, then the newest events.
    max_pending: int = attrs.field(default=10_000, validator=_count)
    #: Mailbox of the publisher's ``local_only`` subscription (``Overflow.BLOCK``: the
    #: publisher only moves events into the pending queue, never waits on Redis).
    subscription_buffer: int = attrs.field(default=4096, validator=_count)
    #: Entries one ``XREAD`` returns per stream at most.
    read_count: int = attrs.field(default=1000, validator=_count)
    #: How long one ``XREAD`` blocks waiting for entries, in milliseconds.
    block_ms: int = attrs.field(default=1000, validator=_count)
    #: How often a node refreshes its heartbeat key and checks the owners of its tracked runs.
    heartbeat_interval: float = attrs.field(default=2.0, validator=_seconds)
    #: The heartbeat key's time to live: a node whose key lapsed is lost.
    heartbeat_ttl: float = attrs.field(default=6.0, validator=_seconds)
    #: How long one Redis command or pipeline may take before the connection counts as
    #: broken (an ``XREAD`` gets ``block_ms`` on top).
    command_timeout: float = attrs.field(default=5.0, validator=_seconds)
    #: How long opening a connection may take.
    connect_timeout: float = attrs.field(default=2.0, validator=_seconds)
    #: The first wait before reconnecting after a failure; it doubles up to ``reconnect_max``.
    reconnect_min: float = attrs.field(default=0.05, validator=_seconds)
    reconnect_max: float = attrs.field(default=2.0, validator=_seconds)
    #: How long leaving the cluster may take to write what is pending and delete the heartbeat
    #: key, even when the node is cancelled.
    close_timeout: float = attrs.field(default=2.0, validator=_seconds)

    @heartbeat_ttl.validator
    def _check_ttl(self, attribute: attrs.Attribute[float], value: float) -> None:
        if value <= self.heartbeat_interval:
            raise ValueError(
                f"heartbeat_ttl ({value!r}) must exceed heartbeat_interval "
                f"({self.heartbeat_interval!r}), or a live node would seem lost"
            )

    @reconnect_max.validator
    def _check_backoff(self, attribute: attrs.Attribute[float], value: float) -> None:
        if value < self.reconnect_min:
            raise ValueError(
                f"reconnect_max ({value!r}) must be at least reconnect_min ({self.reconnect_min!r})"
            )


@attrs.frozen(kw_only=True)
class ClusterStatistics:
    """A snapshot of a cluster node's counters (``node.statistics()``)."""

    #: Local events written to the event streams (acknowledged by Redis).
    published: int
    #: Outbound entries waiting for Redis now (local events and control entries).
    pending_outbound: int
    #: Outbound entries dropped because ``max_pending`` were waiting already (oldest first).
    dropped_outbound: int
    #: Times the publisher's subscription was cut off as a slow consumer and opened again;
    #: what it missed shows on the other nodes as a seq gap.
    resubscribes: int
    #: Entries of other nodes the bus published (``bus.ingest`` returned True).
    ingested: int
    #: Entries the bus dropped as duplicates (a batch written again after a broken connection).
    duplicates: int
    #: Seq gaps in the runs read from the streams: events lost upstream (dropped while Redis
    #: was away, trimmed, lost in a server restart). The bus shows each to subscribers as a
    #: ``seq gap`` error event.
    gaps: int
    #: Entries of this node, skipped on reading by their origin field before any parsing.
    skipped_own: int
    #: Entries that are not events (bad JSON, missing fields, refused by ``ingest`` as invalid)
    #: or control entries with an unknown op; each was skipped.
    invalid_entries: int
    #: Valid entries the bus refused (``TooManyRuns``, ``RunAlreadyActive``); each was skipped.
    rejected_entries: int
    #: Aborts of runs owned by other nodes, written to the control stream.
    remote_aborts_sent: int
    #: Aborts addressed to this node by others, carried out on its runs.
    remote_aborts_received: int
    #: Owner nodes whose heartbeat lapsed while this node tracked runs of theirs.
    nodes_lost: int
    #: Tracked runs ended here with stop reason ``"node lost"``.
    runs_lost: int
    #: Connections to Redis that came back after a failure (each of the node's three
    #: connections, publisher, reader and heartbeat, counts on its own).
    reconnects: int
    #: Redis commands or connections that failed (each is followed by a reconnect).
    connection_errors: int
    #: Times the reader found a different Redis server process after reconnecting (a
    #: restart): entries written before it may be gone, which shows as seq gaps in band.
    server_restarts: int
    #: Whether the publisher and the reader are connected now.
    connected: bool


@attrs.define
class Counters:
    """The node's running counts, shared by its tasks (all in the bus's trio thread)."""

    published: int = 0
    dropped_outbound: int = 0
    resubscribes: int = 0
    ingested: int = 0
    duplicates: int = 0
    gaps: int = 0
    skipped_own: int = 0
    invalid_entries: int = 0
    rejected_entries: int = 0
    remote_aborts_sent: int = 0
    remote_aborts_received: int = 0
    nodes_lost: int = 0
    runs_lost: int = 0
    reconnects: int = 0
    connection_errors: int = 0
    server_restarts: int = 0
