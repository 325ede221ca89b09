"""A node in a process of its own, for the test that kills it: ``python -m
tests.cluster._crashing_node URL``. It joins as node ``crashing``, starts run ``doomed`` in
session ``s`` (which waits for ever), prints ``ready`` and waits to be killed."""

from __future__ import annotations

import sys

import trio

import pipeline as pl
import pipeline.cluster as plc

from .conftest import BUS_CONFIG, FAST, waits


async def main(url: str) -> None:
    async with pl.open_bus(BUS_CONFIG) as bus:
        async with plc.join(bus, url, node_id="crashing", config=FAST):
            await bus.start_run(waits, run_id="doomed", context=pl.RunContext(session_key="s"))
            print("ready", flush=True)
            await trio.sleep_forever()


if __name__ == "__main__":
    trio.run(main, sys.argv[1])
