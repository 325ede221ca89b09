"""Tests for :class:`actors.Router`: fan-out, filters, ordering, closing, slow subscribers.

Items are ints; every item is droppable for the subscribers' ``DROP_*`` policies.
"""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

import actors
from actors import _router
from actors._mailbox import SLOW_CONSUMER, Dropped, Mailbox, Overflow
from actors._router import SUBSCRIBER_FAILED, Router, RouterStatistics


class Boom(Exception):
    pass


def always(item: int) -> bool:
    return True


def even(item: int) -> bool:
    return item % 2 == 0


def make_mailbox(
    capacity: int = 100,
    overflow: Overflow = Overflow.BLOCK,
    *,
    block_timeout: float | None = None,
) -> Mailbox[int]:
    return Mailbox(capacity, overflow, block_timeout, droppable=always)


def drain(mailbox: Mailbox[int]) -> list[int | Dropped]:
    """Read everything readable now, drop markers included."""
    got: list[int | Dropped] = []
    while True:
        try:
            got.append(mailbox.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            return got


async def read_to_end(mailbox: Mailbox[int]) -> list[int | Dropped]:
    got: list[int | Dropped] = []
    while True:
        try:
            got.append(await mailbox.receive())
        except trio.EndOfChannel:
            return got


def publish_all(router: Router[int], items: range | list[int]) -> None:
    for item in items:
        router.publish_nowait(item)


@pytest.fixture
async def router(nursery: trio.Nursery) -> Router[int]:
    """A router with an inbox of 16, already serving."""
    router: Router[int] = Router(16)
    await nursery.start(router.serve)
    return router


class TestExports:
    def test_every_public_name_of_the_router_module_is_exported_by_the_package(self) -> None:
        missing = [
            name
            for name in _router.__all__
            if getattr(actors, name, None) is not getattr(_router, name)
        ]
        assert missing == []


class TestFanOut:
    async def test_every_subscriber_gets_every_item(self, router: Router[int]) -> None:
        first, second = make_mailbox(), make_mailbox()
        router.subscribe(first)
        router.subscribe(second)
        publish_all(router, range(5))
        router.close()
        with trio.fail_after(5):
            assert await read_to_end(first) == [0, 1, 2, 3, 4]
            assert await read_to_end(second) == [0, 1, 2, 3, 4]

    async def test_a_subscriber_gets_only_the_items_its_filter_accepts(
        self, router: Router[int]
    ) -> None:
        evens = make_mailbox()
        router.subscribe(evens, even)
        publish_all(router, range(7))
        router.close()
        with trio.fail_after(5):
            assert await read_to_end(evens) == [0, 2, 4, 6]

    async def test_each_subscriber_sees_the_items_in_publish_order(
        self, router: Router[int]
    ) -> None:
        count = 300  # several router batches, through small mailboxes
        mailboxes = [make_mailbox(capacity=8), make_mailbox(capacity=3)]
        evens = make_mailbox(capacity=5)
        for mailbox in mailboxes:
            router.subscribe(mailbox)
        router.subscribe(evens, even)
        results: dict[int, list[int | Dropped]] = {}

        async def reader(index: int, mailbox: Mailbox[int]) -> None:
            results[index] = await read_to_end(mailbox)

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                for index, mailbox in enumerate([*mailboxes, evens]):
                    nursery.start_soon(reader, index, mailbox)
                for item in range(count):
                    await router.publish(item)
                router.close()
        assert results == {
            0: list(range(count)),
            1: list(range(count)),
            2: list(range(0, count, 2)),
        }

    async def test_a_subscriber_sees_only_items_published_after_it_subscribed(
        self, nursery: trio.Nursery
    ) -> None:
        router: Router[int] = Router(16)
        early, late = make_mailbox(), make_mailbox()
        router.subscribe(early)
        publish_all(router, [1, 2, 3])
        router.subscribe(late)  # 1, 2, 3 are still queued in the inbox
        publish_all(router, [4, 5])
        router.close()
        with trio.fail_after(5):
            await nursery.start(router.serve)
            assert (await read_to_end(early), await read_to_end(late)) == (
                [1, 2, 3, 4, 5],
                [4, 5],
            )

    async def test_a_subscriber_added_while_the_router_is_mid_batch_sees_only_later_items(
        self, router: Router[int]
    ) -> None:
        holder = make_mailbox(capacity=1)  # BLOCK, no timeout: holds the router on item 1
        router.subscribe(holder)
        publish_all(router, [0, 1, 2])
        with trio.fail_after(5):
            await trio.testing.wait_all_tasks_blocked()
            late = make_mailbox()
            router.subscribe(late)
            publish_all(router, [3, 4])
            router.close()
            assert await read_to_end(holder) == [0, 1, 2, 3, 4]
            assert await read_to_end(late) == [3, 4]


class TestFlushNowait:
    """Routing what is queued from the publisher's own task, without the router task."""

    async def test_flush_gives_every_subscriber_the_queued_items_before_it_returns(self) -> None:
        router: Router[int] = Router(16)  # not served: only a flush routes
        first, second = make_mailbox(), make_mailbox()
        router.subscribe(first)
        router.subscribe(second)
        publish_all(router, [1, 2, 3])
        assert router.flush_nowait() is True
        assert (drain(first), drain(second)) == ([1, 2, 3], [1, 2, 3])

    async def test_flush_empties_the_inbox(self) -> None:
        router: Router[int] = Router(16)
        router.subscribe(make_mailbox())
        publish_all(router, [1, 2, 3])
        router.flush_nowait()
        assert router.statistics().queued == 0
        assert router.free() == 16

    async def test_flush_applies_each_subscribers_filter(self) -> None:
        router: Router[int] = Router(16)
        evens = make_mailbox()
        router.subscribe(evens, even)
        publish_all(router, range(6))
        router.flush_nowait()
        assert drain(evens) == [0, 2, 4]

    async def test_a_subscriber_added_while_items_are_queued_gets_only_later_ones_from_a_flush(
        self,
    ) -> None:
        router: Router[int] = Router(16)
        early = make_mailbox()
        router.subscribe(early)
        publish_all(router, [1, 2])
        late = make_mailbox()
        router.subscribe(late)
        publish_all(router, [3])
        router.flush_nowait()
        assert (drain(early), drain(late)) == ([1, 2, 3], [3])

    async def test_flush_refuses_when_a_drop_subscriber_would_lose_items(self) -> None:
        # At the router's own pace its reader might keep up; a flush must not make it drop.
        router: Router[int] = Router(16)
        dropping = make_mailbox(capacity=1, overflow=Overflow.DROP_NEWEST)
        router.subscribe(dropping)
        publish_all(router, [1, 2, 3])
        assert router.flush_nowait() is False
        assert (drain(dropping), router.statistics().queued) == ([], 3)

    async def test_flush_refuses_when_a_block_subscriber_lacks_room_for_the_queued_items(
        self,
    ) -> None:
        router: Router[int] = Router(16)
        roomy, cramped = make_mailbox(), make_mailbox(capacity=2)
        router.subscribe(roomy)
        router.subscribe(cramped)
        publish_all(router, [1, 2, 3])
        assert router.flush_nowait() is False
        assert (drain(roomy), drain(cramped), router.statistics().queued) == ([], [], 3)

    async def test_flush_refuses_while_the_router_waits_on_a_full_block_subscriber(
        self, router: Router[int]
    ) -> None:
        holder = make_mailbox(capacity=1)  # BLOCK, no timeout: holds the router on item 1
        router.subscribe(holder)
        publish_all(router, [0, 1, 2])
        await trio.testing.wait_all_tasks_blocked()
        assert holder.receive_nowait() == 0  # room for the queued item 3, but 1 and 2 are held
        publish_all(router, [3])
        assert router.flush_nowait() is False
        router.close()
        with trio.fail_after(5):
            assert await read_to_end(holder) == [1, 2, 3]

    async def test_items_stay_in_publish_order_across_flushes_and_the_router_task(
        self, router: Router[int]
    ) -> None:
        reader = make_mailbox()
        router.subscribe(reader)
        publish_all(router, [0, 1])
        await trio.testing.wait_all_tasks_blocked()
        publish_all(router, [2, 3])
        router.flush_nowait()
        publish_all(router, [4, 5])
        router.close()
        with trio.fail_after(5):
            assert await read_to_end(reader) == [0, 1, 2, 3, 4, 5]


class TestClose:
    async def test_close_lets_the_router_deliver_what_is_queued_before_the_end(
        self, router: Router[int]
    ) -> None:
        mailbox = make_mailbox()
        router.subscribe(mailbox)
        publish_all(router, range(10))  # the router has not run yet: all still in the inbox
        router.close("done")
        with trio.fail_after(5):
            assert await read_to_end(mailbox) == list(range(10))

    async def test_close_closes_every_mailbox_with_the_given_reason(
        self, router: Router[int]
    ) -> None:
        mailboxes = [make_mailbox(), make_mailbox()]
        for mailbox in mailboxes:
            router.subscribe(mailbox)
        publish_all(router, [1])
        router.close("done")
        with trio.fail_after(5):
            await trio.testing.wait_all_tasks_blocked()
        assert [m.closed_reason for m in mailboxes] == ["done", "done"]

    async def test_close_without_a_reason_closes_the_mailboxes_as_router_closed(
        self, router: Router[int]
    ) -> None:
        mailbox = make_mailbox()
        router.subscribe(mailbox)
        router.close()
        with trio.fail_after(5):
            await trio.testing.wait_all_tasks_blocked()
        assert mailbox.closed_reason == "router closed"

    async def test_close_also_ends_a_subscriber_still_waiting_for_its_first_item(
        self, nursery: trio.Nursery
    ) -> None:
        router: Router[int] = Router(16)
        publish_all(router, [1])
        pending = make_mailbox()
        router.subscribe(pending)
        router.close("done")
        with trio.fail_after(5):
            await nursery.start(router.serve)
            assert await read_to_end(pending) == []
        assert pending.closed_reason == "done"

    async def test_the_router_task_ends_once_closed_and_drained(self) -> None:
        router: Router[int] = Router(16)
        mailbox = make_mailbox()
        router.subscribe(mailbox)
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                await nursery.start(router.serve)
                publish_all(router, range(3))
                router.close()
        assert drain(mailbox) == [0, 1, 2]

    async def test_publish_after_close_raises_closed_resource_error(
        self, router: Router[int]
    ) -> None:
        router.close()
        with pytest.raises(trio.ClosedResourceError):
            await router.publish(1)

    async def test_publish_nowait_after_close_raises_closed_resource_error(
        self, router: Router[int]
    ) -> None:
        router.close()
        with pytest.raises(trio.ClosedResourceError):
            router.publish_nowait(1)

    async def test_subscribe_after_close_raises_closed_resource_error(
        self, router: Router[int]
    ) -> None:
        router.close()
        with pytest.raises(trio.ClosedResourceError):
            router.subscribe(make_mailbox())


class TestPublish:
    async def test_publish_nowait_on_a_full_inbox_raises_would_block(self) -> None:
        router: Router[int] = Router(2)
        publish_all(router, [1, 2])
        with pytest.raises(trio.WouldBlock):
            router.publish_nowait(3)
        assert router.statistics().published == 2

    async def test_publish_on_a_full_inbox_waits_until_the_router_takes_items(
        self, nursery: trio.Nursery
    ) -> None:
        router: Router[int] = Router(2)
        mailbox = make_mailbox()
        router.subscribe(mailbox)
        publish_all(router, [1, 2])
        published = trio.Event()

        async def publisher() -> None:
            await router.publish(3)
            published.set()

        with trio.fail_after(5):
            nursery.start_soon(publisher)
            await trio.testing.wait_all_tasks_blocked()
            assert not published.is_set()
            await nursery.start(router.serve)
            await published.wait()
            router.close()
            assert await read_to_end(mailbox) == [1, 2, 3]

    async def test_a_publisher_blocked_on_a_full_inbox_gets_in_past_an_idle_waiter(
        self, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
    ) -> None:
        router: Router[int] = Router(1)
        mailbox = make_mailbox()
        router.subscribe(mailbox)
        publish_all(router, [1])
        waited, published = trio.Event(), trio.Event()

        async def waiter() -> None:
            await router.wait_free(1)  # and then decides not to publish
            waited.set()

        async def publisher() -> None:
            await router.publish(2)
            published.set()

        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(publisher)
        await trio.testing.wait_all_tasks_blocked()
        with trio.fail_after(100):
            await nursery.start(router.serve)
            await waited.wait()
            await published.wait()
        assert router.statistics().published == 2

    async def test_free_tells_how_many_items_the_inbox_takes(self) -> None:
        router: Router[int] = Router(5)
        publish_all(router, [1, 2])
        assert router.free() == 3

    async def test_wait_free_waits_until_the_router_takes_items(
        self, nursery: trio.Nursery
    ) -> None:
        router: Router[int] = Router(2)
        publish_all(router, [1, 2])
        done = trio.Event()

        async def waiter() -> None:
            await router.wait_free(2)
            done.set()

        with trio.fail_after(5):
            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            assert not done.is_set()
            await nursery.start(router.serve)
            await done.wait()
        assert router.free() == 2


class TestSlowSubscribers:
    @pytest.mark.parametrize("overflow", [Overflow.DROP_OLDEST, Overflow.DROP_NEWEST])
    async def test_a_slow_drop_subscriber_loses_items_while_a_fast_one_gets_them_all(
        self, router: Router[int], overflow: Overflow
    ) -> None:
        slow, fast = make_mailbox(capacity=2, overflow=overflow), make_mailbox()
        router.subscribe(slow)
        router.subscribe(fast)
        publish_all(router, range(10))
        router.close()
        with trio.fail_after(5):
            got_fast = await read_to_end(fast)
            got_slow = await read_to_end(slow)
        assert got_fast == list(range(10))
        assert got_slow[0] == Dropped(8)
        assert len(got_slow) == 3

    async def test_a_block_subscriber_that_never_reads_is_disconnected_after_its_timeout(
        self, router: Router[int], autojump_clock: trio.testing.MockClock
    ) -> None:
        stalled = make_mailbox(capacity=1, block_timeout=3)
        router.subscribe(stalled)
        publish_all(router, range(5))
        await trio.sleep(2.9)
        assert stalled.closed_reason is None
        await trio.sleep(0.2)
        assert stalled.closed_reason == SLOW_CONSUMER

    async def test_after_a_block_subscriber_is_disconnected_the_others_go_on(
        self, router: Router[int], autojump_clock: trio.testing.MockClock
    ) -> None:
        stalled = make_mailbox(capacity=1, block_timeout=3)
        fast = make_mailbox(capacity=2)
        router.subscribe(stalled)
        router.subscribe(fast)
        start = trio.current_time()
        arrivals: list[tuple[int | Dropped, float]] = []
        publish_all(router, range(5))
        router.close()
        with trio.fail_after(100):
            while True:
                try:
                    item = await fast.receive()
                except trio.EndOfChannel:
                    break
                arrivals.append((item, trio.current_time() - start))
        # Item 1 reaches the fast subscriber at once: the router gives an item to everyone with
        # room before it waits for a full BLOCK subscriber. Item 2 waits for that subscriber's
        # block_timeout, after which it is disconnected.
        assert arrivals == [(0, 0), (1, 0), (2, 3), (3, 3), (4, 3)]

    async def test_a_full_disconnect_subscriber_is_removed_as_a_slow_consumer(
        self, router: Router[int]
    ) -> None:
        cut, kept = make_mailbox(capacity=1, overflow=Overflow.DISCONNECT), make_mailbox()
        router.subscribe(cut)
        router.subscribe(kept)
        publish_all(router, range(3))
        with trio.fail_after(5):
            await trio.testing.wait_all_tasks_blocked()
        assert (cut.closed_reason, router.statistics().subscribers) == (SLOW_CONSUMER, 1)


class TestFailingSubscriber:
    @staticmethod
    def breaks_on_two(item: int) -> bool:
        if item == 2:
            raise Boom("filter broke")
        return True

    async def test_a_subscriber_whose_filter_raises_is_disconnected_as_failed(
        self, router: Router[int], caplog: pytest.LogCaptureFixture
    ) -> None:
        broken = make_mailbox()
        router.subscribe(broken, self.breaks_on_two)
        publish_all(router, range(4))
        with trio.fail_after(5):
            await trio.testing.wait_all_tasks_blocked()
        assert (broken.closed_reason, drain(broken)) == (SUBSCRIBER_FAILED, [])

    async def test_the_error_of_a_failing_filter_is_logged(
        self, router: Router[int], caplog: pytest.LogCaptureFixture
    ) -> None:
        router.subscribe(make_mailbox(), self.breaks_on_two)
        publish_all(router, range(4))
        with trio.fail_after(5):
            await trio.testing.wait_all_tasks_blocked()
        [record] = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert record.name == "actors.router"
        assert record.exc_info is not None
        assert isinstance(record.exc_info[1], Boom)

    async def test_other_subscribers_are_unaffected_by_a_failing_filter(
        self, router: Router[int], caplog: pytest.LogCaptureFixture
    ) -> None:
        healthy = make_mailbox()
        router.subscribe(make_mailbox(), self.breaks_on_two)
        router.subscribe(healthy)
        publish_all(router, range(4))
        router.close("done")
        with trio.fail_after(5):
            assert await read_to_end(healthy) == [0, 1, 2, 3]
        assert (healthy.closed_reason, router.statistics().subscribers) == ("done", 1)

    async def test_a_subscriber_whose_droppable_predicate_raises_is_disconnected_as_failed(
        self, router: Router[int], caplog: pytest.LogCaptureFixture
    ) -> None:
        def droppable(item: int) -> bool:
            raise Boom("predicate broke")

        broken: Mailbox[int] = Mailbox(1, Overflow.DROP_OLDEST, droppable=droppable)
        router.subscribe(broken)
        publish_all(router, range(3))
        with trio.fail_after(5):
            await trio.testing.wait_all_tasks_blocked()
        assert broken.closed_reason == SUBSCRIBER_FAILED


class TestUnsubscribe:
    async def test_an_unsubscribed_mailbox_is_closed_and_gets_no_later_items(
        self, router: Router[int]
    ) -> None:
        mailbox = make_mailbox()
        subscriber = router.subscribe(mailbox)
        publish_all(router, [1])
        with trio.fail_after(5):
            await trio.testing.wait_all_tasks_blocked()
            router.unsubscribe(subscriber)
            publish_all(router, [2])
            await trio.testing.wait_all_tasks_blocked()
            assert await read_to_end(mailbox) == [1]

    async def test_unsubscribe_is_idempotent(self, router: Router[int]) -> None:
        mailbox = make_mailbox()
        subscriber = router.subscribe(mailbox)
        publish_all(router, [1, 2])
        with trio.fail_after(5):
            await trio.testing.wait_all_tasks_blocked()
        drain(mailbox)
        router.unsubscribe(subscriber)
        once = router.statistics()
        router.unsubscribe(subscriber)
        assert router.statistics() == once
        assert once.subscribers == 0

    async def test_a_subscriber_can_be_unsubscribed_before_its_first_item(self) -> None:
        router: Router[int] = Router(16)
        publish_all(router, [1])
        mailbox = make_mailbox()
        subscriber = router.subscribe(mailbox)  # waits for items after the queued one
        router.unsubscribe(subscriber)
        assert (mailbox.closed, router.statistics().subscribers) == (True, 0)


class TestStatistics:
    async def test_a_new_router_has_zero_statistics(self) -> None:
        router: Router[int] = Router(4)
        assert router.statistics() == RouterStatistics(
            published=0, queued=0, deliveries=0, drops=0, disconnects=0, subscribers=0
        )

    async def test_queued_counts_the_items_waiting_in_the_inbox(self) -> None:
        router: Router[int] = Router(4)
        publish_all(router, [1, 2, 3])
        assert (router.statistics().published, router.statistics().queued) == (3, 3)

    async def test_deliveries_count_items_read_not_items_routed(self, router: Router[int]) -> None:
        mailbox = make_mailbox()
        router.subscribe(mailbox)
        publish_all(router, range(5))
        with trio.fail_after(5):
            await trio.testing.wait_all_tasks_blocked()
        before = router.statistics().deliveries
        mailbox.take_nowait(3)
        assert (before, router.statistics().deliveries) == (0, 3)

    @staticmethod
    async def three_kinds_of_subscribers(
        router: Router[int],
    ) -> tuple[actors.Subscriber[int], actors.Subscriber[int]]:
        """A reader that keeps up, a ``DROP_OLDEST`` one that never reads, a ``DISCONNECT``
        one that overflows; five items published. Returns the two that stay attached."""
        reader = router.subscribe(make_mailbox())
        dropper = router.subscribe(make_mailbox(capacity=2, overflow=Overflow.DROP_OLDEST))
        router.subscribe(make_mailbox(capacity=1, overflow=Overflow.DISCONNECT))
        publish_all(router, range(5))
        with trio.fail_after(5):
            await trio.testing.wait_all_tasks_blocked()
        assert drain(reader.mailbox) == [0, 1, 2, 3, 4]
        return reader, dropper

    async def test_statistics_add_up_over_the_subscribers(self, router: Router[int]) -> None:
        await self.three_kinds_of_subscribers(router)
        # drops: 3 by the dropper, 1 item discarded when the third one was cut off
        assert router.statistics() == RouterStatistics(
            published=5, queued=0, deliveries=5, drops=4, disconnects=1, subscribers=2
        )

    async def test_statistics_keep_the_counts_of_subscribers_that_left(
        self, router: Router[int]
    ) -> None:
        reader, dropper = await self.three_kinds_of_subscribers(router)
        router.unsubscribe(reader)
        router.unsubscribe(dropper)
        assert router.statistics() == RouterStatistics(
            published=5, queued=0, deliveries=5, drops=4, disconnects=1, subscribers=0
        )

    async def test_a_subscriber_that_failed_is_counted_as_a_disconnect(
        self, router: Router[int], caplog: pytest.LogCaptureFixture
    ) -> None:
        def broken(item: int) -> bool:
            raise Boom("filter broke")

        router.subscribe(make_mailbox(), broken)
        publish_all(router, [1])
        with trio.fail_after(5):
            await trio.testing.wait_all_tasks_blocked()
        stats = router.statistics()
        assert (stats.disconnects, stats.subscribers) == (1, 0)


class TestRouterStopping:
    async def test_a_publisher_waiting_on_a_router_that_stops_is_released(self) -> None:
        router: Router[int] = Router(1)
        router.publish_nowait(1)
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                await nursery.start(router.serve)
                nursery.cancel_scope.cancel()
            with pytest.raises(trio.ClosedResourceError):
                await router.publish(2)


def parity_and_tens(item: int) -> tuple[int, int]:
    """Index keys of an int: its parity (dimension 0) and its tens (dimension 1)."""
    return (item % 2, item // 10)


@pytest.fixture
async def indexed(nursery: trio.Nursery) -> Router[int]:
    """A router indexing ints by parity and by tens, with an inbox of 64, already serving."""
    router: Router[int] = Router(64, keys=parity_and_tens, key_dimensions=2)
    await nursery.start(router.serve)
    return router


class TestIndex:
    async def test_an_indexed_subscriber_gets_only_items_with_its_key(
        self, indexed: Router[int]
    ) -> None:
        odd, teens = make_mailbox(), make_mailbox()
        indexed.subscribe(odd, index=(0, 1))
        indexed.subscribe(teens, index=(1, 1))
        publish_all(indexed, range(25))
        await trio.testing.wait_all_tasks_blocked()
        assert drain(odd) == list(range(1, 25, 2))
        assert drain(teens) == list(range(10, 20))

    async def test_the_filter_checks_what_the_index_does_not(self, indexed: Router[int]) -> None:
        mailbox = make_mailbox()
        indexed.subscribe(mailbox, lambda item: item > 12, index=(1, 1))
        publish_all(indexed, range(25))
        await trio.testing.wait_all_tasks_blocked()
        assert drain(mailbox) == list(range(13, 20))

    async def test_an_unindexed_subscriber_still_gets_everything(
        self, indexed: Router[int]
    ) -> None:
        everything, evens = make_mailbox(), make_mailbox()
        indexed.subscribe(everything)
        indexed.subscribe(evens, index=(0, 0))
        publish_all(indexed, range(6))
        await trio.testing.wait_all_tasks_blocked()
        assert (drain(everything), drain(evens)) == ([0, 1, 2, 3, 4, 5], [0, 2, 4])

    async def test_items_keys_are_not_computed_while_no_subscriber_is_indexed(
        self, nursery: trio.Nursery
    ) -> None:
        computed: list[int] = []

        def keys(item: int) -> tuple[int]:
            computed.append(item)
            return (item,)

        router: Router[int] = Router(16, keys=keys, key_dimensions=1)
        await nursery.start(router.serve)
        router.subscribe(make_mailbox())
        publish_all(router, [1, 2])
        await trio.testing.wait_all_tasks_blocked()
        subscriber = router.subscribe(make_mailbox(), index=(0, 3))
        publish_all(router, [3])
        await trio.testing.wait_all_tasks_blocked()
        router.unsubscribe(subscriber)
        publish_all(router, [4])
        await trio.testing.wait_all_tasks_blocked()
        assert computed == [3]

    async def test_unsubscribing_an_indexed_subscriber_empties_its_bucket(
        self, indexed: Router[int]
    ) -> None:
        mailbox = make_mailbox()
        subscriber = indexed.subscribe(mailbox, index=(0, 1))
        indexed.unsubscribe(subscriber)
        indexed.unsubscribe(subscriber)  # twice is fine
        publish_all(indexed, [1, 3])
        await trio.testing.wait_all_tasks_blocked()
        assert (drain(mailbox), indexed.statistics().subscribers) == ([], 0)
        assert indexed._index == [{}, {}]

    async def test_an_indexed_subscriber_joining_behind_queued_items_sees_only_later_ones(
        self,
    ) -> None:
        router: Router[int] = Router(16, keys=parity_and_tens, key_dimensions=2)
        router.publish_nowait(1)
        mailbox = make_mailbox()
        router.subscribe(mailbox, index=(0, 1))
        router.publish_nowait(3)
        async with trio.open_nursery() as nursery:
            await nursery.start(router.serve)
            await trio.testing.wait_all_tasks_blocked()
            assert drain(mailbox) == [3]
            nursery.cancel_scope.cancel()

    def test_an_index_entry_needs_a_dimension_the_router_has(self) -> None:
        router: Router[int] = Router(4, keys=parity_and_tens, key_dimensions=2)
        with pytest.raises(ValueError, match="dimension"):
            router.subscribe(make_mailbox(), index=(2, 0))
        with pytest.raises(ValueError, match="dimension"):
            Router[int](4).subscribe(make_mailbox(), index=(0, 0))

    def test_keys_and_their_dimension_count_go_together(self) -> None:
        with pytest.raises(ValueError, match="key_dimensions"):
            Router[int](4, keys=parity_and_tens)
        with pytest.raises(ValueError, match="key_dimensions"):
            Router[int](4, key_dimensions=2)
