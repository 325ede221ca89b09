"""Stalled subscriber: 7 healthy subscribers with and without an 8th that never reads.

``python -m benchmarks.stalled [--rounds N] [--block-timeout S]``. Workload W; every
subscriber uses the policy under test; the figure is the healthy subscribers' deliveries per
second (median of the rounds) and the cost of the stalled one. See
:func:`pipeline._bench.stalled_subscriber`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from pipeline._bench import W, format_table, stalled_subscriber

from ._util import say, write_json


def measure(rounds: int = 3, block_timeout: float = 5.0) -> dict[str, Any]:
    say(f"stalled subscriber: W, 7 healthy + 1 stalled, block_timeout {block_timeout} s")
    table = stalled_subscriber(rounds, W, block_timeout=block_timeout, progress=say)
    return {"rounds": rounds, "block_timeout": block_timeout, "policies": table}


def rows(measured: dict[str, Any]) -> list[tuple[str, str, str]]:
    out: list[tuple[str, str, str]] = [
        (
            f"Stalled 8th subscriber, W, 7 healthy (block_timeout {measured['block_timeout']} s)",
            "",
            "",
        )
    ]
    for row in measured["policies"]:
        stalled = row["stalled_subscriber"][0] if row["stalled_subscriber"] else {}
        out.append(
            (
                f"  {row['policy']}",
                f"{-row['cost']:+.1%}",
                f"{row['without_stalled']:,.0f}/s -> {row['with_stalled']:,.0f}/s; stalled one: "
                f"{stalled.get('closed_reason') or 'open'}, {stalled.get('dropped', 0):,} dropped",
            )
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--block-timeout", type=float, default=5.0)
    args = parser.parse_args(argv)
    measured = measure(args.rounds, args.block_timeout)
    write_json("stalled", measured)
    print(format_table(rows(measured)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
