"""The viewer page in a real browser against a real `python -m pipeline serve --simulate`.

GATEWAY 1.7: load the page, see a run's text stream in, click Abort, see the run marked
aborted; and a token's sessions bound what the page shows. Debian's chromium is driven by
pip's playwright (`executable_path=/usr/bin/chromium`; never `playwright install`). Without
them the tests skip locally and fail under CI=true.

Playwright's async API is asyncio-only, so these are plain synchronous tests (pytest-trio
leaves them alone) using `playwright.sync_api`, and the gateway runs as a subprocess.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from ._serve import CHROMIUM, CHROMIUM_ARGS, ServeFailed, browser_problem, serve

if TYPE_CHECKING:
    from collections.abc import Callable

    from playwright.sync_api import Browser, Locator, Page

    _Opener = Callable[[str], Page]

pytestmark = pytest.mark.browser

START_TIMEOUT = 20.0
UI_TIMEOUT_MS = 15_000

ALICE = "viewer-alice-token-01"
BOB = "viewer-bob-token-0001"
TOKENS = {
    "tokens": [
        {"token": ALICE, "sessions": ["alice"], "scopes": ["read", "write"]},
        {"token": BOB, "sessions": ["bob"], "scopes": ["read", "write"]},
    ]
}


def _require_browser() -> None:
    """Skip (locally) or fail (CI=true) when chromium or playwright is missing."""
    problem = browser_problem()
    if problem is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{problem} (CI must run the browser tests)")
    pytest.skip(problem)


@pytest.fixture(scope="module")
def gateway_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`python -m pipeline serve --simulate --port 0` in a subprocess; yields its base URL."""
    _require_browser()
    try:
        with serve(TOKENS, tmp_path_factory.mktemp("viewer"), timeout=START_TIMEOUT) as url:
            yield url
    except ServeFailed as failure:
        pytest.fail(str(failure))


@pytest.fixture(scope="module")
def browser(gateway_url: str) -> Iterator[Browser]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def open_page(browser: Browser, gateway_url: str) -> Iterator[_Opener]:
    """Opens the viewer with a token in a fresh context; fails the test on any page error."""
    errors: list[str] = []
    contexts = []

    def opener(token: str) -> Page:
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(UI_TIMEOUT_MS)
        page.on("pageerror", lambda error: errors.append(f"{token[:12]}: {error}"))
        page.goto(f"{gateway_url}/?token={token}")
        return page

    try:
        yield opener
    finally:
        for context in contexts:
            context.close()
    assert errors == [], f"uncaught errors in the page: {errors}"


def _wait_connected(page: Page) -> None:
    from playwright.sync_api import expect

    expect(page.locator("#status")).to_contain_text("connected", timeout=UI_TIMEOUT_MS)
    expect(page.locator("#status")).to_have_attribute("data-state", "connected")


def _session(page: Page, key: str) -> Locator:
    return page.locator(f'section.session[data-session-key="{key}"]')


def _send(page: Page, session: str, message: str) -> str:
    """Sends a chat message through the session's form; returns the run id it started."""
    from playwright.sync_api import expect

    form = _session(page, session).locator("form.send")
    expect(form).to_be_visible()
    form.locator("input[name=message]").fill(message)
    form.locator("button[type=submit]").click()
    note = form.locator(".form-note")
    expect(note).to_have_text(re.compile(r"^Started \S+$"))
    return note.inner_text().removeprefix("Started ").strip()


def _text_length(run: Locator) -> int:
    return len(run.locator(".text").inner_text())


def test_a_streaming_run_can_be_aborted_from_the_page(open_page: _Opener) -> None:
    from playwright.sync_api import expect

    page = open_page(ALICE)
    _wait_connected(page)
    alice = _session(page, "alice")
    expect(alice).to_be_visible()

    run_id = _send(page, "alice", "hello from the browser test")
    run = alice.locator(f'article.run[data-run-id="{run_id}"]')
    badge = run.locator(".badge")
    expect(badge).to_have_text("running")
    expect(badge).to_have_attribute("data-status", "running")

    # Streaming: the text appears, then grows while the run is live.
    expect(run.locator(".text")).to_have_text(re.compile(r"\S"))
    first = _text_length(run)
    page.wait_for_function(
        "([id, n]) => (document.querySelector(`article.run[data-run-id='${id}'] .text`)"
        "?.textContent.length ?? 0) > n",
        arg=[run_id, first],
        timeout=5_000,
    )
    expect(badge).to_have_text("running")  # still live: ~4 s of streaming, we are well inside

    abort = run.locator("button.abort")
    expect(abort).to_be_visible()
    abort.click()
    expect(badge).to_have_text("aborted", timeout=5_000)
    expect(badge).to_have_attribute("data-status", "aborted")
    expect(run).to_have_attribute("data-status", "aborted")
    expect(abort).to_be_hidden()

    # Aborted means stopped: no more text arrives for this run.
    stopped = _text_length(run)
    page.wait_for_timeout(600)
    assert _text_length(run) == stopped


def test_a_token_for_bob_never_shows_alice(open_page: _Opener) -> None:
    from playwright.sync_api import expect

    bob_page = open_page(BOB)
    alice_page = open_page(ALICE)
    _wait_connected(bob_page)
    _wait_connected(alice_page)

    # Traffic in both sessions at once: each page starts a run in its own session.
    alice_run = _send(alice_page, "alice", "for alice's eyes only")
    bob_run = _send(bob_page, "bob", "hello bob")
    for page, session, run_id in ((alice_page, "alice", alice_run), (bob_page, "bob", bob_run)):
        run = _session(page, session).locator(f'article.run[data-run-id="{run_id}"]')
        expect(run.locator(".text")).to_have_text(re.compile(r"\S"))

    # Let the simulated traffic (all six sessions) flow for a while, then look again.
    bob_page.wait_for_timeout(2_500)
    keys = bob_page.locator("section.session").evaluate_all(
        "sections => sections.map((s) => s.dataset.sessionKey)"
    )
    assert keys == ["bob"]
    expect(_session(bob_page, "alice")).to_have_count(0)
    expect(bob_page.locator(f'[data-run-id="{alice_run}"]')).to_have_count(0)
    assert "for alice" not in (bob_page.locator("body").text_content() or "")
    # ... while the alice page does see its run (the check above is not vacuous).
    expect(alice_page.locator(f'[data-run-id="{alice_run}"]')).to_have_count(1)
