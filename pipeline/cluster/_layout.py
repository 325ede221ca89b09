"""The cluster's layout in Redis: key names, entry fields, and how entries are made and read.

This is the one home of the layout (GATEWAY 2), so every node, and any tool that reads the
streams, agrees on it:

- ``ev:{n}`` for ``n`` in ``0 .. shards - 1``: the event streams. A run's events all go to
  shard ``crc32(runId) % shards``, so a stream's order is its runs' order. Each entry has the
  fields ``origin`` (the node that wrote it), ``run`` (the run id), ``session`` (the session
  key, or empty) and ``wire`` (the event's wire JSON), so a reader filters on the first three
  before it parses anything.
- ``ctl``: the control stream. An entry has ``origin``, ``op`` and the op's own fields; the one
  op today is ``abort`` with ``run``, ``reason`` and ``target`` (the node that owns the run and
  alone carries the abort out).
- ``node:{id}``: a node's heartbeat key, set with a TTL; while it exists the node is alive.

Keys and field values are bytes: the client runs with ``decode_responses=False``, so a reader
compares the origin field without decoding it.

Event entries are written a batch at a time by one Lua script (:data:`XADD_EVENTS`), an
``XADD ... MAXLEN ~`` per entry: through coredis, a pipeline of separate ``XADD`` commands
spends about 80 µs of client CPU per entry (12k entries/s), the script about 15-30 µs, and a
batch is then written whole or not at all.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .._event import Event

__all__ = [
    "ABORT",
    "CONTROL_STREAM",
    "FIELD_OP",
    "FIELD_ORIGIN",
    "FIELD_REASON",
    "FIELD_RUN",
    "FIELD_SESSION",
    "FIELD_TARGET",
    "FIELD_WIRE",
    "START_ID",
    "XADD_EVENTS",
    "Fields",
    "abort_entry",
    "entry_order",
    "event_batch",
    "last_entry_id",
    "node_key",
    "shard_key",
    "shard_of",
    "stream_keys",
]

#: A stream entry's field values, as the client sends and returns them.
Fields = Mapping[bytes, bytes]

#: The control stream: aborts addressed to the node that owns a run.
CONTROL_STREAM = b"ctl"

FIELD_ORIGIN = b"origin"
FIELD_RUN = b"run"
FIELD_SESSION = b"session"
FIELD_WIRE = b"wire"
FIELD_OP = b"op"
FIELD_REASON = b"reason"
FIELD_TARGET = b"target"

#: The ``op`` of a control entry asking the ``target`` node to abort its run ``run``.
ABORT = b"abort"

#: The ID before every entry: where a stream that does not exist yet is read from.
START_ID = b"0-0"


def shard_of(run_id: str, shards: int) -> int:
    """The shard a run's events go to: ``crc32(runId) % shards`` (crc32 of its UTF-8)."""
    return zlib.crc32(run_id.encode()) % shards


def shard_key(shard: int) -> bytes:
    """The key of event stream ``shard``: ``ev:{shard}``."""
    return b"ev:%d" % shard


def stream_keys(shards: int) -> list[bytes]:
    """Every stream a node reads: the ``shards`` event streams, then the control stream."""
    return [*(shard_key(shard) for shard in range(shards)), CONTROL_STREAM]


def entry_order(entry_id: bytes) -> tuple[int, int]:
    """An entry ID (``b"<ms>-<seq>"``) as a pair that sorts as the stream does."""
    millis, _, seq = entry_id.partition(b"-")
    return int(millis), int(seq or 0)


def last_entry_id(entries: Sequence[Any]) -> bytes:
    """The ID in an ``XREVRANGE key + - COUNT 1`` reply: the stream's last entry, or
    :data:`START_ID` for a stream that has none."""
    return entries[0].identifier if entries else START_ID


def node_key(node_id: bytes) -> bytes:
    """The heartbeat key of node ``node_id`` (its id as bytes): ``node:{id}``."""
    return b"node:" + node_id


def _wire_json(wire: dict[str, Any]) -> bytes:
    return json.dumps(wire, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


#: Appends a batch of event entries: ``KEYS`` are their streams, ``ARGV[1]`` is the ``MAXLEN ~``
#: bound, then come the origin, run, session and wire of each entry in turn.
XADD_EVENTS = f"""
local maxlen = ARGV[1]
local at = 2
for i = 1, #KEYS do
  redis.call('XADD', KEYS[i], 'MAXLEN', '~', maxlen, '*',
    '{FIELD_ORIGIN.decode()}', ARGV[at], '{FIELD_RUN.decode()}', ARGV[at + 1],
    '{FIELD_SESSION.decode()}', ARGV[at + 2], '{FIELD_WIRE.decode()}', ARGV[at + 3])
  at = at + 4
end
return #KEYS
"""


def event_batch(
    origin: bytes, events: Iterable[Event], shards: int, maxlen: int
) -> tuple[list[bytes], list[bytes]]:
    """The ``KEYS`` and ``ARGV`` of the :data:`XADD_EVENTS` call that writes ``events``, each
    to its run's shard, as entries of node ``origin``."""
    keys: list[bytes] = []
    args: list[bytes] = [b"%d" % maxlen]
    for event in events:
        run_id = event.run_id
        keys.append(shard_key(shard_of(run_id, shards)))
        session = (event.session_key or "").encode()
        args += (origin, run_id.encode(), session, _wire_json(event.to_wire()))
    return keys, args


def abort_entry(origin: bytes, run_id: str, reason: str, target: bytes) -> dict[bytes, bytes]:
    """The fields of a control entry asking node ``target`` to abort its run ``run_id``."""
    return {
        FIELD_ORIGIN: origin,
        FIELD_OP: ABORT,
        FIELD_RUN: run_id.encode(),
        FIELD_REASON: reason.encode(),
        FIELD_TARGET: target,
    }
