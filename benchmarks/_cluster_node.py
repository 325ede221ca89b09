"""Node B of the cluster benchmark, in a process of its own.

``python -m benchmarks._cluster_node --redis URL --token T [--client-buffer N]``, started by
:mod:`benchmarks.cluster`: a bus joined to the cluster at ``URL`` as node ``bench-b``. It says
``ready {"node_id": ...}`` on stdout once it has joined, then takes one command per line on
stdin:

- ``gateway``: serve the bus with a gateway on a free loopback port (token ``T`` may read
  every session), from now on; answers ``ready {"port": P}``.
- ``count SESSION N``: answers ``ready {}`` once subscribed, then ``result {...}``: a
  subscriber of ``SESSION`` reads until it has ``N`` assistant events (or was told by
  ``dropped`` markers that the rest were lost); it reports when it had the last one
  (``time.monotonic_ns()``, CLOCK_MONOTONIC, shared by every process on Linux), this
  process's CPU time meanwhile, and the node's statistics.
- ``latency N``: as ``count``, but a subscriber of every event reads ``N`` events carrying
  ``data.t`` (``monotonic_ns`` at emit on node A) and reports each receive time minus ``t``,
  in microseconds.

End of file on stdin ends it (leaving the cluster). Progress and errors go to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import attrs
import trio

import pipeline as pl
import pipeline.cluster as plc
from pipeline.gateway import GatewayConfig, Tokens, serve

NODE_ID = "bench-b"


def tell(kind: str, payload: dict[str, Any]) -> None:
    print(f"{kind} {json.dumps(payload)}", flush=True)


async def count(bus: pl.Bus, node: plc.Node, session: str, events: int) -> None:
    async with bus.subscribe(session_key=session, buffer=events + 64) as sub:
        tell("ready", {})
        cpu = time.process_time()
        got = dropped = 0
        async for batch in sub.batches():
            for event in batch:
                if event.stream == "assistant":
                    got += 1
                elif event.stream == "dropped":
                    dropped += event.data["count"]
            if got + dropped >= events:
                break
        last = time.monotonic_ns()
    result = {
        "received": got,
        "dropped": dropped,
        "last_ns": last,
        "cpu_seconds": time.process_time() - cpu,
        "node": attrs.asdict(node.statistics()),
    }
    tell("result", result)


async def latency(bus: pl.Bus, node: plc.Node, events: int) -> None:
    samples: list[int] = []
    dropped = 0
    async with bus.subscribe(buffer=events + 64) as sub:
        tell("ready", {})
        async for batch in sub.batches():
            now = time.monotonic_ns()
            for event in batch:
                t = event.data.get("t")
                if type(t) is int:
                    samples.append((now - t) // 1000)
                elif event.stream == "dropped":
                    dropped += event.data["count"]
            if len(samples) + dropped >= events:
                break
    tell(
        "result",
        {"latency_us": samples, "dropped": dropped, "node": attrs.asdict(node.statistics())},
    )


async def main(args: argparse.Namespace) -> None:
    tokens = Tokens.from_json(
        {"tokens": [{"token": args.token, "sessions": ["*"], "scopes": ["read"]}]}
    )
    config = GatewayConfig(tokens=tokens, port=0, client_buffer=args.client_buffer)
    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    async with (
        stdin,
        pl.open_bus(pl.BusConfig(run_idle_timeout=None)) as bus,
        plc.join(bus, args.redis, node_id=NODE_ID) as node,
        trio.open_nursery() as nursery,
    ):
        tell("ready", {"node_id": node.node_id})
        buffer = b""
        while True:
            while b"\n" not in buffer:
                data = await stdin.receive_some(4096)
                if not data:
                    nursery.cancel_scope.cancel()
                    return
                buffer += data
            line, _, buffer = buffer.partition(b"\n")
            command, *rest = line.decode().split()
            if command == "gateway":
                gateway = await nursery.start(serve, bus, config)
                tell("ready", {"port": gateway.port})
            elif command == "count":
                await count(bus, node, rest[0], int(rest[1]))
            elif command == "latency":
                await latency(bus, node, int(rest[0]))
            else:
                raise SystemExit(f"unknown command {line!r}")


def main_sync(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--redis", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--client-buffer", type=int, default=256)
    trio.run(main, parser.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main_sync())
