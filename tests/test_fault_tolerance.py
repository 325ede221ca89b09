"""Faults and races: stalled readers, aborts racing bodies, broken exceptions, bad arguments."""

from __future__ import annotations

import pytest
import trio
import trio.testing

import pipeline as pl
from pipeline._counters import Counters
from pipeline.testing import is_terminal


async def test_a_terminal_event_is_not_lost_while_block_subscribers_stall_the_router(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Defaults: block_timeout == shutdown_timeout == 5 s. Two stalled BLOCK subscribers (the
    # default policy) hold the router for 2 x 5 s; a run that ends meanwhile must still get its
    # terminal lifecycle event to the subscriber that does read (SPEC 4.2: never dropped).
    config = pl.BusConfig(router_buffer=4, subscriber_buffer=1)

    async def body(run: pl.Run) -> None:
        await trio.sleep(1)
        for i in range(5):
            await run.emit("tool", {"phase": "start", "name": f"t{i}", "toolCallId": str(i)})

    with trio.fail_after(120):
        async with pl.open_bus(config) as bus:
            async with (
                bus.subscribe(run_id="r1"),
                bus.subscribe(run_id="r1"),
                bus.subscribe(run_id="r1", overflow=pl.Overflow.DROP_OLDEST, buffer=100) as sub,
            ):
                handle = await bus.start_run(body, run_id="r1")
                outcome = await handle.wait()
                assert outcome.status == "ok"
                seen: list[pl.Event] = []
                with trio.move_on_after(60):
                    async for event in sub:
                        seen.append(event)
                        if is_terminal(event):
                            break
    assert [e.data["phase"] for e in seen if is_terminal(e)] == ["end"]


async def test_a_body_calling_emit_nowait_right_after_an_abort_ends_aborted() -> None:
    # The abort lands while the body is already scheduled to run (no checkpoint in between).
    go = trio.Event()
    seen_error: list[BaseException] = []

    async def body(run: pl.Run) -> None:
        await go.wait()
        try:
            run.emit_nowait("assistant", {"delta": "hi"})
        except BaseException as exc:
            seen_error.append(exc)
            raise

    with trio.fail_after(5):
        async with pl.open_bus() as bus:
            handle = await bus.start_run(body, run_id="r1")
            go.set()
            assert bus.abort("r1", reason="user stop")
            outcome = await handle.wait()
            live = bus.statistics().live_runs
    assert (outcome.status, outcome.error) == ("aborted", "user stop"), seen_error
    assert live == 0


async def test_a_retry_after_a_failure_that_raced_an_abort_runs_its_body(
    autojump_clock: trio.testing.MockClock,
) -> None:
    go = trio.Event()
    second_body_ran = False

    async def failing(run: pl.Run) -> None:
        await go.wait()
        raise RuntimeError("boom")

    async def retry(run: pl.Run) -> None:
        nonlocal second_body_ran
        await trio.sleep(0.1)
        second_body_ran = True

    with trio.fail_after(60):
        async with pl.open_bus() as bus:
            handle = await bus.start_run(failing, run_id="r1")
            go.set()
            assert bus.abort("r1")  # True: the run is live and "being stopped"
            first = await handle.wait()
            assert first.status == "aborted"  # the abort explains the exception it raced
            await trio.sleep(1)  # well inside the 15 s retry grace
            second = await (await bus.start_run(retry, run_id="r1")).wait()
    assert (second.status, second_body_ran) == ("ok", True)


class _Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str for you")


async def test_a_body_raising_an_exception_with_a_broken_str_still_ends_its_run() -> None:
    async def body(run: pl.Run) -> None:
        raise _Unprintable

    with trio.fail_after(5):
        async with pl.open_bus(pl.BusConfig(error_retry_grace=0)) as bus:
            async with bus.subscribe(run_id="r1") as sub:
                handle = await bus.start_run(body, run_id="r1")
                with trio.move_on_after(1):
                    outcome = await handle.wait()
                live = bus.statistics().live_runs
                terminal = []
                while sub.statistics().queued:
                    event = sub.receive_nowait()
                    if is_terminal(event):
                        terminal.append(event)
            assert handle.outcome is not None
            assert outcome.status == "error"
            assert live == 0
            assert len(terminal) == 1


async def test_an_abort_without_a_str_reason_is_refused_or_still_ends_the_run_as_aborted() -> None:
    async def body(run: pl.Run) -> None:
        await trio.sleep_forever()

    with trio.fail_after(5):
        async with pl.open_bus() as bus:
            handle = await bus.start_run(body, run_id="r1")
            try:
                bus.abort("r1", reason=None)  # type: ignore[arg-type]
            except (TypeError, ValueError):
                handle.abort()
            outcome = await handle.wait()
    assert outcome.status == "aborted"


async def test_a_retry_with_an_invalid_context_is_refused_with_a_typed_error_and_keeps_the_grace(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def failing(run: pl.Run) -> None:
        raise RuntimeError("boom")

    async def fine(run: pl.Run) -> None:
        pass

    with trio.fail_after(60):
        async with pl.open_bus() as bus:
            await (await bus.start_run(failing, run_id="r1")).wait()
            error: BaseException | None = None
            try:
                await bus.start_run(fine, run_id="r1", context={"session_key": "main"})  # type: ignore[arg-type]
            except BaseException as exc:
                error = exc
            live = bus.statistics().live_runs
    assert (type(error), live) in {(TypeError, 1), (ValueError, 1)}, (repr(error), live)


def _wire(seq: int, phase: str) -> dict[str, object]:
    return {"runId": "remote", "seq": seq, "stream": "lifecycle", "ts": 1, "data": {"phase": phase}}


class TestIngestRefusals:
    async def test_an_ingested_dropped_marker_is_refused(self, agent_bus: pl.Bus) -> None:
        wire = {"runId": "x", "seq": 1, "stream": "dropped", "ts": 1, "data": {"count": 3}}
        with pytest.raises(pl.InvalidEvent, match="dropped"):
            await agent_bus.ingest(wire)
        assert agent_bus.statistics().live_runs == 0

    async def test_an_ingested_lifecycle_event_for_a_local_body_is_refused(
        self, agent_bus: pl.Bus
    ) -> None:
        async with agent_bus.run(run_id="local") as run:
            wire = {"runId": "local", "seq": 2, "stream": "lifecycle", "ts": 1, "data": {}}
            with pytest.raises(pl.RunAlreadyActive):
                await agent_bus.ingest({**wire, "data": {"phase": "end"}})
            event = await run.emit("assistant", {"delta": "still mine"})
        assert event.seq == 2


class TestTrackerShutdown:
    async def test_a_tracked_run_ends_with_a_terminal_event_when_the_bus_closes(self) -> None:
        with trio.fail_after(5):
            async with pl.open_bus() as bus:
                subscription = bus.subscribe(run_id="remote")
                sub = await subscription.__aenter__()
                wire = {"runId": "remote", "seq": 1, "stream": "assistant", "ts": 1}
                await bus.ingest({**wire, "data": {"delta": "x"}})
            events = [event async for event in sub]
            await subscription.__aexit__(None, None, None)
        assert [e.stream for e in events] == ["assistant", "lifecycle"]
        assert events[-1].data["stopReason"] == "shutdown"
        assert bus.statistics().runs_by_outcome["aborted"] == 1


class TestRetryState:
    async def test_a_retry_does_not_inherit_the_failed_attempts_stop_reason(
        self, agent_bus: pl.Bus
    ) -> None:
        async def failing(run: pl.Run) -> None:
            run.set_stop_reason("max_tokens")
            raise RuntimeError("boom")

        async def retry(run: pl.Run) -> None:
            pass

        with trio.fail_after(5):
            async with agent_bus.subscribe(run_id="r1") as sub:
                await (await agent_bus.start_run(failing, run_id="r1")).wait()
                await (await agent_bus.start_run(retry, run_id="r1")).wait()
                events = [sub.receive_nowait() for _ in range(sub.statistics().queued)]
        end = events[-1]
        assert end.data["phase"] == "end"
        assert "stopReason" not in end.data


class TestStoppedRouter:
    async def test_aborting_a_run_after_the_router_stopped_does_not_raise(self) -> None:
        # Cancelling a bus's owner nursery can stop the router before the bus closes; an
        # abort must then leave publishing its terminal events to the run's own ending.
        with trio.fail_after(5):
            async with pl.open_bus() as bus:
                handle = await bus.start_run(parked_forever, run_id="r1")
                bus._core.router.close()  # what a cancelled router task leaves behind
                await trio.testing.wait_all_tasks_blocked()
                assert handle.abort() is True
                outcome = await handle.wait()
        assert outcome.status == "aborted"
        assert bus.statistics().live_runs == 0


async def parked_forever(run: pl.Run) -> None:
    await trio.sleep_forever()


class TestBugInARunsOwnEnding:
    async def test_it_is_logged_counted_and_ends_only_that_run(
        self, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        record = Counters.record

        def broken_for_one_run(counters: Counters, status: str) -> None:
            if status == "error":
                raise RuntimeError("bookkeeping bug")
            record(counters, status)

        async def fail(run: pl.Run) -> None:
            raise ValueError("the body's own failure")

        async def work(run: pl.Run) -> None:
            await run.emit("assistant", {"delta": "hi"})

        monkeypatch.setattr(Counters, "record", broken_for_one_run)
        with trio.fail_after(5):
            async with pl.open_bus() as bus:
                broken = await bus.start_run(fail, run_id="broken")
                healthy = await bus.start_run(work, run_id="healthy")
                outcomes = (await broken.wait(), await healthy.wait())
                stats = bus.statistics()
        assert [o.status for o in outcomes] == ["error", "ok"]
        assert outcomes[0].error == "the body's own failure"
        assert (stats.failures, stats.live_runs) == (1, 0)
        assert any("bookkeeping bug" in r.exc_text for r in caplog.records if r.exc_text)


class TestFailedBodiesKeepTheirException:
    async def test_the_outcome_keeps_the_body_exception_with_its_traceback(
        self, agent_bus: pl.Bus
    ) -> None:
        async def agent(run: pl.Run) -> None:
            {"a": 1}["b"]

        outcome = await (await agent_bus.start_run(agent)).wait()
        assert (outcome.status, outcome.error) == ("error", "'b'")
        assert isinstance(outcome.exception, KeyError)
        assert outcome.exception.__traceback__ is not None

    async def test_a_failed_body_is_logged_once_with_its_traceback(
        self, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
    ) -> None:
        async def agent(run: pl.Run) -> None:
            raise KeyError("b")

        async with pl.open_bus(pl.BusConfig(error_retry_grace=1.0)) as bus:
            await (await bus.start_run(agent, run_id="r1")).wait()
            await trio.sleep(2)  # the grace expires: no second log line
        records = [r for r in caplog.records if r.name.startswith("pipeline")]
        assert len(records) == 1
        assert "r1" in records[0].getMessage()
        assert records[0].exc_info is not None
        assert records[0].exc_info[0] is KeyError

    async def test_outcomes_other_than_error_carry_no_exception(self, agent_bus: pl.Bus) -> None:
        async def agent(run: pl.Run) -> None:
            await trio.sleep_forever()

        handle = await agent_bus.start_run(agent)
        handle.abort()
        assert (await handle.wait()).exception is None
