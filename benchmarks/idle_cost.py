"""Cost of a live idle run: memory per run with 10,000 runs parked in their bodies.

``python -m benchmarks.idle_cost``. Measured with tracemalloc after ``gc.collect()``, default
config (idle timeout armed); see :func:`pipeline._bench.idle_cost`. Two variants: a run that
has published only its start, and a run with a session key that emitted one assistant delta
(its chat projection allocated). A bare trio task parked the same way is shown for reference.
"""

from __future__ import annotations

import sys
from typing import Any

import trio

from pipeline._bench import format_table, idle_cost

from ._util import say, write_json

PARKED = 10_000
TARGET = 4096


def measure(parked: int = PARKED) -> dict[str, Any]:
    say(f"live idle runs: {parked:,} parked")
    plain = trio.run(idle_cost, parked)
    chat = trio.run(lambda: idle_cost(parked, emit_first=True))
    return {"parked": parked, "target_bytes": TARGET, "plain": plain, "chat": chat}


def rows(measured: dict[str, Any]) -> list[tuple[str, str, str]]:
    plain, chat = measured["plain"], measured["chat"]
    return [
        (f"Live idle run, {measured['parked']:,} parked (tracemalloc)", "", ""),
        (
            "  bytes per run, start published only",
            f"{plain['bytes_per_run']:,.0f} B",
            f"target <= {TARGET:,} B: {'met' if plain['bytes_per_run'] <= TARGET else 'NOT met'}",
        ),
        (
            "  bytes per run, session key + 1 delta",
            f"{chat['bytes_per_run']:,.0f} B",
            f"target <= {TARGET:,} B: {'met' if chat['bytes_per_run'] <= TARGET else 'NOT met'}",
        ),
        ("  a bare trio task parked on an Event", f"{plain['bare_task_bytes']:,.0f} B", ""),
    ]


def main() -> int:
    measured = measure()
    write_json("idle_cost", measured)
    print(format_table(rows(measured)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
