"""The command line, run as users run it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pipeline._cli import main


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


def _help(command: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command", [[], ["demo"]], ids=repr)
def test_help_is_plain_text_without_markup_or_references_to_absent_documents(
    command: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    help_text = _help(command, capsys)
    assert "usage: python -m pipeline" in help_text
    assert "``" not in help_text
    assert "SPEC" not in help_text
    assert max(len(line) for line in help_text.splitlines()) <= 80
