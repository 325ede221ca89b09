"""The AG-UI endpoints over HTTP (GATEWAY.md 1.6): ``POST /agui`` and ``GET /sessions/{key}/agui``.

Every event read is validated with the ``ag_ui`` package's own model for its ``type``. The
``POST /agui`` stream is also run through the official JS client, ``@ag-ui/client``'s
``HttpAgent`` (which verifies event order), installed from npm on first use into
``agui_client/node_modules`` (not committed). Without node or npm, or with the npm registry out
of reach, that test is skipped; when ``CI`` is ``"true"`` it fails instead. A stream the gateway
cuts short (here: by closing) must still end properly, its open run with ``RUN_ERROR``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import typing
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any, Final, NoReturn

import httpx
import pytest
import trio
from ag_ui.core import (
    BaseEvent,
    Event,
    EventType,
    RunErrorEvent,
    RunFinishedEvent,
    RunStartedEvent,
    TextMessageContentEvent,
)

import pipeline as pl
from pipeline.gateway import GatewayConfig, open_gateway
from pipeline.gateway._agui import STREAM_CLOSED

from .conftest import ADMIN, ALICE, BOB_READ, TOKENS, Served, talker
from .test_agui_mapping import check_order

#: The ``ag_ui`` model of each event type, from the ``Event`` union the package itself parses
#: with (``Annotated[Union[...], discriminator]``).
EVENT_MODELS: Final[dict[str, type[BaseEvent]]] = {
    model.model_fields["type"].default.value: model
    for model in typing.get_args(typing.get_args(Event)[0])
}

#: The published ``@ag-ui/client`` this gateway is checked against: the latest, 1.0.0, reads
#: ``RUN_FINISHED``'s ``outcome: {"type": "cancelled"}`` (what an abort sends) as a cancelled run.
#: The 0.0.x clients reject it: 0.0.59 fails the run with ``invalid_union_discriminator``,
#: "Expected 'success' | 'interrupt'" at ``outcome.type``.
AGUI_CLIENT_VERSION: Final = "1.0.0"
CLIENT_DIR: Final = Path(__file__).parent / "agui_client"
#: npm error codes that mean the registry could not be reached.
NETWORK_ERRORS: Final = (
    "ENOTFOUND",
    "EAI_AGAIN",
    "ECONNREFUSED",
    "ECONNRESET",
    "ETIMEDOUT",
    "ENETUNREACH",
    "EHOSTUNREACH",
    "ERR_SOCKET_TIMEOUT",
)
INSTALL_TIMEOUT: Final = 180


def run_input(thread_id: str, run_id: str, message: str = "hello there friend") -> dict[str, Any]:
    """A ``RunAgentInput`` body with one user message."""
    return {
        "threadId": thread_id,
        "runId": run_id,
        "state": {},
        "messages": [{"id": f"{run_id}-user", "role": "user", "content": message}],
        "tools": [],
        "context": [],
        "forwardedProps": {},
    }


def auth(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def parse_event(data: str) -> BaseEvent:
    """One SSE ``data`` payload as the ``ag_ui`` model its ``type`` names, with no fields the
    model does not know (the models allow extras, so that is checked here)."""
    raw = json.loads(data)
    assert isinstance(raw, dict), data
    model = EVENT_MODELS.get(raw.get("type"))  # type: ignore[arg-type]
    assert model is not None, f"not an AG-UI event type: {data}"
    event = model.model_validate(raw)
    assert not event.model_extra, f"fields {model.__name__} does not know: {data}"
    return event


async def read_events(
    response: httpx.Response,
    *,
    on_event: Callable[[BaseEvent], None] = lambda event: None,
    until: Callable[[BaseEvent], bool] = lambda event: False,
) -> list[BaseEvent]:
    """The AG-UI events of an SSE response, until it ends (or an event ``until`` accepts).

    Stopping early cancels the read rather than leaving the loop: the cancellation unwinds
    httpx's nested async generators, which an abandoned iteration would leave to the garbage
    collector (a ``ResourceWarning`` under trio).
    """
    events: list[BaseEvent] = []
    data: list[str] = []
    with trio.CancelScope() as reading:
        async for line in response.aiter_lines():
            if reading.cancel_called:  # lines already buffered when the read was stopped
                continue
            if line.startswith("data:"):
                data.append(line.removeprefix("data:").removeprefix(" "))
                continue
            if line or not data:  # another field, a comment, or a blank line between events
                continue
            event = parse_event("\n".join(data))
            data.clear()
            events.append(event)
            on_event(event)
            if until(event):
                reading.cancel()
    assert reading.cancel_called or not data, "the stream ended inside an event"
    return events


def texts(events: Iterable[BaseEvent]) -> str:
    return "".join(e.delta for e in events if isinstance(e, TextMessageContentEvent))


def of_type(events: Iterable[BaseEvent], kind: type[BaseEvent]) -> list[Any]:
    return [event for event in events if isinstance(event, kind)]


async def hang_until_aborted(run: pl.Run) -> None:
    await talker(run, "hang")


# ---- POST /agui --------------------------------------------------------------------------------


async def test_post_agui_streams_the_run_and_ends_after_run_finished(served: Served) -> None:
    with trio.fail_after(20):
        async with httpx.AsyncClient(base_url=served.url) as client:
            body = run_input("alice", "post-run-1")
            async with client.stream("POST", "/agui", json=body, headers=auth(ALICE)) as response:
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("text/event-stream")
                # Read to the end: the response ends by itself after RUN_FINISHED.
                events = await read_events(response)
    check_order(events)
    started, finished = events[0], events[-1]
    assert isinstance(started, RunStartedEvent)
    assert (started.thread_id, started.run_id) == ("alice", "post-run-1")
    assert isinstance(finished, RunFinishedEvent)
    assert (finished.thread_id, finished.run_id, finished.outcome) == ("alice", "post-run-1", None)
    assert texts(events) == "hello there friend "
    assert [e.type for e in events] == [
        EventType.RUN_STARTED,
        EventType.TEXT_MESSAGE_START,
        *[EventType.TEXT_MESSAGE_CONTENT] * 3,
        EventType.TEXT_MESSAGE_END,
        EventType.RUN_FINISHED,
    ]


@pytest.mark.parametrize(
    ("token", "thread_id"),
    [(BOB_READ, "bob"), (BOB_READ, "alice"), (ALICE, "bob")],
    ids=["read-only-token", "read-only-token-other-session", "other-session"],
)
async def test_post_agui_refuses_a_thread_the_token_may_not_run_in(
    served: Served, token: str, thread_id: str
) -> None:
    with trio.fail_after(20):
        async with httpx.AsyncClient(base_url=served.url) as client:
            body = run_input(thread_id, "refused-run")
            response = await client.post("/agui", json=body, headers=auth(token))
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"
    assert served.bus.live_runs() == {}


@pytest.mark.parametrize(
    "headers", [{}, auth("no-such-token")], ids=["without-token", "unknown-token"]
)
async def test_post_agui_without_a_valid_token_is_unauthorized(
    served: Served, headers: dict[str, str]
) -> None:
    with trio.fail_after(20):
        async with httpx.AsyncClient(base_url=served.url) as client:
            response = await client.post("/agui", json=run_input("alice", "r"), headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["error"]["code"] == "unauthorized"
    assert served.bus.live_runs() == {}


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1, 2]",
        json.dumps({"threadId": "alice"}).encode(),  # no runId, no messages
        json.dumps({**run_input("alice", "r"), "messages": [{"role": "nobody"}]}).encode(),
        json.dumps(run_input("alice", "  ")).encode(),  # a blank runId
    ],
    ids=["not-json", "not-an-object", "missing-fields", "bad-message", "blank-run-id"],
)
async def test_post_agui_with_a_malformed_body_is_a_bad_request(
    served: Served, body: bytes
) -> None:
    with trio.fail_after(20):
        async with httpx.AsyncClient(base_url=served.url) as client:
            headers = {**auth(ALICE), "content-type": "application/json"}
            response = await client.post("/agui", content=body, headers=headers)
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] == "bad_request"
    assert isinstance(error["message"], str)
    assert error["message"]
    assert served.bus.live_runs() == {}


async def test_post_agui_with_a_run_id_already_live_is_a_conflict(served: Served) -> None:
    with trio.fail_after(20):
        context = pl.RunContext(session_key="alice")
        handle = await served.bus.start_run(hang_until_aborted, run_id="live-1", context=context)
        async with httpx.AsyncClient(base_url=served.url) as client:
            body = run_input("alice", "live-1")
            response = await client.post("/agui", json=body, headers=auth(ALICE))
        assert response.status_code == 409
        assert response.json()["error"]["code"] == "unavailable"
        assert handle.outcome is None  # the live run goes on, untouched
        assert served.bus.abort("live-1")
        assert (await handle.wait()).status == "aborted"


async def test_post_agui_aborted_run_finishes_with_the_cancelled_outcome(served: Served) -> None:
    def abort_once_started(event: BaseEvent) -> None:
        if isinstance(event, RunStartedEvent):
            assert served.bus.abort("post-hang-1")

    with trio.fail_after(20):
        async with httpx.AsyncClient(base_url=served.url) as client:
            body = run_input("alice", "post-hang-1", "please hang on")
            async with client.stream("POST", "/agui", json=body, headers=auth(ALICE)) as response:
                assert response.status_code == 200
                events = await read_events(response, on_event=abort_once_started)
    check_order(events)
    assert isinstance(events[0], RunStartedEvent)
    finished = events[-1]
    assert isinstance(finished, RunFinishedEvent)
    assert finished.run_id == "post-hang-1"
    assert finished.outcome is not None
    assert finished.outcome.type == "cancelled"
    assert "please hang on ".startswith(texts(events))
    assert served.bus.live_runs() == {}


# ---- GET /sessions/{key}/agui ------------------------------------------------------------------


async def test_session_agui_streams_that_sessions_runs_only(served: Served) -> None:
    bus = served.bus

    async def run_in(session: str, run_id: str, message: str) -> None:
        context = pl.RunContext(session_key=session)
        handle = await bus.start_run(
            partial(talker, message=message), run_id=run_id, context=context
        )
        assert (await handle.wait()).status == "ok"

    with trio.fail_after(20):
        async with httpx.AsyncClient(base_url=served.url) as client:
            url = "/sessions/alice/agui"
            async with client.stream("GET", url, headers=auth(ALICE)) as response:
                # The head is sent once the stream's subscription is in place.
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("text/event-stream")
                # A run of another session ends before alice's runs start, so if its events
                # leaked into this stream they would come first.
                await run_in("bob", "bob-run", "bob talks")
                await run_in("alice", "alice-run-1", "first alice run")
                await run_in("alice", "alice-run-2", "second one")
                events = await read_events(
                    response,
                    until=lambda e: isinstance(e, RunFinishedEvent) and e.run_id == "alice-run-2",
                )
    check_order(events)
    started = of_type(events, RunStartedEvent)
    finished = of_type(events, RunFinishedEvent)
    assert [(e.thread_id, e.run_id) for e in started] == [
        ("alice", "alice-run-1"),
        ("alice", "alice-run-2"),
    ]
    assert [(e.thread_id, e.run_id, e.outcome) for e in finished] == [
        ("alice", "alice-run-1", None),
        ("alice", "alice-run-2", None),
    ]
    assert isinstance(events[0], RunStartedEvent)
    split = events.index(finished[0]) + 1
    assert texts(events[:split]) == "first alice run "
    assert texts(events[split:]) == "second one "
    for event in events:
        assert "bob" not in event.model_dump_json(by_alias=True)


@pytest.mark.parametrize(
    ("token", "status"),
    [(None, 401), (BOB_READ, 403), (ADMIN, 200)],
    ids=["without-token", "other-session", "admin"],
)
async def test_session_agui_needs_read_access_to_the_session(
    served: Served, token: str | None, status: int
) -> None:
    with trio.fail_after(20):
        async with httpx.AsyncClient(base_url=served.url) as client:
            headers = auth(token) if token is not None else {}
            url = "/sessions/alice/agui"
            async with client.stream("GET", url, headers=headers) as response:
                assert response.status_code == status
                if status != 200:
                    await response.aread()
                    assert "error" in response.json()


# ---- the official JS client ----------------------------------------------------------------


def unavailable(reason: str) -> NoReturn:
    """Skip the JS-client test, or fail it in CI, where it must run."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"the @ag-ui/client check must run in CI: {reason}", pytrace=False)
    pytest.skip(reason)


