"""Online growth of the store and the origin (issue 14), through the journal.

Both growths change memory only, like every store operation; the next sealed
transaction makes them durable, so a server keeps serving while it commits.  A
growth changes superblock fields that the compact journal's SUPER record does not
carry (the sizes, the bitmaps' places, the growth records), so a transaction whose
geometry changed carries a **GEOMETRY record** with them (format 5.10; an older csnap
refuses the unknown record rather than misread it).  That transaction is the switch:
before it is durable the store is the old one, after it the new one.  Moving the
bitmaps sets INCOMPAT_BITMAPS_MOVED for good: an older csnap would take the moved
blocks for leaked metadata.

Store growth, within the bitmaps' reach (init rounds them up to whole blocks): the
bits of the new chunks (and their blocks) are set as "past the end"; clearing them
and raising ``store_chunks`` and ``free_chunks`` is one transaction.

Store growth beyond the reach: new, larger bitmaps are placed at the start of the
added space, which nothing in the committed store references.  Their images (the
current bits, the new chunks free, their own chunks and blocks marked used) are
written home by the growth's transaction itself, with its copy-outs and before the
flush that precedes its journal write (seal.py); the transaction then switches the
geometry.  A crash before the switch is durable leaves the old store with some
unreferenced bytes past its end; after, the new store with its bitmaps already home.
Old bitmaps that an earlier growth placed in the data area are freed by the same
transaction (quarantined like any freed metadata); those init placed in the reserved
area stay reserved (the area is shared with the superblocks and the journal).

Origin growth: ``origin_bytes``/``origin_chunks`` go up; snapshots that exist keep
their size through a growth record (store/sizes.py).

Shrinking is refused with the reason (store/grow.py plans and refuses).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import format as fmt
from . import sizes
from .device import Device
from .grow import GrowthPlan, GrowthRefused, plan_origin_growth, plan_store_growth

if TYPE_CHECKING:
    from .store import Store


@dataclass(frozen=True, slots=True)
class Grown:
    """What a growth did, for the operator (``csnapctl grow``)."""

    what: str  # "store" or "origin"
    old: int  # chunks (store) or bytes (origin)
    new: int
    how: str  # "unchanged", "in place", "bitmaps moved"; origin: "no snapshots", "recorded"

    def as_dict(self) -> dict[str, Any]:
        return {"what": self.what, "old": self.old, "new": self.new, "how": self.how}


def _not_while_moving(store: Store) -> None:
    """Bitmaps moved by a growth must be durable in their new place before the next one."""
    if store.cache.direct or store._direct:
        raise GrowthRefused("the last store growth is still being committed; try again in "
                            "a moment")


def grow_store(store: Store, device_bytes: int | None = None) -> Grown:
    """Grow the store to ``device_bytes`` (default: the store device's size now)."""
    store._writable()
    size = store.dev.refresh_size()
    if device_bytes is None:
        device_bytes = size
    elif device_bytes > size:
        raise GrowthRefused(f"store size {device_bytes} exceeds the store device ({size} bytes)")
    f = store.sb
    plan = plan_store_growth(f, device_bytes)
    if plan.added_chunks == 0:
        return Grown("store", f.store_chunks, f.store_chunks, "unchanged")
    _not_while_moving(store)
    store._reserve(0)  # room in the open transaction for the few bitmap blocks it changes
    if plan.needs_bitmap_extension:
        _move_bitmaps(store, plan)
        how = "bitmaps moved"
    else:
        _in_place(store, plan)
        how = "in place"
    store.sbs.touch()
    store._ops_open += 1
    return Grown("store", plan.old_chunks, plan.new_chunks, how)


def _set_range(store: Store, start: int, kind: fmt.BlockKind, first: int, count: int,
               value: int) -> None:
    """Bits ``first .. first+count-1`` of a bitmap are now ``value`` (blocks journaled whole)."""
    bpb = store.alloc.bpb
    bit, end = first, first + count
    while bit < end:
        blk = store.cache.get(start + bit // bpb, kind)
        i = bit % bpb
        n = min(end - bit, bpb - i)
        blk.set_bits(i, n, value)
        store.cache.mark_dirty(blk)
        bit += n


def _in_place(store: Store, plan: GrowthPlan) -> None:
    f, k = store.sb, store.alloc.k
    old, new = plan.old_chunks, plan.new_chunks
    _set_range(store, f.cbitmap_start, fmt.BlockKind.CBITMAP, old, new - old, 0)
    _set_range(store, f.mbitmap_start, fmt.BlockKind.MBITMAP, old * k, (new - old) * k, 0)
    f.store_chunks = new
    f.free_chunks += new - old


def bitmap_region(block_size: int, chunk_size: int, store_chunks: int) -> tuple[int, int, int]:
    """(chunk bitmap blocks, metadata bitmap blocks, chunks both take) for a store size."""
    bpb = fmt.bitmap_bits_per_block(block_size)
    k = chunk_size // block_size
    cb = -(-store_chunks // bpb)
    mb = -(-store_chunks * k // bpb)
    return cb, mb, -(-(cb + mb) // k)


class NewBitmaps:
    """The bitmaps a growth places in the added space, until their transaction is durable.

    Held as their payload bytes (the bits); block images are sealed only when written, on
    the worker thread that writes the growth's transaction (seal.py), or when the cache
    reads one of them before that (``image``).  Both bitmaps are one contiguous run of
    blocks, written in large pieces.
    """

    def __init__(self, block_size: int, store_id: int, first: int,
                 parts: list[tuple[fmt.BlockKind, bytearray]]) -> None:
        self.block_size, self.store_id, self.first = block_size, store_id, first
        self.per = fmt.bitmap_bits_per_block(block_size) // 8
        self.parts: list[tuple[int, fmt.BlockKind, memoryview]] = []  # (first index, ...)
        n = 0
        for kind, raw in parts:
            self.parts.append((n, kind, memoryview(raw)))
            n += len(raw) // self.per
        self.blocks = n

    def image(self, home: int) -> bytes | None:
        """The sealed image of block ``home``, or None if it is not one of these."""
        i = home - self.first
        if not 0 <= i < self.blocks:
            return None
        base, kind, raw = next(p for p in reversed(self.parts) if p[0] <= i)
        j = i - base
        return fmt.seal(kind, home, self.store_id, 0, raw[j * self.per:(j + 1) * self.per],
                        self.block_size)

    def write(self, dev: Device, piece: int = 8 << 20) -> None:
        """Seal and write every block home (no flush); touches only ``dev`` and self."""
        per_piece = max(1, piece // self.block_size)
        for lo in range(0, self.blocks, per_piece):
            hi = min(self.blocks, lo + per_piece)
            run = b"".join(self.image(self.first + i) or b"" for i in range(lo, hi))
            dev.pwrite((self.first + lo) * self.block_size, run)


def _old_bits(store: Store, start: int, count: int, kind: fmt.BlockKind, keep: int,
              total: int) -> bytearray:
    """``total`` bits: the first ``keep`` bits of a bitmap as they are now, then zeros."""
    out = bytearray(total // 8)
    nbytes = keep // 8
    pos, blocks = 0, 0
    while pos < -(-keep // 8) and blocks < count:
        bits = store.cache.get(start + blocks, kind).bits
        take = min(len(bits), -(-keep // 8) - pos)
        out[pos:pos + take] = bits[:take]
        pos += take
        blocks += 1
        if blocks % 256 == 0:
            store.cache.trim()
    if keep % 8:  # the partial last byte: only its low bits are the store's
        out[nbytes] &= (1 << (keep % 8)) - 1
    return out


def _set_bits(buf: bytearray, lo: int, hi: int) -> None:
    """Set bits ``lo .. hi-1`` of ``buf`` (LSB first), whole bytes at a time."""
    while lo < hi and lo % 8:
        buf[lo >> 3] |= 1 << (lo & 7)
        lo += 1
    whole = (hi - lo) // 8
    if whole:
        buf[lo >> 3:(lo >> 3) + whole] = b"\xff" * whole
        lo += whole * 8
    while lo < hi:
        buf[lo >> 3] |= 1 << (lo & 7)
        lo += 1


def _move_bitmaps(store: Store, plan: GrowthPlan) -> None:
    f, k, bpb = store.sb, store.alloc.k, store.alloc.bpb
    old, new = plan.old_chunks, plan.new_chunks
    cb, mb, region = bitmap_region(f.block_size, f.chunk_size, new)
    if old + region + 1 > new:
        raise GrowthRefused(
            f"growing the store by {new - old} chunks needs new bitmaps of {region} chunks "
            f"(past the {plan.bitmap_reach} chunks the current ones cover); grow by at "
            f"least {region + 1} chunks")
    cstart = old * k
    chunks = _old_bits(store, f.cbitmap_start, f.cbitmap_blocks, fmt.BlockKind.CBITMAP,
                       old, cb * bpb)
    _set_bits(chunks, old, old + region)  # the new bitmaps' own chunks
    _set_bits(chunks, new, cb * bpb)  # past the end
    blocks = _old_bits(store, f.mbitmap_start, f.mbitmap_blocks, fmt.BlockKind.MBITMAP,
                       old * k, mb * bpb)
    _set_bits(blocks, cstart, cstart + cb + mb)
    _set_bits(blocks, new * k, mb * bpb)
    bitmaps = NewBitmaps(f.block_size, f.store_id, cstart,
                         [(fmt.BlockKind.CBITMAP, chunks), (fmt.BlockKind.MBITMAP, blocks)])
    old_blocks = [*range(f.cbitmap_start, f.cbitmap_start + f.cbitmap_blocks),
                  *range(f.mbitmap_start, f.mbitmap_start + f.mbitmap_blocks)]
    store.cache.direct.append(bitmaps)
    store._direct.append(bitmaps)
    f.store_chunks = new
    f.free_chunks += new - old - region
    f.cbitmap_start, f.cbitmap_blocks = cstart, cb
    f.mbitmap_start, f.mbitmap_blocks = cstart + cb, mb
    f.incompat |= fmt.INCOMPAT_BITMAPS_MOVED
    reserved = f.data_start_chunk * k
    for block in old_blocks:
        if block >= reserved:  # an earlier growth put it in the data area: free it
            store.alloc.free_block(block)


def grow_origin(store: Store, size: int | None = None) -> Grown:
    """Grow the origin to ``size`` bytes (default: the origin device's size now)."""
    store._writable()
    f = store.sb
    new_bytes, new_chunks = plan_origin_growth(f, store.origin.refresh_size(), size)
    if new_bytes == f.origin_bytes:
        return Grown("origin", f.origin_bytes, f.origin_bytes, "unchanged")
    created = [e.created_ns for e in store.snaps.entries if e.state != fmt.SNAP_FREE]
    records = sizes.with_growth(f, created, time.time_ns())
    if len(records) > fmt.SIZE_RECORDS_MAX:
        raise GrowthRefused(
            f"the origin has been grown {fmt.SIZE_RECORDS_MAX} times since the oldest "
            "snapshot was taken, and each size must be kept: delete the oldest snapshots "
            "first")
    old = f.origin_bytes
    f.size_records = records
    if records:
        f.incompat |= fmt.INCOMPAT_ORIGIN_GROWN
    f.origin_bytes, f.origin_chunks = new_bytes, new_chunks
    store.sbs.touch()
    store._ops_open += 1
    return Grown("origin", old, new_bytes, "recorded" if records else "no snapshots")


def tidy_records(store: Store) -> None:
    """At a read-write open: drop growth records no snapshot needs any more, and the
    feature bit with the last one (so an older csnap can open the store again)."""
    f = store.sb
    if not f.size_records and not f.incompat & fmt.INCOMPAT_ORIGIN_GROWN:
        return
    f.size_records = sizes.needed(
        f.size_records, [e.created_ns for e in store.snaps.entries if e.state != fmt.SNAP_FREE])
    if not f.size_records:
        f.incompat &= ~fmt.INCOMPAT_ORIGIN_GROWN
    store.sbs.touch()


def snapshot_chunks(store: Store, slot: int) -> int:
    """The size in chunks of the snapshot in ``slot`` (its origin size when taken)."""
    return sizes.entry_chunks(store.sb, store.snaps.entries[slot].created_ns)


def snapshot_bytes(store: Store, slot: int) -> int:
    """The size in bytes of the snapshot in ``slot``."""
    return sizes.entry_bytes(store.sb, store.snaps.entries[slot].created_ns)
