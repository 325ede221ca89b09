"""The full benchmark suite: ``python -m benchmarks`` (``make bench``).

Runs, in order: fan-out on workload W (the bus, both raw-trio baselines, and pyee and bubus in
processes of their own), the cost of a live idle run, abort latency, stalled subscribers, emits
from other threads through the portal, and the 1,000,000-run memory soak for the bus and for
the leaking model (each in a fresh process), then draws ``docs/benchmarks-memory.png``. It
prints one table at the end and writes JSON to ``benchmarks/results/``. Progress goes to
stderr.

The soak dominates the time (tens of minutes with tracemalloc on); ``--soak-runs``,
``--no-tracemalloc`` and ``--skip-soak`` shorten it, ``--quick`` shortens everything.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

from pipeline._bench import format_table

from . import abort_latency, fanout, idle_cost, plot_memory, portal, soak, stalled
from ._util import RESULTS, machine, say, write_json

SECTIONS = ("fanout", "idle", "abort", "stalled", "portal", "soak")
#: Each section's JSON file, the same one its module writes when run alone.
FILES = {"idle": "idle_cost", "abort": "abort_latency", "soak": "soak"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--rounds", type=int, default=7, help="fan-out rounds (default 7)")
    parser.add_argument(
        "--soak-runs", type=int, default=1_000_000, help="soak runs per design (default 1M)"
    )
    parser.add_argument("--no-tracemalloc", dest="tracemalloc", action="store_false")
    parser.add_argument("--skip-soak", action="store_true")
    parser.add_argument("--only", choices=SECTIONS, action="append", help="run only these sections")
    parser.add_argument(
        "--quick", action="store_true", help="3 rounds, fewer samples, a 100,000-run soak"
    )
    args = parser.parse_args(argv)
    sections = set(args.only or SECTIONS)
    if args.skip_soak:
        sections.discard("soak")
    rounds = 3 if args.quick else args.rounds
    soak_runs = min(args.soak_runs, 100_000) if args.quick else args.soak_runs

    began = time.perf_counter()
    info = machine()
    say(f"machine: {info}")
    summary: dict[str, Any] = {"machine": info}
    table: list[tuple[str, str, str]] = []

    def section(name: str, measure: Callable[[], dict[str, Any]], rows: Any) -> None:
        if name not in sections:
            return
        started = time.perf_counter()
        measured = measure()
        measured_public = {k: v for k, v in measured.items() if not k.startswith("_")}
        measured_public["section_seconds"] = time.perf_counter() - started
        write_json(FILES.get(name, name), measured_public)
        summary[name] = measured_public
        table.extend(rows(measured))

    section(
        "fanout",
        lambda: fanout.measure(rounds, slow_rounds=min(rounds, 3)),
        fanout.rows,
    )
    section("idle", idle_cost.measure, idle_cost.rows)
    section(
        "abort", lambda: abort_latency.measure(300 if args.quick else 1_000), abort_latency.rows
    )
    section(
        "stalled",
        lambda: stalled.measure(1 if args.quick else 3, 1.0 if args.quick else 5.0),
        stalled.rows,
    )
    section("portal", lambda: portal.measure(5_000 if args.quick else 20_000), portal.rows)
    section("soak", lambda: soak.measure(soak_runs, args.tracemalloc), soak.rows)
    if "soak" in sections and (RESULTS / "soak-bus.json").exists():
        plot_memory.main([])

    seconds = time.perf_counter() - began
    summary["seconds"] = seconds
    write_json("summary", summary)
    print()
    print(f"python {info['python']}, {info.get('cpu', '?')}, {info['cpus']} CPUs")
    print(format_table(table))
    print(f"\n({seconds / 60:.1f} min; JSON in {RESULTS.relative_to(RESULTS.parent.parent)}/)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
