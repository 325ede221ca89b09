"""The command line, run as users run it."""

from __future__ import annotations

import subprocess
import sys


def test_the_demo_ends_with_every_run_accounted_for_and_none_live() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "demo", "--runs", "40", "--pace", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    lines = {line[:36].strip(): line[36:].strip() for line in result.stdout.splitlines() if line}
    assert lines["runs started"] == "40"
    ended = sum(int(lines[f"ended {status}"]) for status in ("ok", "error", "aborted", "timeout"))
    assert ended >= 40  # each run ends once; a failed run may also have been retried
    assert lines["live runs at end"] == "0"
    assert "lifecycle start" in result.stdout


def test_an_unknown_command_exits_with_usage() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "fly"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "usage" in result.stderr


def test_the_soak_reports_flat_memory_for_the_bus() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "soak", "--runs", "2000", "--no-tracemalloc"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "SPEC 5 target (within 1 MiB, by RSS): met" in result.stdout
    assert "'timeout': 0" in result.stdout
