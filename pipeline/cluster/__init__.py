"""The cluster: buses in several processes (nodes) sharing one event stream through Redis.

``async with pipeline.cluster.join(bus, "redis://127.0.0.1:6379") as node:`` makes the bus a
node: its local events are written to Redis Streams (``ev:{crc32(runId) % shards}``), the other
nodes' events are ingested into it (lossless forwarding, with duplicates dropped and gaps
reported in band), an abort of another node's run is carried out by that node, and the runs of
a node whose heartbeat lapses end with stop reason ``"node lost"``. The bus never waits on
Redis: during an outage local service goes on, outbound events wait up to a bound, and the
node reconnects by itself. See ``docs/cluster.md`` and GATEWAY.md section 2.

Needs the ``cluster`` extra: ``pip install 'trio-agent-bus[cluster]'`` (``coredis``).
"""

from ._config import ClusterConfig as ClusterConfig
from ._config import ClusterStatistics as ClusterStatistics
from ._heartbeat import NODE_LOST as NODE_LOST
from ._node import ClusterError as ClusterError
from ._node import Node as Node
from ._node import join as join

__all__ = ["NODE_LOST", "ClusterConfig", "ClusterError", "ClusterStatistics", "Node", "join"]
