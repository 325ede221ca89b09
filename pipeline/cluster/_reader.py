"""The reader: one ``XREAD BLOCK`` over every shard stream and the control stream.

Not consumer groups: a group hands each entry to one of its consumers, and every node must see
every entry (fan-out). So each node keeps its own last ID per stream, starting at the streams'
last entries when it first connects (only what is written from then on), and resumes from
those IDs after a reconnect: nothing that is still in the stream is lost. When the stream was
trimmed past a node's last ID, or the server restarted and lost it, the missing events show
in band as a seq gap, which the bus's ``ingest`` publishes.

Each entry is filtered by its ``origin`` field before anything is parsed: a node skips its own
entries. Other nodes' events go to ``bus.ingest`` one at a time, in stream order; an entry the
bus refuses (bad JSON, an invalid event, a full bus) is counted and skipped, and never stops
the reader. Control entries addressed to this node are carried out here.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping

import attrs
import trio
from coredis.response.types import StreamEntry

from .._bus import Bus
from .._errors import BusClosed, EventTooLarge, InvalidEvent, LimitExceeded, RunAlreadyActive
from .._event import Event, annotation_kind, is_terminal
from ._config import ClusterConfig, Counters
from ._layout import (
    ABORT,
    CONTROL_STREAM,
    FIELD_OP,
    FIELD_ORIGIN,
    FIELD_REASON,
    FIELD_RUN,
    FIELD_TARGET,
    FIELD_WIRE,
    START_ID,
    Fields,
    entry_order,
    last_entry_id,
    stream_keys,
)
from ._link import Client, Link
from ._owners import Owners

__all__ = ["Reader", "stream_ends"]

_log = logging.getLogger("pipeline.cluster")


@attrs.define(eq=False)
class Reader:
    """Reads the other nodes' entries into the bus, resuming from its last ID per stream."""

    bus: Bus
    config: ClusterConfig
    counters: Counters
    link: Link
    owners: Owners
    #: This node's id, as the ``origin`` field of its entries.
    origin: bytes
    #: The last ID read per stream, kept across sessions; ``None`` until first connected.
    _last_ids: dict[bytes, bytes] | None = None
    #: The Redis server process (its ``run_id``) the last session talked to.
    _server: object = None

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Read until cancelled (or the bus closes), reconnecting by itself; started once
        it reads from the streams' current ends, or its first connection failed."""
        await self.link.serve(self._read, task_status=task_status)

    async def _read(self, client: Client, ready: Callable[[], None]) -> None:
        config = self.config
        await self._check_server(client)
        if self._last_ids is None:
            self._last_ids = await stream_ends(client, stream_keys(config.shards), config)
        last_ids = self._last_ids
        ready()
        timeout = config.block_ms / 1000 + config.command_timeout
        while True:
            with trio.fail_after(timeout):
                reply = await client.xread(
                    streams=last_ids, count=config.read_count, block=config.block_ms
                )
            for key, entries in (reply or {}).items():
                for entry in entries:
                    try:
                        await self._take(key, entry)
                    except BusClosed:
                        return  # the bus is closing: nothing more to ingest
                    last_ids[key] = entry.identifier  # type: ignore[assignment]  # bytes

    def has_read(self, ends: Mapping[bytes, bytes]) -> bool:
        """Whether every entry up to ``ends`` (stream key -> entry ID) has been read and
        taken into the bus."""
        last_ids = self._last_ids
        if last_ids is None:
            return False
        return all(
            entry_order(last_ids.get(key, START_ID)) >= entry_order(end)
            for key, end in ends.items()
        )

    async def _check_server(self, client: Client) -> None:
        with trio.fail_after(self.config.command_timeout):
            info = await client.info("server")
        server = info.get("run_id")
        if self._server is not None and server != self._server:
            self.counters.server_restarts += 1
            _log.warning("cluster reader: the redis server restarted; entries may be lost")
        self._server = server

    async def _take(self, key: bytes, entry: StreamEntry) -> None:
        fields: Fields = entry.field_values  # type: ignore[assignment]  # bytes: no decoding
        origin = fields.get(FIELD_ORIGIN)
        if origin == self.origin:
            self.counters.skipped_own += 1
        elif origin is None:
            self._invalid(entry.identifier, "no origin field")
        elif key == CONTROL_STREAM:
            self._control(fields, entry.identifier)
        else:
            await self._ingest(origin, fields.get(FIELD_WIRE), entry)

    async def _ingest(self, origin: bytes, wire: bytes | None, entry: StreamEntry) -> None:
        counters = self.counters
        try:
            event = _parse(wire, self.bus.config.max_event_bytes)
            published = await self.bus.ingest(event)
        except InvalidEvent as exc:  # not JSON, or not a valid event
            self._invalid(entry.identifier, exc)
            return
        except (LimitExceeded, RunAlreadyActive) as exc:
            counters.rejected_entries += 1
            if _is_power_of_two(counters.rejected_entries):
                _log.warning(
                    "cluster reader: the bus refused %d entries so far (latest %r: %s)",
                    counters.rejected_entries,
                    entry.identifier,
                    exc,
                )
            return
        if not published:
            counters.duplicates += 1
            return
        counters.ingested += 1
        if annotation_kind(event) is None:
            if self.owners.saw(event.run_id, origin, event.seq):
                counters.gaps += 1
            if is_terminal(event):
                self.owners.forget(event.run_id)

    def _invalid(self, identifier: object, why: object) -> None:
        """Count an entry that is not what the layout says, and skip it. Logged at the 1st,
        2nd, 4th, 8th, ... such entry, so a flood of them cannot flood the log."""
        self.counters.invalid_entries += 1
        if _is_power_of_two(self.counters.invalid_entries):
            _log.warning(
                "cluster reader: skipped %d invalid entries so far (latest %r: %s)",
                self.counters.invalid_entries,
                identifier,
                why,
            )

    def _control(self, fields: Fields, identifier: object) -> None:
        op = fields.get(FIELD_OP)
        if op != ABORT:
            self._invalid(identifier, f"unknown control op {op!r}")
            return
        if fields.get(FIELD_TARGET) != self.origin:
            return  # addressed to another node
        try:
            run_id = fields[FIELD_RUN].decode()
            reason = fields[FIELD_REASON].decode()
        except (KeyError, UnicodeDecodeError):
            self._invalid(identifier, "an abort needs a UTF-8 run and reason")
            return
        self.counters.remote_aborts_received += 1
        if run_id not in self.owners:  # a run of this node's, not a tracked copy of another's
            self.bus.abort(run_id, reason=reason)


