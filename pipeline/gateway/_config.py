"""The gateway's configuration: where it listens, who may use it, and every limit it keeps."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import attrs
from attrs.validators import ge, gt, instance_of

from .._run import Run
from ._tokens import Tokens

__all__ = ["Agent", "GatewayConfig"]

#: The body ``chat.send`` and ``POST /agui`` start: ``await agent(run, message)``, where
#: ``message`` is the user's text. It streams its answer with ``run.emit``.
Agent = Callable[[Run, str], Awaitable[None]]

# Typed Any: attrs' validator types cannot say "an int field checked as a number".
_count: Any = [instance_of(int), ge(1)]
_seconds: Any = [instance_of((int, float)), gt(0)]


@attrs.frozen(kw_only=True)
class GatewayConfig:
    """What :func:`pipeline.gateway.serve` serves, and its limits.

    Every table and buffer of the gateway is bounded by one of these fields; what happens past
    each bound is documented in ``docs/gateway.md`` ("Limits").
    """

    #: The tokens clients present, with the sessions and scopes each allows.
    tokens: Tokens = attrs.field(validator=instance_of(Tokens))
    host: str = attrs.field(default="127.0.0.1", validator=instance_of(str))
    #: 0 picks a free port (``serve`` reports the one it got).
    port: int = attrs.field(default=8787, validator=[instance_of(int), ge(0)])
    #: The body that ``chat.send`` and ``POST /agui`` start; ``None`` refuses both.
    agent: Agent | None = attrs.field(default=None)

    #: Open connections at once (WebSocket, SSE and plain HTTP); more are refused.
    max_connections: int = attrs.field(default=16_384, validator=_count)
    #: The largest frame (or HTTP request body) a client may send, in bytes.
    max_payload: int = attrs.field(default=262_144, validator=_count)
    #: The most bytes accepted before ``connect`` completes (GATEWAY 1.3: 64 KiB).
    max_handshake_bytes: int = attrs.field(default=65_536, validator=_count)
    #: How long a client has to send its request line and headers, and to finish ``connect``.
    handshake_timeout: float = attrs.field(default=10.0, validator=_seconds)
    #: Bytes queued for one client beyond which it is closed as a slow consumer.
    max_buffered_bytes: int = attrs.field(default=1_048_576, validator=_count)
    #: How long a write to one client may make no progress before it is a slow consumer.
    send_timeout: float = attrs.field(default=10.0, validator=_seconds)
    #: TCP keepalive: a silent peer is probed after this many idle seconds (then every
    #: tenth of it, 3 times), so a client that vanished without a FIN or RST is dropped
    #: even on a quiet session, and its tasks and subscriptions end.
    keepalive_idle: float = attrs.field(default=60.0, validator=_seconds)
    #: How long closing a client waits to finish its frame in flight and send the close frame.
    close_timeout: float = attrs.field(default=2.0, validator=_seconds)
    #: Mailbox of each session subscription of a client (``DROP_OLDEST``).
    client_buffer: int = attrs.field(default=256, validator=_count)
    #: Sessions one WebSocket client may subscribe to at once.
    max_sessions_per_client: int = attrs.field(default=64, validator=_count)
    #: Requests per second one WebSocket client may make (a burst of as many is allowed);
    #: more are answered with error ``rate_limited``.
    max_requests_per_second: float = attrs.field(default=50.0, validator=_seconds)
    #: Failed handshakes per peer address per minute; more are refused at once.
    max_auth_failures_per_minute: int = attrs.field(default=20, validator=_count)
    #: Peer addresses whose failures are remembered (the oldest is forgotten first).
    max_tracked_peers: int = attrs.field(default=4096, validator=_count)
    #: Events the replay buffer keeps for resume, for the whole gateway.
    replay_events: int = attrs.field(default=10_000, validator=_count)
    #: Bytes of wire JSON the replay buffer keeps, for the whole gateway.
    replay_bytes: int = attrs.field(default=16 * 1_048_576, validator=_count)
    #: Ended runs whose outcome ``agent.wait`` can still report, and ``chat.send``
    #: idempotency keys remembered (each table, the oldest forgotten first).
    recent_runs: int = attrs.field(default=4096, validator=_count)
    #: The largest ``timeoutMs`` ``agent.wait`` accepts, in seconds.
    max_wait: float = attrs.field(default=600.0, validator=_seconds)

    @agent.validator
    def _check_agent(self, attribute: attrs.Attribute[Agent | None], value: object) -> None:
        if value is not None and not callable(value):
            raise TypeError(f"agent must be an async callable or None, not {value!r}")
