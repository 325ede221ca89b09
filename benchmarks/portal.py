"""Emits per second from other threads, through ``bus.portal()``.

``python -m benchmarks.portal``. One run is parked in its body; a thread emits ``EMITS``
assistant deltas into it with ``portal.emit`` (each call blocks the thread until the bus's
trio thread has published the event), while a subscriber in trio drains them. Measured from a
``trio.to_thread`` worker and from a plain ``threading.Thread``, each against ``await
bus.emit`` from a trio task on the same bus, so the figure shows what one thread crossing costs.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import trio

import pipeline as pl

from ._util import Row, format_table, say, write_json

EMITS = 20_000
DELTA = {"delta": "x"}


async def _parked(run: pl.Run) -> None:
    await trio.sleep_forever()


async def _rate(emitter: str, emits: int) -> float:
    """Emits per second into one parked run, by ``emitter``: "trio", "worker" or "thread"."""
    async with pl.open_bus() as bus, bus.subscribe(run_id="r1") as sub:
        read = 0

        async def drain() -> None:
            nonlocal read
            async for event in sub:
                read += event.stream == "assistant"
                if read == emits:
                    return

        await bus.start_run(_parked, run_id="r1")
        portal = bus.portal()

        def emit_all() -> None:
            for _ in range(emits):
                portal.emit("r1", "assistant", DELTA)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain)
            began = time.perf_counter()
            if emitter == "trio":
                for _ in range(emits):
                    await bus.emit("r1", "assistant", DELTA)
            elif emitter == "worker":
                await trio.to_thread.run_sync(emit_all)
            else:
                await _in_plain_thread(emit_all)
        seconds = time.perf_counter() - began
        assert read == emits, f"the subscriber read {read} of {emits} deltas"
        bus.abort("r1")
        return emits / seconds


async def _in_plain_thread(fn: Callable[[], None]) -> None:
    done = trio.Event()
    token = trio.lowlevel.current_trio_token()

    def target() -> None:
        try:
            fn()
        finally:
            token.run_sync_soon(done.set)

    thread = threading.Thread(target=target)
    thread.start()
    await done.wait()
    thread.join()


def measure(emits: int = EMITS) -> dict[str, Any]:
    say(f"portal: {emits:,} emits from trio, a trio worker thread and a plain thread")
    return {emitter: trio.run(_rate, emitter, emits) for emitter in ("trio", "worker", "thread")}


def rows(measured: dict[str, Any]) -> list[Row]:
    trio_rate = measured["trio"]
    return [
        ("Emits from other threads (bus.portal())", "", ""),
        ("  await bus.emit in trio (reference)", f"{trio_rate:,.0f}/s", ""),
        (
            "  portal.emit from a trio.to_thread worker",
            f"{measured['worker']:,.0f}/s",
            f"{measured['worker'] / trio_rate:.3f}x trio",
        ),
        (
            "  portal.emit from a plain threading.Thread",
            f"{measured['thread']:,.0f}/s",
            f"{measured['thread'] / trio_rate:.3f}x trio",
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--emits", type=int, default=EMITS)
    args = parser.parse_args(argv)
    measured = measure(args.emits)
    write_json("portal", measured)
    print(format_table(rows(measured)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
