"""pytest fixtures for testing agent code against the bus (registered as a pytest11 plugin).

- ``agent_bus_config``: the :class:`BusConfig` for ``agent_bus``; override it in your
  ``conftest.py`` to change limits or timers.
- ``agent_bus``: an open :class:`Bus`, closed after the test.

Both need pytest-trio (``trio_mode = true`` or ``@pytest.mark.trio``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from ._bus import Bus, open_bus
from ._config import BusConfig

__all__ = ["agent_bus", "agent_bus_config"]


@pytest.fixture
def agent_bus_config() -> BusConfig:
    """The configuration of the ``agent_bus`` fixture; override to change it."""
    return BusConfig()


@pytest.fixture
async def agent_bus(agent_bus_config: BusConfig) -> AsyncIterator[Bus]:
    """An open agent event bus; leaving the test closes it."""
    async with open_bus(agent_bus_config) as bus:
        yield bus
