"""Churn (GATEWAY 1.8): 500 WebSocket connections open and close while runs stream; some close
normally, some vanish mid-stream without a close frame, some are too slow and are closed with
1008. The server stays up, every connection's tasks end, and the live-connection count returns
to 0."""

from __future__ import annotations

import collections
import itertools
from collections.abc import Callable

import pytest
import trio

import pipeline as pl
from pipeline.gateway import Gateway

from ._client import agent_seqs, check_no_silent_hole, connect, is_terminal
from ._raw import TEXT, RawClient, open_socket, raw_client, wait_until, ws_frame
from .conftest import ADMIN, Served

WAVES, WAVE = 10, 50
#: What each client of a wave does, by its index modulo 10.
NORMAL, VANISH, VANISH_IN_UPGRADE, VANISH_IN_FRAME, SLOW = range(5)
KINDS = [NORMAL] * 4 + [VANISH] * 2 + [VANISH_IN_UPGRADE, VANISH_IN_FRAME] + [SLOW] * 2
SLOW_PER_WAVE = WAVE * KINDS.count(SLOW) // len(KINDS)


def task_names() -> collections.Counter[str]:
    """The names of every task of this trio run (the whole tree from the root task)."""
    names: collections.Counter[str] = collections.Counter()
    root = trio.lowlevel.current_root_task()
    assert root is not None
    stack = [root]
    while stack:
        task = stack.pop()
        names[task.name] += 1
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return names


def slow_closes_reach(gateway: Gateway, count: int) -> Callable[[], bool]:
    return lambda: gateway.statistics().slow_consumer_closes >= count


async def stream_forever(run: pl.Run, delta: str, every: float) -> None:
    """A run body: one assistant delta per ``every`` seconds until aborted (a traffic source;
    the sleep paces the traffic, it orders nothing)."""
    for n in itertools.count():
        await run.emit("assistant", {"delta": f"{n} {delta}"})
        await trio.sleep(every)


@pytest.mark.parametrize(
    "gateway_config",
    [
        {
            "send_timeout": 0.3,
            "close_timeout": 5.0,
            "max_buffered_bytes": 65_536,
            "client_buffer": 16,
        }
    ],
)
async def test_500_connections_churning_leave_no_connection_and_no_task_behind(
    served: Served,
) -> None:
    bus, gateway = served.bus, served.gateway
    with trio.fail_after(30):
        baseline = task_names()
        alice = await bus.start_run(
            lambda run: stream_forever(run, "hi", 0.002),
            run_id="alice-traffic",
            context=pl.RunContext(session_key="alice"),
        )
        flood = await bus.start_run(
            lambda run: stream_forever(run, "f" * 1000, 0.0005),
            run_id="flood-traffic",
            context=pl.RunContext(session_key="flood"),
        )
        outcomes: collections.Counter[str] = collections.Counter()

        async def client(kind: int, resume_slow: trio.Event) -> None:
            if kind == VANISH_IN_UPGRADE:
                stream = await open_socket(served.url)
                await stream.send_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: web")
                RawClient(stream, served.url).abort()
                outcomes["vanished in upgrade"] += 1
                return
            rcvbuf = 4096 if kind == SLOW else None
            async with raw_client(served.url, ADMIN, rcvbuf=rcvbuf) as ws:
                key = "flood" if kind == SLOW else "alice"
                res = await ws.request("sessions.subscribe", {"sessionKey": key})
                assert res["ok"], res
                if kind == SLOW:  # read nothing more until the gateway gave up on every one
                    await resume_slow.wait()
                    close = await ws.closed()
                    assert (close.code, close.reason) == (1008, "slow consumer")
                    check_no_silent_hole(ws.frames)
                    outcomes["closed as slow"] += 1
                    return
                while len(agent_seqs(ws.frames, "alice-traffic")) < 3:
                    await ws.frame()
                if kind == NORMAL:
                    close = await ws.close_normally()
                    assert close.code == 1000
                    check_no_silent_hole(ws.frames)
                    outcomes["closed normally"] += 1
                    return
                if kind == VANISH_IN_FRAME:
                    await ws.send(ws_frame(TEXT, b'{"type":"req","id":"1"' + b" " * 500)[:300])
                ws.abort()
                outcomes["vanished"] += 1

        for _ in range(WAVES):
            resume_slow = trio.Event()
            slow_after = gateway.statistics().slow_consumer_closes + SLOW_PER_WAVE
            async with trio.open_nursery() as nursery:
                for n in range(WAVE):
                    nursery.start_soon(client, KINDS[n % len(KINDS)], resume_slow)
                await wait_until(slow_closes_reach(gateway, slow_after))
                resume_slow.set()
            assert gateway.statistics().slow_consumer_closes == slow_after

        # The gateway still serves a new client, end to end.
        async with connect(served.url, ADMIN) as fresh:
            res = await fresh.request("sessions.subscribe", {"sessionKey": "bob"})
            assert res["ok"], res
            res = await fresh.request("chat.send", {"sessionKey": "bob", "message": "still here"})
            run_id = res["payload"]["runId"]
            frames = await fresh.events_until(lambda f: is_terminal(f, run_id))
            assert agent_seqs(frames, run_id) == [1, 2, 3, 4]

        assert alice.abort()
        assert flood.abort()
        await alice.wait()
        await flood.wait()
        await wait_until(lambda: gateway.statistics().connections == 0)
        stats = gateway.statistics()
        assert stats.websockets == 0
        assert stats.event_streams == 0
        assert stats.connections_total == WAVES * WAVE + 1
        assert stats.slow_consumer_closes == WAVES * SLOW_PER_WAVE
        per_kind = collections.Counter(KINDS[n % len(KINDS)] for n in range(WAVE))
        assert outcomes == {
            "closed normally": WAVES * per_kind[NORMAL],
            "vanished": WAVES * (per_kind[VANISH] + per_kind[VANISH_IN_FRAME]),
            "vanished in upgrade": WAVES * per_kind[VANISH_IN_UPGRADE],
            "closed as slow": WAVES * per_kind[SLOW],
        }
        # Every task a connection or a run started has ended (a run's task may take a
        # moment after its terminal event, hence the bounded wait).
        with trio.move_on_after(2):
            await wait_until(lambda: task_names() == baseline)
        assert task_names() - baseline == collections.Counter()
        assert baseline - task_names() == collections.Counter()
        assert bus.statistics().subscribers == 1  # the gateway's replay recorder


async def test_clients_closing_while_their_session_streams_leave_the_gateway_serving(
    served: Served,
) -> None:
    """A close frame from the client races the session's pump: nothing may be sent after the
    server's answering close (wsproto refuses it, which once crashed the whole gateway)."""
    with trio.fail_after(10):
        run = await served.bus.start_run(
            lambda run: stream_forever(run, "x" * 100, 0),
            run_id="busy",
            context=pl.RunContext(session_key="alice"),
        )
        for _ in range(20):
            async with raw_client(served.url, ADMIN) as ws:
                res = await ws.request("sessions.subscribe", {"sessionKey": "alice"})
                assert res["ok"], res
                await ws.frame()
                close = await ws.close_normally()
                assert close.code == 1000
        assert run.abort()
        await run.wait()
        async with connect(served.url, ADMIN) as fresh:
            res = await fresh.request("sessions.subscribe", {"sessionKey": "alice"})
            assert res["ok"], res
        await wait_until(lambda: served.gateway.statistics().connections == 0)
