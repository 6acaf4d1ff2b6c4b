"""Creating a new store: choosing the layout and writing the initial metadata.

Layout, from block 0 up::

    superblock slot A | superblock slot B | snapshot table | chunk bitmap |
    metadata bitmap | journal | (rest of the reserved chunk) | data and tree

Everything before ``data_start_chunk`` is reserved: allocated in the chunk
bitmap and marked as metadata block by block.  The root leaf is the first
allocated chunk after it.

Defaults and why:
  * chunk size 64 KiB: large enough that per-chunk work in the server is
    amortised and copy-outs run near disk bandwidth, small enough that a
    random 4 KiB write after a snapshot copies only 64 KiB (qcow2 chose the
    same default for the same trade-off).
  * metadata block size 4 KiB (raised automatically when --max-snapshots
    needs more room per leaf entry; see min_block_size()).
  * journal 8 MiB (at most 1/8 of the store): several hundred transactions
    between checkpoints.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from . import format as fmt
from .device import Device
from .errors import GeometryError
from .superblock import write_slot

DEFAULT_CHUNK_SIZE = 64 << 10
DEFAULT_BLOCK_SIZE = 4096
DEFAULT_JOURNAL_BYTES = 8 << 20
DEFAULT_MAX_SNAPSHOTS = 64
MIN_JOURNAL_BLOCKS = 128
MIN_DATA_CHUNKS = 16
Progress = Callable[[int, int], None]


def _pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def min_block_size(max_snapshots: int) -> int:
    """Smallest block whose leaf fits one chunk copied separately for every snapshot.

    A logical chunk can carry one exception per snapshot (each snapshot
    written, or the origin rewritten, between snapshot creations); each costs
    13 bytes, and an entry must fit in half a leaf.
    """
    need = fmt.ENTRY_OVERHEAD + max_snapshots * (fmt.EXC_OVERHEAD + 1)
    bs = DEFAULT_BLOCK_SIZE
    while fmt.leaf_capacity(bs) // 2 < need:
        bs *= 2
    return bs


def plan(store_bytes: int, origin_bytes: int, chunk_size: int = DEFAULT_CHUNK_SIZE,
         block_size: int | None = None, journal_bytes: int | None = None,
         max_snapshots: int = DEFAULT_MAX_SNAPSHOTS) -> fmt.SuperFields:
    """Compute the layout for a new store, or raise GeometryError saying why not."""
    if not _pow2(chunk_size) or not fmt.MIN_CHUNK_SIZE <= chunk_size <= fmt.MAX_CHUNK_SIZE:
        raise GeometryError("chunk size must be a power of two from 4 KiB to 1 MiB")
    if not 1 <= max_snapshots <= fmt.MAX_SNAPSHOTS_LIMIT:
        raise GeometryError(f"--max-snapshots must be 1..{fmt.MAX_SNAPSHOTS_LIMIT}")
    needed = min_block_size(max_snapshots)
    if block_size is None:
        block_size = needed
    if not _pow2(block_size) or not fmt.MIN_BLOCK_SIZE <= block_size <= fmt.MAX_BLOCK_SIZE:
        raise GeometryError("block size must be a power of two from 512 bytes to 1 MiB")
    if block_size > chunk_size:
        raise GeometryError(f"block size {block_size} must not exceed the chunk size {chunk_size}"
                            + (f" (--max-snapshots {max_snapshots} needs blocks of {needed})"
                               if needed > DEFAULT_BLOCK_SIZE else ""))
    if max_snapshots > 64 and fmt.leaf_capacity(block_size) // 2 < \
            fmt.ENTRY_OVERHEAD + max_snapshots * (fmt.EXC_OVERHEAD + 1):
        raise GeometryError(f"--max-snapshots {max_snapshots} needs a block size of at least "
                            f"{needed} bytes")
    if origin_bytes <= 0:
        raise GeometryError("the origin is empty")
    k = chunk_size // block_size
    store_chunks = store_bytes // chunk_size
    bpb = fmt.bitmap_bits_per_block(block_size)
    snaptab_blocks = -(-max_snapshots // fmt.snap_entries_per_block(block_size))
    cbitmap_blocks = -(-store_chunks // bpb) or 1
    mbitmap_blocks = -(-(store_chunks * k) // bpb) or 1
    jbytes = journal_bytes if journal_bytes is not None else min(DEFAULT_JOURNAL_BYTES,
                                                                  store_bytes // 8)
    journal_blocks = max(MIN_JOURNAL_BLOCKS, jbytes // block_size)
    if journal_bytes is not None and journal_bytes // block_size < MIN_JOURNAL_BLOCKS:
        raise GeometryError(f"journal must hold at least {MIN_JOURNAL_BLOCKS} blocks "
                            f"({MIN_JOURNAL_BLOCKS * block_size} bytes)")
    snaptab_start = 2
    cbitmap_start = snaptab_start + snaptab_blocks
    mbitmap_start = cbitmap_start + cbitmap_blocks
    journal_start = mbitmap_start + mbitmap_blocks
    reserved_blocks = journal_start + journal_blocks
    data_start = -(-reserved_blocks // k)
    if store_chunks < data_start + MIN_DATA_CHUNKS:
        least = (data_start + MIN_DATA_CHUNKS) * chunk_size
        raise GeometryError(f"store of {store_bytes} bytes is too small: its own metadata needs "
                            f"{data_start * chunk_size} bytes; give it at least {least} bytes")
    now = time.time_ns()
    return fmt.SuperFields(
        version=fmt.FORMAT_VERSION, incompat=fmt.INCOMPAT_GRANTS | fmt.INCOMPAT_JOURNAL_V2
        | fmt.INCOMPAT_COMPACT_JOURNAL | fmt.INCOMPAT_HOLDS | fmt.INCOMPAT_CLONES
        | fmt.INCOMPAT_DATA_CRC,
        compat=0, autoclear=0,
        block_size=block_size, chunk_size=chunk_size, max_snapshots=max_snapshots, flags=0,
        uuid=os.urandom(16), store_chunks=store_chunks, origin_bytes=origin_bytes,
        origin_chunks=-(-origin_bytes // chunk_size), snaptab_start=snaptab_start,
        snaptab_blocks=snaptab_blocks, cbitmap_blocks=cbitmap_blocks,
        cbitmap_start=cbitmap_start, mbitmap_start=mbitmap_start,
        mbitmap_blocks=mbitmap_blocks, journal_blocks=journal_blocks,
        journal_start=journal_start, data_start_chunk=data_start, generation=0,
        journal_seq=1, journal_tail=0, depth=0, root=data_start * k,
        free_chunks=store_chunks - data_start - 1, alloc_cursor=data_start + 1,
        meta_chunk=data_start if k > 1 else 0, exceptions=0, delete_cursor=0,
        created_ns=now, opened_ns=now)


def create(dev: Device, origin_bytes: int, progress: Progress | None = None,
           **options: int | None) -> fmt.SuperFields:
    """Write a fresh, empty store onto ``dev`` and return its superblock."""
    f = plan(dev.size, origin_bytes, **options)  # type: ignore[arg-type]
    writer = _Writer(dev, f, progress)
    writer.snapshot_table()
    writer.bitmaps()
    writer.root_leaf()
    dev.flush()
    for generation in (1, 0):  # slot B then slot A: both must belong to this store
        f.generation = generation
        write_slot(dev, f)
    dev.flush()
    return f


class _Writer:
    def __init__(self, dev: Device, f: fmt.SuperFields, progress: Progress | None) -> None:
        self.dev, self.f, self.progress = dev, f, progress
        self.k = f.chunk_size // f.block_size
        self.bpb = fmt.bitmap_bits_per_block(f.block_size)
        self.total = f.snaptab_blocks + f.cbitmap_blocks + f.mbitmap_blocks
        self.done = 0

    def _write(self, addr: int, kind: fmt.BlockKind, payload: bytes) -> bytes:
        return fmt.seal(kind, addr, self.f.store_id, 0, payload, self.f.block_size)

    def _flush_run(self, first: int, images: list[bytes]) -> None:
        self.dev.pwrite(first * self.f.block_size, b"".join(images))
        self.done += len(images)
        if self.progress:
            self.progress(self.done, self.total)

    def snapshot_table(self) -> None:
        f = self.f
        images = [self._write(f.snaptab_start + i, fmt.BlockKind.SNAPTAB, b"")
                  for i in range(f.snaptab_blocks)]
        self._flush_run(f.snaptab_start, images)

    def bitmaps(self) -> None:
        f = self.f
        reserved_blocks = f.data_start_chunk * self.k
        root_chunk = f.data_start_chunk
        chunk_set = [(0, f.data_start_chunk), (root_chunk, root_chunk + 1)]
        meta_set = [(0, reserved_blocks), (f.root, f.root + 1)]
        self._bitmap(f.cbitmap_start, f.cbitmap_blocks, fmt.BlockKind.CBITMAP, chunk_set,
                     f.store_chunks)
        self._bitmap(f.mbitmap_start, f.mbitmap_blocks, fmt.BlockKind.MBITMAP, meta_set,
                     f.store_chunks * self.k)

    def _bitmap(self, start: int, nblocks: int, kind: fmt.BlockKind,
                set_ranges: list[tuple[int, int]], valid_bits: int) -> None:
        bpb, batch, first = self.bpb, [], start
        for b in range(nblocks):
            lo, hi = b * bpb, (b + 1) * bpb
            bits = bytearray(bpb // 8)
            for s, e in [*set_ranges, (valid_bits, hi)]:
                for bit in range(max(s, lo), min(e, hi)):
                    bits[(bit - lo) >> 3] |= 1 << ((bit - lo) & 7)
            batch.append(self._write(start + b, kind, bytes(bits)))
            if len(batch) >= 256:
                self._flush_run(first, batch)
                first, batch = start + b + 1, []
        if batch:
            self._flush_run(first, batch)

    def root_leaf(self) -> None:
        f = self.f
        image = fmt.seal(fmt.BlockKind.LEAF, f.root, f.store_id, 0, b"", f.block_size)
        self.dev.pwrite(f.root * f.block_size, image)
