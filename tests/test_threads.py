"""Threads: the bus belongs to its trio thread; other threads go through ``bus.portal()``."""

from __future__ import annotations

import threading
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import trio

import pipeline as pl
from pipeline.testing import collect_run


async def parked(run: pl.Run) -> None:
    await trio.sleep_forever()


async def in_plain_thread(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in a plain ``threading.Thread`` (not a trio worker); return or raise its
    result in this task."""
    done = trio.Event()
    token = trio.lowlevel.current_trio_token()
    result: list[Any] = []

    def target() -> None:
        try:
            result.append(("ok", fn()))
        except BaseException as exc:
            result.append(("error", exc))
        token.run_sync_soon(done.set)

    thread = threading.Thread(target=target)
    thread.start()
    await done.wait()
    thread.join()
    kind, value = result[0]
    if kind == "error":
        raise value
    return value


class TestCallsFromOtherThreads:
    async def test_emit_nowait_from_a_worker_thread_raises_and_publishes_nothing(
        self, agent_bus: pl.Bus
    ) -> None:
        async with agent_bus.run(run_id="r1") as run:
            with pytest.raises(RuntimeError, match="portal"):
                await trio.to_thread.run_sync(run.emit_nowait, "assistant", {"delta": "x"})
            # Delivery still works afterwards: trio was not corrupted.
            event = await run.emit("assistant", {"delta": "y"})
        assert event.seq == 2
        assert agent_bus.statistics().events_published == 3

    @pytest.mark.parametrize(
        "call",
        [
            lambda bus: bus.abort("r1"),
            lambda bus: bus.update_context("r1", verbose_level="on"),
            lambda bus: bus.statistics(),
            lambda bus: bus.subscribe(),
            lambda bus: bus.run(),
            lambda bus: bus.portal(),
        ],
    )
    async def test_every_bus_method_refuses_a_foreign_thread(
        self, agent_bus: pl.Bus, call: Callable[[pl.Bus], object]
    ) -> None:
        await agent_bus.start_run(parked, run_id="r1")
        with pytest.raises(RuntimeError, match="trio thread"):
            await trio.to_thread.run_sync(call, agent_bus)
        assert agent_bus.statistics().live_runs == 1
        agent_bus.abort("r1")

    async def test_async_bus_methods_refuse_a_foreign_thread_before_they_start(
        self, agent_bus: pl.Bus
    ) -> None:
        coroutine_makers: list[Callable[[], Coroutine[Any, Any, object]]] = [
            lambda: agent_bus.start_run(parked),
            lambda: agent_bus.emit("r1", "assistant", {}),
            lambda: agent_bus.ingest({"runId": "x", "seq": 1, "stream": "a", "ts": 0, "data": {}}),
        ]
        for make in coroutine_makers:
            coroutine = make()
            with pytest.raises(RuntimeError, match="trio thread"):
                await trio.to_thread.run_sync(coroutine.send, None)
            coroutine.close()
        assert agent_bus.statistics().runs_started == 0

    async def test_a_run_handle_and_a_subscription_refuse_a_foreign_thread(
        self, agent_bus: pl.Bus
    ) -> None:
        async with agent_bus.subscribe() as sub:
            handle = await agent_bus.start_run(parked, run_id="r1")
            with pytest.raises(RuntimeError):
                await trio.to_thread.run_sync(handle.abort)
            with pytest.raises(RuntimeError):
                await trio.to_thread.run_sync(sub.receive_nowait)
            with pytest.raises(RuntimeError):
                await trio.to_thread.run_sync(sub.statistics)
            assert sub.statistics().queued == 1  # the start event, still unread
            handle.abort()

    async def test_a_run_refuses_a_plain_thread(self, agent_bus: pl.Bus) -> None:
        async with agent_bus.run(run_id="r1") as run:
            with pytest.raises(RuntimeError):
                await in_plain_thread(lambda: run.update_context(verbose_level="on"))
        assert run.context.verbose_level == "off"


class TestPortal:
    async def test_a_worker_thread_emits_into_a_run_through_the_portal(
        self, agent_bus: pl.Bus
    ) -> None:
        portal = agent_bus.portal()
        async with agent_bus.subscribe(run_id="r1") as sub:
            handle = await agent_bus.start_run(parked, run_id="r1")
            event = await trio.to_thread.run_sync(
                lambda: portal.emit("r1", "assistant", {"delta": "from a thread"})
            )
            assert (event.seq, event.data["delta"]) == (2, "from a thread")
            assert await trio.to_thread.run_sync(lambda: portal.abort("r1", reason="stop"))
            events = await collect_run(sub, "r1")
        assert [e.stream for e in events] == ["lifecycle", "assistant", "lifecycle"]
        assert events[-1].data["stopReason"] == "stop"
        assert (await handle.wait()).status == "aborted"

    async def test_a_plain_thread_starts_a_run_through_the_portal(self, agent_bus: pl.Bus) -> None:
        portal = agent_bus.portal()
        context = pl.RunContext(session_key="s")
        run_id = await in_plain_thread(lambda: portal.start_run(parked, context=context))
        assert agent_bus.statistics().live_runs == 1
        assert await in_plain_thread(lambda: portal.abort(run_id))
        assert not await in_plain_thread(lambda: portal.abort("no such run"))

    async def test_the_portal_raises_the_trio_methods_errors(self, agent_bus: pl.Bus) -> None:
        portal = agent_bus.portal()
        with pytest.raises(pl.UnknownRun):
            await trio.to_thread.run_sync(lambda: portal.emit("nope", "assistant", {}))
        await agent_bus.start_run(parked, run_id="r1")
        with pytest.raises(pl.InvalidEvent):
            await trio.to_thread.run_sync(lambda: portal.emit("r1", "assistant", [1]))
        with pytest.raises(pl.RunAlreadyActive):
            await trio.to_thread.run_sync(lambda: portal.start_run(parked, run_id="r1"))
        agent_bus.abort("r1")

    async def test_the_portal_refuses_the_bus_thread(self, agent_bus: pl.Bus) -> None:
        portal = agent_bus.portal()
        with pytest.raises(RuntimeError, match="other threads"):
            portal.abort("r1")

    async def test_the_portal_of_a_finished_bus_raises_bus_closed(self) -> None:
        async with pl.open_bus() as bus:
            portal = bus.portal()
        # The bus is closed, but its trio run goes on: the call reaches a closed bus.
        with pytest.raises(pl.BusClosed):
            await trio.to_thread.run_sync(lambda: portal.emit("r1", "assistant", {}))

    def test_the_portal_of_a_bus_whose_trio_run_ended_raises_bus_closed(self) -> None:
        portals: list[pl.BusPortal] = []

        async def main() -> None:
            async with pl.open_bus() as bus:
                portals.append(bus.portal())

        trio.run(main)
        errors: list[BaseException] = []

        def call() -> None:
            try:
                portals[0].abort("r1")
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=call)
        thread.start()
        thread.join()
        assert [type(e) for e in errors] == [pl.BusClosed]

    async def test_a_portal_emit_waits_while_the_router_is_full(self) -> None:
        config = pl.BusConfig(router_buffer=4, block_timeout=60.0)
        async with pl.open_bus(config) as bus, bus.subscribe(buffer=1) as sub:
            await bus.start_run(parked, run_id="r1")
            portal = bus.portal()
            with trio.fail_after(10):
                async with trio.open_nursery() as nursery:

                    def emit_ten() -> None:
                        for index in range(10):
                            portal.emit("r1", "assistant", {"index": index})

                    tasks = trio.lowlevel.current_statistics().tasks_living
                    nursery.start_soon(trio.to_thread.run_sync, emit_ten)
                    # Unread, the subscriber holds the router and the inbox fills up: the
                    # thread's next emit starts a task in the bus's thread to wait for room.
                    while trio.lowlevel.current_statistics().tasks_living < tasks + 2:
                        await trio.lowlevel.checkpoint()
                    received = [await sub.receive() for _ in range(11)]
            assert [e.data.get("index") for e in received[1:]] == list(range(10))
            bus.abort("r1")
