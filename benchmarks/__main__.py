"""The full benchmark suite: ``python -m benchmarks`` (``make bench``).

Runs, in order: fan-out on workload W with 8 and 32 subscribers (the bus read per event and
with ``batches()``, against hand-written raw trio, in alternating rounds; pyee and bubus in
processes of their own), subscribers filtered on their own sessions (S = 10 ... 10,000), the
cost of a live idle run, abort latency, stalled subscribers, emits from other threads through
the portal, the gateway (frames/s to 1 and 100 WebSocket clients, memory per idle connection,
emit-to-client latency), the cluster (events/s from node to node through its own
redis-server, emit-to-remote-client latency; skipped without redis-server), and the
1,000,000-run memory soak for the bus and for the leaking model (each in a fresh process),
then draws ``docs/benchmarks-memory.png``. It prints one table at the end, each figure beside
its target, and writes JSON to ``benchmarks/results/``.
Progress goes to stderr.

The soak dominates the time (tens of minutes with tracemalloc on); ``--soak-runs``,
``--no-tracemalloc`` and ``--skip-soak`` shorten it. ``--quick`` (``make bench-quick``) runs
every section in a few minutes: 3 fan-out rounds, one round of the session scaling, the peers
and the stalled subscribers, 100 aborts, a smaller gateway workload, and a 20,000-run soak
without tracemalloc; its JSON goes to ``benchmarks/results/quick-*.json`` and it draws no plot.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

from . import (
    abort_latency,
    cluster,
    fanout,
    gateway,
    idle_cost,
    plot_memory,
    portal,
    scaling,
    soak,
    stalled,
)
from ._util import RESULTS, Row, format_table, machine, say, write_json

SECTIONS = (
    "fanout",
    "scaling",
    "idle",
    "abort",
    "stalled",
    "portal",
    "gateway",
    "cluster",
    "soak",
)
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
        "--quick", action="store_true", help="every section in a few minutes (see above)"
    )
    args = parser.parse_args(argv)
    sections = set(args.only or SECTIONS)
    if args.skip_soak:
        sections.discard("soak")
    quick: bool = args.quick
    rounds = 3 if quick else args.rounds
    soak_runs = min(args.soak_runs, 20_000) if quick else args.soak_runs
    soak_tracemalloc = args.tracemalloc and not quick

    began = time.perf_counter()
    info = machine()
    say(f"machine: {info}")
    summary: dict[str, Any] = {"machine": info, "quick": quick}
    table: list[Row] = []

    def section(
        name: str,
        measure: Callable[[], dict[str, Any]],
        rows: Callable[[dict[str, Any]], list[Row]],
    ) -> None:
        if name not in sections:
            return
        started = time.perf_counter()
        measured = measure()
        measured_public = {k: v for k, v in measured.items() if not k.startswith("_")}
        measured_public["section_seconds"] = time.perf_counter() - started
        write_json(FILES.get(name, name), measured_public, quick=quick)
        summary[name] = measured_public
        table.extend(rows(measured))

    section(
        "fanout",
        lambda: fanout.measure(rounds, slow_rounds=0 if quick else 3, quick_peers=quick),
        fanout.rows,
    )
    section(
        "scaling",
        lambda: scaling.measure(1 if quick else 3),
        scaling.rows,
    )
    section("idle", idle_cost.measure, idle_cost.rows)
    section("abort", lambda: abort_latency.measure(100 if quick else 1_000), abort_latency.rows)
    section(
        "stalled",
        lambda: stalled.measure(
            1 if quick else 3, 1.0 if quick else 5.0, runs=250 if quick else 1_000
        ),
        stalled.rows,
    )
    section("portal", lambda: portal.measure(5_000 if quick else 20_000), portal.rows)
    section("gateway", lambda: gateway.measure(**(gateway.QUICK if quick else {})), gateway.rows)
    section("cluster", lambda: cluster.measure(**(cluster.QUICK if quick else {})), cluster.rows)
    section("soak", lambda: soak.measure(soak_runs, soak_tracemalloc, quick=quick), soak.rows)
    if "soak" in sections and not quick and (RESULTS / "soak-bus.json").exists():
        plot_memory.main([])

    seconds = time.perf_counter() - began
    summary["seconds"] = seconds
    write_json("summary", summary, quick=quick)
    print()
    print(f"python {info['python']}, {info.get('cpu', '?')}, {info['cpus']} CPUs")
    print(format_table(table))
    where = RESULTS.relative_to(RESULTS.parent.parent)
    print(f"\n({seconds / 60:.1f} min; JSON in {where}/{'quick-*.json' if quick else ''})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
