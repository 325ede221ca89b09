"""Workload W on pyee's asyncio event emitter, in its own process; prints JSON on stdout.

Run by ``python -m benchmarks`` as ``python -m benchmarks.peers_pyee``. Structure, mirroring
the bus benchmark: 8 async handlers (counting subscribers) on one event name; runs are started
one by one (their start event is emitted, then a task emits the run's events and its end
event). ``AsyncIOEventEmitter.emit`` schedules every async handler call as an asyncio task,
so it has no bounded queue; a producer yields only while more than 8 x 1024 handler tasks are
pending (the bus's router buffer, times 8 subscribers), as the bus's producers await only
when the router's inbox is full.

``--sync`` measures the plain ``EventEmitter`` with synchronous handlers for reference: that
is a direct function call per handler, not a bus (no queue, no isolation, no back-pressure).
"""

from __future__ import annotations

import asyncio
import gc
import sys
import time
from typing import Any

from pyee import EventEmitter
from pyee.asyncio import AsyncIOEventEmitter

from benchmarks._util import check_peer_deliveries, peer_arguments, print_peer_result

#: The bus's router buffer times its 8 subscribers: handler tasks allowed to be pending.
PENDING_LIMIT = 8 * 1024
DELTA: dict[str, Any] = {"delta": " tok"}


async def one_round(runs: int, events: int, subscribers: int) -> tuple[int, float]:
    ee = AsyncIOEventEmitter()
    counts = [0] * subscribers
    sums = [0] * subscribers

    def make_handler(index: int) -> Any:
        async def handler(item: tuple[str, int, str, Any]) -> None:
            counts[index] += 1
            sums[index] += item[1]

        return handler

    for i in range(subscribers):
        ee.on("event", make_handler(i))
    waiting: set[Any] = ee._waiting  # the emitter's pending handler tasks

    async def producer(run_id: str) -> None:
        emit = ee.emit
        data = DELTA
        seq = 1
        for _ in range(events):
            seq += 1
            emit("event", (run_id, seq, "assistant", data))
            while len(waiting) > PENDING_LIMIT:  # noqa: ASYNC110  # yield until under the bound
                await asyncio.sleep(0)
        emit("event", (run_id, seq + 1, "lifecycle", data))

    start = time.perf_counter()
    tasks = []
    for i in range(runs):
        run_id = f"r{i}"
        ee.emit("event", (run_id, 1, "lifecycle", DELTA))
        tasks.append(asyncio.create_task(producer(run_id)))
        while len(waiting) > PENDING_LIMIT:  # noqa: ASYNC110  # yield until under the bound
            await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    await ee.wait_for_complete()
    seconds = time.perf_counter() - start
    check_peer_deliveries(counts, sums, runs, events)
    return sum(counts), seconds


def sync_round(runs: int, events: int, subscribers: int) -> tuple[int, float]:
    ee = EventEmitter()
    counts = [0] * subscribers
    sums = [0] * subscribers

    def make_handler(index: int) -> Any:
        def handler(item: tuple[str, int, str, Any]) -> None:
            counts[index] += 1
            sums[index] += item[1]

        return handler

    for i in range(subscribers):
        ee.on("event", make_handler(i))
    start = time.perf_counter()
    emit = ee.emit
    data = DELTA
    for i in range(runs):
        run_id = f"r{i}"
        emit("event", (run_id, 1, "lifecycle", data))
        seq = 1
        for _ in range(events):
            seq += 1
            emit("event", (run_id, seq, "assistant", data))
        emit("event", (run_id, seq + 1, "lifecycle", data))
    seconds = time.perf_counter() - start
    check_peer_deliveries(counts, sums, runs, events)
    return sum(counts), seconds


def main(argv: list[str] | None = None) -> int:
    parser = peer_arguments(__doc__, runs=1_000, rounds=5)
    parser.add_argument("--sync", action="store_true", help="plain EventEmitter, sync handlers")
    args = parser.parse_args(argv)
    rates = []
    for _ in range(args.rounds):
        gc.collect()
        if args.sync:
            deliveries, seconds = sync_round(args.runs, args.events, args.subscribers)
        else:
            deliveries, seconds = asyncio.run(one_round(args.runs, args.events, args.subscribers))
        rates.append(deliveries / seconds)
        print(f"  pyee round: {deliveries / seconds:,.0f} deliveries/s", file=sys.stderr)
    name = "pyee EventEmitter (sync handlers)" if args.sync else "pyee AsyncIOEventEmitter"
    print_peer_result(name, "pyee", args, rates)
    return 0


if __name__ == "__main__":
    sys.exit(main())
