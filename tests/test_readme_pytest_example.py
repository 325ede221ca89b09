"""The README's pytest example passes as written in a fresh project of a user's own."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _pytest_snippet() -> str:
    blocks: list[str] = re.findall(
        r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL
    )
    (snippet,) = (block for block in blocks if "agent_bus" in block)
    return snippet


def test_the_readme_pytest_example_passes_in_a_fresh_project(tmp_path: pathlib.Path) -> None:
    # tmp_path holds no pyproject.toml or conftest.py of ours: only the installed package
    # (and its pytest11 entry point) and the snippet, as in a user's new project.
    (tmp_path / "test_my_agent.py").write_text(_pytest_snippet())
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
