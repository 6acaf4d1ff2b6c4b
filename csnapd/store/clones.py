"""Clones: snapshots of snapshots, answered at once and filled in the background.

A clone C of snapshot P starts out with exactly P's content.  Giving C its own
bit on every exception P has would take a pass over the whole tree, so the
create only records a *fill* (superblock: C, P and a cursor, journaled with the
create) and answers; a background pass then adds C's bit to P's copies one leaf
at a time, moving the cursor in the same transaction as the leaf.

Until the pass is done, a chunk ``c`` at or past the cursor is *unfilled* when C
has no exception there; C's content at an unfilled chunk is P's.  That stays true
because everything that could change P's or C's exceptions at ``c`` fills ``c``
first (``touch``):

* an origin write: C gets P's copy before the copy-outs are decided, so C never
  gets a copy of origin data P does not show;
* a write to C: C gets P's copy first, then unshares it as usual;
* a write to P: C gets P's copy first (P then unshares and C keeps the old data);
  where P has no copy (both read the origin) C is given its own copy of the
  origin chunk, so that P's new exception cannot later be mistaken for
  something C should share.

Reads of C at an unfilled chunk answer with P's copy (``parent_map``).  The pass
skips a chunk where C already has an exception: a touch filled it, and C's
exceptions at a filled chunk are C's own from then on.  P can be neither
deleted nor squashed while it is being cloned; deleting C ends the fill.  One
fill at a time: a second clone waits for the first to finish.

Must not import the store facade, the journal or asyncio.
"""

from __future__ import annotations

from collections.abc import Callable

from .btree import KEY_LIMIT
from .exmap import ExceptionMap, LeafSpan
from .superblock import SuperState


class CloneFill:
    """The clone being filled (at most one), kept in the superblock."""

    def __init__(self, sbs: SuperState) -> None:
        self.sbs = sbs

    @property
    def active(self) -> bool:
        return self.sbs.f.clone_slot != 0

    @property
    def clone(self) -> int:
        """Slot of the clone being filled (-1: none)."""
        return self.sbs.f.clone_slot - 1

    @property
    def parent(self) -> int:
        """Slot of its parent (meaningful only while ``active``)."""
        return self.sbs.f.clone_parent

    @property
    def cursor(self) -> int:
        return self.sbs.f.clone_cursor

    def start(self, clone: int, parent: int) -> None:
        """Record a new fill; durable with the transaction that creates the clone."""
        f = self.sbs.f
        f.clone_slot, f.clone_parent, f.clone_cursor = clone + 1, parent, 0
        self.sbs.touch()

    def end(self) -> None:
        """The fill is done (or its clone is gone)."""
        f = self.sbs.f
        f.clone_slot = f.clone_parent = f.clone_cursor = 0
        self.sbs.touch()

    def involves(self, slot: int) -> bool:
        """True while ``slot`` is the clone or the parent of the fill."""
        return self.active and slot in (self.clone, self.parent)

    def touch(self, span: LeafSpan, start: int, stop: int) -> int:
        """Fill the chunks of ``[start, stop)`` (inside ``span``) before they change.

        Returns ``stop``, or an earlier chunk to stop this batch at when the leaf
        became overfull (everything before it is filled).
        """
        lo = max(start, self.cursor)
        if lo >= stop:
            return stop
        return span.share_into(self.parent, self.clone, lo, stop)

    def step(self, exmap: ExceptionMap, before_leaf: Callable[[], None], max_leaves: int) -> bool:
        """Fill up to ``max_leaves`` leaves from the cursor; True while work remains.

        ``before_leaf()`` is called before each leaf (the store cuts its transaction
        there when the journal needs it).
        """
        f = self.sbs.f
        for _ in range(max_leaves):
            before_leaf()
            chunk = f.clone_cursor
            span = exmap.span(chunk)
            nxt = span.share_into(self.parent, self.clone, chunk, span.hi)
            span.finish()
            if nxt >= KEY_LIMIT:
                self.end()
                return False
            f.clone_cursor = nxt
            self.sbs.touch()
        return True

    def progress(self, origin_chunks: int) -> dict[str, int | float | bool]:
        """How far the fill has come (for status)."""
        if not self.active:
            return {"active": False, "fraction": 1.0}
        total = max(1, origin_chunks)
        return {"active": True, "clone": self.clone, "parent": self.parent,
                "cursor": self.cursor, "fraction": min(self.cursor, total) / total}
