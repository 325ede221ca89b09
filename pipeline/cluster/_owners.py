"""Which node owns each run this node tracks from the streams, and the last seq read of it.

An abort of a tracked run is addressed to its owner, and a lost node's runs are found by
owner; the last seq lets the reader count the seq gaps it reads (the bus shows each in band).
The table is bounded by the runs the bus has live: a run is forgotten at its terminal event,
and each heartbeat tick prunes the runs the bus no longer has (ended by idle timeout, aborted
as lost, or never started because ``ingest`` refused them).
"""

from __future__ import annotations

from collections.abc import Container

import attrs

__all__ = ["Owners"]


@attrs.define(eq=False)
class Owners:
    """``run id -> (owner node id, last agent seq read)`` for tracked runs; node ids are
    bytes, as the entries carry them."""

    _runs: dict[str, tuple[bytes, int]] = attrs.field(factory=dict)

    def __len__(self) -> int:
        return len(self._runs)

    def __contains__(self, run_id: object) -> bool:
        return run_id in self._runs

    def get(self, run_id: str) -> bytes | None:
        """The node that owns tracked run ``run_id``, if known."""
        entry = self._runs.get(run_id)
        return None if entry is None else entry[0]

    def saw(self, run_id: str, owner: bytes, seq: int) -> bool:
        """Record agent event ``seq`` of ``run_id``, read from ``owner``'s entries; True if
        seqs were skipped since the last one read (a gap)."""
        last = self._runs.get(run_id)
        self._runs[run_id] = (owner, seq)
        return last is not None and seq > last[1] + 1

    def forget(self, run_id: str) -> None:
        self._runs.pop(run_id, None)

    def by_node(self, live: Container[str]) -> dict[bytes, list[str]]:
        """The runs of each owner among ``live`` runs; forget every run not in ``live``."""
        nodes: dict[bytes, list[str]] = {}
        for run_id, (owner, _) in list(self._runs.items()):
            if run_id in live:
                nodes.setdefault(owner, []).append(run_id)
            else:
                del self._runs[run_id]
        return nodes
