"""The demo: the same seed gives the same runs and the same outcomes."""

from __future__ import annotations

from collections import Counter

import pytest
import trio

from pipeline._demo import _main, draw_scripts

RUNS = 150
SEED = 3


async def _demo_outcomes(capsys: pytest.CaptureFixture[str]) -> dict[str, int]:
    """Run the demo flat out and read the ``ended <status>  <count>`` rows of its summary."""
    with trio.fail_after(10):
        await _main(RUNS, SEED, 0.0, "alice")
    rows = (line.split() for line in capsys.readouterr().out.splitlines())
    return {row[1]: int(row[2]) for row in rows if len(row) == 3 and row[0] == "ended"}


class TestDemoSeed:
    async def test_the_same_seed_gives_the_same_outcome_counts(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        first = await _demo_outcomes(capsys)
        second = await _demo_outcomes(capsys)
        assert first == second
        assert sum(first.values()) == RUNS

    async def test_every_run_ends_as_its_script_drawn_from_the_seed_says(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        scripts = draw_scripts(RUNS, SEED)
        assert scripts == draw_scripts(RUNS, SEED)
        assert scripts != draw_scripts(RUNS, SEED + 1)
        fates = Counter(script.fate for script in scripts)
        expected = {"ok": fates["ok"], "error": fates["fail"], "aborted": fates["abort"]}
        assert await _demo_outcomes(capsys) == {**expected, "timeout": 0}
