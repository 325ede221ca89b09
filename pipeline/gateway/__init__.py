"""The gateway: the bus's runs served to UI and chat clients over one HTTP port.

``await nursery.start(pipeline.gateway.serve, bus, config)`` embeds it in a trio app (or use
``async with pipeline.gateway.open_gateway(bus, config) as gateway``); ``python -m pipeline
serve`` runs it alone. Clients connect to ``/ws`` (WebSocket frames shaped like the reference
gateway's), ``/sessions/{key}/events`` (Server-Sent Events), ``/sessions/{key}/agui`` and
``POST /agui`` (AG-UI), and the viewer page at ``/``. See ``docs/gateway.md``.

Needs the ``gateway`` extra: ``pip install 'trio-agent-bus[gateway]'``.
"""

from ._config import Agent as Agent
from ._config import GatewayConfig as GatewayConfig
from ._hub import GatewayStatistics as GatewayStatistics
from ._server import Gateway as Gateway
from ._server import open_gateway as open_gateway
from ._server import serve as serve
from ._simulate import simulated_agent as simulated_agent
from ._tokens import Grant as Grant
from ._tokens import Tokens as Tokens
from ._tokens import load_tokens as load_tokens

__all__ = [
    "Agent",
    "Gateway",
    "GatewayConfig",
    "GatewayStatistics",
    "Grant",
    "Tokens",
    "load_tokens",
    "open_gateway",
    "serve",
    "simulated_agent",
]
