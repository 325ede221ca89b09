"""Fixtures: a bus with a gateway on a random loopback port, and tokens of each kind."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import attrs
import pytest
import trio

import pipeline as pl
import pipeline.gateway
from pipeline.gateway import Gateway, GatewayConfig, Tokens

ADMIN = "admin-token-0001"
ALICE = "alice-token-0001"
BOB_READ = "bob-read-token-01"

TOKENS = Tokens.from_json(
    {
        "tokens": [
            {"token": ADMIN, "sessions": ["*"], "scopes": ["read", "write", "admin"]},
            {"token": ALICE, "sessions": ["alice"], "scopes": ["read", "write"]},
            {"token": BOB_READ, "sessions": ["bob"], "scopes": ["read"]},
        ]
    }
)


async def talker(run: pl.Run, message: str) -> None:
    """An agent that answers with the words of ``message`` and waits to be aborted if it
    says 'hang'."""
    for word in message.split():
        await run.emit("assistant", {"delta": word + " "})
    if "hang" in message:
        await trio.sleep_forever()


@attrs.define
class Served:
    bus: pl.Bus
    gateway: Gateway

    @property
    def url(self) -> str:
        return self.gateway.url


@pytest.fixture
def gateway_config() -> dict[str, Any]:
    """Overrides of the GatewayConfig the ``served`` fixture uses."""
    return {}


@pytest.fixture
async def served(nursery: trio.Nursery, gateway_config: dict[str, Any]) -> AsyncIterator[Served]:
    config = GatewayConfig(tokens=TOKENS, port=0, agent=talker, **gateway_config)
    async with pl.open_bus() as bus:
        gateway = await nursery.start(pl.gateway.serve, bus, config)
        yield Served(bus, gateway)
