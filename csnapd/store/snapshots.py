"""The snapshot table: names, tags, priorities, holds and sharemap slots of every snapshot.

Slot i of the table is sharemap bit i.  A slot stays taken while its snapshot
is being deleted (its bit may still be set in sharemaps) and becomes free only
when the delete pass that clears the bit has finished.

A snapshot's use count is the number of holds on it (ddsnap's use count): a
held snapshot is refused to delete and never squashed.  Holds, renames and
priority changes are entry changes like any other: the table block goes into
the next transaction, so each is all or nothing across a crash.

A clean close also writes each entry's space counts (usage.py), valid while the
superblock's AUTOCLEAR_SPACE_COUNTS bit says so: the next open takes them as they
are instead of counting the tree again.
"""

from __future__ import annotations

import time

from . import format as fmt
from . import sizes
from .blocks import SnapTable
from .cache import BlockCache
from .errors import (
    LimitError,
    NoSuchSnapshot,
    SnapshotExists,
    SnapshotHeld,
    TooManySnapshots,
)
from .superblock import SuperState
from .usage import SpaceCounts

MAX_TAG = 2**32 - 1


class Snapshots:
    """In-memory view of the snapshot table, written back through the cache."""

    def __init__(self, cache: BlockCache, sbs: SuperState) -> None:
        self.cache, self.sbs = cache, sbs
        f = sbs.f
        self.per_block = fmt.snap_entries_per_block(f.block_size)
        self.entries: list[fmt.SnapEntry] = []
        for b in range(f.snaptab_blocks):
            table = cache.get(f.snaptab_start + b, fmt.BlockKind.SNAPTAB)
            self.entries.extend(table.entries)
        self.entries = self.entries[:f.max_snapshots]
        self._recompute()

    def _recompute(self) -> None:
        self.live_mask = 0
        self.deleting_mask = 0
        self.creating_mask = 0
        for e in self.entries:
            if e.state == fmt.SNAP_LIVE and not e.squashed:
                self.live_mask |= 1 << e.slot
            elif e.state in (fmt.SNAP_DELETING, fmt.SNAP_IN_PASS):
                self.deleting_mask |= 1 << e.slot
            elif e.state == fmt.SNAP_CREATING:
                self.creating_mask |= 1 << e.slot

    def _save(self, e: fmt.SnapEntry) -> None:
        f = self.sbs.f
        table: SnapTable = self.cache.get(f.snaptab_start + e.slot // self.per_block,
                                          fmt.BlockKind.SNAPTAB)
        table.entries[e.slot % self.per_block] = e
        self.entries[e.slot] = e
        self.cache.mark_dirty(table)
        self._recompute()

    # -- queries ----------------------------------------------------------
    @staticmethod
    def _shown(e: fmt.SnapEntry) -> bool:
        return e.state == fmt.SNAP_LIVE or (e.state != fmt.SNAP_FREE and e.squashed)

    def visible(self) -> list[fmt.SnapEntry]:
        """Snapshots users can see: live ones, and squashed ones (as tombstones)."""
        return sorted((e for e in self.entries if self._shown(e)),
                      key=lambda e: (e.created_ns, e.slot))

    def find(self, ident: str | int) -> fmt.SnapEntry:
        """A visible snapshot by name, or by tag when ``ident`` is an int."""
        for e in self.entries:
            if not self._shown(e):
                continue
            if (isinstance(ident, int) and e.tag == ident) or e.name == ident:
                return e
        raise NoSuchSnapshot(f"no snapshot {ident!r}")

    def depend(self) -> None:
        """The caller's answer relies on the snapshot table as it is now (store/cache.py)."""
        f = self.sbs.f
        for b in range(f.snaptab_blocks):
            self.cache.depend(f.snaptab_start + b)

    def in_pass_mask(self) -> int:
        return sum(1 << e.slot for e in self.entries if e.state == fmt.SNAP_IN_PASS)

    # -- changes ----------------------------------------------------------
    def create(self, name: str, tag: int | None = None, priority: int = 0,
               creating: bool = False, parent: int = -1) -> fmt.SnapEntry:
        """Take a free slot for a new snapshot; ``creating``: not live until ``make_live``;
        ``parent``: the slot it is a clone of (-1: a snapshot of the origin)."""
        self.check_name(name)
        if parent >= 0 and len(name.encode("utf-8")) > fmt.MAX_CLONE_NAME_BYTES:
            raise LimitError(f"a clone's name must be 1..{fmt.MAX_CLONE_NAME_BYTES} UTF-8 "
                             "bytes (the table keeps its parent in the rest)")
        self.check_priority(priority)
        taken_tags = {e.tag for e in self.entries if e.state != fmt.SNAP_FREE}
        if tag is None:
            tag = next(t for t in range(1, len(self.entries) + 2) if t not in taken_tags)
        elif not 0 <= tag <= MAX_TAG:
            raise LimitError(f"tag must be between 0 and {MAX_TAG}")
        elif tag in taken_tags:
            raise SnapshotExists(f"tag {tag} is in use")
        free = next((e for e in self.entries if e.state == fmt.SNAP_FREE), None)
        if free is None:
            raise TooManySnapshots(f"all {len(self.entries)} snapshot slots are in use "
                                   "(live or still being deleted)")
        state = fmt.SNAP_CREATING if creating else fmt.SNAP_LIVE
        if parent >= 0:  # a clone's point in time is its parent's (and so is its size)
            created = self.entries[parent].created_ns
        else:  # never before an origin growth's record, whatever the clock says (sizes.py)
            created = max(time.time_ns(), sizes.created_ns_floor(self.sbs.f))
        entry = fmt.SnapEntry(free.slot, state, 0, priority, tag, created, 0, name,
                              parent=parent)
        self._save(entry)
        return entry

    def parent_of(self, entry: fmt.SnapEntry) -> fmt.SnapEntry | None:
        """The visible snapshot ``entry`` was cloned from, or None."""
        if entry.parent < 0 or entry.parent >= len(self.entries):
            return None
        p = self.entries[entry.parent]
        return p if self._shown(p) else None

    def _reparent_children(self, entry: fmt.SnapEntry) -> None:
        """``entry`` goes away: its clones now descend from its own parent (or none)."""
        for e in self.entries:
            if e.state != fmt.SNAP_FREE and e.parent == entry.slot and e.slot != entry.slot:
                e.parent = entry.parent
                self._save(e)

    def check_name(self, name: str, slot: int | None = None) -> None:
        """A valid name no visible snapshot other than ``slot`` has."""
        raw = name.encode("utf-8")
        if not 1 <= len(raw) <= fmt.MAX_NAME_BYTES or name.isdigit():
            raise LimitError(f"snapshot name must be 1..{fmt.MAX_NAME_BYTES} UTF-8 bytes "
                             "and not all digits (digits name a tag)")
        for e in self.entries:
            if self._shown(e) and e.name == name and e.slot != slot:
                raise SnapshotExists(f"a snapshot named {name!r} exists")

    @staticmethod
    def check_priority(priority: int) -> None:
        """A priority fits the table's signed byte."""
        if not -128 <= priority <= 127:
            raise LimitError("priority must be between -128 and 127")

    def rename(self, entry: fmt.SnapEntry, name: str) -> None:
        """Give a visible snapshot a new name; its tag and slot stay."""
        self.check_name(name, entry.slot)
        if entry.parent >= 0 and len(name.encode("utf-8")) > fmt.MAX_CLONE_NAME_BYTES:
            raise LimitError(f"a clone's name must be 1..{fmt.MAX_CLONE_NAME_BYTES} UTF-8 "
                             "bytes (the table keeps its parent in the rest)")
        entry.name = name
        self._save(entry)

    def set_priority(self, entry: fmt.SnapEntry, priority: int) -> None:
        """Change the priority the store-full policy squashes by (lowest first)."""
        self.check_priority(priority)
        entry.priority = priority
        self._save(entry)

    def hold(self, entry: fmt.SnapEntry) -> None:
        """Add a hold: the snapshot cannot be deleted or squashed until released."""
        if entry.squashed:
            raise LimitError(f"snapshot {entry.name!r} was squashed: there is nothing "
                             "left to hold")
        if entry.use_count >= fmt.MAX_HOLDS:
            raise LimitError(f"snapshot {entry.name!r} has the most holds there can be "
                             f"({fmt.MAX_HOLDS})")
        entry.use_count += 1
        self._save(entry)

    def release(self, entry: fmt.SnapEntry) -> None:
        """Take one hold away."""
        if entry.use_count == 0:
            raise LimitError(f"snapshot {entry.name!r} is not held")
        entry.use_count -= 1
        self._save(entry)

    @staticmethod
    def refuse_if_held(entry: fmt.SnapEntry, doing: str) -> None:
        """Raise SnapshotHeld, saying why, when ``entry`` has holds."""
        if entry.use_count:
            n = entry.use_count
            raise SnapshotHeld(f"cannot {doing} snapshot {entry.name!r}: it is held "
                               f"({n} hold{'s' if n != 1 else ''}; 'csnapctl release "
                               f"{entry.name}' takes one away)")

    def save_counts(self, counts: SpaceCounts) -> None:
        """Write complete space counts into every non-free entry (at a clean close)."""
        for e in self.entries:
            if e.state == fmt.SNAP_FREE:
                continue
            u = counts.of(e.slot)
            if (e.exclusive, e.shared) != (u["unique"], u["shared"]):
                e.exclusive, e.shared = u["unique"], u["shared"]
                self._save(e)

    def load_counts(self, counts: SpaceCounts) -> None:
        """Take the counts a clean close wrote as complete (no scan needed)."""
        for e in self.entries:
            if e.state == fmt.SNAP_FREE:
                continue
            if e.exclusive:
                counts.unique[e.slot] = e.exclusive
            if e.shared:
                counts.shared[e.slot] = e.shared
        counts.complete = True

    def make_live(self, entry: fmt.SnapEntry) -> None:
        """A snapshot in CREATING has all its copy-outs: it exists from now on."""
        entry.state = fmt.SNAP_LIVE
        self._save(entry)

    def abandon_creating(self) -> list[fmt.SnapEntry]:
        """Creates cut short by a crash or an error are queued for deletion."""
        gone = [e for e in self.entries if e.state == fmt.SNAP_CREATING]
        for e in gone:
            e.state = fmt.SNAP_DELETING
            self._save(e)
        return gone

    def mark_deleting(self, entry: fmt.SnapEntry) -> None:
        """User delete: hide the snapshot and queue its bits for clearing (not if held)."""
        self.refuse_if_held(entry, "delete")
        self._reparent_children(entry)
        if entry.squashed:
            if entry.flags & fmt.SNAP_FLAG_CLEARED:
                self._save(fmt.SnapEntry(entry.slot))
                return
            entry.flags &= ~fmt.SNAP_FLAG_SQUASHED
            self._save(entry)
            return
        entry.state = fmt.SNAP_DELETING
        self._save(entry)

    def mark_squashed(self, entry: fmt.SnapEntry) -> None:
        """Store full: make the snapshot unreadable and queue its space for reclaim.

        A held snapshot is refused: the store-full policy never picks one.
        """
        self.refuse_if_held(entry, "squash")
        entry.flags |= fmt.SNAP_FLAG_SQUASHED
        entry.state = fmt.SNAP_DELETING
        self._save(entry)

    def start_pass(self, held: int = 0) -> int:
        """Move queued deletions into a new pass; return its mask.

        Slots in ``held`` (writer grants: a client may still write their chunks)
        stay queued: their chunks must not be freed yet.
        """
        for e in self.entries:
            if e.state == fmt.SNAP_DELETING and not (held >> e.slot) & 1:
                e.state = fmt.SNAP_IN_PASS
                self._save(e)
        return self.in_pass_mask()

    def finish_pass(self) -> list[fmt.SnapEntry]:
        """End a delete pass: free deleted slots, keep squashed ones as tombstones."""
        done = [e for e in self.entries if e.state == fmt.SNAP_IN_PASS]
        for e in done:
            if e.squashed:
                e.state = fmt.SNAP_LIVE
                e.flags |= fmt.SNAP_FLAG_CLEARED
                self._save(e)
            else:
                self._save(fmt.SnapEntry(e.slot))
        return done
