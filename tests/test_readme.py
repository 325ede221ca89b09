"""The README's example is a real program: the same text as docs/examples/readme.py, and it runs."""

from __future__ import annotations

import importlib.util
import pathlib
import types

import pytest
import trio

import pipeline as pl

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "docs" / "examples" / "readme.py"


def _load_example() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("readme_example", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_example_is_the_tested_file() -> None:
    readme = (ROOT / "README.md").read_text()
    assert f"```python\n{EXAMPLE.read_text()}```" in readme


async def test_the_readme_example_runs_to_completion(capsys: pytest.CaptureFixture[str]) -> None:
    module = _load_example()
    with trio.fail_after(10):
        await module.main()
    assert capsys.readouterr().out.endswith("outcome: ok\n")


async def test_the_readme_example_stops_reading_when_its_run_fails(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed run sends chat ``error``, never ``final``: the loop must end on lifecycle."""
    module = _load_example()

    async def failing_agent(run: pl.Run) -> None:
        await run.emit("assistant", {"text": "Hel", "delta": "Hel"})
        raise RuntimeError("model overloaded")

    monkeypatch.setattr(module, "agent", failing_agent)
    with trio.fail_after(5):
        await module.main()
    assert capsys.readouterr().out.endswith("outcome: error\n")
