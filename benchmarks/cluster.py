"""The cluster: events per second carried from one node to another, and emit-to-remote-client
latency (GATEWAY 2), beside the single-process gateway's figures.

``python -m benchmarks.cluster [--quick]``. It starts its own ``redis-server`` (no
persistence, ``maxmemory`` with ``noeviction``, as docs/cluster.md asks) on a free loopback
port, and is skipped with a message where there is none. Node A is a bus in this process,
joined to the cluster; node B is a bus joined to it in a second process
(:mod:`benchmarks._cluster_node`); WebSocket clients of node B run in a third
(:mod:`benchmarks._gateway_clients`, as in the gateway benchmark). All of them, and Redis,
share this machine's cores. Every node uses the default ``ClusterConfig`` and ``BusConfig``
(but for ``run_idle_timeout``, off).

- Node to node (node B a bare bus): assistant deltas of about 40 bytes, in runs of
  ``per_run`` (50: a 2 KB answer each, one run after another with ``bus.run``), emitted on
  node A as fast as node A forwards them (the loop yields to the node's tasks every 100
  events, and waits while more than 5,000 entries are pending, so node A's outbound bound
  never drops anything); node B's subscriber of their session counts them. Timed from the
  first emit until node B's subscriber has the last one (``time.monotonic_ns()``,
  CLOCK_MONOTONIC, which the processes share on Linux). Each run's lifecycle and chat events
  are carried too, and not counted (5 per run of 50: 10% more entries). Also shown: the emit
  loop's own rate, and the CPU time per delta of node A (serializing, writing, and reading its
  own entries back) and node B (parsing and ingest). Short runs keep the chat snapshots small:
  one run of 50,000 deltas would make each chat event carry up to 1 MB of text.
  Then the latency: 100 runs on node A in 100 sessions; one task emits a delta every
  millisecond (1,000 events/s in all, paced with ``trio.sleep_until``), each carrying
  ``{"t": time.monotonic_ns()}``; node B's subscriber of every event takes its receive time
  minus ``t``. p50 and p99 in ms.
- To a remote client (node B then serves a gateway, as ``serve --redis`` does): the same
  deltas to one WebSocket client of node B, and the same latency measurement read by 100
  WebSocket clients of node B, one per session (emit -> node A's publisher -> Redis -> node
  B's reader -> ingest -> gateway -> socket -> client process). This p99 is the one held to
  GATEWAY 2's target.
- Beside them, the single-process gateway, measured here under the same load: the same runs
  of deltas to one WebSocket client, and :mod:`benchmarks.gateway`'s own latency measurement
  at the same rate over 100 clients. ``--single-process 0`` leaves them out.

Before each measurement the benchmark waits until node A has read back all it wrote, so that
no measurement starts with a reader still catching up with the one before.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from functools import partial
from typing import TYPE_CHECKING, Any

import attrs
import trio

import pipeline as pl

from . import gateway
from ._util import ROOT, Row, say, sized_main, verdict

if TYPE_CHECKING:
    from pipeline.cluster import Node

#: Targets (GATEWAY 2).
EVENTS_TARGET = 15_000
P99_TARGET_MS = 15.0

#: The emitter waits while more than this many entries are pending on node A (of the
#: default ``max_pending``, 10,000, past which the oldest would be dropped), until at most
#: ``PENDING_LOW`` are.
PENDING_HIGH = 5_000
PENDING_LOW = 1_000
#: The emitter yields to the node's tasks every this many events.
YIELD_EVERY = 100

TEXT = gateway.TEXT
DELTA = gateway.DELTA
NODE_A = "bench-a"

DEFAULTS: dict[str, Any] = {
    "events": 50_000,
    "per_run": 50,
    "client_events": 20_000,
    "latency_clients": 100,
    "latency_rate": 1_000.0,
    "latency_seconds": 5.0,
    "single_process": 1,
}
#: ``--quick`` (``make bench-quick``): a few seconds for each figure.
QUICK: dict[str, Any] = {"events": 10_000, "client_events": 5_000, "latency_seconds": 2.0}

SKIPPED = "redis-server not installed (apt-get install redis-server): the cluster is not measured"


# ---- Redis ------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@contextmanager
def _redis_server(executable: str) -> Iterator[str]:
    """A ``redis-server`` on a free loopback port for the block; its URL."""
    port = _free_port()
    args = [executable, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    args += ["--appendonly", "no", "--maxmemory", "1gb", "--maxmemory-policy", "noeviction"]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not _answers_ping(port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {port}")
            time.sleep(0.02)
        yield f"redis://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# ---- node B -----------------------------------------------------------------------------------


@asynccontextmanager
async def _node_b(url: str, client_buffer: int) -> AsyncIterator[gateway._Clients]:
    """``python -m benchmarks._cluster_node`` joined to ``url``, with its stdin and stdout;
    killed on the way out if it has not ended by itself."""
    command = [sys.executable, "-m", "benchmarks._cluster_node", f"--redis={url}"]
    command += [f"--token={gateway.TOKEN}", f"--client-buffer={client_buffer}"]
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
            yield gateway._Clients(process)
            assert process.stdin is not None
            await process.stdin.aclose()
            with trio.move_on_after(30):
                await process.wait()
        finally:
            nursery.cancel_scope.cancel()


# ---- node A's emitters ------------------------------------------------------------------------


async def _parked(finished: trio.Event, run: pl.Run) -> None:
    await finished.wait()


async def _start_runs(bus: pl.Bus, finished: trio.Event, sessions: Sequence[str]) -> list[str]:
    run_ids = [f"{session}-run" for session in sessions]
    for run_id, session in zip(run_ids, sessions, strict=True):
        context = pl.RunContext(session_key=session)
        await bus.start_run(partial(_parked, finished), run_id=run_id, context=context)
    return run_ids


async def _flood(
    bus: pl.Bus, node: Node | None, session: str, events: int, per_run: int
) -> dict[str, Any]:
    """``events`` deltas in ``session`` as fast as node A forwards them: one run after another
    (``bus.run`` blocks), ``per_run`` deltas each."""
    cpu = time.process_time()
    began = time.monotonic_ns()
    waits = runs = 0
    context = pl.RunContext(session_key=session)
    for first in range(0, events, per_run):
        async with bus.run(run_id=f"{session}-{runs}", context=context) as run:
            for k in range(first, min(events, first + per_run)):
                await run.emit("assistant", DELTA)
                if k % YIELD_EVERY == YIELD_EVERY - 1:
                    await trio.lowlevel.checkpoint()
                    if node is not None and node.statistics().pending_outbound > PENDING_HIGH:
                        waits += 1
                        while node.statistics().pending_outbound > PENDING_LOW:  # noqa: ASYNC110
                            await trio.sleep(0.001)  # no event to wait on
        runs += 1
    emitted = time.monotonic_ns()
    return {
        "began_ns": began,
        "emitted_ns": emitted,
        "cpu_start": cpu,
        "runs": runs,
        "pending_waits": waits,
    }


async def _settle(node: Node) -> None:
    """Wait until node A has read back every entry it wrote (a reader still catching up with
    a flood parses replies of thousands of entries at a time, which would stall the next
    measurement), then a little more for node B."""
    with trio.fail_after(60):
        while True:
            statistics = node.statistics()
            if statistics.skipped_own >= statistics.published and not statistics.pending_outbound:
                break
            await trio.sleep(0.05)  # no event to wait on
    await trio.sleep(0.3)


async def _paced(bus: pl.Bus, run_ids: Sequence[str], total: int, rate: float) -> dict[str, Any]:
    """``total`` deltas at ``rate`` in all, round-robin over ``run_ids``, each with ``t``."""
    behind = 0.0
    start = trio.current_time() + 0.1
    for k in range(total):
        due = start + k / rate
        await trio.sleep_until(due)
        behind = max(behind, trio.current_time() - due)
        data = {"delta": TEXT, "t": time.monotonic_ns()}
        await bus.emit(run_ids[k % len(run_ids)], "assistant", data)
    elapsed = trio.current_time() - start
    return {"emitted_per_second": total / elapsed, "emitter_behind_max_ms": behind * 1000}


# ---- the measurements -------------------------------------------------------------------------


def _rates(events: int, received: int, flood: dict[str, Any], last_ns: int) -> dict[str, Any]:
    began, emitted = flood["began_ns"], flood["emitted_ns"]
    seconds = (last_ns - began) / 1e9
    return {
        "events": events,
        "received": received,
        "seconds": seconds,
        "emit_seconds": (emitted - began) / 1e9,
        "events_per_second_emitted": events / ((emitted - began) / 1e9),
        "events_per_second": received / seconds,
        "runs": flood["runs"],
        "pending_waits": flood["pending_waits"],
    }


async def _carried(
    bus: pl.Bus, node: Node, b: gateway._Clients, events: int, per_run: int
) -> dict[str, Any]:
    say(f"cluster: {events:,} deltas from node A to node B's subscriber")
    await b.tell(f"count carried {events}")
    await b.line("ready", within=30)
    before = node.statistics()
    flood = await _flood(bus, node, "carried", events, per_run)
    result = await b.line("result", within=120 + events / 1_000)
    cpu = time.process_time() - flood["cpu_start"]
    after = node.statistics()
    received = result["received"]
    return {
        **_rates(events, received, flood, result["last_ns"]),
        "dropped": result["dropped"],
        "dropped_outbound": after.dropped_outbound - before.dropped_outbound,
        "node_a_cpu_seconds": cpu,
        "node_a_cpu_us_per_event": cpu / max(received, 1) * 1e6,
        "node_b_cpu_seconds": result["cpu_seconds"],
        "node_b_cpu_us_per_event": result["cpu_seconds"] / max(received, 1) * 1e6,
        "node_b": result["node"],
    }


async def _to_client(
    bus: pl.Bus, node: Node | None, port: int, events: int, per_run: int
) -> dict[str, Any]:
    """The deltas of :func:`_flood` to one WebSocket client of the gateway on ``port``
    (node B's, or with ``node=None`` one in this process)."""
    where = "node B" if node is not None else "a gateway in this process"
    say(f"cluster: {events:,} deltas to a WebSocket client of {where}")
    async with gateway._clients(
        "throughput", port, clients=1, events=events, session="to-client"
    ) as clients:
        await clients.line("ready", within=60)
        flood = await _flood(bus, node, "to-client", events, per_run)
        result = await clients.line("result", within=120 + events / 1_000)
    return {
        **_rates(events, result["received"], flood, result["last_ns"]),
        "dropped": result["dropped"],
        "client_cpu_us_per_event": result["cpu_seconds"] / max(result["received"], 1) * 1e6,
    }


def _latency_figures(samples_us: list[int], total: int, dropped: int) -> dict[str, Any]:
    samples = sorted(samples_us)
    return {
        "events": total,
        "samples": len(samples),
        "dropped": dropped,
        "p50_ms": gateway._percentile(samples, 0.50) / 1000,
        "p99_ms": gateway._percentile(samples, 0.99) / 1000,
        "max_ms": samples[-1] / 1000 if samples else 0.0,
    }


async def _latency_subscriber(
    bus: pl.Bus, b: gateway._Clients, runs: int, rate: float, seconds: float, finished: trio.Event
) -> dict[str, Any]:
    total = max(1, round(rate * seconds / runs)) * runs
    say(f"cluster: latency to node B's subscriber, {rate:,.0f} deltas/s over {runs} runs")
    await b.tell(f"latency {total}")
    await b.line("ready", within=30)
    run_ids = await _start_runs(bus, finished, [f"lat-sub-{i}" for i in range(runs)])
    paced = await _paced(bus, run_ids, total, rate)
    result = await b.line("result", within=60 + seconds)
    return {
        "runs": runs,
        "rate": rate,
        **paced,
        **_latency_figures(result["latency_us"], total, result["dropped"]),
    }


async def _latency_clients(
    bus: pl.Bus, port: int, clients: int, rate: float, seconds: float, finished: trio.Event
) -> dict[str, Any]:
    per_client = max(1, round(rate * seconds / clients))
    total = per_client * clients
    say(f"cluster: latency to {clients} WebSocket clients of node B, {rate:,.0f} deltas/s")
    async with gateway._clients(
        "latency", port, clients=clients, events=per_client, session="lat-ws"
    ) as process:
        await process.line("ready", within=60 + clients / 10)
        run_ids = await _start_runs(bus, finished, [f"lat-ws-{i}" for i in range(clients)])
        paced = await _paced(bus, run_ids, total, rate)
        result = await process.line("result", within=60 + seconds)
    return {
        "clients": clients,
        "rate": rate,
        **paced,
        **_latency_figures(result["latency_us"], total, result["dropped"]),
    }


async def _single_to_client(events: int, per_run: int) -> dict[str, Any]:
    async with gateway._served(client_buffer=events + 64) as (bus, served):
        return await _to_client(bus, None, served.port, events, per_run)


async def _cluster(url: str, size: dict[str, Any]) -> dict[str, Any]:
    import pipeline.cluster as plc

    buffer = size["client_events"] + 64
    async with (
        pl.open_bus(pl.BusConfig(run_idle_timeout=None)) as bus,
        plc.join(bus, url, node_id=NODE_A) as node,
        _node_b(url, client_buffer=buffer) as b,
    ):
        await b.line("ready", within=60)
        finished = trio.Event()
        clients, rate = size["latency_clients"], size["latency_rate"]
        seconds, per_run = size["latency_seconds"], size["per_run"]
        try:
            # Node B as a bare bus: the node-to-node figures.
            carried = await _carried(bus, node, b, size["events"], per_run)
            await _settle(node)
            subscriber = await _latency_subscriber(bus, b, clients, rate, seconds, finished)
            await _settle(node)
            # Node B serving a gateway (as serve --redis does): the remote-client figures.
            await b.tell("gateway")
            port = (await b.line("ready", within=30))["port"]
            to_client = await _to_client(bus, node, port, size["client_events"], per_run)
            await _settle(node)
            remote = await _latency_clients(bus, port, clients, rate, seconds, finished)
        finally:
            finished.set()
        node_a = attrs.asdict(node.statistics())
    return {
        "carried": carried,
        "to_client": to_client,
        "latency_subscriber": subscriber,
        "latency_clients": remote,
        "node_a": node_a,
        "config": attrs.asdict(plc.ClusterConfig()),
    }


def measure(**sizes: Any) -> dict[str, Any]:
    """Every figure, at ``DEFAULTS`` sizes unless given (``QUICK`` is ``--quick``'s); only
    ``{"skipped": reason}`` without ``redis-server`` (or the cluster extra)."""
    size = {**DEFAULTS, **sizes}
    unknown = set(size) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"unknown sizes: {sorted(unknown)}")
    executable = shutil.which("redis-server")
    if executable is None:
        say(f"cluster: {SKIPPED}")
        return {"skipped": SKIPPED}
    try:
        import coredis  # noqa: F401
    except ImportError:
        reason = "the cluster extra is not installed (pip install -e '.[cluster]')"
        say(f"cluster: {reason}")
        return {"skipped": reason}
    with _redis_server(executable) as url:
        measured = trio.run(_cluster, url, size)
    measured["redis_server"] = _redis_version(executable)
    if size["single_process"]:
        clients, rate = size["latency_clients"], size["latency_rate"]
        measured["single"] = {
            "to_client": trio.run(_single_to_client, size["client_events"], size["per_run"]),
            "latency": trio.run(gateway._latency, clients, rate, size["latency_seconds"]),
        }
    return measured


