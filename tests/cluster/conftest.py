"""Fixtures: a real ``redis-server`` on a random loopback port, and buses joined to it.

These tests use real time and a real server (started and stopped here, restarted by some
tests). Without ``redis-server`` they skip locally and fail under CI (``CI=true``), where
``.ci/run`` installs it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import attrs
import pytest
import trio

import pipeline as pl
import pipeline.cluster as plc

#: Short timers, so that loss detection and reconnects take a fraction of a second.
FAST = plc.ClusterConfig(
    heartbeat_interval=0.2,
    heartbeat_ttl=0.6,
    block_ms=100,
    flush_interval=0.001,
    reconnect_min=0.02,
    reconnect_max=0.2,
    command_timeout=2.0,
    connect_timeout=1.0,
    close_timeout=1.0,
)
#: Generous, so a forwarded run never times out while a test looks at it.
BUS_CONFIG = pl.BusConfig(run_idle_timeout=60.0, chat_delta_interval=0.0)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@attrs.define(eq=False)
class RedisServer:
    """A ``redis-server`` subprocess on ``port``, without persistence, that tests can stop
    and start again on the same port (a restart loses every stream and key)."""

    executable: str
    port: int
    process: trio.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    async def start(self) -> None:
        args = [self.executable, "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--save", "", "--appendonly", "no", "--maxmemory", "256mb"]
        args += ["--maxmemory-policy", "noeviction"]
        self.process = await trio.lowlevel.open_process(args, stdout=subprocess.DEVNULL)
        with trio.fail_after(10):
            while True:
                if await self._answers_ping():
                    return
                await trio.sleep(0.02)

    async def stop(self) -> None:
        """Stop the server and wait until it is gone (SIGTERM, then SIGKILL after 5 s)."""
        process, self.process = self.process, None
        if process is None:
            return
        with trio.CancelScope(shield=True):
            process.terminate()
            with trio.move_on_after(5):
                await process.wait()
                return
            process.kill()
            await process.wait()

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    async def _answers_ping(self) -> bool:
        try:
            stream = await trio.open_tcp_stream("127.0.0.1", self.port)
        except OSError:
            return False
        async with stream:
            await stream.send_all(b"PING\r\n")
            return (await stream.receive_some(64)).startswith(b"+PONG")


@pytest.fixture
def redis_executable() -> str:
    """The ``redis-server`` binary: skipped without one locally, failed under CI.

    A plain fixture, so the skip or failure is reported as it is (not from inside trio).
    """
    executable = shutil.which("redis-server")
    if executable is None:
        message = "redis-server not installed: apt-get install redis-server"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return executable


@pytest.fixture
async def redis_server(redis_executable: str) -> AsyncIterator[RedisServer]:
    server = RedisServer(redis_executable, _free_port())
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@asynccontextmanager
async def joined(
    url: str, node_id: str, config: plc.ClusterConfig = FAST
) -> AsyncIterator[tuple[pl.Bus, plc.Node]]:
    """A fresh bus joined to the cluster at ``url`` as ``node_id``."""
    async with pl.open_bus(BUS_CONFIG) as bus:
        async with plc.join(bus, url, node_id=node_id, config=config) as node:
            yield bus, node


async def wait_until(condition: Callable[[], bool]) -> None:
    """Poll ``condition`` every 10 ms (real time: a real server is involved); the test's own
    ``trio.fail_after`` bounds the wait."""
    while True:
        if condition():
            return
        await trio.sleep(0.01)


def queued(sub: pl.Subscription) -> list[pl.Event]:
    return [sub.receive_nowait() for _ in range(sub.statistics().queued)]


# ---- run bodies and predicates several test modules use ---------------------------------------


async def says_hi(run: pl.Run) -> None:
    await run.emit("assistant", {"delta": "hi"})


async def waits(run: pl.Run) -> None:
    """Says it is thinking, then waits to be aborted."""
    await run.emit("assistant", {"delta": "thinking about it"})
    await trio.sleep_forever()


def is_final(event: pl.Event) -> bool:
    return event.stream == "chat" and event.data.get("state") == "final"
