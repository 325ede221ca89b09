"""The replay buffer: recent events of every session, for clients that reconnect (GATEWAY 1.5).

One recorder task reads every event of the bus (a ``BLOCK`` subscription that does nothing but
append) into a buffer bounded for the whole gateway by event count and by bytes, never by the
number of runs served: the oldest events go first. Next to it, a table of recent runs, bounded
by ``recent_runs`` (least recently touched first out), keeps what a reconnecting client or
``agent.wait`` asks about a run: its session, its latest chat snapshot, its outcome once ended,
and through which seq the buffer has already forgotten it.

A client resuming subscribes first, waits until the recorder has taken everything that was
published before its subscription (:meth:`Recorder.wait_caught_up`), then replays; what the
replay and its live subscription both hold is skipped by :class:`Deduper`.
"""

from __future__ import annotations

import collections
import json
import logging
from collections.abc import Callable, Iterator, Mapping

import attrs
import trio

from .. import _event
from .._bus import Bus
from .._event import Event
from .._subscription import SLOW_CONSUMER

__all__ = [
    "Deduper",
    "Recorder",
    "ReplayBuffer",
    "RunRecord",
    "encode_payload",
    "frame_name",
    "position",
]

_log = logging.getLogger("pipeline.gateway")

#: A run's outcome status from its terminal lifecycle event.
_ABORTED, _OK, _ERROR, _TIMEOUT = "aborted", "ok", "error", "timeout"


def position(event: Event) -> tuple[int, str]:
    """An event's place in its run: its seq and what it is at that seq. Within one run no two
    events share it (chat and seq-gap annotations share their cause's seq, one of each kind)."""
    return event.seq, _event.annotation_kind(event) or ""


def frame_name(event: Event) -> str:
    """The name of the frame (WebSocket event, SSE ``event:``) that carries ``event``."""
    return "chat" if event.stream == _event.CHAT else "agent"


def encode_payload(event: Event) -> str:
    """The JSON of the event's frame payload: its wire form, flat for ``chat`` (GATEWAY 1.3)."""
    wire = event.to_wire()
    if event.stream == _event.CHAT:
        flat = {"runId": event.run_id, "sessionKey": event.session_key, "seq": event.seq}
        flat.update(wire["data"])
        return json.dumps(flat, separators=(",", ":"))
    return json.dumps(wire, separators=(",", ":"))


def outcome_status(event: Event) -> str | None:
    """The run outcome a terminal lifecycle event reports, ``None`` for any other event."""
    if not _event.is_terminal(event):
        return None
    data = event.data
    if data.get("phase") == "end":
        return _ABORTED if data.get("aborted") else _OK
    return _TIMEOUT if data.get("errorKind") == _TIMEOUT else _ERROR


@attrs.define(slots=True)
class Entry:
    """One event kept for replay: the event and its encoded frame payload."""

    event: Event
    payload: str

    @property
    def size(self) -> int:
        return len(self.payload)


@attrs.define
class RunRecord:
    """What the gateway remembers of one recent run."""

    session_key: str | None
    #: The flat payload of its latest chat event (the text so far), ``None`` before any.
    chat: str | None = None
    #: Its outcome status once its terminal lifecycle event was seen.
    status: str | None = None
    #: The buffer no longer holds this run's events with seq up to this.
    forgotten_through: int = 0
    #: Set when its terminal event is recorded: ``agent.wait`` waits on it.
    ended: trio.Event = attrs.field(factory=trio.Event)