def _is_power_of_two(count: int) -> bool:
    return count & (count - 1) == 0


def _parse(wire: bytes | None, max_bytes: int) -> Event:
    """The event an entry's ``wire`` field carries; :exc:`InvalidEvent` if it carries none.

    The size limit applies to the wire bytes as they are, before parsing, so a huge entry
    costs no parsing. Writers use compact UTF-8 JSON, the form ``Bus.ingest`` measures a wire
    dict in; handing the bus a checked :class:`Event` spares it measuring again (a second
    ``json.dumps`` of every event, 15% of a reader's time).
    """
    if wire is None:
        raise InvalidEvent("an event entry needs a wire field")
    if len(wire) > max_bytes:
        raise EventTooLarge(f"event is {len(wire)} bytes; the limit is {max_bytes}")
    try:
        obj = json.loads(wire)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
        raise InvalidEvent(f"the wire field is not JSON: {exc}") from exc
    return Event.from_wire(obj)


async def stream_ends(
    client: Client, keys: list[bytes], config: ClusterConfig
) -> dict[bytes, bytes]:
    """The last entry ID of each stream (``0-0`` for a stream that does not exist yet)."""
    with trio.fail_after(config.command_timeout):
        async with client.pipeline(transaction=False) as pipe:
            requests = [pipe.xrevrange(key, count=1) for key in keys]
        lasts = [await request for request in requests]
    return {key: last_entry_id(last) for key, last in zip(keys, lasts, strict=True)}
