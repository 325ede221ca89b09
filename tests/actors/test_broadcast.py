"""Shared logs (``Router.join``) behave exactly like one mailbox per subscriber.

The differential test runs the same random script against two routers: one where every
subscriber has its own mailbox (``Router.subscribe``), one where subscribers with the same
filter and settings share a log (``Router.join``). Every read, end and counter must match.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from actors import Dropped, Mailbox, Overflow, Router

POLICIES = [Overflow.BLOCK, Overflow.DROP_OLDEST, Overflow.DROP_NEWEST, Overflow.DISCONNECT]
#: (index entry, extra filter) choices: everything, odd items, the 10-19 band, multiples of 3.
FILTERS: list[tuple[tuple[int, int] | None, Callable[[int], bool] | None]] = [
    (None, None),
    ((0, 1), None),
    ((1, 1), None),
    (None, lambda item: item % 3 == 0),
]


def keys(item: int) -> tuple[int, int]:
    return (item % 2, item // 10 % 3)


def droppable(item: int) -> bool:
    return item % 4 != 0


def new_router() -> Router[int]:
    return Router(1000, keys=keys, key_dimensions=2)


def read(reader: Any, how: str) -> object:
    try:
        if how == "one":
            got = reader.receive_nowait()
            return got.count if isinstance(got, Dropped) else got
        return [g.count if isinstance(g, Dropped) else g for g in reader.receive_all_nowait()]
    except trio.WouldBlock:
        return "empty"
    except trio.EndOfChannel:
        return "end"


ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("sub"),
            st.integers(0, len(POLICIES) - 1),
            st.integers(1, 4),
            st.integers(0, len(FILTERS) - 1),
        ),
        st.tuples(st.just("pub"), st.integers(0, 40)),
        st.tuples(st.just("route")),
        st.tuples(st.just("read"), st.integers(0, 7), st.sampled_from(["one", "all"])),
        st.tuples(st.just("leave"), st.integers(0, 7)),
    ),
    max_size=60,
)


async def run_script(script: list[tuple[Any, ...]], shared: bool) -> list[object]:
    """Run ``script`` on a fresh router; return everything observable, in order."""
    router = new_router()
    seen: list[object] = []
    readers: list[Any] = []
    left: set[int] = set()
    async with trio.open_nursery() as nursery:
        await nursery.start(router.serve)
        for op in script:
            if op[0] == "sub":
                policy, capacity, (index, accepts) = POLICIES[op[1]], op[2], FILTERS[op[3]]
                if shared:
                    readers.append(
                        router.join(
                            (op[1], capacity, op[3]),
                            capacity=capacity,
                            overflow=policy,
                            droppable=droppable,
                            accepts=accepts,
                            index=index,
                        )
                    )
                else:
                    mailbox = Mailbox(capacity, policy, None, droppable)
                    router.subscribe(mailbox, accepts, index=index)
                    readers.append(mailbox)
            elif op[0] == "pub":
                router.publish_nowait(op[1])
            elif op[0] == "route":
                await trio.testing.wait_all_tasks_blocked()
            elif op[0] == "read" and op[1] < len(readers) and op[1] not in left:
                seen.append((op[1], read(readers[op[1]], op[2])))
            elif op[0] == "leave" and op[1] < len(readers) and op[1] not in left:
                left.add(op[1])
                seen.append((op[1], "left", readers[op[1]].statistics().received))
                leave(router, readers[op[1]], shared)
        await trio.testing.wait_all_tasks_blocked()
        stats = router.statistics()
        seen.append(("live", stats.deliveries, stats.drops, stats.disconnects, stats.subscribers))
        router.close()
        # Unblock a router waiting on a full BLOCK reader: read everything, then see the end.
        for number, reader in enumerate(readers):
            if number not in left:
                rest: list[object] = []
                while (got := read(reader, "one")) not in ("end", "empty"):
                    rest.append(got)
                    await trio.testing.wait_all_tasks_blocked()
                seen.append((number, rest, reader.closed_reason))
        for number, reader in enumerate(readers):
            if number not in left:
                leave(router, reader, shared)
    final = router.statistics()
    seen.append(("final", final.deliveries, final.drops, final.disconnects, final.subscribers))
    return seen


def leave(router: Router[int], reader: Any, shared: bool) -> None:
    if shared:
        router.leave(reader)
    else:
        for subscriber in router.subscribers():
            if subscriber.mailbox is reader:
                router.unsubscribe(subscriber)
        reader.close()


class TestSharedLogEquivalence:
    @settings(max_examples=400, deadline=None)
    @given(ops)
    def test_a_shared_log_reads_exactly_like_one_mailbox_per_subscriber(
        self, script: list[tuple[Any, ...]]
    ) -> None:
        clock = trio.testing.MockClock(autojump_threshold=0)
        plain = trio.run(run_script, script, False, clock=clock)
        shared = trio.run(run_script, script, True, clock=clock)
        assert shared == plain


class TestSharedLog:
    async def test_readers_of_one_group_share_one_log(self, nursery: trio.Nursery) -> None:
        router = new_router()
        await nursery.start(router.serve)
        first = router.join("k", capacity=4)
        second = router.join("k", capacity=4)
        assert first.group is second.group
        for item in range(3):
            router.publish_nowait(item)
        await trio.testing.wait_all_tasks_blocked()
        assert first.receive_all_nowait() == [0, 1, 2]
        assert [second.receive_nowait() for _ in range(3)] == [0, 1, 2]

    async def test_a_reader_that_falls_behind_spills_and_then_rejoins(
        self, nursery: trio.Nursery
    ) -> None:
        router = new_router()
        await nursery.start(router.serve)
        slow = router.join("k", capacity=2, overflow=Overflow.DROP_OLDEST, droppable=droppable)
        fast = router.join("k", capacity=2, overflow=Overflow.DROP_OLDEST, droppable=droppable)
        for item in (1, 2, 3):
            router.publish_nowait(item)
            await trio.testing.wait_all_tasks_blocked()
            fast.receive_all_nowait()
        assert not slow.attached
        assert [slow.receive_nowait() for _ in range(3)] == [Dropped(1), 2, 3]
        with pytest.raises(trio.WouldBlock):
            slow.receive_nowait()
        assert slow.attached  # its mailbox ran empty: back on the log

    async def test_a_group_whose_filter_fails_ends_every_member(
        self, nursery: trio.Nursery
    ) -> None:
        def broken(item: int) -> bool:
            raise ValueError("filter bug")

        router = new_router()
        await nursery.start(router.serve)
        members = [router.join("k", capacity=2, accepts=broken) for _ in range(2)]
        router.publish_nowait(1)
        await trio.testing.wait_all_tasks_blocked()
        assert [m.closed_reason for m in members] == ["subscriber failed"] * 2
        with pytest.raises(trio.EndOfChannel):
            members[0].receive_nowait()

    async def test_the_log_never_holds_more_than_capacity_plus_one_items(
        self, nursery: trio.Nursery
    ) -> None:
        router = new_router()
        await nursery.start(router.serve)
        member = router.join("k", capacity=3, overflow=Overflow.DROP_OLDEST, droppable=droppable)
        reader = router.join("k", capacity=3, overflow=Overflow.DROP_OLDEST, droppable=droppable)
        for item in range(50):
            router.publish_nowait(item)
            await trio.testing.wait_all_tasks_blocked()
            reader.receive_all_nowait()
            assert len(member.group.items) <= 4
        assert not member.attached  # it never read: it spilled


class TestGroupsEndLikeMailboxes:
    """Found by review: two ways a group ended unlike one mailbox per subscriber."""

    async def test_a_group_whose_filter_fails_discards_what_its_members_had_not_read(
        self, nursery: trio.Nursery
    ) -> None:
        def flaky(item: int) -> bool:
            if item == 99:
                raise ValueError("filter bug")
            return True

        async def scenario(shared: bool) -> tuple[object, ...]:
            router = new_router()
            await nursery.start(router.serve)
            reader: Any
            if shared:
                reader = router.join("k", capacity=4, accepts=flaky)
            else:
                reader = Mailbox(4)
                router.subscribe(reader, flaky)
            for item in (1, 2, 99):
                router.publish_nowait(item)
            await trio.testing.wait_all_tasks_blocked()
            stats = router.statistics()
            return (read(reader, "all"), reader.closed_reason, stats.drops, stats.subscribers)

        with trio.fail_after(5):
            assert (
                await scenario(True)
                == await scenario(False)
                == (
                    "end",
                    "subscriber failed",
                    2,
                    0,
                )
            )

    async def test_closing_the_subscribers_stops_a_group_and_a_later_join_gets_new_items(
        self, nursery: trio.Nursery
    ) -> None:
        async def scenario(shared: bool) -> tuple[object, ...]:
            router = new_router()
            await nursery.start(router.serve)

            def subscribe() -> Any:
                if shared:
                    return router.join("k", capacity=4)
                mailbox: Mailbox[int] = Mailbox(4)
                router.subscribe(mailbox)
                return mailbox

            first = subscribe()
            router.publish_nowait(1)
            await trio.testing.wait_all_tasks_blocked()
            router.close_subscribers("cut")
            router.publish_nowait(2)
            await trio.testing.wait_all_tasks_blocked()
            second = subscribe()
            router.publish_nowait(3)
            await trio.testing.wait_all_tasks_blocked()
            return (
                [read(first, "one") for _ in range(2)],
                first.closed_reason,
                [read(second, "one") for _ in range(2)],
                second.closed_reason,
            )

        with trio.fail_after(5):
            assert await scenario(True) == await scenario(False)