@attrs.define
class ReplayBuffer:
    """Recent events of every session, bounded by ``max_events`` and ``max_bytes``."""

    max_events: int
    max_bytes: int
    max_runs: int
    _entries: collections.deque[Entry] = attrs.field(factory=collections.deque)
    _bytes: int = 0
    _runs: collections.OrderedDict[str, RunRecord] = attrs.field(factory=collections.OrderedDict)
    #: Events pushed out by the bounds so far.
    evicted: int = 0

    def append(self, event: Event, payload: str) -> None:
        record = self.touch(event.run_id, event.session_key)
        if event.stream == _event.CHAT:
            record.chat = payload
        status = outcome_status(event)
        if status is not None:
            record.status = status
            record.ended.set()
        entry = Entry(event, payload)
        self._entries.append(entry)
        self._bytes += entry.size
        while len(self._entries) > self.max_events or self._bytes > self.max_bytes:
            self._evict()

    def _evict(self) -> None:
        old = self._entries.popleft()
        self._bytes -= old.size
        self.evicted += 1
        record = self._runs.get(old.event.run_id)
        if record is not None:
            record.forgotten_through = max(record.forgotten_through, old.event.seq)

    def touch(self, run_id: str, session_key: str | None) -> RunRecord:
        """The record of ``run_id``, made if new and marked as the most recently used."""
        record = self._runs.pop(run_id, None)
        if record is None:
            record = RunRecord(session_key)
        elif session_key is not None:
            record.session_key = session_key
        self._runs[run_id] = record
        while len(self._runs) > self.max_runs:
            self._runs.popitem(last=False)
        return record

    def run(self, run_id: str) -> RunRecord | None:
        return self._runs.get(run_id)

    def clear(self) -> None:
        """Forget every event (the recorder lost some): every resume becomes a resync."""
        for record in self._runs.values():
            record.forgotten_through = 1 << 62
        self._entries.clear()
        self._bytes = 0

    def session(self, session_key: str) -> Iterator[Entry]:
        """The kept events of one session, oldest first."""
        return (e for e in self._entries if e.event.session_key == session_key)

    def sessions(self) -> set[str]:
        """The session keys of the recent runs."""
        return {r.session_key for r in self._runs.values() if r.session_key is not None}

    def statistics(self) -> dict[str, int]:
        return {
            "events": len(self._entries),
            "bytes": self._bytes,
            "runs": len(self._runs),
            "evicted": self.evicted,
        }


@attrs.define(eq=False)
class Recorder:
    """The task that fills a :class:`ReplayBuffer` from the bus."""

    bus: Bus
    buffer: ReplayBuffer
    #: Encodes an event's frame payload (the gateway's shared cache: the clients reuse it).
    encode: Callable[[Event], str] = encode_payload
    #: How many of the events the bus has published are recorded (or were forgotten when
    #: the recorder was cut off): the bus's ``events_published`` when the subscription was
    #: made, plus the events taken from it since.
    _through: int = 0
    _progress: trio.Event = attrs.field(factory=trio.Event)
    _ready: trio.Event = attrs.field(factory=trio.Event)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Record until the bus closes; resubscribe (and forget) if cut off as slow."""
        started = False
        while True:
            async with self.bus.subscribe(buffer=self.buffer.max_events) as sub:
                # The subscription sees exactly the events published from now on.
                self._through = self.bus.statistics().events_published
                self._advanced()
                self._ready.set()
                if not started:
                    task_status.started()
                    started = True
                async for batch in sub.batches():
                    for event in batch:
                        if event.stream != _event.DROPPED_STREAM:
                            self.buffer.append(event, self.encode(event))
                            self._through += 1
                    self._advanced()
                reason = sub.closed_reason
            if reason != SLOW_CONSUMER:
                return
            _log.warning("the replay recorder fell behind and was cut off; buffer cleared")
            self.buffer.clear()

    def _advanced(self) -> None:
        self._progress.set()
        self._progress = trio.Event()

    async def wait_caught_up(self) -> None:
        """Wait until every event the bus published before this call is recorded.

        Published, not only routed to the recorder: the bus routes events a scheduler turn
        or more after they are published, and a subscription made before this call sees none
        of the events published before it, routed or not, so the replay must hold them all.
        """
        await self._ready.wait()
        target = self.bus.statistics().events_published
        while self._through < target:
            await self._progress.wait()


@attrs.define
class Deduper:
    """Skips live events that a replay already sent (GATEWAY 1.5: no duplicate)."""

    #: run id -> (the last replayed seq, the kinds replayed at that seq)
    _last: dict[str, tuple[int, set[str]]] = attrs.field(factory=dict)

    def sent(self, event: Event) -> None:
        seq, kind = position(event)
        last = self._last.get(event.run_id)
        if last is not None and last[0] == seq:
            last[1].add(kind)
        else:
            self._last[event.run_id] = (seq, {kind})

    def is_duplicate(self, event: Event) -> bool:
        last = self._last.get(event.run_id)
        if last is None:
            return False
        seq, kind = position(event)
        if seq < last[0] or (seq == last[0] and kind in last[1]):
            return True
        del self._last[event.run_id]  # past the replay: nothing more to skip for this run
        return False


def resume_map(value: object) -> Mapping[str, int] | None:
    """Check a ``resume`` parameter: ``{runId: lastSeq}``; ``ValueError`` if malformed."""
    if value is None:
        return None
    if not isinstance(value, Mapping) or len(value) > 10_000:
        raise ValueError("resume must be an object of at most 10000 {runId: lastSeq}")
    for run_id, seq in value.items():
        if not isinstance(run_id, str) or type(seq) is not int or seq < 0:
            raise ValueError("resume maps each runId to its last seq, an integer >= 0")
    return value
