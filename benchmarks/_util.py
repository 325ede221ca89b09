"""Shared helpers: the results table, JSON output, peer subprocesses, RSS, the machine."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"

#: One line of a results table: what, the figure, a note (target, verdict, detail).
Row = tuple[str, str, str]


def format_table(rows: Sequence[Row]) -> str:
    """Three left/right/left aligned columns: what, figure, note. A row with neither figure
    nor note is a heading."""
    lines = [r for r in rows if r[1] or r[2]] or [("", "", "")]
    width0 = max(len(r[0]) for r in lines)
    width1 = max(len(r[1]) for r in lines)
    out = []
    for what, figure, note in rows:
        if not figure and not note:
            out.append(what)
        else:
            out.append(f"{what:<{width0}}  {figure:>{width1}}  {note}".rstrip())
    return "\n".join(out)


def verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def rss_bytes() -> int:
    """Resident set size of this process, from ``/proc/self/statm`` (0 where unavailable)."""
    try:
        with open("/proc/self/statm") as statm:
            resident = int(statm.read().split()[1])
    except (OSError, IndexError, ValueError):
        return 0
    return resident * os.sysconf("SC_PAGE_SIZE")


def say(line: str) -> None:
    """Progress goes to stderr; tables and figures to stdout."""
    print(line, file=sys.stderr, flush=True)


def peer_arguments(description: str | None, *, runs: int, rounds: int) -> argparse.ArgumentParser:
    """The command line every peer script takes: the workload's size and the rounds."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--runs", type=int, default=runs)
    parser.add_argument("--events", type=int, default=100)
    parser.add_argument("--subscribers", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=rounds)
    return parser


def check_peer_deliveries(counts: list[int], sums: list[int], runs: int, events: int) -> None:
    """Every peer handler must have received every event (events + start + end) exactly once."""
    n = events + 2
    for count, total in zip(counts, sums, strict=True):
        assert count == runs * n, f"a handler ran {count} times, expected {runs * n}"
        assert total == runs * n * (n + 1) // 2, "a handler saw the wrong events"


def print_peer_result(name: str, package: str, args: Any, rates: list[float]) -> None:
    """A peer process's result: one JSON line on stdout, read back by :func:`run_module`."""
    from importlib.metadata import version
    from statistics import median

    result = {
        "name": name,
        "version": version(package),
        "workload": f"{args.runs} runs x {args.events} events",
        "runs": args.runs,
        "events": args.events,
        "subscribers": args.subscribers,
        "rounds": args.rounds,
        "rates": rates,
        "median_rate": median(rates),
    }
    print(json.dumps(result))


def write_json(name: str, data: Any, *, quick: bool = False) -> Path:
    """Save ``data`` as ``benchmarks/results/NAME.json`` (``quick-NAME.json`` for a quick run,
    so that a quick run never overwrites the full suite's figures)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{'quick-' if quick else ''}{name}.json"
    path.write_text(json.dumps(data, indent=1, default=str) + "\n")
    return path


def run_module(module: str, *args: str, timeout: float = 1800) -> dict[str, Any]:
    """Run ``python -m module args`` in a fresh process; its last stdout line is JSON.

    Progress on its stderr is passed through. A failure is returned as ``{"error": ...}``
    so that one missing peer does not stop the suite.
    """
    command = [sys.executable, "-m", module, *args]
    try:
        done = subprocess.run(
            command,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=None,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s", "command": command}
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        return {"error": f"exit status {done.returncode}", "command": command}
    try:
        result: dict[str, Any] = json.loads(lines[-1])
    except json.JSONDecodeError:
        return {"error": "no JSON on stdout", "command": command}
    return result


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        from importlib.metadata import version

        info["trio"] = version("trio")
    except Exception:
        pass
    return info


def sized_main(
    name: str,
    description: str | None,
    defaults: dict[str, Any],
    quick: dict[str, Any],
    measure: Callable[..., dict[str, Any]],
    rows: Callable[[dict[str, Any]], list[Row]],
    argv: list[str] | None,
) -> int:
    """The command line of a benchmark measured at named sizes: ``--quick`` for ``quick``,
    ``--<size>`` to override one of ``defaults``; prints the table and writes the JSON."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes, a few seconds each")
    for size, value in defaults.items():
        flag = "--" + size.replace("_", "-")
        parser.add_argument(flag, type=type(value), default=None, help=f"default {value}")
    args = parser.parse_args(argv)
    sizes = dict(quick) if args.quick else {}
    sizes.update({k: getattr(args, k) for k in defaults if getattr(args, k) is not None})
    measured = measure(**sizes)
    write_json(name, measured, quick=args.quick)
    print(format_table(rows(measured)))
    return 0
