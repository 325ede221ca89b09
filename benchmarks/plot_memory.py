"""Plot retained memory against completed runs, for the bus and for the leaking model.

``python -m benchmarks.plot_memory`` reads ``benchmarks/results/soak-bus.json`` and
``soak-leaky.json`` (written by ``python -m benchmarks.soak_run --json ...``, or by
``python -m benchmarks.soak``) and writes ``docs/benchmarks-memory.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ._util import RESULTS, ROOT, say

MIB = 1 << 20
OUTPUT = ROOT / "docs" / "benchmarks-memory.png"


def plot(bus: dict[str, Any], leaky: dict[str, Any] | None, output: Path = OUTPUT) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, zoom) = plt.subplots(2, 1, figsize=(8, 7.5), dpi=120)
    series = ((bus, "this bus", "tab:blue"), (leaky, "leaking model", "tab:red"))
    for result, label, colour in series:
        if result is None:
            continue
        for axis, unit, scale in ((ax, "MiB", MIB), (zoom, "KiB", 1024)):
            if axis is zoom and result is not bus:
                continue
            runs, traced, rss = _series(result, scale)
            if traced is not None:
                axis.plot(runs, traced, color=colour, label=f"{label}: tracemalloc")
            axis.plot(runs, rss, color=colour, linestyle="--", label=f"{label}: RSS")
            axis.set_ylabel(f"retained since run 1,000 ({unit})")
    ax.axhline(1.0, color="grey", linewidth=0.8, linestyle=":", label="SPEC target: 1 MiB")
    zoom.axhline(1024.0, color="grey", linewidth=0.8, linestyle=":", label="SPEC target: 1 MiB")
    ax.set_title("Retained memory after gc.collect() (python -m benchmarks.soak_run)")
    zoom.set_title("This bus alone, in KiB")
    for axis in (ax, zoom):
        axis.set_xlabel("completed runs")
        axis.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:,.0f}"))
        axis.grid(True, alpha=0.3)
        axis.legend(loc="upper left", fontsize="small")
    zoom.set_ylim(-256, 1280)
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output)
    plt.close(fig)
    return output


def _series(
    result: dict[str, Any], scale: float
) -> tuple[list[int], list[float] | None, list[float]]:
    """Runs, and tracemalloc and RSS growth since the 1,000-run sample, in ``scale`` units."""
    samples = [s for s in result["samples"] if s["runs"] >= 1_000]
    first = samples[0]
    runs = [s["runs"] for s in samples]
    traced = None
    if first["traced"] is not None:
        traced = [(s["traced"] - first["traced"]) / scale for s in samples]
    rss = [(s["rss"] - first["rss"]) / scale for s in samples]
    return runs, traced, rss


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bus", type=Path, default=RESULTS / "soak-bus.json")
    parser.add_argument("--leaky", type=Path, default=RESULTS / "soak-leaky.json")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    if not args.bus.exists():
        say(f"{args.bus} is missing: run python -m benchmarks.soak first")
        return 1
    bus = json.loads(args.bus.read_text())
    leaky = json.loads(args.leaky.read_text()) if args.leaky.exists() else None
    say(f"wrote {plot(bus, leaky, args.output)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