def _redis_version(executable: str) -> str:
    try:
        done = subprocess.run([executable, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return done.stdout.strip()


def rows(measured: dict[str, Any]) -> list[Row]:
    if "skipped" in measured:
        return [("Cluster: skipped", "", measured["skipped"])]
    carried, to_client = measured["carried"], measured["to_client"]
    subscriber, remote = measured["latency_subscriber"], measured["latency_clients"]
    single = measured.get("single")

    def lost(r: dict[str, Any]) -> str:
        return f"; {r['dropped']:,} DROPPED" if r["dropped"] else ""

    carried_note = (
        f"target >= {EVENTS_TARGET:,}/s: {verdict(carried['events_per_second'] >= EVENTS_TARGET)}"
        f"; {carried['events']:,} deltas emitted at {carried['events_per_second_emitted']:,.0f}/s"
        f"; CPU/event: node A {carried['node_a_cpu_us_per_event']:.0f} us, "
        f"node B {carried['node_b_cpu_us_per_event']:.0f} us{lost(carried)}"
    )
    client_note = f"{to_client['events']:,} deltas, 1 client{lost(to_client)}"
    if single:
        client_note += f"; single process: {single['to_client']['events_per_second']:,.0f}/s"
    rate = f"{subscriber['rate']:,.0f}/s"
    remote_p50 = f"{rate} over {remote['clients']} clients{lost(remote)}"
    remote_p99 = (
        f"target < {P99_TARGET_MS:.0f} ms: {verdict(remote['p99_ms'] < P99_TARGET_MS)}; "
        f"max {remote['max_ms']:.1f} ms"
    )
    if single:
        remote_p50 += f"; single process: {single['latency']['p50_ms']:.2f} ms"
        remote_p99 += f"; single process: {single['latency']['p99_ms']:.2f} ms"
    return [
        ("Cluster: node A -> Redis -> node B (processes of their own)", "", ""),
        (
            "  events carried to node B's subscriber",
            f"{carried['events_per_second']:,.0f}/s",
            carried_note,
        ),
        (
            "  events carried to a WebSocket client of B",
            f"{to_client['events_per_second']:,.0f}/s",
            client_note,
        ),
        (
            "  emit -> node B's subscriber p50",
            f"{subscriber['p50_ms']:.2f} ms",
            f"{rate} over {subscriber['runs']} runs; pacing late by up to "
            f"{subscriber['emitter_behind_max_ms']:.1f} ms{lost(subscriber)}",
        ),
        (
            "  emit -> node B's subscriber p99",
            f"{subscriber['p99_ms']:.2f} ms",
            f"max {subscriber['max_ms']:.1f} ms",
        ),
        ("  emit -> remote WebSocket client p50", f"{remote['p50_ms']:.2f} ms", remote_p50),
        ("  emit -> remote WebSocket client p99", f"{remote['p99_ms']:.2f} ms", remote_p99),
    ]


def main(argv: list[str] | None = None) -> int:
    return sized_main("cluster", __doc__, DEFAULTS, QUICK, measure, rows, argv)


if __name__ == "__main__":
    sys.exit(main())
