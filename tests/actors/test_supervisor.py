"""Tests for :func:`actors.open_supervisor` and :class:`actors.Supervisor`."""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing

import actors
from actors import _supervisor
from actors._supervisor import SupervisorStatistics, open_supervisor

LOGGER = "actors.supervisor"


class Boom(Exception):
    pass


class Fatal(BaseException):
    pass


async def fail() -> None:
    raise Boom("child broke")


async def not_ready(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    raise Boom("not ready")


def failures(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR]


class TestExports:
    def test_every_public_name_of_the_supervisor_module_is_exported_by_the_package(
        self,
    ) -> None:
        missing = [
            name
            for name in _supervisor.__all__
            if getattr(actors, name, None) is not getattr(_supervisor, name)
        ]
        assert missing == []


class TestOpen:
    @pytest.mark.parametrize("bad", [0, -1.0, math.nan])
    async def test_a_shutdown_timeout_that_is_not_positive_is_rejected(self, bad: float) -> None:
        with pytest.raises(ValueError, match="shutdown_timeout"):
            async with open_supervisor(shutdown_timeout=bad):
                pass  # pragma: no cover

    async def test_a_supervisor_without_children_exits_at_once(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        start = trio.current_time()
        async with open_supervisor(shutdown_timeout=10):
            pass
        assert trio.current_time() == start


class TestStartSoon:
    async def test_start_soon_runs_the_child_with_its_arguments(self) -> None:
        seen: list[tuple[int, str]] = []

        async def child(number: int, word: str) -> None:
            seen.append((number, word))

        with trio.fail_after(5):
            async with open_supervisor() as supervisor:
                supervisor.start_soon(child, 1, "one", name="child")
        assert seen == [(1, "one")]

    async def test_a_failing_child_is_logged_with_its_name_and_traceback(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        with trio.fail_after(5):
            async with open_supervisor(name="sup") as supervisor:
                supervisor.start_soon(fail, name="worker-1")
        [record] = failures(caplog)
        assert record.name == LOGGER
        assert "sup" in record.getMessage()
        assert "worker-1" in record.getMessage()
        assert record.exc_info is not None
        assert isinstance(record.exc_info[1], Boom)

    async def test_a_failure_goes_to_the_logger_the_supervisor_was_given(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        logger = logging.getLogger("tests.actors.custom")
        with trio.fail_after(5):
            async with open_supervisor(logger=logger) as supervisor:
                supervisor.start_soon(fail, name="worker")
        assert [r.name for r in failures(caplog)] == ["tests.actors.custom"]

    async def test_a_failing_child_is_counted_as_failed(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        with trio.fail_after(5):
            async with open_supervisor() as supervisor:
                supervisor.start_soon(fail, name="a")
                supervisor.start_soon(fail, name="b")
        assert supervisor.statistics().failed == 2

    async def test_the_siblings_of_a_failing_child_keep_running(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        finished = trio.Event()

        async def sibling() -> None:
            await trio.testing.wait_all_tasks_blocked()
            await trio.lowlevel.checkpoint()
            finished.set()

        with trio.fail_after(5):
            async with open_supervisor() as supervisor:
                supervisor.start_soon(sibling, name="sibling")
                supervisor.start_soon(fail, name="failing")
                await finished.wait()
        assert (finished.is_set(), supervisor.statistics().failed) == (True, 1)

    async def test_a_failing_child_does_not_cancel_the_supervisor_block(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        with trio.fail_after(5):
            async with open_supervisor() as supervisor:
                supervisor.start_soon(fail, name="failing")
                await trio.testing.wait_all_tasks_blocked()
                await trio.lowlevel.checkpoint()
                reached = True
        assert reached
        assert len(failures(caplog)) == 1


class TestStart:
    async def test_start_returns_the_value_passed_to_started(self) -> None:
        async def service(
            first: int, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
        ) -> None:
            task_status.started(first + 1)

        with trio.fail_after(5):
            async with open_supervisor() as supervisor:
                value = await supervisor.start(service, 41, name="service")
        assert value == 42

    async def test_start_returns_only_once_the_child_is_ready(self) -> None:
        ready = False

        async def service(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            nonlocal ready
            await trio.lowlevel.checkpoint()
            ready = True
            task_status.started()
            await trio.sleep_forever()

        with trio.fail_after(5):
            async with open_supervisor() as supervisor:
                await supervisor.start(service, name="service")
                assert ready
                supervisor.cancel()

    async def test_an_exception_before_started_propagates_unwrapped_from_start(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        with trio.fail_after(5):
            async with open_supervisor() as supervisor:
                with pytest.raises(Boom, match="not ready") as info:
                    await supervisor.start(not_ready, name="service")
        assert type(info.value) is Boom

    async def test_an_exception_before_started_is_neither_logged_nor_counted(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        with trio.fail_after(5):
            async with open_supervisor() as supervisor:
                with pytest.raises(Boom):
                    await supervisor.start(not_ready, name="service")
        assert (failures(caplog), supervisor.statistics().failed) == ([], 0)

    async def test_an_exception_after_started_is_logged_and_not_propagated(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        async def service(*, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
            task_status.started("up")
            await trio.lowlevel.checkpoint()
            raise Boom("broke later")

        with trio.fail_after(5):
            async with open_supervisor() as supervisor:
                value = await supervisor.start(service, name="service")
        [record] = failures(caplog)
        assert record.exc_info is not None
        assert isinstance(record.exc_info[1], Boom)
        assert (value, supervisor.statistics().failed) == ("up", 1)

    async def test_a_child_that_never_calls_started_makes_start_raise_runtime_error(
        self,
    ) -> None:
        async def service(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            return

        with trio.fail_after(5):
            async with open_supervisor() as supervisor:
                with pytest.raises(RuntimeError, match="started"):
                    await supervisor.start(service, name="service")


class TestStartSoonSelfGuarded:
    """A self-guarded child does its guard's job through child_started/ended/failed."""

    @staticmethod
    async def guarded(supervisor: actors.Supervisor, work: Callable[[], Awaitable[None]]) -> None:
        supervisor.child_started()
        try:
            await work()
        except Exception:
            supervisor.child_failed("guarded")
        finally:
            supervisor.child_ended()

    async def test_a_self_guarded_child_is_counted_as_running_until_it_ends(self) -> None:
        release = trio.Event()
        with trio.fail_after(5):
            async with open_supervisor() as supervisor:
                supervisor.start_soon_self_guarded(
                    self.guarded, supervisor, release.wait, name="guarded"
                )
                await trio.testing.wait_all_tasks_blocked()
                during = supervisor.statistics()
                release.set()
        assert (during, supervisor.statistics()) == (
            SupervisorStatistics(started=1, running=1, failed=0),
            SupervisorStatistics(started=1, running=0, failed=0),
        )

    async def test_child_failed_logs_and_counts_the_exception_being_handled(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        async def broken() -> None:
            raise Boom("broke later")

        with trio.fail_after(5):
            async with open_supervisor() as supervisor:
                supervisor.start_soon_self_guarded(self.guarded, supervisor, broken, name="guarded")
        [record] = failures(caplog)
        assert record.exc_info is not None
        assert isinstance(record.exc_info[1], Boom)
        assert "'guarded'" in record.getMessage()
        assert supervisor.statistics() == SupervisorStatistics(started=1, running=0, failed=1)


class TestShutdown:
    async def test_leaving_the_block_cancels_children_still_running_after_the_timeout(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        cancelled = False

        async def forever() -> None:
            nonlocal cancelled
            try:
                await trio.sleep_forever()
            except trio.Cancelled:
                cancelled = True
                raise

        with trio.fail_after(100):
            start = trio.current_time()
            async with open_supervisor(shutdown_timeout=7) as supervisor:
                supervisor.start_soon(forever, name="forever")
        assert trio.current_time() - start == pytest.approx(7)
        assert cancelled

    async def test_children_that_finish_early_let_the_block_exit_early(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        with trio.fail_after(100):
            start = trio.current_time()
            async with open_supervisor(shutdown_timeout=7) as supervisor:
                supervisor.start_soon(trio.sleep, 2, name="short")
        assert trio.current_time() - start == pytest.approx(2)

    async def test_an_infinite_shutdown_timeout_waits_for_the_children(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        with trio.fail_after(10_000):
            start = trio.current_time()
            async with open_supervisor(shutdown_timeout=math.inf) as supervisor:
                supervisor.start_soon(trio.sleep, 1_000, name="long")
        assert trio.current_time() - start == pytest.approx(1_000)

    async def test_the_shutdown_timeout_counts_from_the_end_of_the_block(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        with trio.fail_after(100):
            start = trio.current_time()
            async with open_supervisor(shutdown_timeout=7) as supervisor:
                supervisor.start_soon(trio.sleep_forever, name="forever")
                await trio.sleep(5)
        assert trio.current_time() - start == pytest.approx(12)

    async def test_cancel_cancels_every_child_now(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        with trio.fail_after(100):
            start = trio.current_time()
            async with open_supervisor(shutdown_timeout=50) as supervisor:
                supervisor.start_soon(trio.sleep_forever, name="a")
                supervisor.start_soon(trio.sleep_forever, name="b")
                await trio.testing.wait_all_tasks_blocked()
                supervisor.cancel()
        assert trio.current_time() == start

    async def test_cancel_after_cancels_the_children_after_the_delay(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        with trio.fail_after(100):
            start = trio.current_time()
            async with open_supervisor(shutdown_timeout=50) as supervisor:
                supervisor.start_soon(trio.sleep_forever, name="forever")
                supervisor.cancel_after(3)
        assert trio.current_time() - start == pytest.approx(3)


class TestCancellation:
    async def test_cancellation_from_outside_is_not_swallowed_or_counted_as_a_failure(
        self, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
    ) -> None:
        with trio.move_on_after(1) as scope:
            async with open_supervisor(shutdown_timeout=math.inf) as supervisor:
                supervisor.start_soon(trio.sleep_forever, name="forever")
                await trio.sleep_forever()
        assert scope.cancelled_caught
        assert (supervisor.statistics().failed, failures(caplog)) == (0, [])

    async def test_a_child_raising_a_base_exception_ends_the_supervisor(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        async def fatal() -> None:
            raise Fatal

        with trio.fail_after(5), pytest.RaisesGroup(Fatal, flatten_subgroups=True):
            async with open_supervisor() as supervisor:
                supervisor.start_soon(fatal, name="fatal")
                await trio.sleep_forever()
        assert (supervisor.statistics().failed, failures(caplog)) == (0, [])


class TestStatistics:
    async def test_statistics_count_started_running_and_failed_children(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        release = trio.Event()
        with trio.fail_after(5):
            async with open_supervisor() as supervisor:
                supervisor.start_soon(release.wait, name="waiting")
                supervisor.start_soon(trio.sleep, 0, name="quick")
                supervisor.start_soon(fail, name="failing")
                await trio.testing.wait_all_tasks_blocked()
                during = supervisor.statistics()
                release.set()
        assert during == SupervisorStatistics(started=3, running=1, failed=1)
        assert supervisor.statistics() == SupervisorStatistics(started=3, running=0, failed=1)

    async def test_children_started_with_start_are_counted(self) -> None:
        async def service(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            task_status.started()
            await trio.sleep_forever()

        with trio.fail_after(5):
            async with open_supervisor() as supervisor:
                await supervisor.start(service, name="service")
                during = supervisor.statistics()
                supervisor.cancel()
        assert during == SupervisorStatistics(started=1, running=1, failed=0)
