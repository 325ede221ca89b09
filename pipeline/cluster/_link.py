"""One of a node's connections to Redis, which reconnects by itself with backoff.

A node has three: the publisher's, the reader's and the heartbeat's. Each runs its work in a
session: a fresh client, a ``PING``, then the work until a Redis command fails. A failed
session is thrown away whole (client, pool and connections), and after a backoff a new one
starts; the work keeps what must outlive a session (the pending queue, the last stream IDs)
itself. So a server restart, a dropped connection or a hung command (past
``command_timeout``) all take the same path, and the bus never waits on any of it.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable

import attrs
import coredis
import trio
from coredis.exceptions import RedisError
from coredis.retry import NoRetryPolicy

from ._config import ClusterConfig, Counters

__all__ = ["FAILURES", "Client", "Link", "Work", "new_client"]

_log = logging.getLogger("pipeline.cluster")

#: The client the node uses: bytes in, bytes out.
Client = coredis.Redis[bytes]
#: A session's work, given the connected client and ``ready`` (call it once the work is under
#: way; see :meth:`Link.serve`): runs until a Redis command fails, or returns when done.
Work = Callable[[Client, Callable[[], None]], Awaitable[None]]

#: What a broken connection or server raises: coredis' errors (connection refused or reset,
#: a server error reply such as OOM), the OS's, and our own ``trio.fail_after`` timeouts.
FAILURES = (RedisError, OSError, trio.TooSlowError)


def new_client(url: str, config: ClusterConfig) -> Client:
    """A client for one session. Without coredis' own quick retries: a failure ends the
    session, and the link reconnects with backoff (and counts it)."""
    client: Client = coredis.Redis.from_url(
        url,
        decode_responses=False,
        connect_timeout=config.connect_timeout,
        retry_policy=NoRetryPolicy(),
    )
    return client


@attrs.define(eq=False)
class Link:
    """A named connection to the Redis at ``url``, reopened after each failure."""

    name: str
    url: str
    config: ClusterConfig
    counters: Counters
    #: Whether the current session has answered its ``PING`` (and none has failed since).
    up: bool = False
    _failed: bool = False
    _delay: float = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._delay = self.config.reconnect_min

    async def serve(
        self, work: Work, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run ``work`` in one session after another until it returns.

        ``task_status.started()`` is called when the work first calls ``ready``, or when the
        first session fails, so ``nursery.start`` never waits out a Redis outage.
        """
        ready = _Once(task_status)
        while True:
            failure = await self._session(work, ready)
            if failure is None:
                return
            ready()
            self._went_down(failure)
            await trio.sleep(self._delay * random.uniform(0.5, 1.0))
            self._delay = min(self._delay * 2, self.config.reconnect_max)

    async def _session(self, work: Work, ready: Callable[[], None]) -> BaseException | None:
        """One client's life: connect, check with ``PING``, work. The failure, if any."""
        config = self.config
        client = new_client(self.url, config)
        failure: BaseException | None = None
        try:
            async with client:
                try:
                    with trio.fail_after(config.connect_timeout + config.command_timeout):
                        await client.ping()
                    self._came_up()
                    await work(client, ready)
                except FAILURES as exc:
                    failure = exc
        except* FAILURES as group:
            # The client's own connection tasks failed as it closed: the same outage.
            failure = failure or group
        return failure

    def _came_up(self) -> None:
        self.up = True
        self._delay = self.config.reconnect_min
        if self._failed:
            self._failed = False
            self.counters.reconnects += 1
            _log.info("cluster %s: reconnected to redis", self.name)

    def _went_down(self, failure: BaseException) -> None:
        self.up = False
        self.counters.connection_errors += 1
        if not self._failed:
            self._failed = True
            _log.warning(
                "cluster %s: redis connection failed (%r); reconnecting", self.name, failure
            )


@attrs.define(eq=False)
class _Once:
    """Calls ``task_status.started()`` the first time it is called, then does nothing."""

    task_status: trio.TaskStatus[None]
    done: bool = False

    def __call__(self) -> None:
        if not self.done:
            self.done = True
            self.task_status.started()
