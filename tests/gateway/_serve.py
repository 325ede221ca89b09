"""`python -m pipeline serve` in a subprocess, and Debian's chromium for playwright: shared by
the browser tests and ``scripts/screenshot_viewer.py`` (so plain synchronous code that imports
neither pytest nor playwright)."""

from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    "CHROMIUM",
    "CHROMIUM_ARGS",
    "ROOT",
    "ServeFailed",
    "browser_problem",
    "serve",
]

CHROMIUM = "/usr/bin/chromium"
# This machine's closed network refuses chromium's background connections; without these
# flags it waits on them.
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ROOT = Path(__file__).resolve().parents[2]
LISTENING = re.compile(r"gateway listening on (http://\S+)")


class ServeFailed(Exception):
    """`serve` ended, or printed no listening line in time; the message has its output."""


def browser_problem() -> str | None:
    """Why chromium cannot be driven here (chromium or playwright missing), or None."""
    if not os.path.exists(CHROMIUM):
        return "Debian chromium not installed: apt-get install chromium"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright not installed: pip install -e '.[test]'"
    return None


def _read_lines(stream: Iterator[str], lines: queue.Queue[str | None]) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


@contextmanager
def serve(tokens: dict[str, Any], directory: Path, *, timeout: float = 20.0) -> Iterator[str]:
    """`python -m pipeline serve --simulate --port 0` with ``tokens`` (written to a file in
    ``directory``); yields its base URL once it is listening, terminates it on the way out.
    :exc:`ServeFailed` if it exits first or prints no listening line within ``timeout``."""
    path = directory / "tokens.json"
    path.write_text(json.dumps(tokens))
    command = [sys.executable, "-m", "pipeline", "serve", "--simulate", "--port", "0"]
    command += ["--tokens", str(path)]
    with subprocess.Popen(
        command,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    ) as proc:
        assert proc.stdout is not None
        lines: queue.Queue[str | None] = queue.Queue()
        # The reader also keeps draining the pipe afterwards, so the server never blocks on it.
        reader = threading.Thread(target=_read_lines, args=(proc.stdout, lines), daemon=True)
        reader.start()
        try:
            seen: list[str] = []
            deadline = time.monotonic() + timeout
            url = None
            while url is None:
                remaining = deadline - time.monotonic()
                try:
                    line = lines.get(timeout=max(remaining, 0.0))
                except queue.Empty:
                    raise ServeFailed(
                        f"no listening line in {timeout} s; output: {seen!r}"
                    ) from None
                if line is None:
                    raise ServeFailed(f"serve exited ({proc.wait()}) before listening: {seen!r}")
                seen.append(line)
                match = LISTENING.search(line)
                if match:
                    url = match.group(1)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            reader.join(timeout=5)
