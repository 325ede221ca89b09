"""Which node owns each run this node tracks from the streams.

An abort of a tracked run is addressed to its owner, and a lost node's runs are found by
owner. The table is bounded by the runs the bus has live: a run is forgotten at its terminal
event, and each heartbeat tick prunes the runs the bus no longer has (ended by idle timeout,
aborted as lost, or never started because ``ingest`` refused them).
"""

from __future__ import annotations

from collections.abc import Container

import attrs

__all__ = ["Owners"]


@attrs.define(eq=False)
class Owners:
    """``run id -> owner node id`` (bytes, as the entries carry it) for tracked runs."""

    _owners: dict[str, bytes] = attrs.field(factory=dict)

    def __len__(self) -> int:
        return len(self._owners)

    def __contains__(self, run_id: object) -> bool:
        return run_id in self._owners

    def get(self, run_id: str) -> bytes | None:
        return self._owners.get(run_id)

    def record(self, run_id: str, owner: bytes) -> None:
        self._owners[run_id] = owner

    def forget(self, run_id: str) -> None:
        self._owners.pop(run_id, None)

    def by_node(self, live: Container[str]) -> dict[bytes, list[str]]:
        """The runs of each owner among ``live`` runs; forget every run not in ``live``."""
        nodes: dict[bytes, list[str]] = {}
        for run_id, owner in list(self._owners.items()):
            if run_id in live:
                nodes.setdefault(owner, []).append(run_id)
            else:
                del self._owners[run_id]
        return nodes
