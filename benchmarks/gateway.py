"""The gateway: frames per second to 1 and to 100 WebSocket clients, memory per idle
connection, and emit-to-client latency (GATEWAY 1.8).

``python -m benchmarks.gateway [--quick]``. The bus and the gateway (``open_gateway`` on a
free loopback port) run in this process; the clients run in another one
(:mod:`benchmarks._gateway_clients`: trio sockets and ``wsproto``, one ``json.loads`` per
message), so that their CPU is not counted as the server's. On a 2-core machine the two
processes still share the cores. The processes talk through the client process's stdout
(``ready``, then one ``result`` line of JSON) and stdin.

- Messages per second: one run emits assistant deltas of about 40 bytes as fast as the bus
  allows (``await bus.emit`` in a loop) into one session: 1 client reading 50,000 of them,
  then 100 clients all subscribed to that same session reading 2,000 each (200,000 frames).
  One session for the 100 is the fan-out case (one busy run watched by many viewers: each
  event is encoded once and written to 100 sockets); GATEWAY's "at least 15,000 events/s in
  total to 100 WebSocket clients" is read as frames delivered per second summed over the
  clients. Timed from the first emit until the last client has its last delta (by
  ``time.monotonic_ns()``, CLOCK_MONOTONIC, which both processes share on Linux). Each
  client's subscription buffer (``client_buffer``) holds the whole burst, so a burst faster
  than the sockets take it waits in the subscriptions instead of being thinned by
  ``DROP_OLDEST`` (the slow-client policy, not what this measures); any drop is still
  counted, from the clients' ``gap`` frames. Also shown: the emit loop's own rate (it shares
  the thread with the delivery), and the CPU time per frame of this process and of the
  client process: the larger one bounds the rate when each has a core to itself, and in the
  100-client case the clients' ``wsproto`` parsing costs more per frame than the server.
- Memory per idle connection: the client process opens 10,000 connections (``connect``,
  ``hello-ok``, then ``sessions.subscribe`` to a session of its own each), 200 at a time so
  the listen backlog never overflows, and holds them; this process's RSS (``/proc/self/statm``
  after ``gc.collect()``) before and after, over the count. 50 connections are opened before
  the first reading, so one-time costs (imports, first allocations) are not counted. Lowered
  (with a message) when ``ulimit -n`` does not allow that many.
- Latency: 100 runs in 100 sessions, one client each; one task emits a delta every
  millisecond (1,000 events/s in all, 10/s per client, paced with ``trio.sleep_until``) for
  5 seconds, each carrying ``{"t": time.monotonic_ns()}``; the client takes the time when
  the bytes reach it minus ``t``. p50 and p99 in ms.
"""

from __future__ import annotations

import gc
import json
import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import attrs
import trio

import pipeline as pl
from pipeline.gateway import Gateway, GatewayConfig, Tokens, open_gateway

from ._gateway_clients import raise_fd_limit
from ._util import ROOT, Row, rss_bytes, say, sized_main, verdict

#: Targets (GATEWAY 1.8).
FRAMES_TARGET = 15_000
BYTES_TARGET = 20_000
P99_TARGET_MS = 10.0

#: Connections the gateway and the bus allow (more than the idle measurement holds).
MAX_CONNECTIONS = 20_000
#: Idle connections opened before the first RSS reading.
WARMUP = 50
#: Connections each client process opens at once.
BATCH = 200
#: Open files kept free for everything but the measured connections.
SPARE_FILES = 256
#: A 40-character assistant delta.
TEXT = "The quick brown fox jumps over the dog. "
DELTA = {"delta": TEXT}
SESSION = "bench"
TOKEN = secrets.token_hex(16)

DEFAULTS: dict[str, Any] = {
    "single_events": 50_000,
    "fanout_clients": 100,
    "fanout_events": 2_000,
    "idle": 10_000,
    "latency_clients": 100,
    "latency_rate": 1_000.0,
    "latency_seconds": 5.0,
}
#: ``--quick`` (``make bench-quick``): a few seconds in all.
QUICK: dict[str, Any] = {
    "single_events": 10_000,
    "fanout_events": 500,
    "idle": 2_000,
    "latency_seconds": 2.0,
}


