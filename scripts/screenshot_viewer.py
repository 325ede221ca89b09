"""Take docs/viewer.png: the viewer page watching `python -m pipeline serve --simulate`.

Runs the gateway as a subprocess with a tokens file of one read+write token for three sessions,
opens the page in Debian's chromium (pip's playwright, `executable_path=/usr/bin/chromium`;
never `playwright install`), starts a run and aborts it, starts two more, waits until runs are
visible mid-stream (one inside a tool call), and saves a 1280x800 screenshot.

    .venv/bin/python scripts/screenshot_viewer.py [--out docs/viewer.png]
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from playwright.sync_api import Page, expect, sync_playwright

CHROMIUM = "/usr/bin/chromium"
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
ROOT = Path(__file__).resolve().parents[1]
LISTENING = re.compile(r"gateway listening on (http://\S+)")
TOKEN = "viewer-screenshot-token"

# Our live runs are streaming text, one of them has made its tool call, and the others ended.
READY = """(ids) => {
  const runs = ids.map((id) => document.querySelector(`article.run[data-run-id="${id}"]`));
  const live = runs.filter((run) => run && run.dataset.status === 'running'
    && run.querySelector('.text').textContent.trim());
  return live.length >= 2 && live.some((run) => run.querySelector('.tool'));
}"""


def _read_lines(stream: Iterator[str], lines: queue.Queue[str | None]) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


@contextmanager
def gateway(directory: Path, timeout: float = 20.0) -> Iterator[str]:
    """`python -m pipeline serve --simulate --port 0`; yields its base URL."""
    tokens = directory / "tokens.json"
    entry = {"token": TOKEN, "sessions": ["alice", "bob", "carol"], "scopes": ["read", "write"]}
    tokens.write_text(json.dumps({"tokens": [entry]}))
    command = [sys.executable, "-m", "pipeline", "serve", "--simulate", "--port", "0"]
    command += ["--tokens", str(tokens)]
    with subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as proc:
        assert proc.stdout is not None
        lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=_read_lines, args=(proc.stdout, lines), daemon=True).start()
        try:
            deadline = time.monotonic() + timeout
            while True:
                line = lines.get(timeout=max(deadline - time.monotonic(), 0.0))
                if line is None:
                    raise SystemExit(f"serve exited with {proc.wait()} before listening")
                match = LISTENING.search(line)
                if match:
                    break
            yield match.group(1)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def start_run(page: Page, session: str, message: str) -> str:
    """Starts a run through the session's message box; returns its run id."""
    form = page.locator(f'section.session[data-session-key="{session}"] form.send')
    form.locator("input[name=message]").fill(message)
    form.locator("button[type=submit]").click()
    note = form.locator(".form-note")
    expect(note).to_have_text(re.compile(r"^Started \S+$"))
    run_id = note.inner_text().removeprefix("Started ").strip()
    expect(page.locator(f'article.run[data-run-id="{run_id}"] .text')).to_have_text(
        re.compile(r"\S")
    )
    return run_id


def take(page: Page, url: str, out: Path) -> None:
    page.set_default_timeout(20_000)
    page.goto(f"{url}/?token={TOKEN}")
    expect(page.locator("#status")).to_contain_text("connected")

    finished = start_run(page, "bob", "is the staging deploy healthy?")
    page.wait_for_timeout(600)
    aborted = start_run(page, "alice", "what changed in the last deploy?")
    page.wait_for_timeout(800)
    page.locator(f'article.run[data-run-id="{aborted}"] button.abort').click()
    expect(page.locator(f'article.run[data-run-id="{aborted}"] .badge')).to_have_text("aborted")

    page.wait_for_timeout(600)
    live = [start_run(page, "alice", "summarise the open incidents")]
    page.locator(f'article.run[data-run-id="{live[0]}"] .thinking summary').click()
    page.wait_for_timeout(500)
    live.append(start_run(page, "bob", "how many runs failed today?"))
    expect(page.locator(f'article.run[data-run-id="{finished}"] .badge')).to_have_text("ok")
    page.wait_for_function(READY, arg=live, timeout=10_000, polling=50)
    page.mouse.move(0, 0)
    page.screenshot(path=str(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "viewer.png")
    args = parser.parse_args()
    if not os.path.exists(CHROMIUM):
        raise SystemExit("Debian chromium not installed: apt-get install chromium")
    with (
        tempfile.TemporaryDirectory() as directory,
        gateway(Path(directory)) as url,
        sync_playwright() as playwright,
    ):
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 800})
            take(context.new_page(), url, args.out)
        finally:
            browser.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
