"""Ingest: wire dicts are checked strictly; a rejected one leaves the bus as it was."""

from typing import Any

import trio

import pipeline as pl

GOOD: dict[str, Any] = {
    "runId": "remote-1",
    "seq": 1,
    "stream": "assistant",
    "ts": 1_700_000_000_000,
    "data": {"text": "Hi"},
}

BAD: list[object] = [
    {key: value for key, value in GOOD.items() if key != "ts"},  # a missing field
    {**GOOD, "seq": 0},  # seq below 1
    {**GOOD, "seq": True},  # a bool is not an int here
    {**GOOD, "stream": "  "},  # blank
    {**GOOD, "data": ["not", "a", "mapping"]},
    {**GOOD, "data": {1: "not a str key"}},
    {**GOOD, "sessionKey": ""},
    ["not", "an", "object"],
]


async def main() -> None:
    async with pl.open_bus(pl.BusConfig(max_event_bytes=1024)) as bus:
        for obj in BAD:
            try:
                await bus.ingest(obj)  # type: ignore[arg-type]
            except pl.InvalidEvent:
                pass
            else:
                raise AssertionError(f"accepted {obj!r}")
        # 600 characters, but 1,200 bytes of UTF-8: too large.
        too_large = {**GOOD, "data": {"text": "é" * 600}}
        try:
            await bus.ingest(too_large)
        except pl.EventTooLarge:  # a subclass of InvalidEvent
            pass
        else:
            raise AssertionError("accepted an oversized event")
        assert bus.statistics().live_runs == 0
        assert bus.statistics().events_published == 0
        assert await bus.ingest(GOOD)  # the bus is fine
        assert bus.statistics().live_runs == 1


if __name__ == "__main__":
    trio.run(main)
