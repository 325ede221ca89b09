"""pipeline.aio: the bus from asyncio, with trio in guest mode on the asyncio loop.

The asyncio tests are plain functions that call ``asyncio.run`` (pytest-trio only wraps
``async def`` tests), each bounded by ``asyncio.timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import importlib.util
import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
import sniffio
import trio

import pipeline as pl
from pipeline import aio
from pipeline.testing import is_terminal

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "docs" / "examples" / "aio_llm_stream.py"
GUIDE = ROOT / "docs" / "asyncio.md"


def run_asyncio(main: Callable[[], Coroutine[Any, Any, T]], timeout: float = 10) -> T:
    """``asyncio.run(main())``, failing instead of hanging."""

    async def bounded() -> T:
        async with asyncio.timeout(timeout):
            return await main()

    return asyncio.run(bounded())


async def read_run(sub: aio.Subscription, run_id: str) -> list[pl.Event]:
    """One run's events up to and including its terminal lifecycle event."""
    events: list[pl.Event] = []
    async for event in sub:
        if event.run_id == run_id:
            events.append(event)
            if is_terminal(event):
                break
    return events


async def parked(run: aio.Run) -> None:
    await run.emit("assistant", {"delta": "thinking"})
    await asyncio.Event().wait()


class TestRuns:
    def test_an_asyncio_body_s_events_reach_an_asyncio_subscriber_in_order_then_its_end(
        self,
    ) -> None:
        async def body(run: aio.Run) -> None:
            for word in ["Hello", ",", " world"]:
                await run.emit("assistant", {"delta": word})
                await asyncio.sleep(0)

        async def main() -> list[pl.Event]:
            async with aio.open_bus() as bus, bus.subscribe(run_id="r1") as sub:
                await bus.start_run(body, run_id="r1")
                return await read_run(sub, "r1")

        events = run_asyncio(main)
        assert [e.seq for e in events] == [1, 2, 3, 4, 5]
        assert [e.stream for e in events] == ["lifecycle", *["assistant"] * 3, "lifecycle"]
        assert [e.data.get("delta") for e in events[1:4]] == ["Hello", ",", " world"]
        assert events[0].data["phase"] == "start"
        assert events[-1].data["phase"] == "end"

    def test_waiting_on_a_body_that_returned_gives_ok(self) -> None:
        async def body(run: aio.Run) -> None:
            await run.emit("assistant", {"delta": "done"})

        async def main() -> pl.RunOutcome:
            async with aio.open_bus() as bus:
                handle = await bus.start_run(body, run_id="r1")
                assert handle.id == "r1"
                return await handle.wait()

        outcome = run_asyncio(main)
        assert (outcome.run_id, outcome.status, outcome.error) == ("r1", "ok", None)
        assert outcome.last_seq == 3

    def test_a_raising_asyncio_body_gives_error_and_keeps_its_exception(self) -> None:
        boom = ValueError("boom")

        async def body(run: aio.Run) -> None:
            await run.emit("assistant", {"delta": "about to fail"})
            raise boom

        async def main() -> tuple[pl.RunOutcome, list[pl.Event]]:
            async with aio.open_bus() as bus, bus.subscribe(run_id="r1") as sub:
                handle = await bus.start_run(body, run_id="r1")
                events = await read_run(sub, "r1")
                return await handle.wait(), events

        outcome, events = run_asyncio(main)
        assert (outcome.status, outcome.error) == ("error", "boom")
        assert outcome.exception is boom
        assert events[-1].data["phase"] == "error"
        assert events[-1].data["errorKind"] == "ValueError"

    def test_aborting_a_run_cancels_its_asyncio_body_and_subscribers_see_it_aborted(
        self,
    ) -> None:
        steps: list[str] = []

        async def body(run: aio.Run) -> None:
            await run.emit("assistant", {"delta": "thinking"})
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                steps.append("cancelled")
                raise
            finally:
                steps.append("finally")

        async def main() -> tuple[pl.RunOutcome, list[pl.Event]]:
            async with aio.open_bus() as bus, bus.subscribe(run_id="r1") as sub:
                handle = await bus.start_run(body, run_id="r1")
                events = [await anext(sub), await anext(sub)]  # start, then the delta
                assert bus.abort("r1", reason="user stop")
                events += await read_run(sub, "r1")
                return await handle.wait(), events

        outcome, events = run_asyncio(main)
        assert steps == ["cancelled", "finally"]
        assert (outcome.status, outcome.error) == ("aborted", "user stop")
        assert [e.stream for e in events] == ["lifecycle", "assistant", "lifecycle"]
        assert events[-1].data["aborted"] is True
        assert events[-1].data["stopReason"] == "user stop"

    def test_aborting_through_the_handle_cancels_the_asyncio_body(self) -> None:
        async def main() -> pl.RunOutcome:
            async with aio.open_bus() as bus:
                handle = await bus.start_run(parked)
                assert handle.abort()
                outcome = await handle.wait()
                assert not handle.abort()  # finished already
                return outcome

        outcome = run_asyncio(main)
        assert (outcome.status, outcome.error) == ("aborted", "rpc")

    def test_aborting_an_unknown_run_returns_false(self) -> None:
        async def main() -> bool:
            async with aio.open_bus() as bus:
                return bus.abort("nope")

        assert run_asyncio(main) is False

    def test_an_emit_from_an_aborted_body_raises_cancelled_error_and_publishes_nothing(
        self,
    ) -> None:
        seen: list[str] = []

        async def main() -> list[pl.Event]:
            go = asyncio.Event()

            async def body(run: aio.Run) -> None:
                await go.wait()
                try:
                    await run.emit("assistant", {"delta": "too late"})
                except BaseException as exc:
                    seen.append(type(exc).__name__)
                    raise

            async with aio.open_bus() as bus, bus.subscribe(run_id="r1") as sub:
                handle = await bus.start_run(body, run_id="r1")
                assert bus.abort("r1")
                go.set()
                events = await read_run(sub, "r1")
                assert (await handle.wait()).status == "aborted"
                return events

        events = run_asyncio(main)
        assert seen in ([], ["CancelledError"])  # cancelled at go.wait() or at the emit
        assert "assistant" not in [e.stream for e in events]

    def test_an_emit_in_the_cleanup_of_an_aborted_body_raises_cancelled_error_at_once(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        seen: list[str] = []

        async def main() -> pl.RunOutcome:
            started = asyncio.Event()

            async def body(run: aio.Run) -> None:
                try:
                    started.set()
                    await asyncio.Event().wait()
                finally:
                    try:
                        await run.emit("assistant", {"delta": "cleaning up"})
                    except BaseException as exc:
                        seen.append(type(exc).__name__)
                        raise

            # Waiting for the body until shutdown_timeout would outlast run_asyncio's timeout.
            async with aio.open_bus(pl.BusConfig(shutdown_timeout=20)) as bus:
                handle = await bus.start_run(body)
                await started.wait()
                assert handle.abort()
                return await handle.wait()

        outcome = run_asyncio(main)
        assert seen == ["CancelledError"]
        assert outcome.status == "aborted"
        assert "ignored its cancellation" not in caplog.text

    def test_an_emit_in_the_cleanup_of_an_aborted_body_s_child_task_raises_unknown_run(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        seen: list[str] = []

        async def main() -> pl.RunOutcome:
            started = asyncio.Event()

            async def child(run: aio.Run) -> None:
                try:
                    started.set()
                    await asyncio.Event().wait()
                finally:
                    try:
                        await run.emit("assistant", {"delta": "cleaning up"})
                    except BaseException as exc:
                        seen.append(type(exc).__name__)
                        raise

            async def body(run: aio.Run) -> None:
                async with asyncio.TaskGroup() as group:
                    group.create_task(child(run))

            # Waiting for the body until shutdown_timeout would outlast run_asyncio's timeout.
            async with aio.open_bus(pl.BusConfig(shutdown_timeout=20)) as bus:
                handle = await bus.start_run(body)
                await started.wait()
                assert handle.abort()
                return await handle.wait()

        outcome = run_asyncio(main)
        assert seen == ["UnknownRun"]
        assert outcome.status == "aborted"
        assert "ignored its cancellation" not in caplog.text

    def test_an_asyncio_body_cancelled_by_asyncio_code_ends_its_run_as_aborted(self) -> None:
        async def body(run: aio.Run) -> None:
            task = asyncio.current_task()
            assert task is not None
            task.cancel()
            await asyncio.sleep(0)

        async def main() -> pl.RunOutcome:
            async with aio.open_bus() as bus:
                return await (await bus.start_run(body)).wait()

        outcome = run_asyncio(main)
        assert (outcome.status, outcome.error) == ("aborted", "cancelled")

    def test_the_body_is_asyncio_code_with_the_starter_s_context_variables(self) -> None:
        user: contextvars.ContextVar[str] = contextvars.ContextVar("user")
        seen: list[str] = []

        async def body(run: aio.Run) -> None:
            seen.append(sniffio.current_async_library())
            seen.append(user.get())

        async def main() -> None:
            async with aio.open_bus() as bus:
                user.set("alice")
                await (await bus.start_run(body)).wait()

        run_asyncio(main)
        assert seen == ["asyncio", "alice"]

    def test_a_body_emitting_more_than_the_router_holds_waits_for_room_in_order(self) -> None:
        count = 200

        async def body(run: aio.Run) -> None:
            for i in range(count):
                await run.emit("tool", {"phase": "update", "i": i})

        async def main() -> list[pl.Event]:
            config = pl.BusConfig(router_buffer=4, subscriber_buffer=8)
            async with aio.open_bus(config) as bus, bus.subscribe(run_id="r1") as sub:
                handle = await bus.start_run(body, run_id="r1")
                events = await read_run(sub, "r1")
                assert (await handle.wait()).status == "ok"
                return events

        events = run_asyncio(main)
        assert [e.data["i"] for e in events if e.stream == "tool"] == list(range(count))
        assert [e.seq for e in events] == list(range(1, count + 3))

    def test_the_run_object_mirrors_the_trio_run(self) -> None:
        async def body(run: aio.Run) -> None:
            assert run.id == "r1"
            assert run.context.session_key == "alice"
            assert run.update_context(session_key="bob").session_key == "bob"
            event = await run.emit("assistant", {"delta": "hi"})
            assert (event.seq, event.session_key) == (2, "bob")

        async def main() -> pl.RunOutcome:
            async with aio.open_bus() as bus:
                context = pl.RunContext(session_key="alice")
                return await (await bus.start_run(body, run_id="r1", context=context)).wait()

        assert run_asyncio(main).status == "ok"

    def test_the_bus_emits_into_a_running_body_from_outside_it(self) -> None:
        async def main() -> list[pl.Event]:
            async with aio.open_bus() as bus, bus.subscribe(run_id="r1") as sub:
                handle = await bus.start_run(parked, run_id="r1")
                event = await bus.emit("r1", "tool", {"phase": "start", "name": "search"})
                assert event.seq == 3
                bus.abort("r1")
                await handle.wait()
                return await read_run(sub, "r1")

        events = run_asyncio(main)
        assert [e.stream for e in events] == ["lifecycle", "assistant", "tool", "lifecycle"]

    def test_statistics_count_asyncio_runs_and_subscribers_and_outlive_the_bus(self) -> None:
        async def main() -> tuple[pl.BusStatistics, ...]:
            async with aio.open_bus() as bus:
                async with bus.subscribe() as sub:
                    handle = await bus.start_run(parked)
                    await anext(sub)
                    during = bus.statistics()
                    handle.abort()
                    await handle.wait()
                after = bus.statistics()
            assert sub.statistics().delivered == 1
            return during, after, bus.statistics()

        during, after, closed = run_asyncio(main)
        assert (during.live_runs, during.subscribers) == (1, 1)
        assert (after.live_runs, after.subscribers) == (0, 0)
        assert after.runs_by_outcome["aborted"] == 1
        assert closed == after


class TestErrors:
    def test_emitting_into_an_unknown_run_raises_unknown_run(self) -> None:
        async def main() -> None:
            async with aio.open_bus() as bus:
                with pytest.raises(pl.UnknownRun):
                    await bus.emit("nope", "assistant", {"delta": "x"})

        run_asyncio(main)

    def test_an_invalid_event_raises_invalid_event_in_the_body_and_the_run_goes_on(self) -> None:
        async def body(run: aio.Run) -> None:
            with pytest.raises(pl.InvalidEvent):
                await run.emit("lifecycle", {"phase": "end"})
            with pytest.raises(pl.InvalidEvent):
                await run.emit("assistant", ["not", "a", "mapping"])
            await run.emit("assistant", {"delta": "still here"})

        async def main() -> pl.RunOutcome:
            async with aio.open_bus() as bus:
                return await (await bus.start_run(body)).wait()

        outcome = run_asyncio(main)
        assert (outcome.status, outcome.last_seq) == ("ok", 3)

    def test_starting_runs_raises_the_trio_bus_s_errors(self) -> None:
        async def main() -> None:
            async with aio.open_bus(pl.BusConfig(max_runs=1)) as bus:
                await bus.start_run(parked, run_id="r1")
                with pytest.raises(pl.RunAlreadyActive):
                    await bus.start_run(parked, run_id="r1")
                with pytest.raises(pl.TooManyRuns):
                    await bus.start_run(parked, run_id="r2")
                with pytest.raises(ValueError, match="run_id"):
                    await bus.start_run(parked, run_id=" ")
                with pytest.raises(TypeError):
                    await bus.start_run("not a body")  # type: ignore[arg-type]

        run_asyncio(main)

    def test_subscribing_raises_the_trio_bus_s_errors(self) -> None:
        async def main() -> None:
            async with aio.open_bus(pl.BusConfig(max_subscribers=1)) as bus:
                with pytest.raises(TypeError):
                    bus.subscribe(streams="assistant")  # checked at the call, as in trio
                async with bus.subscribe():
                    with pytest.raises(pl.TooManySubscribers):
                        async with bus.subscribe():
                            pass

        run_asyncio(main)

    def test_a_body_that_is_not_a_coroutine_function_ends_its_run_with_an_error(self) -> None:
        def body(run: aio.Run) -> None:
            return None

        async def main() -> pl.RunOutcome:
            async with aio.open_bus() as bus:
                handle = await bus.start_run(body)  # type: ignore[arg-type]
                return await handle.wait()

        outcome = run_asyncio(main)
        assert outcome.status == "error"
        assert isinstance(outcome.exception, TypeError)

    def test_calls_after_the_bus_closed_raise_bus_closed(self) -> None:
        async def main() -> aio.Bus:
            async with aio.open_bus() as bus:
                pass
            with pytest.raises(pl.BusClosed):
                await bus.start_run(parked)
            with pytest.raises(pl.BusClosed):
                await bus.emit("r1", "assistant", {"delta": "x"})
            with pytest.raises(pl.BusClosed):
                async with bus.subscribe():
                    pass
            assert not bus.abort("r1")
            return bus

        run_asyncio(main)

    def test_a_config_that_is_not_a_bus_config_raises_type_error(self) -> None:
        async def main() -> None:
            with pytest.raises(TypeError):
                async with aio.open_bus({"max_runs": 1}):  # type: ignore[arg-type]
                    pass

        run_asyncio(main)

    def test_a_second_bus_on_the_same_loop_raises_runtime_error(self) -> None:
        async def main() -> None:
            async with aio.open_bus():
                with pytest.raises(RuntimeError, match="one run"):
                    async with aio.open_bus():
                        pass

        run_asyncio(main)


class TestCancelledCallers:
    """An asyncio caller cancelled while its call is in trio leaves nothing behind."""

    @pytest.mark.parametrize("turns", range(16))
    def test_a_cancelled_start_run_leaves_no_live_run(self, turns: int) -> None:
        async def main() -> None:
            async with aio.open_bus() as bus:
                starting = asyncio.create_task(bus.start_run(parked))
                for _ in range(turns):
                    await asyncio.sleep(0)
                starting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    (await starting).abort()  # it had finished: the run is ours to stop
                # Poll until trio has stopped it: no event says so (run_asyncio bounds this).
                while bus.statistics().live_runs:  # noqa: ASYNC110
                    await asyncio.sleep(0)

        run_asyncio(main)

    @pytest.mark.parametrize("turns", range(16))
    def test_a_cancelled_subscribe_leaves_no_subscriber(self, turns: int) -> None:
        async def subscribe(bus: aio.Bus) -> None:
            async with bus.subscribe():
                await asyncio.Event().wait()

        async def main() -> None:
            async with aio.open_bus() as bus:
                subscribing = asyncio.create_task(subscribe(bus))
                for _ in range(turns):
                    await asyncio.sleep(0)
                subscribing.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await subscribing
                # Poll until trio has let it go: no event says so (run_asyncio bounds this).
                while bus.statistics().subscribers:  # noqa: ASYNC110
                    await asyncio.sleep(0)

        run_asyncio(main)

    def test_a_subscription_left_as_its_task_is_cancelled_leaves_no_subscriber(self) -> None:
        async def leave_cancelled(bus: aio.Bus) -> None:
            async with bus.subscribe():
                task = asyncio.current_task()
                assert task is not None
                task.cancel()  # delivered on the way out, before trio has let the subscription go

        async def main() -> None:
            async with aio.open_bus() as bus:
                with pytest.raises(asyncio.CancelledError):
                    await asyncio.create_task(leave_cancelled(bus))
                # Poll until trio has let it go: no event says so (run_asyncio bounds this).
                while bus.statistics().subscribers:  # noqa: ASYNC110
                    await asyncio.sleep(0)

        run_asyncio(main)


class TestClosing:
    def test_leaving_the_block_delivers_terminal_events_then_ends_subscriptions(self) -> None:
        async def main() -> tuple[list[pl.Event], str | None]:
            ready = asyncio.Event()
            events: list[pl.Event] = []
            reason: list[str | None] = []

            async def consume(bus: aio.Bus) -> None:
                async with bus.subscribe() as sub:
                    ready.set()
                    events.extend([event async for event in sub])
                    reason.append(sub.closed_reason)

            async with asyncio.TaskGroup() as group:
                async with aio.open_bus() as bus:
                    group.create_task(consume(bus))
                    await ready.wait()
                    await bus.start_run(parked, run_id="r1")
            return events, reason[0]

        events, reason = run_asyncio(main)
        assert reason == "bus closed"
        assert [e.stream for e in events] == ["lifecycle", "assistant", "lifecycle"]
        assert events[-1].data["stopReason"] == "shutdown"

    def test_leaving_the_block_aborts_live_runs_and_returns_once_trio_has_finished(
        self,
    ) -> None:
        steps: list[str] = []

        async def body(run: aio.Run) -> None:
            try:
                await asyncio.Event().wait()
            finally:
                steps.append("body finally")

        async def main() -> aio.RunHandle:
            async with aio.open_bus() as bus:
                handle = await bus.start_run(body)
                assert trio.lowlevel.in_trio_run()  # the guest run, on this thread
            steps.append("closed")
            assert not trio.lowlevel.in_trio_run()
            return handle

        handle = run_asyncio(main)
        assert steps == ["body finally", "closed"]
        assert handle.outcome is not None
        assert (handle.outcome.status, handle.outcome.error) == ("aborted", "shutdown")

    def test_an_exception_in_the_block_propagates_once_the_bus_has_closed(self) -> None:
        handles: list[aio.RunHandle] = []

        async def block() -> None:
            async with aio.open_bus() as bus:
                handles.append(await bus.start_run(parked))
                raise KeyError("mine")

        async def main() -> None:
            with pytest.raises(KeyError):
                await block()
            assert not trio.lowlevel.in_trio_run()

        run_asyncio(main)
        handle = handles[0]
        assert handle.outcome is not None
        assert handle.outcome.error == "shutdown"

    def test_a_cancelled_block_closes_the_bus_and_the_cancellation_propagates(self) -> None:
        handles: list[aio.RunHandle] = []

        async def block() -> None:
            async with asyncio.timeout(0.05), aio.open_bus() as bus:
                handles.append(await bus.start_run(parked))
                await asyncio.Event().wait()

        async def main() -> None:
            with pytest.raises(TimeoutError):
                await block()

        run_asyncio(main)
        handle = handles[0]
        assert handle.outcome is not None
        assert handle.outcome.status == "aborted"

    def test_a_crash_on_the_trio_side_surfaces_in_asyncio_instead_of_hanging(self) -> None:
        async def crash() -> None:
            raise RuntimeError("trio-side bug")

        async def block() -> None:
            async with aio.open_bus():
                trio.lowlevel.spawn_system_task(crash)  # allowed from the host loop
                await asyncio.Event().wait()  # would wait for ever

        async def main() -> None:
            with pytest.raises(trio.TrioInternalError) as caught:
                await block()
            cause = caught.value.__cause__
            assert isinstance(cause, BaseExceptionGroup)
            assert cause.subgroup(RuntimeError) is not None

        run_asyncio(main)

    @pytest.mark.parametrize("runner", ["asyncio.run", "loop.run_until_complete"])
    def test_ctrl_c_closes_the_bus_and_raises_keyboard_interrupt(self, runner: str) -> None:
        script = textwrap.dedent(
            """
            import asyncio, sys
            from pipeline import aio

            async def body(run):
                try:
                    # Ready once the body runs: start_run returns when the start event is
                    # out, which can be before the body's task has begun.
                    print("ready", flush=True)
                    await asyncio.Event().wait()
                finally:
                    print("body finally", flush=True)

            async def main():
                async with aio.open_bus() as bus:
                    await bus.start_run(body)
                    await asyncio.Event().wait()

            if sys.argv[1] == "asyncio.run":
                asyncio.run(main())
            else:
                loop = asyncio.new_event_loop()
                try:
                    loop.run_until_complete(main())
                finally:
                    loop.close()
            """
        )
        with subprocess.Popen(
            [sys.executable, "-c", script, runner],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        ) as child:
            watchdog = threading.Timer(20, child.kill)  # a hung child ends the readline below
            watchdog.start()
            try:
                assert child.stdout is not None
                assert child.stdout.readline() == "ready\n"
                os.kill(child.pid, signal.SIGINT)
                out, err = child.communicate(timeout=20)
            finally:
                watchdog.cancel()
                child.kill()
        assert out == "body finally\n"
        assert err.rstrip().endswith("KeyboardInterrupt")


# ---- the same outcomes as the trio bus -------------------------------------------------------

Forever = Callable[[], Awaitable[object]]
Summary = tuple[tuple[str, str | None, int, str | None], list[tuple[int, str, dict[str, Any]]]]


def scenario_body(name: str, forever: Forever) -> Callable[[Any], Awaitable[None]]:
    """A body written once for both buses: it only awaits ``run.emit`` (and ``forever``)."""

    async def body(run: Any) -> None:
        await run.emit("assistant", {"delta": "a"})
        if name == "raises":
            raise ValueError("boom")
        if name == "aborted":
            await forever()
        if name == "invalid event":
            try:
                await run.emit("lifecycle", {})
            except pl.InvalidEvent:
                await run.emit("assistant", {"delta": "b"})

    return body


async def drive(bus: Any, name: str, forever: Forever) -> Summary:
    """Start the scenario's run on ``bus`` (trio or asyncio), read it, abort it if it says so."""
    async with bus.subscribe(run_id="r") as sub:
        handle = await bus.start_run(scenario_body(name, forever), run_id="r")
        events: list[pl.Event] = []
        async for event in sub:
            events.append(event)
            if name == "aborted" and event.stream == "assistant":
                assert bus.abort("r", reason="stop")
            if is_terminal(event):
                break
        outcome = await handle.wait()
    exception = None if outcome.exception is None else type(outcome.exception).__name__
    timeless = [
        (e.seq, e.stream, {k: v for k, v in e.data.items() if k not in ("startedAt", "endedAt")})
        for e in events
    ]
    return (outcome.status, outcome.error, outcome.last_seq, exception), timeless


START = (1, "lifecycle", {"phase": "start"})
DELTA_A = (2, "assistant", {"delta": "a"})
EXPECTED: dict[str, Summary] = {
    "returns": (("ok", None, 3, None), [START, DELTA_A, (3, "lifecycle", {"phase": "end"})]),
    "raises": (
        ("error", "boom", 3, "ValueError"),
        [
            START,
            DELTA_A,
            (3, "lifecycle", {"phase": "error", "error": "boom", "errorKind": "ValueError"}),
        ],
    ),
    "aborted": (
        ("aborted", "stop", 3, None),
        [START, DELTA_A, (3, "lifecycle", {"phase": "end", "aborted": True, "stopReason": "stop"})],
    ),
    "invalid event": (
        ("ok", None, 4, None),
        [START, DELTA_A, (3, "assistant", {"delta": "b"}), (4, "lifecycle", {"phase": "end"})],
    ),
}


class TestSameOutcomesAsTheTrioBus:
    @pytest.mark.parametrize("name", sorted(EXPECTED))
    async def test_the_trio_bus_gives_the_expected_outcome_and_events(self, name: str) -> None:
        with trio.fail_after(10):
            async with pl.open_bus() as bus:
                assert await drive(bus, name, trio.sleep_forever) == EXPECTED[name]

    @pytest.mark.parametrize("name", sorted(EXPECTED))
    def test_the_asyncio_bus_gives_the_same_outcome_and_events(self, name: str) -> None:
        async def main() -> Summary:
            async with aio.open_bus() as bus:
                return await drive(bus, name, asyncio.Event().wait)

        assert run_asyncio(main) == EXPECTED[name]


class TestDocs:
    def test_the_example_runs_under_asyncio_run(self, capsys: pytest.CaptureFixture[str]) -> None:
        spec = importlib.util.spec_from_file_location("docs_example_aio_llm_stream", EXAMPLE)
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        run_asyncio(module.main)
        assert capsys.readouterr().out == "The answer is 42.\n"

    def test_the_guide_shows_exactly_the_example_file(self) -> None:
        marker = "<!-- example: docs/examples/aio_llm_stream.py -->"
        assert f"{marker}\n```python\n{EXAMPLE.read_text()}```" in GUIDE.read_text()
