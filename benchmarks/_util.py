"""Shared helpers: the results directory, JSON output, peer subprocesses, the machine."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


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


def write_json(name: str, data: Any) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
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
