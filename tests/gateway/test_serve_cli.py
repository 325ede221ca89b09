"""``python -m pipeline serve``, run as users run it: the lines it prints, and what they
promise (GATEWAY 1.1)."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def serve_process() -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "serve", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield process
    finally:
        process.terminate()
        process.wait(timeout=20)
        assert process.stdout is not None
        assert process.stderr is not None
        process.stdout.close()
        process.stderr.close()


def _get(url: str, token: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_serve_without_tokens_prints_an_admin_token_before_the_listening_line(
    serve_process: subprocess.Popen[str],
) -> None:
    assert serve_process.stdout is not None
    lines = []
    for line in serve_process.stdout:  # blocks until each line; the process flushes them
        lines.append(line.rstrip("\n"))
        if line.startswith("gateway listening on "):
            break
    token = next(line.split(": ", 1)[1] for line in lines if line.startswith("admin token: "))
    assert lines.index(f"admin token: {token}") < len(lines) - 1
    url = lines[-1].removeprefix("gateway listening on ")
    assert url.startswith("http://127.0.0.1:")
    assert not url.endswith(":0")
    assert _get(f"{url}/healthz") == (200, json.dumps({"ok": True}).encode())
    status, body = _get(f"{url}/metrics", token)
    assert status == 200
    assert b"agent_bus_live_runs" in body
    assert _get(f"{url}/metrics", "not-the-token")[0] == 401


def test_serve_refuses_a_public_address_without_a_tokens_file() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "serve", "--host", "0.0.0.0", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "--tokens" in result.stderr


def test_serve_reports_a_bad_tokens_file_without_a_traceback(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.json"
    tokens.write_text('{"tokens": [{"token": "short"}]}')
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "serve", "--tokens", str(tokens), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "at least 8 characters" in result.stderr
