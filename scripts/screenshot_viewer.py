"""Take docs/viewer.png: the viewer page watching `python -m pipeline serve --simulate`.

Runs the gateway as a subprocess with a tokens file of one read+write token for three sessions,
opens the page in Debian's chromium (pip's playwright, `executable_path=/usr/bin/chromium`;
never `playwright install`), starts a run and aborts it, starts two more, waits until runs are
visible mid-stream (one inside a tool call), and saves a 1280x800 screenshot.

    .venv/bin/python scripts/screenshot_viewer.py [--out docs/viewer.png]
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

from playwright.sync_api import Page, expect, sync_playwright

ROOT = Path(__file__).resolve().parents[1]
# Run as `python scripts/screenshot_viewer.py`, the path starts with scripts/, not the root.
sys.path.insert(0, str(ROOT))

from tests.gateway._serve import (  # noqa: E402 - needs the root on the path
    CHROMIUM,
    CHROMIUM_ARGS,
    ServeFailed,
    browser_problem,
    serve,
)

TOKEN = "viewer-screenshot-token"
TOKENS = {
    "tokens": [{"token": TOKEN, "sessions": ["alice", "bob", "carol"], "scopes": ["read", "write"]}]
}

# Our live runs are streaming text, one of them has made its tool call, and the others ended.
READY = """(ids) => {
  const runs = ids.map((id) => document.querySelector(`article.run[data-run-id="${id}"]`));
  const live = runs.filter((run) => run && run.dataset.status === 'running'
    && run.querySelector('.text').textContent.trim());
  return live.length >= 2 && live.some((run) => run.querySelector('.tool'));
}"""


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
    problem = browser_problem()
    if problem is not None:
        raise SystemExit(problem)
    try:
        with (
            tempfile.TemporaryDirectory() as directory,
            serve(TOKENS, Path(directory)) as url,
            sync_playwright() as playwright,
        ):
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                context = browser.new_context(viewport={"width": 1280, "height": 800})
                take(context.new_page(), url, args.out)
            finally:
                browser.close()
    except ServeFailed as failure:
        raise SystemExit(str(failure)) from None
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
