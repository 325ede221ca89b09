"""Tests for :class:`actors.Mailbox`: capacity, overflow policies, drop markers, closing.

Unless a test says otherwise, items are strings and the droppable ones are lower case
(``"a"`` may be dropped, ``"A"`` may not).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import attrs
import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

import actors
from actors import _mailbox
from actors._mailbox import SLOW_CONSUMER, Dropped, Mailbox, MailboxStatistics, Overflow


def make_mailbox(
    capacity: int = 3,
    overflow: Overflow = Overflow.BLOCK,
    *,
    block_timeout: float | None = None,
) -> Mailbox[str]:
    return Mailbox(capacity, overflow, block_timeout, droppable=str.islower)


def fill(mailbox: Mailbox[str], *items: str) -> None:
    for item in items:
        mailbox.send_nowait(item)


def drain(mailbox: Mailbox[str]) -> list[str | Dropped]:
    """Read everything readable now, drop markers included."""
    got: list[str | Dropped] = []
    while True:
        try:
            got.append(mailbox.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            return got


class TestExports:
    def test_every_public_name_of_the_mailbox_module_is_exported_by_the_package(self) -> None:
        missing = [
            name
            for name in _mailbox.__all__
            if getattr(actors, name, None) is not getattr(_mailbox, name)
        ]
        assert missing == []


class TestConstruction:
    @pytest.mark.parametrize("capacity", [0, -1, 1.5, True, "3"])
    def test_a_capacity_that_is_not_a_positive_int_is_rejected(self, capacity: Any) -> None:
        with pytest.raises(ValueError, match="capacity"):
            Mailbox(capacity)

    @pytest.mark.parametrize("timeout", [0, -1.0, math.nan, "1"])
    def test_a_block_timeout_that_is_not_a_positive_number_is_rejected(self, timeout: Any) -> None:
        with pytest.raises(ValueError, match="block_timeout"):
            Mailbox(3, Overflow.BLOCK, timeout)

    def test_an_overflow_that_is_not_an_overflow_member_is_rejected(self) -> None:
        bad: Any = "block"
        with pytest.raises(TypeError):
            Mailbox(3, bad)

    def test_a_new_mailbox_is_open_and_empty(self) -> None:
        mailbox = make_mailbox(capacity=4)
        assert (len(mailbox), mailbox.free(), mailbox.closed, mailbox.closed_reason) == (
            0,
            4,
            False,
            None,
        )


class TestBlock:
    def test_send_nowait_on_a_full_block_mailbox_raises_would_block(self) -> None:
        mailbox = make_mailbox(capacity=2)
        fill(mailbox, "a", "b")
        with pytest.raises(trio.WouldBlock):
            mailbox.send_nowait("c")
        assert drain(mailbox) == ["a", "b"]

    async def test_send_returns_without_yielding_when_there_is_space(self) -> None:
        mailbox = make_mailbox(capacity=2)
        with trio.testing.assert_no_checkpoints():
            await mailbox.send("a")
        assert drain(mailbox) == ["a"]

    async def test_send_on_a_full_block_mailbox_waits_until_the_reader_frees_space(
        self, nursery: trio.Nursery
    ) -> None:
        mailbox = make_mailbox(capacity=1)
        fill(mailbox, "a")
        sent = trio.Event()

        async def sender() -> None:
            await mailbox.send("b")
            sent.set()

        with trio.fail_after(5):
            nursery.start_soon(sender)
            await trio.testing.wait_all_tasks_blocked()
            assert not sent.is_set()
            assert mailbox.receive_nowait() == "a"
            await sent.wait()
        assert drain(mailbox) == ["b"]

    async def test_send_on_a_full_block_mailbox_disconnects_it_as_a_slow_consumer_after_the_timeout(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        mailbox = make_mailbox(capacity=1, block_timeout=2.5)
        fill(mailbox, "a")
        start = trio.current_time()
        with trio.fail_after(100), pytest.raises(trio.ClosedResourceError, match=SLOW_CONSUMER):
            await mailbox.send("b")
        assert trio.current_time() - start == pytest.approx(2.5)
        assert (mailbox.closed, mailbox.closed_reason) == (True, SLOW_CONSUMER)

    async def test_a_send_that_times_out_counts_the_discarded_queue_as_dropped(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        mailbox = make_mailbox(capacity=2, block_timeout=1)
        fill(mailbox, "a", "B")
        with trio.fail_after(100), pytest.raises(trio.ClosedResourceError):
            await mailbox.send("c")
        assert (mailbox.statistics().dropped, len(mailbox)) == (2, 0)

    async def test_a_block_mailbox_without_a_timeout_keeps_the_sender_waiting(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        mailbox = make_mailbox(capacity=1)
        fill(mailbox, "a")
        with trio.move_on_after(10_000) as scope:
            await mailbox.send("b")
        assert scope.cancelled_caught
        assert (mailbox.closed, drain(mailbox)) == (False, ["a"])

    async def test_a_sender_waiting_on_a_full_mailbox_gets_closed_resource_error_when_it_closes(
        self, nursery: trio.Nursery
    ) -> None:
        mailbox = make_mailbox(capacity=1)
        fill(mailbox, "a")
        errors: list[BaseException] = []

        async def sender() -> None:
            try:
                await mailbox.send("b")
            except trio.ClosedResourceError as exc:
                errors.append(exc)

        with trio.fail_after(5):
            nursery.start_soon(sender)
            await trio.testing.wait_all_tasks_blocked()
            mailbox.close("bye")
            await trio.testing.wait_all_tasks_blocked()
        assert [str(e) for e in errors] == ["bye"]

    async def test_send_on_a_closed_mailbox_raises_closed_resource_error(self) -> None:
        mailbox = make_mailbox()
        mailbox.close()
        with pytest.raises(trio.ClosedResourceError):
            await mailbox.send("a")


class TestDropOldest:
    def test_a_full_drop_oldest_mailbox_drops_the_oldest_droppable_item(self) -> None:
        mailbox = make_mailbox(capacity=3, overflow=Overflow.DROP_OLDEST)
        fill(mailbox, "A", "b", "c", "d")
        assert drain(mailbox) == [Dropped(1), "A", "c", "d"]

    def test_the_next_read_after_drops_is_one_marker_counting_all_of_them(self) -> None:
        mailbox = make_mailbox(capacity=2, overflow=Overflow.DROP_OLDEST)
        fill(mailbox, "a", "b", "c", "d", "e")
        assert drain(mailbox) == [Dropped(3), "d", "e"]

    def test_with_only_non_droppable_items_queued_a_droppable_newcomer_is_dropped(self) -> None:
        mailbox = make_mailbox(capacity=2, overflow=Overflow.DROP_OLDEST)
        fill(mailbox, "A", "B", "c")
        assert drain(mailbox) == [Dropped(1), "A", "B"]

    def test_a_full_mailbox_with_nothing_droppable_is_disconnected_as_a_slow_consumer(
        self,
    ) -> None:
        mailbox = make_mailbox(capacity=2, overflow=Overflow.DROP_OLDEST)
        fill(mailbox, "A", "B")
        with pytest.raises(trio.ClosedResourceError, match=SLOW_CONSUMER):
            mailbox.send_nowait("C")
        assert (mailbox.closed_reason, drain(mailbox)) == (SLOW_CONSUMER, [])

    async def test_send_on_a_full_drop_oldest_mailbox_drops_without_waiting(self) -> None:
        mailbox = make_mailbox(capacity=1, overflow=Overflow.DROP_OLDEST)
        fill(mailbox, "a")
        with trio.testing.assert_no_checkpoints():
            await mailbox.send("b")
        assert drain(mailbox) == [Dropped(1), "b"]

    def test_the_droppable_predicate_is_asked_only_when_the_mailbox_is_full(self) -> None:
        asked: list[str] = []

        def droppable(item: str) -> bool:
            asked.append(item)
            return True

        mailbox: Mailbox[str] = Mailbox(2, Overflow.DROP_OLDEST, droppable=droppable)
        fill(mailbox, "a", "b")
        assert asked == []
        mailbox.send_nowait("c")
        assert asked == ["a"]


class TestDropNewest:
    def test_a_full_drop_newest_mailbox_drops_a_droppable_newcomer(self) -> None:
        mailbox = make_mailbox(capacity=2, overflow=Overflow.DROP_NEWEST)
        fill(mailbox, "a", "b", "c")
        assert drain(mailbox) == [Dropped(1), "a", "b"]

    def test_a_non_droppable_newcomer_evicts_the_newest_droppable_queued_item(self) -> None:
        mailbox = make_mailbox(capacity=3, overflow=Overflow.DROP_NEWEST)
        fill(mailbox, "a", "b", "C", "D")
        assert drain(mailbox) == [Dropped(1), "a", "C", "D"]

    def test_a_full_mailbox_with_nothing_droppable_is_disconnected_as_a_slow_consumer(
        self,
    ) -> None:
        mailbox = make_mailbox(capacity=2, overflow=Overflow.DROP_NEWEST)
        fill(mailbox, "A", "B")
        with pytest.raises(trio.ClosedResourceError, match=SLOW_CONSUMER):
            mailbox.send_nowait("C")
        assert (mailbox.closed_reason, drain(mailbox)) == (SLOW_CONSUMER, [])


class TestDisconnectPolicy:
    def test_a_full_disconnect_mailbox_disconnects_at_once_even_for_a_droppable_item(
        self,
    ) -> None:
        mailbox = make_mailbox(capacity=2, overflow=Overflow.DISCONNECT)
        fill(mailbox, "a", "b")
        with pytest.raises(trio.ClosedResourceError, match=SLOW_CONSUMER):
            mailbox.send_nowait("c")
        assert (mailbox.closed_reason, mailbox.statistics().dropped) == (SLOW_CONSUMER, 2)

    def test_a_disconnect_mailbox_with_space_accepts_items(self) -> None:
        mailbox = make_mailbox(capacity=2, overflow=Overflow.DISCONNECT)
        fill(mailbox, "a", "B")
        assert drain(mailbox) == ["a", "B"]


class TestDisconnect:
    def test_disconnect_discards_the_queue_and_counts_it_as_dropped(self) -> None:
        mailbox = make_mailbox(capacity=3)
        fill(mailbox, "a", "B")
        mailbox.disconnect("gone")
        assert (len(mailbox), mailbox.statistics().dropped) == (0, 2)

    def test_after_a_disconnect_the_reader_sees_the_end_without_a_drop_marker(self) -> None:
        mailbox = make_mailbox(capacity=1, overflow=Overflow.DROP_OLDEST)
        fill(mailbox, "a", "b")
        mailbox.disconnect("gone")
        with pytest.raises(trio.EndOfChannel):
            mailbox.receive_nowait()

    def test_disconnect_sets_the_closed_reason(self) -> None:
        mailbox = make_mailbox()
        mailbox.disconnect("gone")
        assert (mailbox.closed, mailbox.closed_reason) == (True, "gone")

    async def test_disconnect_wakes_a_waiting_reader_with_end_of_channel(
        self, nursery: trio.Nursery
    ) -> None:
        mailbox = make_mailbox()
        ended = trio.Event()

        async def reader() -> None:
            with pytest.raises(trio.EndOfChannel):
                await mailbox.receive()
            ended.set()

        with trio.fail_after(5):
            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            mailbox.disconnect("gone")
            await ended.wait()
        assert ended.is_set()


class TestClose:
    async def test_close_lets_the_reader_drain_then_raises_end_of_channel(self) -> None:
        mailbox = make_mailbox()
        fill(mailbox, "a", "B")
        mailbox.close("done")
        with trio.fail_after(5):
            assert [await mailbox.receive(), await mailbox.receive()] == ["a", "B"]
            with pytest.raises(trio.EndOfChannel):
                await mailbox.receive()

    def test_close_keeps_pending_drop_markers_for_the_reader(self) -> None:
        mailbox = make_mailbox(capacity=1, overflow=Overflow.DROP_OLDEST)
        fill(mailbox, "a", "b")
        mailbox.close()
        assert drain(mailbox) == [Dropped(1), "b"]

    async def test_close_wakes_a_waiting_reader_with_end_of_channel(
        self, nursery: trio.Nursery
    ) -> None:
        mailbox = make_mailbox()
        ended = trio.Event()

        async def reader() -> None:
            with pytest.raises(trio.EndOfChannel):
                await mailbox.receive()
            ended.set()

        with trio.fail_after(5):
            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            mailbox.close()
            await ended.wait()
        assert ended.is_set()

    def test_closing_twice_keeps_the_first_reason(self) -> None:
        mailbox = make_mailbox()
        mailbox.close("first")
        mailbox.close("second")
        assert mailbox.closed_reason == "first"

    def test_send_nowait_after_close_raises_closed_resource_error_with_the_reason(self) -> None:
        mailbox = make_mailbox()
        mailbox.close("done")
        with pytest.raises(trio.ClosedResourceError, match="done"):
            mailbox.send_nowait("a")


class TestReceive:
    def test_receive_nowait_on_an_empty_open_mailbox_raises_would_block(self) -> None:
        with pytest.raises(trio.WouldBlock):
            make_mailbox().receive_nowait()

    async def test_receive_returns_without_yielding_when_an_item_is_ready(self) -> None:
        mailbox = make_mailbox()
        fill(mailbox, "a")
        with trio.testing.assert_no_checkpoints():
            assert await mailbox.receive() == "a"

    async def test_receive_waits_until_an_item_arrives(self, nursery: trio.Nursery) -> None:
        mailbox = make_mailbox()
        got: list[str | Dropped] = []

        async def reader() -> None:
            got.append(await mailbox.receive())

        with trio.fail_after(5):
            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            assert got == []
            mailbox.send_nowait("a")
            await trio.testing.wait_all_tasks_blocked()
        assert got == ["a"]

    def test_items_are_received_in_send_order(self) -> None:
        mailbox = make_mailbox(capacity=4)
        fill(mailbox, "a", "B", "c", "D")
        assert drain(mailbox) == ["a", "B", "c", "D"]


class TestFree:
    def test_a_closed_mailbox_has_no_free_room(self) -> None:
        mailbox = make_mailbox(capacity=4)
        mailbox.close()
        assert mailbox.free() == 0


class TestWaitFree:
    async def test_wait_free_returns_at_once_when_the_slots_are_free(self) -> None:
        mailbox = make_mailbox(capacity=3)
        fill(mailbox, "a")
        with trio.testing.assert_no_checkpoints():
            await mailbox.wait_free(2)
        assert mailbox.free() == 2

    async def test_wait_free_waits_until_enough_slots_are_free(self, nursery: trio.Nursery) -> None:
        mailbox = make_mailbox(capacity=3)
        fill(mailbox, "a", "b", "c")
        done = trio.Event()

        async def waiter() -> None:
            await mailbox.wait_free(2)
            done.set()

        with trio.fail_after(5):
            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            mailbox.receive_nowait()
            await trio.testing.wait_all_tasks_blocked()
            assert not done.is_set()
            mailbox.receive_nowait()
            await done.wait()
        assert mailbox.free() == 2

    async def test_a_slot_freed_by_receive_reaches_a_blocked_sender_past_an_idle_waiter(
        self, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
    ) -> None:
        mailbox = make_mailbox(capacity=1)
        fill(mailbox, "a")
        waited, sent = trio.Event(), trio.Event()

        async def waiter() -> None:
            await mailbox.wait_free(1)  # and then does not send
            waited.set()

        async def sender() -> None:
            await mailbox.send("b")
            sent.set()

        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(sender)
        await trio.testing.wait_all_tasks_blocked()
        assert mailbox.receive_nowait() == "a"
        with trio.fail_after(100):
            await waited.wait()
            await sent.wait()
        assert drain(mailbox) == ["b"]

    async def test_wait_free_for_more_than_the_capacity_raises_value_error(self) -> None:
        with pytest.raises(ValueError, match="free slots"):
            await make_mailbox(capacity=2).wait_free(3)

    async def test_wait_free_raises_closed_resource_error_when_the_mailbox_closes(
        self, nursery: trio.Nursery
    ) -> None:
        mailbox = make_mailbox(capacity=1)
        fill(mailbox, "a")
        errors: list[BaseException] = []

        async def waiter() -> None:
            try:
                await mailbox.wait_free(1)
            except trio.ClosedResourceError as exc:
                errors.append(exc)

        with trio.fail_after(5):
            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            mailbox.close("done")
            await trio.testing.wait_all_tasks_blocked()
        assert [str(e) for e in errors] == ["done"]


class TestTakeNowait:
    def test_take_nowait_takes_up_to_the_limit_in_send_order(self) -> None:
        mailbox = make_mailbox(capacity=4)
        fill(mailbox, "a", "B", "c")
        assert (mailbox.take_nowait(2), mailbox.take_nowait(5), mailbox.take_nowait(5)) == (
            ["a", "B"],
            ["c"],
            [],
        )

    def test_take_nowait_counts_the_items_as_received(self) -> None:
        mailbox = make_mailbox(capacity=4)
        fill(mailbox, "a", "B", "c")
        mailbox.take_nowait(2)
        assert mailbox.statistics().received == 2

    def test_take_nowait_returns_no_drop_markers(self) -> None:
        mailbox = make_mailbox(capacity=2, overflow=Overflow.DROP_OLDEST)
        fill(mailbox, "a", "b", "c")
        assert (mailbox.take_nowait(5), mailbox.statistics().dropped) == (["b", "c"], 1)

    async def test_take_nowait_wakes_every_waiting_sender(self, nursery: trio.Nursery) -> None:
        mailbox = make_mailbox(capacity=2)
        fill(mailbox, "a", "b")
        done: list[str] = []

        async def sender(item: str) -> None:
            await mailbox.send(item)
            done.append(item)

        with trio.fail_after(5):
            nursery.start_soon(sender, "c")
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(sender, "d")
            await trio.testing.wait_all_tasks_blocked()
            mailbox.take_nowait(2)
            await trio.testing.wait_all_tasks_blocked()
        # trio does not promise which of two woken tasks runs first
        assert (sorted(done), sorted(map(str, drain(mailbox)))) == (["c", "d"], ["c", "d"])

    async def test_a_slot_freed_by_take_nowait_reaches_a_blocked_sender_past_an_idle_waiter(
        self, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
    ) -> None:
        mailbox = make_mailbox(capacity=1)
        fill(mailbox, "a")
        waited, sent = trio.Event(), trio.Event()

        async def waiter() -> None:
            await mailbox.wait_free(1)  # and then does not send
            waited.set()

        async def sender() -> None:
            await mailbox.send("b")
            sent.set()

        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(sender)
        await trio.testing.wait_all_tasks_blocked()
        assert mailbox.take_nowait(1) == ["a"]
        with trio.fail_after(100):
            await waited.wait()
            await sent.wait()
        assert drain(mailbox) == ["b"]


class TestWaitReadable:
    async def test_wait_readable_waits_until_an_item_is_queued(self, nursery: trio.Nursery) -> None:
        mailbox = make_mailbox()
        ready = trio.Event()

        async def waiter() -> None:
            await mailbox.wait_readable()
            ready.set()

        with trio.fail_after(5):
            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            assert not ready.is_set()
            mailbox.send_nowait("a")
            await ready.wait()
        assert len(mailbox) == 1

    async def test_wait_readable_returns_on_a_closed_mailbox_that_still_has_items(self) -> None:
        mailbox = make_mailbox()
        fill(mailbox, "a")
        mailbox.close()
        with trio.testing.assert_no_checkpoints():
            await mailbox.wait_readable()
        assert drain(mailbox) == ["a"]

    async def test_wait_readable_raises_end_of_channel_once_closed_and_drained(
        self, nursery: trio.Nursery
    ) -> None:
        mailbox = make_mailbox()
        ended = trio.Event()

        async def waiter() -> None:
            with pytest.raises(trio.EndOfChannel):
                await mailbox.wait_readable()
            ended.set()

        with trio.fail_after(5):
            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            mailbox.close()
            await ended.wait()
        assert ended.is_set()


class TestStatistics:
    def test_statistics_of_a_new_mailbox_are_zero_and_open(self) -> None:
        assert make_mailbox(capacity=5).statistics() == MailboxStatistics(
            received=0, dropped=0, queued=0, capacity=5, closed_reason=None, closed=False
        )

    def test_statistics_count_received_dropped_and_queued_items(self) -> None:
        mailbox = make_mailbox(capacity=3, overflow=Overflow.DROP_OLDEST)
        fill(mailbox, "a", "b", "c", "d", "e")
        assert mailbox.receive_nowait() == Dropped(2)
        assert mailbox.receive_nowait() == "c"
        assert mailbox.statistics() == MailboxStatistics(
            received=1, dropped=2, queued=2, capacity=3, closed_reason=None, closed=False
        )

    def test_statistics_report_the_closed_reason(self) -> None:
        mailbox = make_mailbox()
        mailbox.close("done")
        stats = mailbox.statistics()
        assert (stats.closed, stats.closed_reason) == (True, "done")

    def test_statistics_are_a_frozen_snapshot(self) -> None:
        mailbox = make_mailbox()
        stats = mailbox.statistics()
        mailbox.send_nowait("a")
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            stats.queued = 1  # type: ignore[misc]
        assert (stats.queued, mailbox.statistics().queued) == (0, 1)


# ---- invariants ------------------------------------------------------------------------------


class Item(NamedTuple):
    seq: int
    droppable: bool


def item_is_droppable(item: Item) -> bool:
    return item.droppable


@attrs.define
class Trace:
    """What one scripted run of sends and receives observed, from the outside."""

    mailbox: Mailbox[Item]
    #: Items whose ``send_nowait`` returned (queued, or dropped as newcomers).
    accepted: list[Item] = attrs.Factory(list)
    #: Items (not markers) the receiver got, in order.
    received: list[Item] = attrs.Factory(list)
    #: Sum of ``Dropped.count`` over the markers the receiver got.
    markers: int = 0
    #: Drops the disconnect made unobservable: the queue it discarded, plus drops that had
    #: happened but were not yet reported by a marker (the reader sees the end, not a marker).
    discarded_by_disconnect: int = 0
    disconnected: bool = False
    longest: int = 0


#: A script step: ``None`` receives; ``True``/``False`` sends an item with that droppable flag.
scripts = st.lists(st.one_of(st.none(), st.booleans()), max_size=60)
policies = st.sampled_from(Overflow)
capacities = st.integers(min_value=1, max_value=5)


def run_script(overflow: Overflow, capacity: int, script: list[bool | None]) -> Trace:
    """Drive a mailbox synchronously (the nowait methods need no trio loop)."""
    trace = Trace(Mailbox(capacity, overflow, droppable=item_is_droppable))
    mailbox = trace.mailbox
    for seq, step in enumerate(script):
        if step is None:
            try:
                got = mailbox.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                pass
            else:
                if isinstance(got, Dropped):
                    trace.markers += got.count
                else:
                    trace.received.append(got)
        else:
            item = Item(seq, step)
            queued_before = len(mailbox)
            unreported_before = mailbox.statistics().dropped - trace.markers
            try:
                mailbox.send_nowait(item)
            except trio.WouldBlock:
                pass
            except trio.ClosedResourceError:
                if not trace.disconnected:
                    trace.disconnected = True
                    trace.discarded_by_disconnect = queued_before + unreported_before
            else:
                trace.accepted.append(item)
        trace.longest = max(trace.longest, len(mailbox))
    return trace


def finish(trace: Trace) -> None:
    """Read whatever is left, as a receiver would after the script."""
    while True:
        try:
            got = trace.mailbox.receive_nowait()
        except (trio.WouldBlock, trio.EndOfChannel):
            return
        if isinstance(got, Dropped):
            trace.markers += got.count
        else:
            trace.received.append(got)


class TestInvariants:
    @given(policies, capacities, scripts)
    def test_a_mailbox_never_holds_more_than_its_capacity(
        self, overflow: Overflow, capacity: int, script: list[bool | None]
    ) -> None:
        trace = run_script(overflow, capacity, script)
        assert trace.longest <= capacity

    @given(policies, capacities, scripts)
    def test_the_receiver_gets_a_subsequence_of_the_sent_items_in_send_order(
        self, overflow: Overflow, capacity: int, script: list[bool | None]
    ) -> None:
        trace = run_script(overflow, capacity, script)
        finish(trace)
        seqs = [item.seq for item in trace.received]
        assert seqs == sorted(set(seqs))
        assert set(trace.received) <= set(trace.accepted)

    @given(policies, capacities, scripts)
    def test_drop_markers_and_disconnect_discards_add_up_to_the_dropped_count(
        self, overflow: Overflow, capacity: int, script: list[bool | None]
    ) -> None:
        trace = run_script(overflow, capacity, script)
        finish(trace)
        stats = trace.mailbox.statistics()
        assert trace.markers + trace.discarded_by_disconnect == stats.dropped
        assert len(trace.accepted) == stats.received + stats.dropped + stats.queued

    @given(policies, capacities, scripts)
    def test_non_droppable_items_are_lost_only_to_a_disconnect(
        self, overflow: Overflow, capacity: int, script: list[bool | None]
    ) -> None:
        trace = run_script(overflow, capacity, script)
        finish(trace)
        # A disconnect may discard only what was still queued: items sent after the last one
        # the receiver got. Without a disconnect, nothing non-droppable may be lost at all.
        newest = max((item.seq for item in trace.received), default=-1)
        must_arrive = [
            item
            for item in trace.accepted
            if not item.droppable and (not trace.disconnected or item.seq < newest)
        ]
        assert set(must_arrive) <= set(trace.received)
