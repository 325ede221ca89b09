"""Abort latency: from ``RunHandle.abort()`` to the terminal event reaching a subscriber.

Two clocks: *readable* (the event can be read from a subscription: the bus's part) and *seen*
(a subscriber task reading every event has it: adds that task's turn in trio's scheduler
among 1,000 emitting runs, and garbage collection).

``python -m benchmarks.abort_latency [--samples N]``. 1,000 live runs emit assistant deltas;
one subscriber reads everything; each aborted run is replaced. Two loads: *paced* (each run
emits every 100 ms, 10,000 events/s in all, a third of what this machine's trio can wake
1,000 sleeping tasks for) and *saturated* (each run emits in a loop with only a checkpoint in
between, so the router's inbox stays full). See :func:`pipeline._bench.abort_latency`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import trio

from pipeline._bench import abort_latency, format_table

from ._util import say, write_json

LIVE = 1_000
PACED = 0.1


def measure(samples: int = 1_000) -> dict[str, Any]:
    say(f"abort latency: {LIVE:,} live runs, {samples:,} aborts, paced ({PACED} s)")
    paced = trio.run(lambda: abort_latency(LIVE, samples, period=PACED))
    say(f"abort latency: {LIVE:,} live runs, {samples:,} aborts, saturated")
    saturated = trio.run(lambda: abort_latency(LIVE, samples, period=None))
    return {"paced": paced, "saturated": saturated}


def rows(measured: dict[str, Any]) -> list[tuple[str, str, str]]:
    out: list[tuple[str, str, str]] = [
        (f"Abort -> terminal event at a subscriber, {LIVE:,} live runs", "", "")
    ]
    for name, label in (("paced", f"every {PACED} s"), ("saturated", "in a loop")):
        r = measured[name]
        note = f"{r['samples']:,} aborts; runs emit {label}, {r['events_per_second']:,.0f} events/s"
        if r["not_aborted"]:
            note += f"; {r['not_aborted']} ended as {r['outcomes']} (bus bug)"
        out.append((f"  {name}: readable p50", f"{r['readable_p50_ms']:.3f} ms", note))
        out.append(
            (
                f"  {name}: readable p99",
                f"{r['readable_p99_ms']:.3f} ms",
                f"target < 1 ms; max {r['readable_max_ms']:.1f} ms",
            )
        )
        out.append((f"  {name}: seen p50", f"{r['p50_ms']:.3f} ms", "by the subscriber task"))
        out.append((f"  {name}: seen p99", f"{r['p99_ms']:.3f} ms", f"max {r['max_ms']:.1f} ms"))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=1_000)
    args = parser.parse_args(argv)
    measured = measure(args.samples)
    write_json("abort_latency", measured)
    print(format_table(rows(measured)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
