"""Workload W (scaled down) on bubus's asyncio ``EventBus``, in its own process; prints JSON.

Run by ``python -m benchmarks`` as ``python -m benchmarks.peers_bubus``. Structure,
mirroring the bus benchmark: 8 async handlers (counting subscribers) on one event type; runs
are started one by one as producer tasks, each dispatching a start event, ``events`` events
and an end event. bubus refuses a dispatch once 100 events are pending, so at most 8 events
are in flight (each producer awaits its event's completion under a shared semaphore), which
keeps bubus's queue fed. bubus processes one event at a time, runs each handler with a
deadlock monitor, and keeps a bounded event history.

bubus costs about a millisecond per event with 8 handlers (its log messages are f-strings
that format the bus, which walks its event history, on every handler call, whether or not the
log level is enabled), so the default workload is 10 runs x 100 events (not 1,000 x 100) and 3
rounds; its history is bounded (50 events), so deliveries per second do not depend on size.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import time
from typing import Any

from bubus import BaseEvent, EventBus

from benchmarks._util import check_peer_deliveries, peer_arguments, print_peer_result

#: Events in flight at once (bubus refuses a dispatch at 100 pending); 8 measured fastest.
IN_FLIGHT = 8


class AgentEvent(BaseEvent):  # type: ignore[misc]  # bubus is untyped here
    run_id: str
    seq: int
    stream: str
    data: dict[str, Any]


async def one_round(runs: int, events: int, subscribers: int, index: int) -> tuple[int, float]:
    bus = EventBus(name=f"bench{index}")
    counts = [0] * subscribers
    sums = [0] * subscribers

    def make_handler(i: int) -> Any:
        async def handler(event: AgentEvent) -> None:
            counts[i] += 1
            sums[i] += event.seq

        handler.__name__ = f"subscriber{i}"
        return handler

    for i in range(subscribers):
        bus.on(AgentEvent, make_handler(i))
    limit = asyncio.Semaphore(IN_FLIGHT)
    data = {"delta": " tok"}

    async def dispatch(run_id: str, seq: int, stream: str) -> None:
        async with limit:
            await bus.dispatch(AgentEvent(run_id=run_id, seq=seq, stream=stream, data=data))

    async def producer(run_id: str) -> None:
        seq = 1
        for _ in range(events):
            seq += 1
            await dispatch(run_id, seq, "assistant")
        await dispatch(run_id, seq + 1, "lifecycle")

    start = time.perf_counter()
    tasks = []
    for i in range(runs):
        run_id = f"r{i}"
        await dispatch(run_id, 1, "lifecycle")
        tasks.append(asyncio.create_task(producer(run_id)))
    await asyncio.gather(*tasks)
    await bus.wait_until_idle()
    seconds = time.perf_counter() - start
    await bus.stop(clear=True)
    check_peer_deliveries(counts, sums, runs, events)
    return sum(counts), seconds


def main(argv: list[str] | None = None) -> int:
    args = peer_arguments(__doc__, runs=10, rounds=3).parse_args(argv)
    logging.getLogger("bubus").setLevel(logging.ERROR)
    rates = []
    for i in range(args.rounds):
        gc.collect()
        deliveries, seconds = asyncio.run(one_round(args.runs, args.events, args.subscribers, i))
        rates.append(deliveries / seconds)
        print(f"  bubus round: {deliveries / seconds:,.0f} deliveries/s", file=sys.stderr)
    print_peer_result("bubus EventBus", "bubus", args, rates)
    return 0


if __name__ == "__main__":
    sys.exit(main())