# ---- the server ----------------------------------------------------------------------------


@asynccontextmanager
async def _served(**limits: Any) -> AsyncIterator[tuple[pl.Bus, Gateway]]:
    """A bus and a gateway in front of it, on a free loopback port."""
    tokens = Tokens.from_json({"tokens": [{"token": TOKEN, "sessions": ["*"], "scopes": ["read"]}]})
    config = GatewayConfig(tokens=tokens, port=0, max_connections=MAX_CONNECTIONS, **limits)
    async with (
        pl.open_bus(pl.BusConfig(max_subscribers=MAX_CONNECTIONS)) as bus,
        open_gateway(bus, config) as gateway,
    ):
        yield bus, gateway


class _Clients:
    """The client process, seen through its stdin and stdout."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self._buffer = b""

    async def line(self, kind: str, within: float) -> dict[str, Any]:
        """The payload of the process's next stdout line, which must be ``KIND {json}``,
        within ``within`` seconds."""
        stdout = self.process.stdout
        assert stdout is not None
        with trio.fail_after(within):
            while b"\n" not in self._buffer:
                data = await stdout.receive_some(65_536)
                if not data:
                    status = await self.process.wait()
                    raise RuntimeError(f"the client process exited ({status}) before {kind!r}")
                self._buffer += data
        line, _, self._buffer = self._buffer.partition(b"\n")
        got, _, payload = line.decode().partition(" ")
        if got != kind:
            raise RuntimeError(f"expected {kind!r} from the client process, got {line!r}")
        result: dict[str, Any] = json.loads(payload)
        return result

    async def tell(self, line: str) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send_all(line.encode() + b"\n")


@asynccontextmanager
async def _clients(mode: str, port: int, **options: object) -> AsyncIterator[_Clients]:
    """``python -m benchmarks._gateway_clients MODE`` against ``port``; killed on the way out
    if it has not ended by itself."""
    command = [sys.executable, "-m", "benchmarks._gateway_clients", mode]
    command += [f"--port={port}", f"--token={TOKEN}"]
    for name, value in options.items():
        command.append(f"--{name}={value}")
    async with trio.open_nursery() as nursery:
        process: trio.Process = await nursery.start(
            partial(
                trio.run_process,
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                check=False,
                cwd=ROOT,
            )
        )
        try:
            yield _Clients(process)
            assert process.stdin is not None
            await process.stdin.aclose()
            with trio.move_on_after(30):
                await process.wait()
        finally:
            nursery.cancel_scope.cancel()


async def _parked(finished: trio.Event, run: pl.Run) -> None:
    await finished.wait()


async def _settled_rss() -> int:
    await trio.sleep(0.2)
    gc.collect()
    return rss_bytes()


# ---- the measurements ----------------------------------------------------------------------


async def _throughput(clients: int, events: int) -> dict[str, Any]:
    """One run's deltas, emitted as fast as the bus allows, to ``clients`` subscribers of its
    session."""
    frames = clients * events
    say(f"gateway: {events:,} deltas to {clients:,} client(s) ({frames:,} frames)")
    async with (
        _served(client_buffer=events + 64) as (bus, gateway),
        _clients(
            "throughput", gateway.port, clients=clients, events=events, session=SESSION
        ) as process,
    ):
        await process.line("ready", within=60 + clients / 10)
        finished = trio.Event()
        context = pl.RunContext(session_key=SESSION)
        await bus.start_run(partial(_parked, finished), run_id="throughput", context=context)
        cpu = time.process_time()
        began = time.monotonic_ns()
        for _ in range(events):
            await bus.emit("throughput", "assistant", DELTA)
        emitted = time.monotonic_ns()
        result = await process.line("result", within=120 + frames / 1_000)
        cpu = time.process_time() - cpu
        finished.set()
        statistics = attrs.asdict(gateway.statistics())
    seconds = (result["last_ns"] - began) / 1e9
    received = result["received"]
    return {
        "clients": clients,
        "events": events,
        "frames": frames,
        "received": received,
        "dropped": result["dropped"],
        "frames_read": result["frames"],
        "seconds": seconds,
        "emit_seconds": (emitted - began) / 1e9,
        "events_per_second_emitted": events / ((emitted - began) / 1e9),
        "events_per_second": events / seconds,
        "frames_per_second": received / seconds,
        "server_cpu_seconds": cpu,
        "server_cpu_us_per_frame": cpu / max(received, 1) * 1e6,
        "client_cpu_seconds": result["cpu_seconds"],
        "client_cpu_us_per_frame": result["cpu_seconds"] / max(received, 1) * 1e6,
        "gateway": statistics,
    }


async def _latency(clients: int, rate: float, seconds: float) -> dict[str, Any]:
    """Deltas paced at ``rate`` in all, round-robin over ``clients`` runs in sessions of their
    own; each client's receive time minus the emit time in the delta."""
    per_client = max(1, round(rate * seconds / clients))
    total = per_client * clients
    say(f"gateway: latency, {rate:,.0f} deltas/s over {clients} clients for {total / rate:.1f} s")
    async with (
        _served() as (bus, gateway),
        _clients(
            "latency", gateway.port, clients=clients, events=per_client, session=SESSION
        ) as process,
    ):
        await process.line("ready", within=60 + clients / 10)
        finished = trio.Event()
        run_ids = [f"latency-{i}" for i in range(clients)]
        for i, run_id in enumerate(run_ids):
            context = pl.RunContext(session_key=f"{SESSION}-{i}")
            await bus.start_run(partial(_parked, finished), run_id=run_id, context=context)
        behind = 0.0
        start = trio.current_time() + 0.1
        for k in range(total):
            due = start + k / rate
            await trio.sleep_until(due)
            behind = max(behind, trio.current_time() - due)
            data = {"delta": TEXT, "t": time.monotonic_ns()}
            await bus.emit(run_ids[k % clients], "assistant", data)
        elapsed = trio.current_time() - start
        result = await process.line("result", within=60 + seconds)
        finished.set()
    samples = sorted(result["latency_us"])
    return {
        "clients": clients,
        "events": total,
        "rate": rate,
        "emitted_per_second": total / elapsed,
        "emitter_behind_max_ms": behind * 1000,
        "samples": len(samples),
        "dropped": result["dropped"],
        "p50_ms": _percentile(samples, 0.50) / 1000,
        "p99_ms": _percentile(samples, 0.99) / 1000,
        "max_ms": samples[-1] / 1000 if samples else 0.0,
    }


