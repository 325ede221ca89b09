"""Serve the bus to UI and chat clients: the viewer page, WebSocket, SSE and AG-UI.

Without --tokens the gateway binds loopback only, makes one random admin token
and prints it ("admin token: ..."), as Jupyter does. With --simulate, simulated
agents start runs in the demo's sessions every couple of seconds, and chat.send
starts the simulated agent, so there is live traffic to watch and abort.

With --redis URL the process is a node of a cluster: its runs reach the
clients of every other node sharing that Redis (or Valkey), and theirs reach its
clients (docs/cluster.md; needs the cluster extra too).

It prints "gateway listening on http://HOST:PORT" once it accepts connections
(--port 0 picks a free port). Ctrl-C stops it. Needs the gateway extra:
pip install -e '.[gateway]'.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
from contextlib import AsyncExitStack

import trio

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8787, help="port; 0 picks one (default 8787)")
    parser.add_argument(
        "--tokens",
        metavar="FILE",
        help='tokens file: {"tokens": [{"token", "sessions", "scopes"}]} (default: one '
        "random admin token, loopback only)",
    )
    parser.add_argument(
        "--simulate", action="store_true", help="run simulated agents (and let chat.send start one)"
    )
    parser.add_argument(
        "--redis",
        metavar="URL",
        help="join the cluster of nodes sharing this Redis, e.g. redis://127.0.0.1:6379",
    )
    parser.add_argument("--node-id", help="this node's id in the cluster (default: random)")


def run(args: argparse.Namespace) -> int:
    try:
        from .gateway import GatewayConfig, Tokens, load_tokens
    except ImportError as exc:  # pragma: no cover - depends on the environment
        extra = "pip install -e '.[gateway]'"
        raise SystemExit(f"the gateway needs its extra ({extra}): {exc}") from exc
    if args.tokens:
        try:
            tokens = load_tokens(args.tokens)
        except (OSError, ValueError) as exc:
            raise SystemExit(f"--tokens: {exc}") from exc
        admin = None
    else:
        if not _is_loopback(args.host):
            raise SystemExit("without --tokens the gateway binds loopback only; pass --tokens")
        tokens, admin = Tokens.admin()
    from .gateway import simulated_agent

    agent = simulated_agent if args.simulate else None
    config = GatewayConfig(tokens=tokens, host=args.host, port=args.port, agent=agent)
    try:
        trio.run(_main, config, admin, args.simulate, args.redis, args.node_id)
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    return 0


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def _main(
    config: object, admin: str | None, simulate: bool, redis: str | None, node_id: str | None
) -> None:
    from . import BusConfig, open_bus
    from .gateway import GatewayConfig, serve
    from .gateway._simulate import simulate_traffic

    assert isinstance(config, GatewayConfig)
    async with open_bus(BusConfig()) as bus, AsyncExitStack() as stack:
        if redis is not None:
            from .cluster import join

            node = await stack.enter_async_context(join(bus, redis, node_id=node_id))
            print(f"cluster node {node.node_id} on {redis}")
        nursery = await stack.enter_async_context(trio.open_nursery())
        gateway = await nursery.start(serve, bus, config)
        if admin is not None:
            print(f"admin token: {admin}")
            print(f"viewer: {gateway.url}/?token={admin}")
        print(f"gateway listening on {gateway.url}", flush=True)
        if simulate:
            nursery.start_soon(simulate_traffic, bus)
