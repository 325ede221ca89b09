"""Memory soak: ``python -m benchmarks.soak_run`` for the bus and for the leaking model.

``python -m benchmarks.soak [--runs N] [--no-tracemalloc]``. Each design runs in a fresh
process (so nothing else this suite did is in its memory) and saves its samples to
``benchmarks/results/soak-bus.json`` and ``soak-leaky.json`` (``quick-soak-*.json`` for a
quick run), which ``python -m benchmarks.plot_memory`` draws. See :mod:`benchmarks.soak_run`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from typing import Any

from ._util import RESULTS, ROOT, Row, format_table, say, verdict

MIB = 1 << 20


def measure(
    runs: int = 1_000_000, tracemalloc: bool = True, *, quick: bool = False
) -> dict[str, Any]:
    measured: dict[str, Any] = {}
    for design in ("bus", "leaky"):
        path = RESULTS / f"{'quick-' if quick else ''}soak-{design}.json"
        command = [sys.executable, "-m", "benchmarks.soak_run", "--runs", str(runs)]
        command += ["--json", str(path)]
        if design == "leaky":
            command.append("--leaky")
        if not tracemalloc:
            command.append("--no-tracemalloc")
        say("$ " + " ".join(["python", *command[1:]]))
        began = time.perf_counter()
        # The child's report is progress here: this suite prints its own table at the end.
        done = subprocess.run(command, cwd=ROOT, stdout=sys.stderr, check=False)
        if done.returncode != 0 or not path.exists():
            measured[design] = {"error": f"exit status {done.returncode}"}
            continue
        result = json.loads(path.read_text())
        result["wall_seconds"] = time.perf_counter() - began
        measured[design] = result
    return measured


def _sample(result: dict[str, Any], runs: int) -> dict[str, Any]:
    sample: dict[str, Any] = next(s for s in result["samples"] if s["runs"] == runs)
    return sample


def rows(measured: dict[str, Any]) -> list[Row]:
    out: list[Row] = []
    for design, label in (("bus", "this bus"), ("leaky", "leaking model (seq dict)")):
        result = measured.get(design, {})
        if "error" in result or not result:
            out.append((f"Memory soak, {label}", "n/a", str(result.get("error", "not run"))))
            continue
        runs = result["runs"]
        first, last = _sample(result, 1_000), result["samples"][-1]
        out.append(
            (
                f"Memory soak, {label}: {runs:,} runs in {result['seconds']:,.0f} s "
                f"(tracemalloc {'on' if result['tracemalloc'] else 'off'})",
                "",
                "",
            )
        )
        for name, key in (("tracemalloc", "traced"), ("RSS", "rss")):
            if first[key] is None:
                continue
            growth = last[key] - first[key]
            out.append(
                (
                    f"  {name}: after 1,000 -> after {runs:,}",
                    f"{growth / MIB:+.3f} MiB",
                    f"{first[key] / MIB:.3f} -> {last[key] / MIB:.3f} MiB "
                    f"({growth / max(1, runs - 1_000):+.1f} B per run)",
                )
            )
        if design == "bus":
            out.append(
                (
                    "  SPEC 5 target: within 1 MiB",
                    verdict(result["target_met"]),
                    "",
                )
            )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--no-tracemalloc", dest="tracemalloc", action="store_false")
    args = parser.parse_args(argv)
    measured = measure(args.runs, args.tracemalloc)
    print(format_table(rows(measured)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
