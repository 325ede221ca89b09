"""Ingest: events sequenced on another node, with duplicates dropped and gaps reported."""

from typing import Any

import trio
import trio.testing

import pipeline as pl
from pipeline.testing import collect_until, is_terminal


def wire(seq: int, stream: str, **data: Any) -> dict[str, Any]:
    return {
        "runId": "remote-1",
        "seq": seq,
        "stream": stream,
        "ts": 1_700_000_000_000 + seq,
        "data": data,
        "sessionKey": "main",
    }


async def main() -> None:
    async with pl.open_bus() as bus:
        async with bus.subscribe(session_key="main") as sub:
            assert await bus.ingest(wire(1, "lifecycle", phase="start"))
            assert bus.statistics().live_runs == 1  # a tracked run, counted against max_runs
            assert await bus.ingest(wire(2, "assistant", text="Hi", delta="Hi"))
            assert not await bus.ingest(wire(2, "assistant", text="Hi", delta="Hi"))  # duplicate
            assert await bus.ingest(wire(5, "assistant", text="Hi you", delta=" you"))  # 3, 4 lost
            assert await bus.ingest(wire(6, "lifecycle", phase="end"))
            events = await collect_until(sub, is_terminal)
        assert [(e.stream, e.seq) for e in events] == [
            ("lifecycle", 1),
            ("assistant", 2),
            ("error", 5),
            ("assistant", 5),
            ("lifecycle", 6),
        ]
        assert events[2].data == {"reason": "seq gap", "expected": 3, "received": 5}
        assert bus.statistics().duplicates == 1
        await trio.testing.wait_all_tasks_blocked()
        assert bus.statistics().live_runs == 0  # the terminal event ended the tracked run
        assert bus.statistics().runs_by_outcome["ok"] == 1


if __name__ == "__main__":
    trio.run(main)
