"""The cluster as operators run it (GATEWAY 2): ``python -m pipeline serve --redis URL`` node
processes sharing one real ``redis-server``, watched and steered by WebSocket clients.

Every node runs ``--simulate``, so ``chat.send`` starts the simulated agent (about four
seconds of thinking, text deltas and a tool call) and background runs stream in the demo's
sessions (alice ... frank); the tests' own runs are in session ``zed``, which no background
run uses. Nodes keep the default timers (heartbeat 2 s, TTL 6 s), so a lost node is detected
as the specification promises it with the defaults.

- A run started on node A reaches a client of node B (and of node C) with every event in
  order: the same agent and chat payloads as a client of A sees.
- ``chat.abort`` sent to node B ends node A's run; both clients see it end once.
- Killing node A (SIGKILL) ends its live run for node B's client with ``"node lost"``.
- Restarting Redis mid-run: node B's client gets everything that was not lost, any loss shows
  in band (a ``seq gap`` event or a ``gap`` frame), and the run's end arrives; once with both
  nodes reading, once with node B paused (SIGSTOP) across the restart, so that a loss is
  certain.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from ..gateway._client import WsClient, connect, is_terminal
from .conftest import RedisServer

ROOT = Path(__file__).resolve().parents[2]
ADMIN = "multi-process-admin-0001"
#: The tests' own session: outside the sessions ``--simulate``'s background runs use.
SESSION = "zed"
#: A node process prints its listening line within this (imports are slow on a busy machine).
START_WITHIN = 30.0
#: GATEWAY 2: "within 15 seconds" with the default settings; some slack for a loaded machine.
NODE_LOST_WITHIN = 20.0

Frame = dict[str, Any]


@attrs.define(eq=False)
class ServeNode:
    """One ``python -m pipeline serve --simulate --redis URL`` process."""

    node_id: str
    process: trio.Process
    log: Path
    url: str = ""

    def log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    async def wait_listening(self) -> None:
        """Read stdout up to the ``gateway listening on URL`` line (after the cluster's)."""
        stdout = self.process.stdout
        assert stdout is not None
        buffer = b""
        lines: list[str] = []
        with trio.fail_after(START_WITHIN):
            while True:
                data = await stdout.receive_some(4096)
                if not data:
                    status = await self.process.wait()
                    raise AssertionError(
                        f"node {self.node_id} exited ({status}) before listening:\n"
                        f"{self.log_tail()}"
                    )
                buffer += data
                while b"\n" in buffer:
                    raw, _, buffer = buffer.partition(b"\n")
                    line = raw.decode()
                    lines.append(line)
                    if line.startswith("gateway listening on "):
                        assert f"cluster node {self.node_id} on redis://" in lines[0], lines
                        self.url = line.removeprefix("gateway listening on ")
                        return

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s; close the pipe. Never raises (teardown)."""
        process = self.process
        with trio.CancelScope(shield=True):
            if process.returncode is None:
                process.send_signal(signal.SIGCONT)  # in case a test left it stopped
                process.terminate()
                with trio.move_on_after(10):
                    await process.wait()
                if process.returncode is None:
                    process.kill()
                    await process.wait()
            if process.stdout is not None:
                await process.stdout.aclose()


@asynccontextmanager
async def serve_nodes(
    redis: RedisServer, tmp_path: Path, *node_ids: str
) -> AsyncIterator[dict[str, ServeNode]]:
    """``serve --simulate --redis`` processes, one per id, started together; each is
    terminated (or killed) on the way out whatever happened."""
    tokens = tmp_path / "tokens.json"
    grant = {"token": ADMIN, "sessions": ["*"], "scopes": ["read", "write", "admin"]}
    tokens.write_text(json.dumps({"tokens": [grant]}))
    nodes: dict[str, ServeNode] = {}

    async def start(node_id: str) -> None:
        log = tmp_path / f"node-{node_id}.log"
        command = [sys.executable, "-m", "pipeline", "serve", "--port", "0"]
        command += ["--tokens", str(tokens), "--redis", redis.url, "--node-id", node_id]
        command += ["--simulate"]
        with log.open("wb") as stderr:
            process = await trio.lowlevel.open_process(
                command, stdout=subprocess.PIPE, stderr=stderr, cwd=ROOT
            )
        node = nodes[node_id] = ServeNode(node_id, process, log)
        await node.wait_listening()

    try:
        async with trio.open_nursery() as nursery:
            for node_id in node_ids:
                nursery.start_soon(start, node_id)
        yield nodes
    finally:
        for node in nodes.values():
            await node.stop()


# ---- reading a run's frames ------------------------------------------------------------------


def is_chat_close(frame: Frame, run_id: str) -> bool:
    payload = frame["payload"]
    return (
        frame["event"] == "chat"
        and payload["runId"] == run_id
        and payload["state"] in ("final", "aborted", "error")
    )


def is_seq_gap(frame: Frame) -> bool:
    payload = frame["payload"]
    if frame["event"] != "agent" or payload["stream"] != "error":
        return False
    return bool(payload["data"].get("reason") == "seq gap")


def is_agent_event(frame: Frame) -> bool:
    """An ``agent`` frame that is the run's own event (not a seq-gap annotation)."""
    return frame["event"] == "agent" and not is_seq_gap(frame)


async def frames_of_run(
    client: WsClient, run_id: str, done: Callable[[list[Frame]], bool]
) -> list[Frame]:
    """The client's event frames about ``run_id`` (and any ``gap`` frame of the session), in
    order, until ``done(frames)``; frames of other runs are skipped."""
    frames: list[Frame] = []
    while not done(frames):
        frame = await client.event()
        if frame["event"] == "gap" or frame["payload"].get("runId") == run_id:
            frames.append(frame)
    return frames


def ended_and_closed(run_id: str) -> Callable[[list[Frame]], bool]:
    """Done once the run's terminal lifecycle event and its closing chat event were seen."""

    def done(frames: list[Frame]) -> bool:
        return any(is_terminal(f, run_id) for f in frames) and any(
            is_chat_close(f, run_id) for f in frames
        )

    return done


def ended(run_id: str) -> Callable[[list[Frame]], bool]:
    return lambda frames: bool(frames) and is_terminal(frames[-1], run_id)


def contents(frames: list[Frame]) -> list[tuple[str, Frame]]:
    """What a client was told, without the connection's own frame counter (outer ``seq``)."""
    return [(f["event"], f["payload"]) for f in frames]


async def nothing_more_about(client: WsClient, run_id: str, seconds: float) -> None:
    """No frame about ``run_id`` arrives within ``seconds``."""
    with trio.move_on_after(seconds):
        while True:
            frame = await client.event()
            assert frame["payload"].get("runId") != run_id, frame


async def subscribed(client: WsClient) -> None:
    response = await client.request("sessions.subscribe", {"sessionKey": SESSION})
    assert response["ok"], response


async def send_chat(client: WsClient, message: str) -> str:
    response = await client.request(
        "chat.send", {"sessionKey": SESSION, "message": message, "idempotencyKey": message}
    )
    assert response["ok"], response
    run_id: str = response["payload"]["runId"]
    return run_id


# ---- the tests ---------------------------------------------------------------------------------


async def test_a_run_on_node_a_reaches_clients_of_nodes_b_and_c_with_every_event_in_order(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    with trio.fail_after(60):
        async with serve_nodes(redis_server, tmp_path, "A", "B", "C") as nodes:
            async with (
                connect(nodes["A"].url, ADMIN) as on_a,
                connect(nodes["B"].url, ADMIN) as on_b,
                connect(nodes["C"].url, ADMIN) as on_c,
            ):
                for client in (on_a, on_b, on_c):
                    await subscribed(client)
                run_id = await send_chat(on_a, "tell me about the cluster")
                seen = {}
                for name, client in (("A", on_a), ("B", on_b), ("C", on_c)):
                    with trio.fail_after(20):
                        seen[name] = await frames_of_run(client, run_id, ended_and_closed(run_id))

    local = seen["A"]
    agent = [f["payload"] for f in local if f["event"] == "agent"]
    # The simulated agent's whole run: start, thinking, 32 deltas, a tool call, end.
    assert [p["seq"] for p in agent] == list(range(1, len(agent) + 1))
    assert len(agent) >= 37
    assert agent[0]["data"]["phase"] == "start"
    assert agent[-1]["data"]["phase"] == "end"
    assert {p["stream"] for p in agent} >= {"lifecycle", "thinking", "assistant", "tool"}
    assert all(p["sessionKey"] == SESSION and p["runId"] == run_id for p in agent)
    states = [f["payload"]["state"] for f in local if f["event"] == "chat"]
    assert states[-1] == "final"
    assert "delta" in states
    # Node B's and node C's clients were told exactly what node A's client was: the same agent
    # payloads (runId, seq, stream, ts, data, sessionKey) and chat payloads, in the same order.
    for name in ("B", "C"):
        assert contents(seen[name]) == contents(local), name


async def test_an_abort_sent_to_node_b_ends_the_run_of_node_a_once_for_both_clients(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    with trio.fail_after(45):
        async with serve_nodes(redis_server, tmp_path, "A", "B") as nodes:
            async with (
                connect(nodes["A"].url, ADMIN) as on_a,
                connect(nodes["B"].url, ADMIN) as on_b,
            ):
                await subscribed(on_a)
                await subscribed(on_b)
                run_id = await send_chat(on_a, "something long")
                with trio.fail_after(10):  # node B tracks the run: its start has arrived
                    started = await frames_of_run(on_b, run_id, bool)
                assert started[0]["payload"]["data"]["phase"] == "start"
                response = await on_b.request(
                    "chat.abort", {"sessionKey": SESSION, "runId": run_id}
                )
                assert response["ok"], response
                assert response["payload"] == {"aborted": [run_id]}
                with trio.fail_after(10):
                    on_node_a = await frames_of_run(on_a, run_id, ended_and_closed(run_id))
                    on_node_b = await frames_of_run(on_b, run_id, ended_and_closed(run_id))
                # Exactly once: nothing more about the run arrives afterwards.
                await nothing_more_about(on_a, run_id, 1.0)
                await nothing_more_about(on_b, run_id, 0.1)

    for frames in (on_node_a, started + on_node_b):
        ends = [f["payload"] for f in frames if is_terminal(f, run_id)]
        assert len(ends) == 1
        assert ends[0]["data"]["phase"] == "end"
        assert ends[0]["data"]["aborted"] is True
        assert ends[0]["data"]["stopReason"] == "rpc"
        chat_states = [f["payload"]["state"] for f in frames if f["event"] == "chat"]
        assert chat_states.count("aborted") == 1
        assert "final" not in chat_states
    # The end node B's client saw is node A's own end, carried over.
    assert contents([f for f in on_node_b if is_terminal(f)]) == contents(
        [f for f in on_node_a if is_terminal(f)]
    )


async def test_killing_node_a_ends_its_live_run_for_node_bs_client_with_node_lost(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    with trio.fail_after(60):
        async with serve_nodes(redis_server, tmp_path, "A", "B") as nodes:
            async with connect(nodes["B"].url, ADMIN) as on_b:
                await subscribed(on_b)
                async with connect(nodes["A"].url, ADMIN) as on_a:
                    run_id = await send_chat(on_a, "you will not finish this")
                with trio.fail_after(10):  # node B tracks the run
                    started = await frames_of_run(on_b, run_id, bool)
                nodes["A"].process.send_signal(signal.SIGKILL)
                killed_at = trio.current_time()
                with trio.fail_after(NODE_LOST_WITHIN):
                    rest = await frames_of_run(on_b, run_id, ended(run_id))
                lost_after = trio.current_time() - killed_at
                assert await nodes["A"].process.wait() == -signal.SIGKILL

    end = rest[-1]["payload"]
    assert started[0]["payload"]["data"]["phase"] == "start"
    assert end["data"]["phase"] == "end"
    assert end["data"]["aborted"] is True
    assert end["data"]["stopReason"] == "node lost"
    assert end["sessionKey"] == SESSION
    agent = [f["payload"]["seq"] for f in started + rest if is_agent_event(f)]
    assert agent == list(range(1, len(agent) + 1))  # in order, none missing, to the end
    print(f"node lost reported {lost_after:.1f} s after the kill")


@pytest.mark.parametrize("pause_b", [False, True], ids=["both-reading", "b-paused"])
async def test_a_redis_restart_mid_run_loses_nothing_silently_and_the_run_ends(
    redis_server: RedisServer, tmp_path: Path, pause_b: bool
) -> None:
    """With ``pause_b``, node B is stopped (SIGSTOP) for a moment before the restart, so
    node A's entries of that moment are in the old server only: they are certainly lost, and
    node B's client must be told so in band."""
    with trio.fail_after(60):
        async with serve_nodes(redis_server, tmp_path, "A", "B") as nodes:
            async with (
                connect(nodes["A"].url, ADMIN) as on_a,
                connect(nodes["B"].url, ADMIN) as on_b,
            ):
                await subscribed(on_a)
                await subscribed(on_b)
                run_id = await send_chat(on_a, "keep talking through the outage")

                def some_text(frames: list[Frame]) -> bool:
                    deltas = [f for f in frames if f["payload"].get("stream") == "assistant"]
                    return len(deltas) >= 3

                with trio.fail_after(10):
                    before = await frames_of_run(on_b, run_id, some_text)
                if pause_b:
                    nodes["B"].process.send_signal(signal.SIGSTOP)
                    await trio.sleep(1.0)  # node A writes about 8 deltas node B never reads
                await redis_server.restart()  # a fresh server: every stream and key is gone
                if pause_b:
                    nodes["B"].process.send_signal(signal.SIGCONT)
                with trio.fail_after(20):
                    after = await frames_of_run(on_b, run_id, ended(run_id))
                    local = await frames_of_run(on_a, run_id, ended_and_closed(run_id))
                # The chat final follows the end; wait for it briefly (a chat event lost in the
                # restart carries no seq of its own: the next chat snapshot replaces it).
                with trio.move_on_after(3):
                    after += await frames_of_run(
                        on_b, run_id, lambda fs: any(is_chat_close(f, run_id) for f in fs)
                    )

    remote = before + after
    events = [f for f in remote if is_agent_event(f)]
    assert events[0]["payload"]["seq"] == 1
    assert is_terminal(events[-1], run_id)
    assert events[-1]["payload"] == next(f for f in local if is_terminal(f))["payload"]
    assert "aborted" not in events[-1]["payload"]["data"]  # not taken for a lost node
    # What arrived is what node A's client saw, in the same order, minus what was lost.
    local_agent = {f["payload"]["seq"]: f["payload"] for f in local if f["event"] == "agent"}
    assert [f["payload"] for f in events] == [local_agent[f["payload"]["seq"]] for f in events]
    local_chat = [f["payload"] for f in local if f["event"] == "chat"]
    remote_chat = [f["payload"] for f in remote if f["event"] == "chat"]
    assert [c for c in local_chat if c in remote_chat] == remote_chat
    # Every hole in the seqs is announced in band just before the event after it.
    holes = 0
    announced = 0
    last = 0
    for frame in remote:
        if frame["event"] == "gap" or is_seq_gap(frame):
            announced = frame["payload"].get("seq", -1)
            continue
        if not is_agent_event(frame):
            continue
        seq = frame["payload"]["seq"]
        assert seq > last
        if seq != last + 1:
            holes += 1
            assert announced in (seq, -1), f"a silent hole: seq {last} then {seq}"
        last = seq
        announced = 0
    lost = len(local_agent) - len(events)
    if pause_b:
        assert lost > 0  # the entries of the pause were in the old server only
        assert holes >= 1
    print(
        f"redis restart ({'B paused' if pause_b else 'both reading'}): {len(events)} of "
        f"{len(local_agent)} agent events arrived, {lost} lost in {holes} announced hole(s)"
    )
