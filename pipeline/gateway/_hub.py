"""What every connection of one gateway shares: the bus, the config, the replay buffer, the
failed-handshake table, the frame encoder and the counters."""

from __future__ import annotations

import json
import uuid

import attrs
import trio

from .. import _event
from .._bus import Bus
from .._config import RunContext
from .._errors import PipelineError
from .._event import Event
from .._run import Run
from ._config import Agent, GatewayConfig
from ._replay import Deduper, Recorder, ReplayBuffer, RunRecord, encode_payload, frame_name
from ._tokens import AuthFailures

__all__ = ["Counters", "GatewayStatistics", "Hub", "PayloadCache", "RunRefused"]

#: Encoded payloads kept for reuse: an event fanned out to many clients is encoded once.
_PAYLOAD_CACHE = 4096


class RunRefused(Exception):
    """``chat.send`` or ``POST /agui`` could not start a run (no agent, or a bus limit)."""


@attrs.frozen
class GatewayStatistics:
    """A snapshot of one gateway's counters."""

    #: Open connections of every kind, and of each kind.
    connections: int
    websockets: int
    event_streams: int
    #: Connections accepted so far, and refused because ``max_connections`` were open.
    connections_total: int
    connections_refused: int
    #: Event frames sent (WebSocket frames and SSE events), and bytes written to sockets.
    frames_sent: int
    bytes_sent: int
    #: Events a client's subscription dropped (each reported to it by a ``gap``).
    events_dropped: int
    #: Clients closed as slow consumers (1008 "slow consumer").
    slow_consumer_closes: int
    #: Handshakes refused: bad or missing token, or a peer over its failure budget.
    auth_failures: int
    #: Requests refused as over the rate limit, and malformed frames or requests.
    rate_limited: int
    bad_requests: int
    #: Resumes that got ``resync`` because the replay buffer no longer held what they asked.
    resyncs: int
    #: The replay buffer: events and bytes held, recent runs remembered, events evicted.
    replay_events: int
    replay_bytes: int
    replay_runs: int
    replay_evicted: int


@attrs.define
class Counters:
    """The gateway's running counts (see :class:`GatewayStatistics`)."""

    websockets: int = 0
    event_streams: int = 0
    connections: int = 0
    connections_total: int = 0
    connections_refused: int = 0
    frames_sent: int = 0
    bytes_sent: int = 0
    events_dropped: int = 0
    slow_consumer_closes: int = 0
    auth_failures: int = 0
    rate_limited: int = 0
    bad_requests: int = 0
    resyncs: int = 0


@attrs.define
class PayloadCache:
    """The last few thousand events' encoded payloads, by identity (the bus hands the same
    ``Event`` object to every subscription, so 100 clients cost one ``json.dumps``)."""

    _entries: dict[int, tuple[Event, str]] = attrs.field(factory=dict)

    def payload(self, event: Event) -> str:
        key = id(event)
        hit = self._entries.get(key)
        if hit is not None and hit[0] is event:
            return hit[1]
        text = encode_payload(event)
        entries = self._entries
        entries[key] = (event, text)
        if len(entries) > _PAYLOAD_CACHE:
            del entries[next(iter(entries))]
        return text