def installed_version() -> str | None:
    manifest = CLIENT_DIR / "node_modules" / "@ag-ui" / "client" / "package.json"
    try:
        version = json.loads(manifest.read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None
    return version if isinstance(version, str) else None


@pytest.fixture
def node() -> str:
    """``node``'s path, with ``@ag-ui/client`` at the pinned version installed (once).

    A plain fixture, outside trio: pytest-trio 0.8 re-raises a skip from inside a trio test
    without its reason.
    """
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        unavailable("node and npm are needed to run @ag-ui/client (not found on PATH)")
    if installed_version() == AGUI_CLIENT_VERSION:
        return node
    command = [
        npm,
        "install",
        "--no-audit",
        "--no-fund",
        "--no-save",
        "--no-package-lock",
        "--prefix",
        str(CLIENT_DIR),
        f"@ag-ui/client@{AGUI_CLIENT_VERSION}",
    ]
    env = {**os.environ, "npm_config_update_notifier": "false"}
    try:
        done = subprocess.run(
            command, capture_output=True, check=False, env=env, timeout=INSTALL_TIMEOUT
        )
    except subprocess.TimeoutExpired:
        unavailable(f"npm install took over {INSTALL_TIMEOUT} s (is the npm registry reachable?)")
    output = (done.stdout + done.stderr).decode(errors="replace")
    if done.returncode == 0 and installed_version() == AGUI_CLIENT_VERSION:
        return node
    tail = output.strip()[-2000:]
    network = [line for line in output.splitlines() if any(c in line for c in NETWORK_ERRORS)]
    if network:
        unavailable(f"the npm registry is unreachable: {' / '.join(network[:3])}")
    pytest.fail(f"npm install @ag-ui/client@{AGUI_CLIENT_VERSION} failed:\n{tail}")


async def run_js_client(
    node: str,
    served: Served,
    run_id: str,
    message: str,
    on_event: Callable[[str], None] = lambda kind: None,
) -> dict[str, Any]:
    """Run ``agui_client/run.mjs`` (one HttpAgent run on ``POST /agui``) and return its summary.

    ``on_event`` gets each event type as the client applies it.
    """
    config = {
        "url": f"{served.url}/agui",
        "token": ALICE,
        "threadId": "alice",
        "runId": run_id,
        "message": message,
    }
    command = [node, str(CLIENT_DIR / "run.mjs"), json.dumps(config)]
    out = bytearray()
    err = bytearray()

    async def read_stdout(stream: trio.abc.ReceiveStream) -> None:
        async for chunk in stream:
            out.extend(chunk)

    async with trio.open_nursery() as nursery:
        process: trio.Process = await nursery.start(
            partial(
                trio.run_process,
                command,
                cwd=CLIENT_DIR,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                check=False,
            )
        )
        assert process.stdout is not None
        assert process.stderr is not None
        nursery.start_soon(read_stdout, process.stdout)
        pending = b""
        async for chunk in process.stderr:
            err.extend(chunk)
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                if line.startswith(b"event "):
                    on_event(line.removeprefix(b"event ").decode())
    assert process.returncode == 0, f"node failed ({process.returncode}): {err.decode()}"
    summary: dict[str, Any] = json.loads(out)
    return summary


def assert_accepted(summary: dict[str, Any], run_id: str) -> None:
    """The client ran the stream without an error or a complaint, from RUN_STARTED to
    RUN_FINISHED."""
    assert summary["error"] is None, summary
    assert summary["logged"] == [], summary
    assert summary["types"][0] == "RUN_STARTED"
    assert summary["types"][-1] == "RUN_FINISHED"
    assert summary["runStarted"] == {"threadId": "alice", "runId": run_id}
    assert summary["runFinished"] == {"threadId": "alice", "runId": run_id}


async def test_the_official_js_client_accepts_post_agui_streams(served: Served, node: str) -> None:
    with trio.fail_after(60):
        summary = await run_js_client(node, served, "js-run-1", "hello there friend")
        assert_accepted(summary, "js-run-1")
        assert summary["types"] == [
            "RUN_STARTED",
            "TEXT_MESSAGE_START",
            *["TEXT_MESSAGE_CONTENT"] * 3,
            "TEXT_MESSAGE_END",
            "RUN_FINISHED",
        ]
        assert summary["text"] == "hello there friend "
        assert summary["outcome"] == "success"
        replies = [m for m in summary["messages"] if m["role"] == "assistant"]
        assert [m["content"] for m in replies] == ["hello there friend "]

        # An aborted run: the client reads RUN_FINISHED's cancelled outcome as such.
        def abort_once_started(kind: str) -> None:
            if kind == "RUN_STARTED":
                assert served.bus.abort("js-hang-1")

        summary = await run_js_client(
            node, served, "js-hang-1", "please hang on", on_event=abort_once_started
        )
        assert_accepted(summary, "js-hang-1")
        assert summary["outcome"] == "cancelled"
        assert "please hang on ".startswith(summary["text"])
        assert served.bus.live_runs() == {}


# ---- a stream cut short ------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", ["POST /agui", "GET /sessions/alice/agui"])
async def test_a_stream_cut_short_by_shutdown_ends_its_run_with_run_error(endpoint: str) -> None:
    """A gateway closing mid-run ends the open run with ``RUN_ERROR`` (code stream_closed)
    and ends the response, instead of breaking it off; the run itself goes on."""
    events: list[BaseEvent] = []
    connected, started = trio.Event(), trio.Event()

    def on_event(event: BaseEvent) -> None:
        if isinstance(event, RunStartedEvent):
            started.set()

    async def client(url: str) -> None:
        method, path = endpoint.split()
        body = run_input("alice", "cut-1", "please hang on") if method == "POST" else None
        async with (
            httpx.AsyncClient(base_url=url) as http,
            http.stream(method, path, json=body, headers=auth(ALICE)) as response,
        ):
            assert response.status_code == 200
            connected.set()
            events.extend(await read_events(response, on_event=on_event))

    config = GatewayConfig(tokens=TOKENS, port=0, agent=talker)
    with trio.fail_after(20):
        async with pl.open_bus() as bus:
            async with trio.open_nursery() as nursery:
                async with open_gateway(bus, config) as gateway:
                    nursery.start_soon(client, gateway.url)
                    await connected.wait()
                    if endpoint.startswith("GET"):
                        context = pl.RunContext(session_key="alice")
                        await bus.start_run(hang_until_aborted, run_id="cut-1", context=context)
                    await started.wait()
                # The gateway is closed; the client reads its response to the end.
            assert list(bus.live_runs()) == ["cut-1"]
            assert bus.abort("cut-1")
    check_order(events)
    assert isinstance(events[0], RunStartedEvent)
    assert events[0].run_id == "cut-1"
    last = events[-1]
    assert isinstance(last, RunErrorEvent)
    assert last.code == STREAM_CLOSED
    assert not any(isinstance(event, RunFinishedEvent) for event in events)