async def _idle(connections: int, warmup: int) -> dict[str, Any]:
    """RSS per idle, subscribed WebSocket connection."""
    say(f"gateway: {connections:,} idle WebSocket connections")
    async with (
        _served() as (_, gateway),
        _clients(
            "idle",
            gateway.port,
            warmup=warmup,
            connections=connections,
            session="idle",
            batch=BATCH,
        ) as process,
    ):
        await process.line("ready", within=60)
        before = await _settled_rss()
        await process.tell("open")
        opened = await process.line("ready", within=60 + connections / 50)
        held = gateway.statistics().websockets
        after = await _settled_rss()
        await process.tell("close")
        await process.line("result", within=60)
        with trio.fail_after(60):
            while gateway.statistics().connections:  # noqa: ASYNC110  # no event to wait on
                await trio.sleep(0.05)
        closed = await _settled_rss()
    if held != warmup + connections:
        raise RuntimeError(f"the gateway holds {held} WebSockets, not {warmup + connections}")
    return {
        "connections": connections,
        "warmup": warmup,
        "open_seconds": opened["seconds"],
        "connect_retries": opened["retries"],
        "rss_before": before,
        "rss_held": after,
        "rss_after_close": closed,
        "bytes_per_connection": (after - before) / connections,
    }


def _percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of sorted values."""
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def _idle_count(wanted: int, warmup: int) -> int:
    """``wanted`` idle connections, or as many as ``ulimit -n`` allows (each process holds
    one file per connection, plus ``SPARE_FILES``)."""
    limit = raise_fd_limit()
    room = min(limit, MAX_CONNECTIONS) - warmup - SPARE_FILES
    if wanted > room:
        say(
            f"gateway: the open-files limit is {limit:,} (ulimit -n); holding {room:,} idle "
            f"connections instead of {wanted:,}"
        )
        return max(1, room)
    return wanted


def measure(**sizes: Any) -> dict[str, Any]:
    """Every figure, at ``DEFAULTS`` sizes unless given (``QUICK`` is ``--quick``'s)."""
    size = {**DEFAULTS, **sizes}
    unknown = set(size) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"unknown sizes: {sorted(unknown)}")
    warmup = min(WARMUP, max(1, size["idle"] // 4))
    idle = _idle_count(size["idle"], warmup)
    return {
        "single": trio.run(_throughput, 1, size["single_events"]),
        "fanout": trio.run(_throughput, size["fanout_clients"], size["fanout_events"]),
        "latency": trio.run(
            _latency, size["latency_clients"], size["latency_rate"], size["latency_seconds"]
        ),
        "idle": trio.run(_idle, idle, warmup),
    }


def rows(measured: dict[str, Any]) -> list[Row]:
    single, fanout = measured["single"], measured["fanout"]
    idle, latency = measured["idle"], measured["latency"]

    def throughput(r: dict[str, Any]) -> str:
        note = (
            f"{r['events']:,} deltas, emitted at {r['events_per_second_emitted']:,.0f}/s; "
            f"CPU/frame: server {r['server_cpu_us_per_frame']:.0f} us, "
            f"clients {r['client_cpu_us_per_frame']:.0f} us"
        )
        if r["dropped"]:
            note += f"; {r['dropped']:,} DROPPED"
        return note

    fanout_met = fanout["frames_per_second"] >= FRAMES_TARGET and not fanout["dropped"]
    latency_note = (
        f"{latency['events']:,} deltas at {latency['emitted_per_second']:,.0f}/s "
        f"over {latency['clients']} sessions; pacing late by up to "
        f"{latency['emitter_behind_max_ms']:.1f} ms"
    )
    if latency["dropped"]:
        latency_note += f"; {latency['dropped']:,} DROPPED"
    return [
        ("Gateway: WebSocket clients in another process", "", ""),
        (
            "  1 client: frames delivered",
            f"{single['frames_per_second']:,.0f}/s",
            throughput(single),
        ),
        (
            f"  {fanout['clients']} clients, one session: frames delivered",
            f"{fanout['frames_per_second']:,.0f}/s",
            f"target >= {FRAMES_TARGET:,}/s: {verdict(fanout_met)}",
        ),
        (
            f"  {fanout['clients']} clients: events emitted -> all delivered",
            f"{fanout['events_per_second']:,.0f}/s",
            throughput(fanout),
        ),
        (
            f"  RSS per idle WebSocket ({idle['connections']:,} held)",
            f"{idle['bytes_per_connection']:,.0f} B",
            f"target <= {BYTES_TARGET:,} B: "
            f"{verdict(idle['bytes_per_connection'] <= BYTES_TARGET)}",
        ),
        ("  emit -> client p50", f"{latency['p50_ms']:.2f} ms", latency_note),
        (
            "  emit -> client p99",
            f"{latency['p99_ms']:.2f} ms",
            f"target < {P99_TARGET_MS:.0f} ms: {verdict(latency['p99_ms'] < P99_TARGET_MS)}; "
            f"max {latency['max_ms']:.1f} ms",
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    return sized_main("gateway", __doc__, DEFAULTS, QUICK, measure, rows, argv)


if __name__ == "__main__":
    sys.exit(main())
