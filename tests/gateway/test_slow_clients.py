"""Slow clients (GATEWAY 1.4): a client that stops reading gets ``gap`` frames for what its
subscription dropped, then a 1008 "slow consumer" close frame that really reaches it; other
clients and the bus's own subscribers see every event.

The slow client is a raw socket whose WebSocket side is wsproto, with a small receive buffer
set before connecting, so that the server's sends block after a few kilobytes (:mod:`._raw`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import attrs
import pytest
import trio

import pipeline as pl

from ._client import agent_seqs, check_no_silent_hole, is_terminal
from ._raw import RawClient, raw_client, wait_until
from .conftest import ALICE, Served

# ---- a paced bulky run -------------------------------------------------------------------------

DELTA = "x" * 1000


@attrs.define
class Progress:
    """How far a reader got (agent seq of one run); the run's body waits on it."""

    seen: int = 0
    _changed: trio.Event = attrs.field(factory=trio.Event)

    def advance(self, seq: int) -> None:
        self.seen = max(self.seen, seq)
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, seq: int) -> None:
        while self.seen < seq:
            await self._changed.wait()


def bulky_body(deltas: int | None, paced_by: Progress, *, step: int = 8) -> Callable[[pl.Run], Any]:
    """A run body emitting 1 KB assistant deltas (``deltas`` of them, or until aborted), ``step``
    at a time, each step once ``paced_by`` has read the previous one, so that a reader that keeps
    up never has more than ``step`` events in its mailbox."""

    async def body(run: pl.Run) -> None:
        for n in itertools.count(1) if deltas is None else range(1, deltas + 1):
            event = await run.emit("assistant", {"delta": f"{n:05d}{DELTA}"})
            if n % step == 0:
                await paced_by.wait_for(event.seq)

    return body


async def follow(client: RawClient, run_id: str, progress: Progress) -> list[dict[str, Any]]:
    """A well-behaved client's event frames through ``run_id``'s terminal event, reporting
    its progress to the run's body."""
    frames = []
    while True:
        frame = await client.frame()
        if frame["type"] != "event":
            continue
        frames.append(frame)
        if frame["event"] == "agent" and frame["payload"]["runId"] == run_id:
            progress.advance(frame["payload"]["seq"])
            if is_terminal(frame, run_id):
                return frames


async def collect_bus(
    bus: pl.Bus, run_id: str, into: list[pl.Event], *, task_status: trio.TaskStatus[None]
) -> None:
    """A plain (``BLOCK``) bus subscriber: every event of ``run_id``, through its end."""
    async with bus.subscribe(run_id=run_id) as sub:
        task_status.started()
        async for event in sub:
            into.append(event)
            if event.stream == "lifecycle" and event.data.get("phase") in ("end", "error"):
                return


SLOW = {"max_buffered_bytes": 32_768, "send_timeout": 1.0, "client_buffer": 16}


class TestSlowConsumer:
    @pytest.mark.parametrize("gateway_config", [SLOW])
    async def test_a_client_that_stops_reading_gets_gaps_then_a_slow_consumer_close(
        self, served: Served, nursery: trio.Nursery
    ) -> None:
        bus = served.bus
        with trio.fail_after(20):
            # The good client is a raw one too: the chat snapshots of a 2 MB answer (cut at 1 Mi
            # characters) pass the 1 MiB message limit of trio-websocket's client.
            async with (
                raw_client(served.url, ALICE) as good,
                raw_client(served.url, ALICE, rcvbuf=4096) as slow,
            ):
                for client in (good, slow):
                    res = await client.request("sessions.subscribe", {"sessionKey": "alice"})
                    assert res["ok"], res
                # Phase 1: the slow client reads nothing while deltas stream until its
                # subscription drops some (the bus counts it), then reads again.
                paced = Progress()
                on_bus: list[pl.Event] = []
                await nursery.start(collect_bus, bus, "r1", on_bus)
                context = pl.RunContext(session_key="alice")
                handle = await bus.start_run(bulky_body(2000, paced), run_id="r1", context=context)

                async def slow_reads() -> None:
                    await wait_until(lambda: bus.statistics().drops > 0)
                    while not slow.frames or not is_terminal(slow.frames[-1], "r1"):
                        await slow.frame()

                async with trio.open_nursery() as inner:
                    inner.start_soon(slow_reads)
                    seen_by_good = await follow(good, "r1", paced)
                await handle.wait()

                assert agent_seqs(seen_by_good, "r1") == list(range(1, 2003))
                assert not [f for f in seen_by_good if f["event"] == "gap"]
                assert len(on_bus) >= 2002
                assert [e.seq for e in on_bus if e.stream != "chat"] == list(range(1, 2003))
                dropped = check_no_silent_hole(slow.frames)
                assert dropped.get("alice", 0) > 0, "the slow client saw no gap"
                # Every event of the run was either sent or counted in a gap (the counts may
                # include chat deltas as well).
                assert len(agent_seqs(slow.frames, "r1")) + dropped["alice"] >= 2002
                stats = served.gateway.statistics()
                assert stats.events_dropped == dropped["alice"]
                assert stats.slow_consumer_closes == 0

                # Phase 2: it stops reading again while a run streams until aborted: the
                # gateway gives up on it and sends the close frame, which it reads on resuming.
                paced = Progress()
                await bus.start_run(bulky_body(None, paced), run_id="r2", context=context)
                seen: list[dict[str, Any]] = []
                async with trio.open_nursery() as inner:

                    async def good_reads() -> None:
                        seen.extend(await follow(good, "r2", paced))

                    inner.start_soon(good_reads)
                    await wait_until(lambda: served.gateway.statistics().slow_consumer_closes > 0)
                    close = await slow.closed()
                    assert bus.abort("r2")
                assert (close.code, close.reason) == (1008, "slow consumer")
                check_no_silent_hole(slow.frames)
                seqs = agent_seqs(seen, "r2")
                assert seqs == list(range(1, len(seqs) + 1))
                assert not [f for f in seen if f["event"] == "gap"]
                assert bus.statistics().disconnects == 0
                stats = served.gateway.statistics()
                assert stats.slow_consumer_closes == 1
                assert stats.websockets == 1
            await wait_until(lambda: served.gateway.statistics().connections == 0)
        assert served.gateway.statistics().websockets == 0

    @pytest.mark.parametrize("gateway_config", [{"max_buffered_bytes": 16_384}])
    async def test_a_frame_larger_than_max_buffered_bytes_reaches_a_client_that_keeps_up(
        self, served: Served
    ) -> None:
        big = "z" * 100_000

        async def body(run: pl.Run) -> None:
            await run.emit("assistant", {"delta": big})
            await run.emit("tool", {"phase": "result", "toolCallId": "t1", "result": big})

        with trio.fail_after(10):
            async with raw_client(served.url, ALICE) as client:
                res = await client.request("sessions.subscribe", {"sessionKey": "alice"})
                assert res["ok"], res
                context = pl.RunContext(session_key="alice")
                await served.bus.start_run(body, run_id="big", context=context)
                final = None
                while final is None:  # the chat final follows the lifecycle end
                    frame = await client.frame()
                    if frame.get("event") == "chat" and frame["payload"]["state"] == "final":
                        final = frame["payload"]
                assert agent_seqs(client.frames, "big") == [1, 2, 3, 4]
                assert final["message"]["content"][0]["text"] == big
            assert served.gateway.statistics().slow_consumer_closes == 0
