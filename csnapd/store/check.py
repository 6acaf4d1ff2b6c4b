"""The consistency checker behind csnap-check, and its careful repair.

Verified: both superblock slots; every tree block's checksum, kind, self
address and structure; key order and key ranges along every path; uniform
depth; every exception's store chunk is a data chunk inside the store,
allocated, and referenced exactly once; sharemaps name only existing
snapshots and never give one snapshot two copies of a chunk; only live,
unsquashed snapshots have holds (a use count); a clone's parent link and the clone
fill in progress name live snapshots (the fill: a live clone, a live parent that is
neither deleted nor squashed, a cursor inside the key space); the per-snapshot space counts
a serving store keeps (exclusive and shared copies) match the walk; no allocated
chunk or metadata block is unreferenced (a leak); the free count and the
exception count match what the walk found.  The journal between the
checkpoint (tail) and the head is verified block by block in its format:
what recovery mended there, or dropped as a torn tail, is listed in
``Report.journal`` (findings, not problems: the store itself is consistent).

Problems carry a severity: "error" (the store may return wrong data) or
"leak" / "count" (space accounting only; ``repair`` fixes these safely).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import datacheck
from . import format as fmt
from . import journal as jnl
from .btree import KEY_LIMIT
from .errors import CorruptionError
from .exmap import add_usage
from .usage import SpaceCounts
from .walk import Visit, bitmap_int, set_bits, walk_tree

Progress = Callable[[int, int], None]
MAX_LISTED = 1000


@dataclass(slots=True)
class Problem:
    severity: str  # "error" (data at risk), "leak", "count" or "flag" (safe to repair)
    message: str
    block: int | None = None
    path: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"severity": self.severity, "message": self.message, "block": self.block,
                "path": self.path}


@dataclass
class Report:
    problems: list[Problem] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)
    leaked_chunks: list[int] = field(default_factory=list)
    leaked_blocks: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # worth knowing, not problems
    #: What the journal scan mended or dropped (journal.py invariants 5 and 6).
    journal: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.problems

    @property
    def repairable(self) -> bool:
        return all(p.severity in ("leak", "count", "flag") for p in self.problems)

    def add(self, severity: str, message: str, block: int | None = None, path: str = "") -> None:
        if len(self.problems) < MAX_LISTED:
            self.problems.append(Problem(severity, message, block, path))
        elif len(self.problems) == MAX_LISTED:
            self.problems.append(Problem(severity, "too many problems; listing stopped"))


class _Checker:
    def __init__(self, store, progress: Progress | None) -> None:  # noqa: ANN001
        self.store, self.f, self.progress = store, store.sb, progress
        self.k = self.f.chunk_size // self.f.block_size
        self.report = Report()
        self.referenced = bytearray((self.f.store_chunks + 7) // 8)
        self.tree_blocks: set[int] = set()
        self.exceptions = self.leaves = self.nodes = 0
        self.known_slots = {e.slot: e for e in store.snaps.entries if e.state != fmt.SNAP_FREE}
        self.known_mask = sum(1 << s for s in self.known_slots)
        self.bad_bitmaps: set[int] = set()
        self.usage: dict[int, dict[str, int]] = {}

    def error(self, exc: CorruptionError) -> None:
        self.report.add("error", str(exc), exc.block, exc.path)

    def _bitmap_error(self, exc: CorruptionError) -> None:
        """Report a damaged bitmap block once, however often it is consulted."""
        if exc.block not in self.bad_bitmaps:
            self.bad_bitmaps.add(exc.block)
            self.error(exc)

    def _bit(self, query: Callable[[int], bool], index: int) -> bool | None:
        """A bitmap query; None (reported) when its bitmap block is damaged."""
        try:
            return query(index)
        except CorruptionError as exc:
            self._bitmap_error(exc)
            return None

    def run(self) -> Report:
        for note in self.store.recovery.notes:
            self.report.add("leak" if "slot" in note else "error", note)
        self.report.notes.extend(self.store.recovery.info)
        self._journal()
        self._snapshot_table()
        self._tree()
        self._grants()
        self._geometry()
        self._space()
        self._counts()
        self._flags()
        self.report.stats.update(exceptions=self.exceptions, leaves=self.leaves,
                                 nodes=self.nodes, depth=self.f.depth,
                                 free_chunks=self.f.free_chunks,
                                 store_chunks=self.f.store_chunks)
        return self.report

    def _journal(self) -> None:
        """Verify the pending journal region again and list what recovery did to it.

        A read-only open replayed the region between tail and head in memory;
        scanning it again must find the same transactions.  A read-write open
        has already written them home (the region is empty) and its recovery
        findings are what there is to report.
        """
        store, r = self.store, self.store.recovery
        j = store.journal
        self.report.journal = list(r.journal_notes)
        self.report.stats.update(journal_transactions=r.transactions,
                                 journal_corrected=r.journal_corrected,
                                 journal_dropped=r.journal_dropped)
        if not j.used:
            return
        try:
            again = jnl.scan(store.dev, j.start, j.nblocks, j.block_size, j.store_id, j.tail,
                             j.tail_seq, j.version)
            datacheck.check_tail(store.dev, self.f.chunk_size, j.start, again)
        except CorruptionError as exc:
            self.error(exc)
            return
        if (again.head, again.next_seq) != (j.head, j.seq):
            self.report.add("error", f"journal changed while checking: the scan now ends at "
                            f"journal block {again.head}, sequence {again.next_seq}, not "
                            f"{j.head}, {j.seq} (is a server writing this store?)")

    def _flags(self) -> None:
        """A flag set by the server is only lifted once a check finds no damage."""
        flags = self.f.flags & (fmt.FLAG_CORRUPT | fmt.FLAG_NEEDS_CHECK)
        if not flags:
            return
        what = "corrupt" if flags & fmt.FLAG_CORRUPT else "needing a check after an I/O error"
        damaged = any(p.severity == "error" for p in self.report.problems)
        self.report.add("error" if damaged else "flag",
                        f"the server marked this store {what}"
                        + ("" if damaged else "; no damage found now (--repair clears the flag)"))

    def _snapshot_table(self) -> None:
        names, tags = set(), set()
        for e in self.known_slots.values():
            if e.state == fmt.SNAP_LIVE:
                if e.name in names:
                    self.report.add("error", f"snapshot name {e.name!r} used twice")
                names.add(e.name)
            if e.tag in tags:
                self.report.add("error", f"snapshot tag {e.tag} used twice")
            tags.add(e.tag)
            if e.use_count and (e.state != fmt.SNAP_LIVE or e.squashed):
                what = "squashed" if e.squashed else "being deleted or created"
                self.report.add("error", f"snapshot {e.name!r} (slot {e.slot}) has "
                                f"{e.use_count} hold(s) but is {what}: a held snapshot "
                                "is never deleted nor squashed")
        self._clone_fill()
        self._revert()

    def _revert(self) -> None:
        """A revert in progress names a live, whole snapshot and has its feature bit."""
        f = self.store.sb
        if not f.revert_slot:
            return
        entry = self.known_slots.get(f.revert_slot - 1)
        problem = ""
        if entry is None or entry.state != fmt.SNAP_LIVE or entry.squashed:
            problem = (f"its snapshot (slot {f.revert_slot - 1}) is not a live snapshot: the "
                       "origin is half reverted")
        elif not f.incompat & fmt.INCOMPAT_REVERT:
            problem = "the REVERT feature bit is not set"
        elif f.revert_cursor > KEY_LIMIT:
            problem = f"cursor {f.revert_cursor} is past the key space"
        if problem:
            self.report.add("error", f"revert in progress: {problem}")

    def _clone_fill(self) -> None:
        """A clone fill in progress names a live clone of a live, whole parent."""
        f = self.store.sb
        if not f.clone_slot:
            return
        clone, parent = self.known_slots.get(f.clone_slot - 1), self.known_slots.get(f.clone_parent)
        problem = ""
        if clone is None or clone.state != fmt.SNAP_LIVE or clone.squashed:
            problem = f"its clone (slot {f.clone_slot - 1}) is not a live snapshot"
        elif parent is None or parent.state != fmt.SNAP_LIVE or parent.squashed:
            problem = (f"the parent (slot {f.clone_parent}) of clone {clone.name!r} is not a "
                       "live snapshot: the clone has lost the copies it had not received yet")
        elif clone.parent != f.clone_parent:
            problem = f"clone {clone.name!r} is filled from slot {f.clone_parent}, not its parent"
        elif f.clone_cursor > KEY_LIMIT:
            problem = f"fill cursor {f.clone_cursor} is past the key space"
        if problem:
            self.report.add("error", f"clone fill in progress: {problem}")

    def _grants(self) -> None:
        """The grant table's blocks are metadata in use; its records name real things."""
        grants = self.store.grants
        for addr in grants.addrs:
            if addr in self.tree_blocks:
                self.report.add("error", "grant table block is also a tree block", addr)
            self.tree_blocks.add(addr)
            if self._bit(self.store.alloc.is_meta, addr) is False:
                self.report.add("error", "grant table block not marked in the metadata bitmap",
                                addr)
        for i, rec in enumerate(grants.records):
            if rec is None:
                continue
            where = grants.addrs[i // grants.per_block]
            if rec.kind == fmt.GRANT_WRITER and rec.slot not in self.known_slots:
                self.report.add("error", f"writer grant of client {rec.client} names snapshot "
                                f"slot {rec.slot}, which is free", where)
            for start, count in rec.runs or []:
                if start + count > self.f.origin_chunks:
                    self.report.add("error", f"exposure of client {rec.client} runs past the "
                                    f"origin (chunks {start}..{start + count - 1})", where)

    def _tree(self) -> None:
        total = max(1, self.f.exceptions)
        for visit in walk_tree(self.store, self.error):
            if visit.addr in self.tree_blocks:
                self.report.add("error", "block reached twice in the tree", visit.addr, visit.path)
                continue
            self.tree_blocks.add(visit.addr)
            if self._bit(self.store.alloc.is_meta, visit.addr) is False:
                self.report.add("error", "tree block not marked in the metadata bitmap",
                                visit.addr, visit.path)
            if visit.depth:
                self._node(visit)
            else:
                self._leaf(visit)
                if self.progress and self.leaves % 64 == 0:
                    self.progress(min(self.exceptions, total), total)

    def _node(self, v: Visit) -> None:
        self.nodes += 1
        keys = v.keys
        if keys[0] != v.lo:
            self.report.add("error", f"first key {keys[0]} is not the range start {v.lo}",
                            v.addr, v.path)
        if keys[-1] >= v.hi:
            self.report.add("error", f"key {keys[-1]} beyond the range end {v.hi}", v.addr, v.path)

    def _leaf(self, v: Visit) -> None:
        self.leaves += 1
        f = self.f
        if v.nbytes > fmt.leaf_capacity(f.block_size):
            self.report.add("error", "leaf overfull", v.addr, v.path)
        add_usage(self.usage, [excs for _, excs in v.entries])
        for chunk, excs in v.entries:
            if not v.lo <= chunk < v.hi:
                self.report.add("error", f"chunk {chunk} outside the leaf's range "
                                f"{v.lo}..{v.hi - 1}", v.addr, v.path)
            if chunk >= f.origin_chunks:
                self.report.add("error", f"chunk {chunk} beyond the origin", v.addr, v.path)
            seen_bits = 0
            for store_chunk, sharemap in excs:
                self.exceptions += 1
                self._exception(v, chunk, store_chunk, sharemap, seen_bits)
                seen_bits |= sharemap

    def _exception(self, v: Visit, chunk: int, store_chunk: int, sharemap: int,
                   seen_bits: int) -> None:
        f, where = self.f, f"chunk {chunk} -> store chunk {store_chunk}"
        if not f.data_start_chunk <= store_chunk < f.store_chunks:
            self.report.add("error", f"{where}: outside the data area", v.addr, v.path)
            return
        byte, bit = store_chunk >> 3, 1 << (store_chunk & 7)
        if self.referenced[byte] & bit:
            self.report.add("error", f"{where}: store chunk referenced twice", v.addr, v.path)
        self.referenced[byte] |= bit
        if self._bit(self.store.alloc.is_allocated, store_chunk) is False:
            self.report.add("error", f"{where}: store chunk is not allocated", v.addr, v.path)
        if self._bit(self.store.alloc.chunk_has_meta, store_chunk):
            self.report.add("error", f"{where}: store chunk holds metadata", v.addr, v.path)
        if sharemap & seen_bits:
            self.report.add("error", f"chunk {chunk}: a snapshot has two copies", v.addr, v.path)
        unknown = sharemap & ~self.known_mask
        if unknown or sharemap >> f.max_snapshots:
            self.report.add("error", f"{where}: sharemap names snapshot slots that do not exist "
                            f"(0x{unknown:x})", v.addr, v.path)

    def _geometry(self) -> None:
        """The bitmaps' places and sizes (a growth may have moved them) and the origin
        growth records: bitmaps cover the store, lie inside it without overlapping the
        fixed areas or each other, mark their own blocks, and set the bits past the end."""
        f, k, bpb = self.f, self.k, fmt.bitmap_bits_per_block(self.f.block_size)
        self.bitmap_blocks = 0
        fixed = [("superblocks", 0, 2), ("snapshot table", f.snaptab_start, f.snaptab_blocks),
                 ("journal", f.journal_start, f.journal_blocks)]
        areas = []
        for name, start, count, bits, kind in (
                ("chunk bitmap", f.cbitmap_start, f.cbitmap_blocks, f.store_chunks,
                 fmt.BlockKind.CBITMAP),
                ("metadata bitmap", f.mbitmap_start, f.mbitmap_blocks, f.store_chunks * k,
                 fmt.BlockKind.MBITMAP)):
            if count * bpb < bits:
                self.report.add("error", f"{name}: {count} blocks cover {count * bpb} bits, "
                                f"the store needs {bits}")
            if start < 2 or start + count > f.store_chunks * k:
                self.report.add("error", f"{name}: blocks {start}..{start + count - 1} are "
                                "outside the store")
                continue
            areas.append((name, start, count))
            self.bitmap_blocks |= ((1 << count) - 1) << start
            self._past_end(name, kind, start, bits, count * bpb)
        for i, (name, start, count) in enumerate(areas):
            for other, ostart, ocount in fixed + areas[i + 1:]:
                if start < ostart + ocount and ostart < start + count:
                    self.report.add("error", f"{name} overlaps the {other}")
            if start >= f.data_start_chunk * k:  # placed by a growth: marked as metadata
                if not f.incompat & fmt.INCOMPAT_BITMAPS_MOVED:
                    self.report.add("error", f"{name} lies in the data area without the "
                                    "BITMAPS_MOVED feature")
                for block in range(start, start + count):
                    if self._bit(self.store.alloc.is_meta, block) is False:
                        self.report.add("error", f"{name} block {block} is not marked in "
                                        "the metadata bitmap", block)
                        break
        records = f.size_records
        if records and not f.incompat & fmt.INCOMPAT_ORIGIN_GROWN:
            self.report.add("error", "origin growth records without the ORIGIN_GROWN feature")
        sizes = [b for _, b in records]
        times = [t for t, _ in records]
        if sizes != sorted(sizes) or times != sorted(times) or any(
                b >= f.origin_bytes or b <= 0 for b in sizes):
            self.report.add("error", f"origin growth records out of order or not below the "
                            f"origin size {f.origin_bytes}: {list(records)}")

    def _past_end(self, name: str, kind: fmt.BlockKind, start: int, bits: int,
                  covered: int) -> None:
        """Bits past the end of the store must be set (never allocated); only the blocks
        that hold such bits are read."""
        bpb = fmt.bitmap_bits_per_block(self.f.block_size)
        for b in range(bits // bpb, covered // bpb):
            try:
                raw = self.store.cache.get(start + b, kind).bits
            except CorruptionError:
                return  # reported by _space
            lo = max(bits - b * bpb, 0)
            tail = int.from_bytes(raw, "little") >> lo
            if tail != (1 << (bpb - lo)) - 1:
                self.report.add("error", f"{name}: bits past the end of the store are not "
                                "all set", start + b)
                return

    def _counts(self) -> None:
        """The per-snapshot space counts the store keeps up to date (usage.py), when they
        are complete, are what the walk found."""
        counts = self.store.exmap.counts
        if not counts.complete:
            return
        kept = counts.as_usage()
        found = {s: u for s, u in self.usage.items() if u["unique"] or u["shared"]}
        for slot in sorted(set(kept) | set(found)):
            want = found.get(slot, {"unique": 0, "shared": 0})
            got = kept.get(slot, {"unique": 0, "shared": 0})
            if got != want:
                self.report.add("count", f"space counts of snapshot slot {slot}: "
                                f"{got['unique']} exclusive and {got['shared']} shared kept, "
                                f"{want['unique']} and {want['shared']} in the tree")

    def _space(self) -> None:
        f, k = self.f, self.k
        allocated = bitmap_int(self.store, fmt.BlockKind.CBITMAP, self._bitmap_error)
        valid = (1 << f.store_chunks) - 1
        free = f.store_chunks - bin(allocated & valid).count("1")
        if free != f.free_chunks:
            self.report.add("count", f"free chunk count is {f.free_chunks} but the bitmap has "
                            f"{free} free chunks")
        meta = bitmap_int(self.store, fmt.BlockKind.MBITMAP, self._bitmap_error)
        meta &= (1 << (f.store_chunks * k)) - 1
        reserved_blocks = (1 << (f.data_start_chunk * k)) - 1
        reachable = reserved_blocks | self.bitmap_blocks
        for addr in self.tree_blocks:
            reachable |= 1 << addr
        meta_chunks = 0
        for block in set_bits(meta & ~reserved_blocks):
            meta_chunks |= 1 << (block // k)
        used = int.from_bytes(self.referenced, "little") | ((1 << f.data_start_chunk) - 1) \
            | meta_chunks
        self.report.leaked_chunks = list(set_bits(allocated & valid & ~used, MAX_LISTED))
        for chunk in self.report.leaked_chunks:
            self.report.add("leak", f"store chunk {chunk} is allocated but unused")
        self.report.leaked_blocks = list(set_bits(meta & ~reachable, MAX_LISTED))
        for block in self.report.leaked_blocks:
            self.report.add("leak", f"metadata block {block} is marked but not in the tree", block)
        for chunk in set_bits(meta_chunks & ~allocated, MAX_LISTED):
            self.report.add("error", f"chunk {chunk} holds metadata but is not allocated")
        if self.exceptions != f.exceptions:
            self.report.add("count", f"exception count is {f.exceptions} but the tree holds "
                            f"{self.exceptions}")


def check_store(store, progress: Progress | None = None) -> Report:  # noqa: ANN001
    """Check an open store (open it read-only to leave it byte-identical)."""
    return _Checker(store, progress).run()


def repair(store, report: Report) -> list[str]:  # noqa: ANN001
    """Fix what is safe to fix (leaks and counts); return what was done.

    Refuses when the report has errors that could mean wrong data: those need
    a human, not a guess.
    """
    if not report.repairable:
        raise ValueError("the store has errors that repair cannot fix safely")
    done = []
    for block in report.leaked_blocks:
        store.alloc.free_block(block)
        done.append(f"freed leaked metadata block {block}")
    for chunk in report.leaked_chunks:
        if store.alloc.is_allocated(chunk) and not store.alloc.chunk_has_meta(chunk):
            store.alloc.free_chunk(chunk)
            done.append(f"freed leaked chunk {chunk}")
    again = check_store(store)
    f = store.sb
    if again.stats["exceptions"] != f.exceptions:
        done.append(f"exception count {f.exceptions} -> {again.stats['exceptions']}")
        f.exceptions = again.stats["exceptions"]
    allocated = bitmap_int(store, fmt.BlockKind.CBITMAP)
    free = f.store_chunks - bin(allocated & ((1 << f.store_chunks) - 1)).count("1")
    if free != f.free_chunks:
        done.append(f"free chunk count {f.free_chunks} -> {free}")
        f.free_chunks = free
    if any(p.message.startswith("space counts of") for p in report.problems):
        store.exmap.counts = SpaceCounts()
        while store.count_step(256):
            pass
        done.append("counted the per-snapshot space again")
    flags = fmt.FLAG_CORRUPT | fmt.FLAG_NEEDS_CHECK
    if f.flags & flags:
        f.flags &= ~flags
        done.append("cleared the server's corrupt / needs-check flag")
    store.sbs.touch()
    store.commit()
    return done