@attrs.define(eq=False)
class Hub:
    """The state one gateway's connections share. Made by :func:`pipeline.gateway.serve`."""

    bus: Bus
    config: GatewayConfig
    replay: ReplayBuffer
    recorder: Recorder
    failures: AuthFailures
    counters: Counters = attrs.field(factory=Counters)
    payloads: PayloadCache = attrs.field(factory=PayloadCache)
    #: ``(session key, idempotency key) -> run id`` of recent ``chat.send`` calls, bounded by
    #: ``recent_runs`` (oldest first out).
    _sent: dict[tuple[str, str], str] = attrs.field(factory=dict)
    #: The keys of ``chat.send`` calls whose run is starting now: a concurrent call with the
    #: same key waits for it instead of starting a second run.
    _starting: dict[tuple[str, str], trio.Event] = attrs.field(factory=dict)

    @classmethod
    def create(cls, bus: Bus, config: GatewayConfig) -> Hub:
        replay = ReplayBuffer(config.replay_events, config.replay_bytes, config.recent_runs)
        payloads = PayloadCache()
        return cls(
            bus=bus,
            config=config,
            replay=replay,
            recorder=Recorder(bus, replay, payloads.payload),
            payloads=payloads,
            failures=AuthFailures(config.max_auth_failures_per_minute, config.max_tracked_peers),
        )

    async def start_agent_run(
        self, session_key: str, message: str, *, run_id: str | None, idempotency_key: str | None
    ) -> str:
        """Start a run of the configured agent in ``session_key``; its run id.

        The same idempotency key in the same session gives the same run, started once.
        """
        agent = self.config.agent
        if agent is None:
            raise RunRefused("this gateway has no agent to start (GatewayConfig.agent)")
        key = (session_key, idempotency_key) if idempotency_key else None
        if key is None:
            return await self._start(agent, session_key, message, run_id)
        while (starting := self._starting.get(key)) is not None:
            await starting.wait()
        if key in self._sent:
            return self._sent[key]
        self._starting[key] = trio.Event()
        try:
            run_id = await self._start(agent, session_key, message, run_id)
        finally:
            self._starting.pop(key).set()
        self._sent[key] = run_id
        if len(self._sent) > self.config.recent_runs:
            del self._sent[next(iter(self._sent))]
        return run_id

    async def _start(self, agent: Agent, session_key: str, message: str, run_id: str | None) -> str:
        run_id = run_id or uuid.uuid4().hex

        async def body(run: Run) -> None:
            await agent(run, message)

        try:
            await self.bus.start_run(
                body, run_id=run_id, context=RunContext(session_key=session_key)
            )
        except PipelineError as exc:  # too many runs, the run id is live, the bus closed
            raise RunRefused(str(exc)) from exc
        return run_id

    def frame(self, key: str, event: Event, dedupe: Deduper) -> tuple[str, str] | None:
        """What a session stream of ``key`` sends for ``event``: ``("gap", payload)`` for a
        drop marker (counted), ``None`` for what its replay already sent, else ``("agent" |
        "chat", payload)`` with the payload encoded once for every client."""
        if event.stream == _event.DROPPED_STREAM:
            count = event.data["count"]
            self.counters.events_dropped += count
            return "gap", json.dumps({"sessionKey": key, "dropped": count})
        if dedupe.is_duplicate(event):
            return None
        return frame_name(event), self.payloads.payload(event)

    def resync(self, key: str, run_id: str, record: RunRecord) -> str:
        """The ``resync`` payload for a run the replay buffer has partly forgotten (counted)."""
        self.counters.resyncs += 1
        head = json.dumps({"sessionKey": key, "runId": run_id})[:-1]
        return f'{head},"chat":{record.chat or "null"}}}'

    def run_session(self, run_id: str) -> tuple[bool, str | None]:
        """Whether ``run_id`` is known (live, or recently ended), and its session key."""
        live = self.bus.live_runs().get(run_id)
        if live is not None:
            return True, live.session_key
        record = self.replay.run(run_id)
        if record is not None:
            return True, record.session_key
        return False, None

    def statistics(self) -> GatewayStatistics:
        c = self.counters
        replay = self.replay.statistics()
        return GatewayStatistics(
            connections=c.connections,
            websockets=c.websockets,
            event_streams=c.event_streams,
            connections_total=c.connections_total,
            connections_refused=c.connections_refused,
            frames_sent=c.frames_sent,
            bytes_sent=c.bytes_sent,
            events_dropped=c.events_dropped,
            slow_consumer_closes=c.slow_consumer_closes,
            auth_failures=c.auth_failures,
            rate_limited=c.rate_limited,
            bad_requests=c.bad_requests,
            resyncs=c.resyncs,
            replay_events=replay["events"],
            replay_bytes=replay["bytes"],
            replay_runs=replay["runs"],
            replay_evicted=replay["evicted"],
        )
