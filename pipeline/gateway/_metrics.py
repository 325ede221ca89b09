"""``GET /metrics``: the bus's and the gateway's counters in Prometheus text format.

Exposition is ``prometheus_client``'s (the reference implementation of the format): a
registry of the gateway's own, not the process-wide default one, with one collector that
reads :meth:`Bus.statistics` and :meth:`Hub.statistics` at scrape time. Nothing is counted
twice and nothing is kept between scrapes.
"""

from __future__ import annotations

from collections.abc import Iterator

import attrs
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ._hub import Hub

__all__ = ["CONTENT_TYPE", "render"]

CONTENT_TYPE = CONTENT_TYPE_LATEST

#: (statistics field, metric name, help, is a counter)
_BUS = [
    ("live_runs", "agent_bus_live_runs", "Runs live now.", False),
    ("subscribers", "agent_bus_subscribers", "Open subscriptions.", False),
    ("events_published", "agent_bus_events_published", "Events accepted for fan-out.", True),
    ("deliveries", "agent_bus_deliveries", "Events subscribers read.", True),
    ("drops", "agent_bus_drops", "Events lost to overflow policies.", True),
    ("disconnects", "agent_bus_disconnects", "Subscribers cut off.", True),
    ("duplicates", "agent_bus_duplicates", "Ingested duplicates dropped.", True),
    ("runs_started", "agent_bus_runs_started", "Runs started.", True),
    ("failures", "agent_bus_task_failures", "Supervised tasks that failed.", True),
]
_GATEWAY = [
    ("connections", "gateway_connections", "Open connections.", False),
    ("websockets", "gateway_websockets", "Open WebSocket clients.", False),
    ("event_streams", "gateway_event_streams", "Open SSE and AG-UI streams.", False),
    ("connections_total", "gateway_connections_accepted", "Connections accepted.", True),
    ("connections_refused", "gateway_connections_refused", "Refused: too many.", True),
    ("frames_sent", "gateway_frames_sent", "Event frames sent.", True),
    ("bytes_sent", "gateway_bytes_sent", "Bytes written to clients.", True),
    ("events_dropped", "gateway_events_dropped", "Events dropped for slow clients.", True),
    ("slow_consumer_closes", "gateway_slow_consumer_closes", "1008 slow-consumer closes.", True),
    ("auth_failures", "gateway_auth_failures", "Refused handshakes.", True),
    ("rate_limited", "gateway_rate_limited", "Requests over the rate limit.", True),
    ("bad_requests", "gateway_bad_requests", "Malformed frames and requests.", True),
    ("resyncs", "gateway_resyncs", "Resumes answered with resync.", True),
    ("replay_events", "gateway_replay_events", "Events held for resume.", False),
    ("replay_bytes", "gateway_replay_bytes", "Bytes held for resume.", False),
    ("replay_evicted", "gateway_replay_evicted", "Events evicted from replay.", True),
]


@attrs.define(eq=False)
class _Collector:
    hub: Hub

    def collect(self) -> Iterator[Metric]:
        bus = self.hub.bus.statistics()
        gateway = self.hub.statistics()
        for stats, table in ((bus, _BUS), (gateway, _GATEWAY)):
            for field, name, text, counter in table:
                family = CounterMetricFamily if counter else GaugeMetricFamily
                yield family(name, text, value=getattr(stats, field))
        outcomes = CounterMetricFamily(
            "agent_bus_runs_ended", "Runs ended, by outcome.", labels=["outcome"]
        )
        for status, count in bus.runs_by_outcome.items():
            outcomes.add_metric([status], count)
        yield outcomes


def registry(hub: Hub) -> CollectorRegistry:
    """A registry of the gateway's own with its one collector."""
    own = CollectorRegistry(auto_describe=False)
    own.register(_Collector(hub))
    return own


def render(own: CollectorRegistry) -> bytes:
    return generate_latest(own)
