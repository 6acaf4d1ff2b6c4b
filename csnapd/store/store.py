"""The store facade: every metadata operation, made durable through the journal.

Operations change cached blocks in memory only; making them durable is the
sealed-commit protocol of sealing.py: ``seal()`` on this thread, ``write()`` of
the sealed transaction on a worker thread, ``sealed_done()`` back here
(``commit()`` does all three, synchronously).  A server can thus group many
requests into one transaction, and keep serving while it is being written.

Durability rules (numbered as in journal.py, which states them in full):
  1. Write-ahead: a block's home is written only by a checkpoint, and only
     with images of transactions already durable in the journal.
  2. Data first: a sealed transaction copies its chunks and flushes before
     it writes its journal blocks (seal.py).
  3. Reclaim after home: a checkpoint reclaims journal space only after its
     home writes and then its superblock are flushed.
  9. Done means durable: an operation's answer may say "done" only once the
     transaction of its ticket is durable (``take_dependency``,
     ``durable_ticket``); one that changed nothing and read only durable
     state may be answered at once.
 10. Quarantine: chunks freed by a transaction are not reused until a
     checkpoint captured after that transaction was durable is itself durable
     (bitmap.py), so no copy-out can overwrite data a crash could bring back.
 11. Full-page images: in the compact journal a block goes as records only
     once it has an image since the last checkpoint capture (seal.py); replay
     (replay.py) never needs a home block.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable
from typing import Any

from . import datacheck, growth, revert, sizes
from . import format as fmt
from . import journal as jnl
from . import superblock as sbk
from .bitmap import Allocator
from .blocks import Bitmap, GrantBlock, Leaf, Node, snaptab_decoder
from .btree import KEY_LIMIT, BTree
from .cache import BlockCache
from .clones import CloneFill
from .copier import Copier
from .device import Device
from .errors import (
    CorruptionError,
    FencedError,
    FormatError,
    GeometryError,
    LimitError,
    OutOfRange,
    ReadOnlyError,
    SealOrderError,
    SnapshotHeld,
    StoreFullError,
)
from .exmap import ExceptionMap, LeafSpan, Usage
from .grants import Grants
from .replay import Replay
from .sealing import Sealing
from .snapshots import Snapshots
from .superblock import SuperState

Ranges = Iterable[tuple[int, int]] | Iterable[list[int]]
Progress = Callable[[int, int], None]
DEFAULT_CACHE = 64 << 20
#: Chunks handled per leaf visit before the store re-checks its reserves.
BATCH = 64


@dataclasses.dataclass
class Recovery:
    """What open() found and did.

    ``notes`` are superblock findings; ``journal_notes`` say what the journal
    scan mended or dropped (journal.py invariants 5 and 6), so a server can
    log it and csnap-check can list it; ``info`` is what recovery did that is
    harmless (a create cut short by the crash, now being deleted).
    """

    unclean: bool = False
    transactions: int = 0
    blocks: int = 0  # block images replayed
    records: int = 0  # compact-journal records replayed
    info: list[str] = dataclasses.field(default_factory=list)  # what recovery did, harmless
    notes: list[str] = dataclasses.field(default_factory=list)  # damage found (slots)
    journal_notes: list[str] = dataclasses.field(default_factory=list)
    journal_corrected: int = 0  # damaged journal blocks of replayed transactions
    journal_dropped: int = 0  # torn transactions dropped at the end of the journal
    journal_fenced: int = 0  # a fenced old leader's late transaction dropped (HA)
    epochs: list[int] = dataclasses.field(default_factory=list)
    upgraded: bool = False  # this open switched the journal to the compact format


#: How far a takeover moves the journal's sequence numbers ahead (Store.take_over).
TAKEOVER_SEQ_JUMP = 1 << 32


class Store(Sealing):
    """An open snapshot store (the sealed-commit protocol is in sealing.py)."""

    def __init__(self, dev: Device, origin: Device, f: fmt.SuperFields, cache_size: int,
                 readonly: bool) -> None:
        self.dev, self.origin, self.readonly = dev, origin, readonly
        self.sbs = SuperState(f)
        self.block_size, self.chunk_size = f.block_size, f.chunk_size
        per = fmt.snap_entries_per_block(f.block_size)
        decoders = {
            fmt.BlockKind.LEAF: Leaf.decode,
            fmt.BlockKind.NODE: Node.decode,
            fmt.BlockKind.CBITMAP: Bitmap.decoder(fmt.BlockKind.CBITMAP),
            fmt.BlockKind.MBITMAP: Bitmap.decoder(fmt.BlockKind.MBITMAP),
            fmt.BlockKind.SNAPTAB: snaptab_decoder(f.snaptab_start, per),
            fmt.BlockKind.GRANTS: GrantBlock.decode,
        }
        self.cache = BlockCache(dev, f.block_size, f.store_id, cache_size, decoders)
        self.alloc = Allocator(self.cache, self.sbs)
        self.cache.is_meta = self.alloc.is_meta
        self.tree = BTree(self.cache, self.alloc, self.sbs)
        self.exmap = ExceptionMap(self.tree, self.cache)
        self.fill = CloneFill(self.sbs)
        self.journal = jnl.Journal(dev, f.journal_start, f.journal_blocks, f.block_size,
                                   f.store_id, f.journal_tail, f.journal_seq,
                                   jnl.format_of(f.incompat))
        self.copier = Copier(f.chunk_size, self.alloc)
        self.recovery = Recovery()
        self.committed_super = self.sbs.snapshot()
        self.snaps: Snapshots  # set by _load_tables
        self.grants: Grants  # set by _load_tables
        self.failed: str = ""
        #: Called on the writing thread right before every write to the store (HA:
        #: raises FencedError once this server may no longer write); None = always may.
        self.fence: Callable[[], None] | None = None
        self.stats = {"commits": 0, "checkpoints": 0, "copyouts": 0, "bytes_copied": 0,
                      "flushes": 0, "ops_committed": 0, "journal_corrected": 0,
                      "journal_bytes": 0, "home_bytes": 0}
        self._init_sealing()

    # ------------------------------------------------------------------
    # geometry
    @property
    def sb(self) -> fmt.SuperFields:
        return self.sbs.f

    @property
    def origin_chunks(self) -> int:
        return self.sb.origin_chunks

    @property
    def store_chunks(self) -> int:
        return self.sb.store_chunks

    # ------------------------------------------------------------------
    # opening and closing
    @classmethod
    def open(cls, dev: Device, origin: Device, cache_size: int = DEFAULT_CACHE,
             readonly: bool = False, check_origin: bool = True) -> Store:
        """Open a store, replaying the journal first (in memory if readonly)."""
        f, _slot, notes = sbk.load(dev)
        store = cls(dev, origin, f, cache_size, readonly)
        store.recovery.notes = notes
        store._recover()  # reads only the journal; a growth in it may change the sizes
        f = store.sb
        if check_origin and origin.size < f.origin_bytes:
            raise GeometryError(
                f"origin {origin.path} is {origin.size} bytes but this store was made for an "
                f"origin of {f.origin_bytes} bytes: wrong origin device?")
        if check_origin and origin.size > f.origin_bytes:
            # enlarged, and not grown yet (or the growth was cut short by a crash)
            store.recovery.info.append(
                f"origin {origin.path} is {origin.size} bytes, more than the store's origin "
                f"of {f.origin_bytes} bytes: the rest is used after csnapctl grow --origin")
        if dev.size < f.store_chunks * f.chunk_size:
            raise GeometryError(f"store {dev.path} is smaller than its superblock says")
        store._load_tables()
        if not readonly:
            store._mark_open()
        return store

    def _recover(self) -> None:
        """Replay the journal in memory: its newest images wait in ``pending_home``."""
        f = self.sb
        self.recovery.unclean = bool(f.flags & fmt.FLAG_BUSY)
        scan = jnl.scan(self.dev, f.journal_start, f.journal_blocks, f.block_size,
                        f.store_id, f.journal_tail, f.journal_seq, self.journal.version,
                        min_epoch=f.ha_epoch)
        datacheck.check_tail(self.dev, f.chunk_size, f.journal_start, scan)
        replay = Replay(f.block_size, f.store_id, self.cache.decoders, f.journal_start)
        for txn in scan.transactions:
            replay.transaction(txn)
        if replay.super_image is not None or replay.super_fields:
            # a whole superblock image (older formats; a growth) and the SUPER records
            # written after it, on top
            base = self.sb if replay.super_image is None else fmt.decode_super(
                replay.super_image, 0)
            self._adopt_journaled_super(dataclasses.replace(base, **replay.super_fields))
        self.cache.pending_home.update(replay.images())
        # A block freed by a later transaction keeps its older images in the
        # journal; its chunk is quarantined until a checkpoint, so skipping
        # them is safe, and writing them would trip the overlap check.
        for home in [h for h in self.cache.pending_home if not self.alloc.is_meta(h)]:
            del self.cache.pending_home[home]
        r = self.recovery
        r.transactions = len(scan.transactions)
        r.blocks = sum(len(t.images) for t in scan.transactions)
        r.records = replay.records
        r.journal_notes = list(scan.notes)
        r.journal_corrected = scan.corrected
        r.journal_dropped = int(scan.torn is not None)
        r.epochs = scan.epochs
        self.stats["journal_corrected"] = scan.corrected
        r.journal_fenced = int(scan.fenced is not None)
        self.journal.head, self.journal.seq, self.journal.used = (
            scan.head, scan.next_seq, scan.blocks_used)
        self.journal.epoch = self.sb.ha_epoch
        self.committed_super = self.sbs.snapshot()
        self._last_super = self._super_now()
        self._last_geometry = self.sb.geometry

    def _adopt_journaled_super(self, f: fmt.SuperFields) -> None:
        """The superblock as the journal leaves it (format 5.4)."""
        if (f.uuid, f.block_size, f.chunk_size) != (self.sb.uuid, self.block_size, self.chunk_size):
            raise CorruptionError(0, "SUPER", "journaled superblock belongs to another store")
        # flags and the generation are also written outside the journal (a slot
        # written when the store was marked corrupt): never lose or lower them
        f.flags |= self.sb.flags & (fmt.FLAG_CORRUPT | fmt.FLAG_NEEDS_CHECK)
        f.generation = max(f.generation, self.sb.generation)
        f.ha_epoch = max(f.ha_epoch, self.sb.ha_epoch)
        self.sbs.f = f

    def _load_tables(self) -> None:
        self.snaps = Snapshots(self.cache, self.sbs)
        self.grants = Grants(self.cache, self.alloc, self.sbs)
        if self.sb.autoclear & fmt.AUTOCLEAR_SPACE_COUNTS and not self.recovery.unclean:
            self.snaps.load_counts(self.exmap.counts)
        if not self.readonly:
            for e in self.snaps.abandon_creating():
                self.recovery.info.append(
                    f"snapshot {e.name!r} was still being created: deleting it")

    def _mark_open(self) -> None:
        f = self.sb
        f.flags |= fmt.FLAG_BUSY
        f.incompat |= (fmt.INCOMPAT_GRANTS | fmt.INCOMPAT_HOLDS | fmt.INCOMPAT_CLONES
                       | fmt.INCOMPAT_DATA_CRC)
        # the table's space counts go stale with the first change from now on
        f.autoclear &= fmt.AUTOCLEAR_KNOWN & ~fmt.AUTOCLEAR_SPACE_COUNTS
        f.opened_ns = time.time_ns()
        growth.tidy_records(self)
        self.sbs.touch()
        self.committed_super = self.sbs.snapshot()
        self._checkpoint()
        if self.journal.version != jnl.COMPACT:
            self._upgrade_journal()

    def _upgrade_journal(self) -> None:
        """Switch an older store's journal to the compact format (journal.py invariant 8).

        The checkpoint just taken replayed the old journal (in its own format)
        and left it empty.  The feature bits then go into both superblock slots
        (two checkpoints), so no slot an older csnap could fall back to after
        damage to the newest one describes a journal it would misread; only then
        is anything written in the new format.
        """
        self.sb.incompat |= fmt.INCOMPAT_JOURNAL_V2 | fmt.INCOMPAT_COMPACT_JOURNAL
        self.sbs.touch()
        self.committed_super = self.sbs.snapshot()
        self._checkpoint()
        self._checkpoint()
        self.journal.use_format(jnl.COMPACT)
        self.recovery.upgraded = True

    def take_over(self, epoch: int) -> None:
        """Lead the store under HA epoch ``epoch``: durable before anything is served.

        Called right after open, before anything is served; it empties the journal. The
        epoch goes into both superblock slots, so a fenced old leader that re-reads the
        superblock sees it and replay ignores whatever it still writes. The empty
        journal also moves half a ring away with its sequence numbers far ahead, so a
        late write of the old leader, aimed where its journal ended, can neither land
        on this leader's first transactions nor pass for one of them; and the data
        allocation cursor moves half the data area away. These two only narrow the
        window of a leader stalled between its fence check and its write (see
        docs/reliability.md); the fence itself is what stops it.
        """
        if epoch <= self.sb.ha_epoch:
            raise FencedError(f"election epoch {epoch} is not newer than the store's HA "
                              f"epoch {self.sb.ha_epoch}: a newer leader has taken it over")
        if self.in_flight:
            raise SealOrderError("take_over() while sealed work is in flight")
        self.commit()
        if self.journal.used:
            self._checkpoint()
        j, f = self.journal, self.sb
        j.head = j.tail = (j.head + j.nblocks // 2) % j.nblocks
        j.seq = j.tail_seq = j.seq + TAKEOVER_SEQ_JUMP
        # Copy-outs start half the data area away from where the old leader allocated,
        # so its late copy-outs (into chunks it allocated but never committed) do not
        # land in chunks this leader hands out soon.
        first, span = f.data_start_chunk, f.store_chunks - f.data_start_chunk
        if span > 0:
            f.alloc_cursor = first + (max(f.alloc_cursor, first) - first + span // 2) % span
        f.ha_epoch = j.epoch = epoch
        self.sbs.touch()
        self.committed_super = self.sbs.snapshot()
        self._checkpoint()
        self._checkpoint()

    def disk_epoch(self) -> int:
        """The HA epoch on disk now (the larger of the valid superblock slots).

        Read before every write of an HA leader: a larger value than its own means a
        newer leader took the store over while this one was not looking (stalled).
        """
        bs = self.block_size
        head = self.dev.pread(0, 2 * bs)
        epochs = [0]
        for slot in (0, 1):
            try:
                epochs.append(fmt.decode_super(head[slot * bs:(slot + 1) * bs], slot).ha_epoch)
            except CorruptionError:
                pass  # a torn slot: the other one decides
        return max(epochs)

    def abandon(self, why: str = "no longer the leader of this store") -> None:
        """Close the devices without writing anything (this node no longer leads)."""
        self.detach(why)
        self.dev.close()
        self.origin.close()

    def close(self) -> None:
        """Commit, checkpoint and mark the store clean (nothing may be in flight).

        Complete space counts are written into the snapshot table first, so the next
        open need not count the tree (AUTOCLEAR_SPACE_COUNTS).
        """
        if not self.readonly and not self.failed:
            if self.in_flight:
                raise SealOrderError("close() while a sealed transaction or checkpoint is "
                                     "in flight")
            counted = self.exmap.counts.complete
            if counted:
                self.snaps.save_counts(self.exmap.counts)
            self.commit()
            self.sb.flags &= ~fmt.FLAG_BUSY
            if counted:
                self.sb.autoclear |= fmt.AUTOCLEAR_SPACE_COUNTS
            self.sbs.touch()
            self.committed_super = self.sbs.snapshot()
            self._checkpoint()
        self.dev.close()
        self.origin.close()

    # ------------------------------------------------------------------
    # transactions
    def _writable(self) -> None:
        if self.readonly:
            raise ReadOnlyError("store is open read-only")
        if self.failed:
            raise ReadOnlyError(f"store refuses changes after an error: {self.failed}")

    def _flush(self) -> None:
        self.dev.flush()
        self.stats["flushes"] += 1

    def _fail(self, why: str, flag: int = fmt.FLAG_NEEDS_CHECK) -> None:
        """Stop all changes: what is not durable is dropped, the journal keeps the rest.

        The flag is recorded in a superblock slot (best effort, a small
        synchronous write; after the checkpoint in flight, if any) so the next
        open knows the store must be checked first.
        """
        self.failed = why
        self._drop_unsealed()
        if self._checkpoint_out is not None:
            self._flag_after_checkpoint |= flag
        else:
            self._write_flag(flag)

    def detach(self, why: str) -> None:
        """The devices are no longer known to be ours: refuse every change from now on.

        Unlike :meth:`_fail` this writes nothing at all, not even the needs-check flag,
        because the device under the store's path may be someone else's; uncommitted
        work is dropped (its requests were never acknowledged) and close() skips the
        final checkpoint.
        """
        if not self.failed:
            self.failed = why
        self._drop_unsealed()

    def mark_corrupt(self, why: str) -> None:
        """Metadata failed verification while serving: refuse every change from now on."""
        if not self.readonly and not self.failed:
            self._fail(why, fmt.FLAG_CORRUPT)

    def _reserve(self, data_chunks: int) -> int:
        """Make room for one batch; return how many data chunks it may use.

        Cuts the open transaction (in memory) when it nears the journal's
        limit.  When only quarantined chunks stand between us and full and
        nothing is in flight, commits and checkpoints **synchronously** (this
        blocks; it happens only on a nearly full store after deletes); with
        work in flight it leaves that to the caller (StoreFullError with
        ``awaiting_checkpoint``).
        """
        depth = self.sb.depth
        meta_blocks = 2 * depth + 4
        if len(self.cache.dirty) + meta_blocks + 8 > self.journal.max_images:
            self._cut()
        k = self.alloc.k
        meta_chunks = -(-meta_blocks // k) + 1
        need = data_chunks + meta_chunks
        if self.alloc.available < need and self.alloc.quarantined and not self.in_flight:
            self.commit()
            self.checkpoint()
        return min(data_chunks, self.alloc.available - meta_chunks)

    def _full(self, chunk: int) -> StoreFullError:
        exc = StoreFullError(f"snapshot store full: no free chunk for a copy of chunk {chunk} "
                             f"({self.sb.free_chunks} free, {self.alloc.quarantined} awaiting "
                             "a checkpoint, the rest reserved for metadata)")
        exc.chunk = chunk
        exc.awaiting_checkpoint = self.alloc.quarantined
        return exc

    def _alloc_data(self, for_chunk: int | None = None) -> int:
        chunk = self.alloc.alloc_chunk()
        if chunk is None:
            exc = StoreFullError("snapshot store full")
            exc.chunk = for_chunk
            exc.awaiting_checkpoint = self.alloc.quarantined
            raise exc
        return chunk

    # ------------------------------------------------------------------
    # validation
    def check_ranges(self, ranges: Ranges) -> list[tuple[int, int]]:
        """Validate [chunk, count] ranges against the origin size."""
        out = []
        limit = self.sb.origin_chunks
        for start, count in ranges:
            if count < 1 or start < 0 or start + count > limit:
                raise OutOfRange(f"chunks {start}..{start + count - 1} are outside the origin "
                                 f"(0..{limit - 1})")
            out.append((start, count))
        return out

    # ------------------------------------------------------------------
    # origin writes
    def origin_write(self, ranges: Ranges, extra: int = 0) -> int:
        """Make origin chunks unshared by copying out what live snapshots need.

        ``extra`` adds sharemap bits to copy for (a snapshot being created).
        Returns the number of chunks copied.  Not durable until sealed and done.
        """
        self._writable()
        ranges = self.check_ranges(ranges)
        live = self.snaps.live_mask | extra
        self.snaps.depend()
        self._ops_open += 1
        if not live:
            return 0
        copied = 0
        for start, count in ranges:
            chunk, end = start, start + count
            while chunk < end:
                chunk, n = self._origin_batch(chunk, end, live)
                copied += n
        return copied

    def _origin_batch(self, chunk: int, end: int, live: int) -> tuple[int, int]:
        """Copy out what one leaf's worth of chunks needs; return (next chunk, copies)."""
        room = self._reserve(min(BATCH, end - chunk))
        span = self.exmap.span(chunk)
        stop = min(end, span.hi, chunk + BATCH)
        if self.sb.size_records:  # snapshots older than an origin growth (store/sizes.py)
            live, stop = sizes.live_from(self._size_limits(), live, chunk, stop)
        copied = 0
        try:  # a fill may change the leaf before a full store refuses: keep that change
            if self.fill.active:
                stop = self.fill.touch(span, chunk, stop)
            for c, need in span.missing(live, chunk, stop):
                if copied >= room:
                    if not copied:
                        raise self._full(c)
                    stop = c
                    break
                store = span.add(c, need, lambda c=c: self._alloc_data(c))
                self._copy(c, None, store)
                copied += 1
                if span.overfull:
                    stop = c + 1
                    break
        finally:
            span.finish()
        return stop, copied

    def _copy(self, chunk: int, source: int | None, dest: int) -> None:
        """Queue a copy of origin ``chunk`` (or store chunk ``source``) to ``dest``."""
        self.sb.exceptions += 1
        self.stats["copyouts"] += 1
        self.copier.queue(source if source is not None else chunk, source is not None, dest)

    def snapshots_needing(self, chunk: int) -> list[fmt.SnapEntry]:
        """Live snapshots that would need a copy-out if origin ``chunk`` were written."""
        return [e for e in self.snaps.entries
                if (self.snaps.live_mask >> e.slot) & 1 and self.snapshot_lookup(e.slot, chunk) is None]

    # ------------------------------------------------------------------
    # snapshot reads and writes
    def snapshot_lookup(self, slot: int, chunk: int) -> int | None:
        """Store chunk holding snapshot ``slot``'s copy of ``chunk``, or None (origin)."""
        found = self.exmap.lookup(slot, chunk)
        fill = self.fill
        if found is None and fill.active and slot == fill.clone and chunk >= fill.cursor:
            return self.exmap.lookup(fill.parent, chunk)  # unfilled: the parent's copy
        return found

    def snapshot_map(self, slot: int, ranges: Ranges) -> list[tuple[int, int | None]]:
        """(chunk, store chunk or None) for every chunk in ``ranges``."""
        out: list[tuple[int, int | None]] = []
        for start, count in self._snapshot_ranges(slot, ranges):
            self.exmap.map_range(slot, start, count, out)
        fill = self.fill
        if fill.active and slot == fill.clone:
            lookup, parent, cursor = self.exmap.lookup, fill.parent, fill.cursor
            out = [(c, s if s is not None or c < cursor else lookup(parent, c))
                   for c, s in out]
        return out

    def snapshot_write(self, slot: int, ranges: Ranges) -> list[tuple[int, int]]:
        """Make chunks unique to snapshot ``slot``; return (chunk, store chunk) pairs."""
        self._writable()
        self._live_slot(slot)
        self.snaps.depend()
        out: list[tuple[int, int]] = []
        self._ops_open += 1
        for start, count in self._snapshot_ranges(slot, ranges):
            chunk, end = start, start + count
            while chunk < end:
                chunk = self._snapshot_batch(slot, chunk, end, out)
        self._hand_out(out)
        return out

    def _live_slot(self, slot: int) -> None:
        if not (self.snaps.live_mask >> slot) & 1:
            raise LimitError(f"snapshot slot {slot} is not a live snapshot")

    def _snapshot_batch(self, slot: int, chunk: int, end: int,
                        out: list[tuple[int, int]]) -> int:
        """Unshare one leaf's worth of chunks for ``slot``; return the next chunk."""
        room = self._reserve(min(BATCH, end - chunk))
        span = self.exmap.span(chunk)
        stop = min(end, span.hi, chunk + BATCH)
        made = 0
        try:  # a fill may change the leaf before a full store refuses: keep that change
            if self.fill.involves(slot):
                stop, made = self._fill_before_write(span, slot, chunk, stop, room)
            for c, unique in span.unique(slot, chunk, stop):
                if unique is None:
                    if made >= room:
                        if not made:
                            raise self._full(c)
                        stop = c
                        break
                    unique, source = span.unshare(c, slot, lambda c=c: self._alloc_data(c))
                    self._copy(c, source, unique)
                    made += 1
                out.append((c, unique))
                if span.overfull:
                    stop = c + 1
                    break
        finally:
            span.finish()
        return stop

    def _fill_before_write(self, span: LeafSpan, slot: int, chunk: int, stop: int,
                           room: int) -> tuple[int, int]:
        """A write to the clone being filled or to its parent: fill its chunks first.

        Where the parent writes a chunk both still read from the origin, the clone
        gets its own copy of the origin chunk (clones.py says why).  Returns the
        batch's new stop and the copies made.
        """
        fill = self.fill
        stop = fill.touch(span, chunk, stop)
        made = 0
        if slot == fill.parent:
            pbit, cbit = 1 << fill.parent, 1 << fill.clone
            for c, need in span.missing(pbit | cbit, max(chunk, fill.cursor), stop):
                if need != pbit | cbit:
                    continue
                if made >= room:
                    if not made:
                        raise self._full(c)
                    return c, made
                store = span.add(c, cbit, lambda c=c: self._alloc_data(c))
                self._copy(c, None, store)
                made += 1
                if span.overfull:
                    return c + 1, made
        return stop, made

    # ------------------------------------------------------------------
    # snapshots
    def clone_snapshot(self, name: str, parent: str | int, tag: int | None = None,
                       priority: int = 0) -> fmt.SnapEntry:
        """Create a writable snapshot with exactly ``parent``'s content (O(1)).

        Its copies are shared with the parent by a background pass
        (``clone_step``); until then reads of it follow the parent where needed.
        Refused while another clone is being filled, and for squashed parents.
        """
        self._writable()
        entry = self.snaps.find(parent)
        if entry.squashed or entry.state != fmt.SNAP_LIVE:
            raise LimitError(f"snapshot {entry.name!r} was squashed: there is nothing to clone")
        if self.fill.active:
            busy = self.snaps.entries[self.fill.clone]
            raise LimitError(f"clone {busy.name!r} is still being filled "
                             f"({100 * self.fill.progress(self.sb.origin_chunks)['fraction']:.0f}%"
                             " done); create the next clone when it is finished")
        clone = self.snaps.create(name, tag, priority, parent=entry.slot)
        self.fill.start(clone.slot, entry.slot)
        self._ops_open += 1
        return clone

    @property
    def cloning(self) -> bool:
        """True while a clone is being filled (``clone_step`` has work)."""
        return self.fill.active

    def clone_step(self, max_leaves: int = 32) -> bool:
        """Advance the clone fill by up to ``max_leaves`` leaves; True while work remains.

        Each leaf's changes and the cursor go into the same transaction, so a crash
        resumes where the last commit left off.
        """
        self._writable()
        if not self.fill.active:
            return False

        def before_leaf() -> None:
            self._reserve(0)
            if len(self.cache.dirty) + 2 * self.sb.depth + 12 > self.journal.max_images:
                self._cut()

        return self.fill.step(self.exmap, before_leaf, max_leaves)

    def _refuse_if_filling(self, entry: fmt.SnapEntry, doing: str) -> None:
        """The parent of a clone being filled must keep its copies until the fill ends."""
        fill = self.fill
        if fill.active and entry.slot == fill.parent:
            clone = self.snaps.entries[fill.clone]
            raise SnapshotHeld(f"cannot {doing} snapshot {entry.name!r}: clone {clone.name!r} "
                          "is still being filled from it; retry when 'csnapctl status' "
                          "shows the fill done")
        if fill.active and entry.slot == fill.clone:
            fill.end()
        if entry.slot == self.sb.revert_slot - 1:
            raise SnapshotHeld(f"cannot {doing} snapshot {entry.name!r}: the origin is being "
                               "reverted to it; retry when 'csnapctl status' shows the revert "
                               "done")

    def create_snapshot(self, name: str, tag: int | None = None, priority: int = 0,
                        creating: bool = False) -> fmt.SnapEntry:
        """Create a snapshot of the origin as it is now (O(1)); commit to make durable.

        With ``creating`` the snapshot is not live (nor visible) until
        ``make_live``: its copy-outs can be made first, over several commits,
        and a crash in between leaves it to be deleted at the next open.
        """
        self._writable()
        self._ops_open += 1
        return self.snaps.create(name, tag, priority, creating)

    def make_live(self, entry: fmt.SnapEntry) -> None:
        """Finish a create started with ``creating=True``."""
        self._writable()
        self.snaps.make_live(entry)

    def abandon_create(self) -> None:
        """Give up creates in progress; their copies are freed like a delete's."""
        self._writable()
        self.snaps.abandon_creating()

    def delete_snapshot(self, ident: str | int) -> fmt.SnapEntry:
        """Hide a snapshot at once and queue the freeing of its chunks."""
        self._writable()
        entry = self.snaps.find(ident)
        self.snaps.refuse_if_held(entry, "delete")
        self._refuse_if_filling(entry, "delete")
        self.snaps.mark_deleting(entry)
        self._ops_open += 1
        return entry

    def squash_snapshot(self, entry: fmt.SnapEntry) -> None:
        """Mark a snapshot squashed (unreadable) and queue its space for freeing.

        It stops needing copy-outs at once; its chunks are freed by the next
        delete pass; the entry stays listed as squashed until deleted.
        """
        self._writable()
        self.snaps.refuse_if_held(entry, "squash")
        self._refuse_if_filling(entry, "squash")
        self.snaps.mark_squashed(entry)
        self._ops_open += 1

    def hold_snapshot(self, ident: str | int) -> fmt.SnapEntry:
        """Add a hold on a snapshot: delete refuses it and squash skips it until released."""
        self._writable()
        entry = self.snaps.find(ident)
        self.snaps.hold(entry)
        self._ops_open += 1
        return entry

    def release_snapshot(self, ident: str | int) -> fmt.SnapEntry:
        """Take one hold off a snapshot (refused when it has none)."""
        self._writable()
        entry = self.snaps.find(ident)
        self.snaps.release(entry)
        self._ops_open += 1
        return entry

    def set_snapshot(self, ident: str | int, name: str | None = None,
                     priority: int | None = None) -> fmt.SnapEntry:
        """Rename a snapshot and/or change its priority, both in one transaction.

        Everything is checked before anything changes, so a refused rename
        leaves the priority as it was too.
        """
        self._writable()
        entry = self.snaps.find(ident)
        if name is not None:
            self.snaps.check_name(name, entry.slot)
        if priority is not None:
            self.snaps.check_priority(priority)
        if name is not None and name != entry.name:
            self.snaps.rename(entry, name)
        if priority is not None and priority != entry.priority:
            self.snaps.set_priority(entry, priority)
        self._ops_open += 1
        return entry

    @property
    def deleting(self) -> bool:
        """True while a delete pass has work (slots held by writer grants wait)."""
        return bool(self.snaps.in_pass_mask()
                    or self.snaps.deleting_mask & ~self.grants.held_mask())

    @property
    def held_deleting(self) -> int:
        """Sharemap bits of deleted snapshots whose chunks writer grants hold."""
        return self.snaps.deleting_mask & ~self.snaps.in_pass_mask() & self.grants.held_mask()

    def delete_step(self, max_leaves: int = 32) -> bool:
        """Advance background deletion by up to ``max_leaves`` leaves.

        Returns True while work remains.  Each leaf's changes are committed
        with the next commit; the pass cursor is in the superblock, so a crash
        resumes where the last commit left off.
        """
        self._writable()
        mask = self.snaps.in_pass_mask()
        if not mask:
            mask = self.snaps.start_pass(self.grants.held_mask())
            if not mask:
                return False
            self.sb.delete_cursor = 0
            self.sbs.touch()
        for _ in range(max_leaves):
            self._reserve(0)
            span = self.exmap.span(self.sb.delete_cursor)
            worst = len(self.cache.dirty) + 2 * self.sb.depth + 12 + self._bitmap_blocks(span)
            if worst > self.journal.max_images:
                self._cut()
            for store in span.clear_bits(mask):
                self.alloc.free_chunk(store)
                self.sb.exceptions -= 1
            span.finish()
            hi = span.hi
            self.sb.delete_cursor = hi if hi < KEY_LIMIT else 0
            self.sbs.touch()
            if hi >= KEY_LIMIT:
                self.snaps.finish_pass()
                return self.deleting
        return True

    def _bitmap_blocks(self, span: LeafSpan) -> int:
        """Chunk-bitmap blocks that freeing every copy in ``span`` could dirty.

        One per distinct bitmap block of its store chunks (not one per copy), so
        the estimate stays within a transaction for small blocks too.
        """
        bpb = self.alloc.bpb
        return len({store // bpb for store in span.store_chunks()})

    def usage_step(self, cursor: int, leaves: int, usage: Usage) -> tuple[int, bool]:
        """Count per-snapshot usage over up to ``leaves`` leaves from ``cursor``.

        Returns (cursor to resume from, whether the count is complete); the
        cache is trimmed afterwards so a long scan stays within its budget.
        """
        result = self.exmap.usage_step(cursor, leaves, usage)
        self.cache.trim()
        return result

    def count_step(self, leaves: int) -> bool:
        """Build the per-snapshot space counts up to ``leaves`` leaves further (after an
        open they are counted once, a slice at a time; then kept exact as things change).
        True while leaves remain; the cache is trimmed afterwards."""
        more = self.exmap.count_step(leaves)
        self.cache.trim()
        return more

    def space_usage(self) -> tuple[dict[int, dict[str, int]], float]:
        """Per slot ``{"unique", "shared"}`` copies, and how much of the map is counted
        (1.0: exact; below, the counts cover only the chunks below the scan cursor)."""
        counts = self.exmap.counts
        if counts.complete:
            return counts.as_usage(), 1.0
        return counts.as_usage(), min(counts.cursor, self.sb.origin_chunks) / max(
            1, self.sb.origin_chunks)

    def delete_progress(self) -> dict[str, Any]:
        """How far the current delete pass has come (for status)."""
        mask = self.snaps.in_pass_mask() | self.snaps.deleting_mask
        total = max(1, self.sb.origin_chunks)
        done = min(self.sb.delete_cursor, total) if self.snaps.in_pass_mask() else 0
        return {"active": bool(mask), "cursor": self.sb.delete_cursor,
                "fraction": done / total if mask else 1.0}

    # ------------------------------------------------------------------
    # status
    def status(self) -> dict[str, Any]:
        """Counters that are cheap to report (no tree walk)."""
        f, j = self.sb, self.journal
        return {
            "chunk_size": f.chunk_size, "block_size": f.block_size,
            "store_chunks": f.store_chunks, "origin_chunks": f.origin_chunks,
            "free_chunks": f.free_chunks, "used_chunks": f.store_chunks - f.free_chunks,
            "exceptions": f.exceptions, "tree_depth": f.depth,
            "journal_blocks": j.nblocks, "journal_used": j.used, "journal_seq": j.seq,
            "cache_blocks": len(self.cache), "cache_bytes": self.cache.used,
            "cache_hits": self.cache.hits, "cache_misses": self.cache.misses,
            "snapshots": len(self.snaps.visible()), "deleting": self.delete_progress(),
            "clone_fill": self.fill.progress(f.origin_chunks),
            "revert": revert.progress(self),
            "grants": {"exposed_clients": len(self.grants.exposed_clients()),
                       "records": len(self.grants)},
            "failed": self.failed, **self.stats,
        }

    # ------------------------------------------------------------------
    # growth (store/growth.py)
    def grow_store(self, device_bytes: int | None = None) -> growth.Grown:
        """Take an enlarged store device into use (default: all of it); commit to make
        durable. Shrinking is refused (GrowthRefused, with the reason)."""
        return growth.grow_store(self, device_bytes)

    def grow_origin(self, size: int | None = None) -> growth.Grown:
        """Take an enlarged origin into use (default: the whole device); commit to make
        durable. Existing snapshots keep their size; shrinking is refused."""
        return growth.grow_origin(self, size)

    def snapshot_bytes(self, slot: int) -> int:
        """The size of the snapshot in ``slot``: the origin's when it was taken."""
        return growth.snapshot_bytes(self, slot)

    def _size_limits(self) -> list[tuple[int, int]]:
        snaps = self.snaps
        return sizes.limits(self.sb, ((e.slot, e.created_ns) for e in snaps.entries
                                      if (snaps.live_mask >> e.slot) & 1))

    def _snapshot_ranges(self, slot: int, ranges: Ranges) -> list[tuple[int, int]]:
        """``check_ranges``, and within the snapshot's own size (it may be older than an
        origin growth: the chunks past its size did not exist when it was taken)."""
        out = self.check_ranges(ranges)
        if self.sb.size_records:
            limit = growth.snapshot_chunks(self, slot)
            for start, count in out:
                if start + count > limit:
                    raise OutOfRange(f"chunks {start}..{start + count - 1} are outside the "
                                     f"snapshot (0..{limit - 1}): it is older than the "
                                     "origin's growth")
        return out


__all__ = ["Store", "Recovery", "FormatError"]
