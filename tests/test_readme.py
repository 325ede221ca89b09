"""The README's example is a real program: the same text as docs/examples/readme.py, and it runs."""

from __future__ import annotations

import importlib.util
import pathlib

import trio

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "docs" / "examples" / "readme.py"


def test_the_readme_example_is_the_tested_file() -> None:
    readme = (ROOT / "README.md").read_text()
    assert f"```python\n{EXAMPLE.read_text()}```" in readme


async def test_the_readme_example_runs_to_completion() -> None:
    spec = importlib.util.spec_from_file_location("readme_example", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with trio.fail_after(10):
        await module.main()
