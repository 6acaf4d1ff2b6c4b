"""Store full: which snapshot to squash, and origin writes waiting for space.

``--on-full squash`` sacrifices the snapshot that needs the copy with the lowest
priority, then the oldest (never a held one: ``csnapctl hold``, nor the parent of a clone
being filled), but only when no space is coming back already: while a
delete pass (of a deleted or an earlier squashed snapshot) is still freeing chunks,
or a squashed snapshot's writers were cut off so recently that they may still let go
of its chunks, a write that needs a copy-out is parked here and retried as space
comes back. ``--on-full fail`` refuses the write at once (STORE_FULL).

Plain calls; the store is only asked questions.
"""

from __future__ import annotations

from typing import Any

from csnapd.store import format as fmt
from csnapd.store.errors import StoreFullError
from csnapd.store.store import Store

POLICIES = ("squash", "fail")


class SpacePolicy:
    """The store-full policy and the origin writes it parked."""

    def __init__(self, store: Store, on_full: str, hold_s: float) -> None:
        if on_full not in POLICIES:
            raise ValueError(f"on_full must be one of {POLICIES}")
        self.store, self.on_full, self.hold_s = store, on_full, hold_s
        self.waiters: list[tuple[int, Any]] = []  # (conn, request) waiting for space
        self._held_until = 0.0  # writers of a squashed snapshot may still let go until then

    def coming(self, now: float) -> bool:
        """Will deletes or squashes already decided free space soon?"""
        if self.store.deleting:
            return True
        return bool(self.store.held_deleting) and now < self._held_until

    def victim(self, exc: StoreFullError) -> fmt.SnapEntry | None:
        """The snapshot to squash for this full copy-out, or None (refuse the write).

        Held snapshots are never squashed; when only held ones need the copy, the
        refusal's message says so (the write fails with STORE_FULL).
        """
        if self.on_full != "squash" or exc.chunk is None:
            return None
        needing = self.store.snapshots_needing(exc.chunk)
        fill = self.store.fill  # a clone being filled from a snapshot needs all of it
        victims = [e for e in needing if not e.use_count
                   and not (fill.active and e.slot == fill.parent)
                   and e.slot != self.store.sb.revert_slot - 1]
        if needing and not victims:
            names = ", ".join(repr(e.name) for e in needing[:4])
            exc.args = (f"{exc}; held snapshots are never squashed and only held ones "
                        f"({names}) need this copy: release one, delete one, or grow "
                        "the store",)
        return min(victims, key=lambda e: (e.priority, e.created_ns)) if victims else None

    def squashed(self, now: float) -> None:
        """A snapshot was squashed and its clients cut off: give them time to let go."""
        self._held_until = max(self._held_until, now + self.hold_s)

    def park(self, conn_id: int, req: Any) -> None:
        self.waiters.append((conn_id, req))

    def take_waiters(self) -> list[tuple[int, Any]]:
        waiters, self.waiters = self.waiters, []
        return waiters

    def dropped(self, conn_id: int) -> None:
        self.waiters = [(c, r) for c, r in self.waiters if c != conn_id]
