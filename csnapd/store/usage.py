"""Per-snapshot space counts, kept exact as the exception map changes.

For every snapshot slot: ``unique`` (exclusive) copies, the exceptions whose
sharemap is that slot alone (exactly the store chunks deleting the snapshot
frees), and ``shared`` copies, the exceptions it shares with other slots.

The counts live in memory.  When a store is opened they are built by a scan
of the leaves in key order, a few leaves at a time (``scan``), so a server
never stops for a whole walk; every change the exception map makes is passed
to ``note`` with the sharemap an exception had and has, and applied at once
when its chunk lies below the scan cursor (already counted).  A change above
the cursor is left to the scan, which will count the chunk as it is then.
Both run on the store's thread, so the counts are exact once ``complete``,
and stay exact without any further walk.  A clean close writes complete counts
into the snapshot table (snapshots.py ``save_counts``, format 8.6), and an open
of a cleanly closed store takes them from there instead of scanning.

Must not import the store facade or anything asyncio.
"""

from __future__ import annotations

from collections.abc import Iterable

from .format import Excs

#: One past the largest tree key (btree.KEY_LIMIT; repeated to keep this module a leaf).
KEY_LIMIT = 1 << 64


class SpaceCounts:
    """Exclusive and shared copies per snapshot slot, and the scan that builds them."""

    __slots__ = ("unique", "shared", "cursor", "complete")

    def __init__(self) -> None:
        self.unique: dict[int, int] = {}
        self.shared: dict[int, int] = {}
        self.cursor = 0  # chunks below it are counted (all of them once complete)
        self.complete = False

    def counted(self, chunk: int) -> bool:
        """Is ``chunk`` already in the counts (changes to it must be applied)?"""
        return self.complete or chunk < self.cursor

    def note(self, chunk: int, before: int, after: int) -> None:
        """One exception of ``chunk`` changed its sharemap from ``before`` to ``after``
        (0 = the exception did not exist / no longer exists)."""
        if before == after or not (self.complete or chunk < self.cursor):
            return
        if before:
            self._add(before, -1)
        if after:
            self._add(after, 1)

    def _add(self, sharemap: int, sign: int) -> None:
        if sharemap & (sharemap - 1) == 0:
            slot = sharemap.bit_length() - 1
            n = self.unique.get(slot, 0) + sign
            if n:
                self.unique[slot] = n
            else:
                self.unique.pop(slot, None)
            return
        shared = self.shared
        bits = sharemap
        while bits:
            low = bits & -bits
            slot = low.bit_length() - 1
            n = shared.get(slot, 0) + sign
            if n:
                shared[slot] = n
            else:
                shared.pop(slot, None)
            bits ^= low

    def add_entries(self, entries: Iterable[tuple[int, Excs]], lo: int, hi: int) -> None:
        """Count the exceptions of the chunks in ``[max(lo, cursor), hi)`` of one leaf and
        move the cursor to ``hi`` (a leaf merged since the last slice may also hold
        chunks below the cursor: those are counted already)."""
        start = max(lo, self.cursor)
        for chunk, excs in entries:
            if start <= chunk < hi:
                for _, sharemap in excs:
                    self._add(sharemap, 1)
        self.cursor = hi
        if hi >= KEY_LIMIT:
            self.complete = True

    def of(self, slot: int) -> dict[str, int]:
        """``{"unique": n, "shared": m}`` for one slot (zeros when it has no copies)."""
        return {"unique": self.unique.get(slot, 0), "shared": self.shared.get(slot, 0)}

    def as_usage(self) -> dict[int, dict[str, int]]:
        """Every slot with copies, in the shape walk.snapshot_usage returns."""
        return {slot: self.of(slot) for slot in sorted(set(self.unique) | set(self.shared))}
