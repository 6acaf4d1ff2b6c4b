"""Allocation of store chunks (data and metadata) and of metadata blocks.

Two bitmaps live in the store: the chunk bitmap (one bit per store chunk: set
means allocated, whatever for) and the metadata bitmap (one bit per metadata
block: set means that block holds metadata).  A metadata chunk is carved into
chunk_size // block_size blocks; it returns to the free pool when its last
block is freed.

Invariants:
  * Every store chunk is either free or allocated exactly once; free_chunks in
    the superblock equals the number of clear bits (bits past the end of the
    store are set and never counted).
  * A freed chunk is quarantined until a checkpoint has made the freeing
    transaction, and every home write before it, durable: until then a crash
    could resurrect the old owner (the data or a journal image replayed over
    it), so the chunk must not receive new data.  A checkpoint releases only
    the chunks freed by transactions that were durable when it was captured.
  * Allocation never fails with an exception: it returns None when nothing is
    free, and the store turns that into StoreFullError.
"""

from __future__ import annotations

import re

from . import format as fmt
from .blocks import Bitmap
from .cache import BlockCache
from .errors import CorruptionError
from .superblock import SuperState

_NOT_FULL = re.compile(rb"[^\xff]")


class Allocator:
    """Chunk and metadata-block allocation over the two bitmaps."""

    def __init__(self, cache: BlockCache, sbs: SuperState) -> None:
        self.cache, self.sbs = cache, sbs
        f = sbs.f
        self.k = f.chunk_size // f.block_size
        self.bpb = fmt.bitmap_bits_per_block(f.block_size)
        self.freed_now: set[int] = set()  # freed by the open transaction
        self.freed_sealed: set[int] = set()  # freed by sealed transactions not durable yet
        self.freed_committed: set[int] = set()  # freed by durable, un-checkpointed ones
        self.partial_meta: set[int] = set()

    # -- bit access -------------------------------------------------------
    def _bitmap(self, start: int, kind: fmt.BlockKind, bit: int) -> tuple[Bitmap, int]:
        blk = self.cache.get(start + bit // self.bpb, kind)
        return blk, bit % self.bpb

    def _get(self, start: int, kind: fmt.BlockKind, bit: int) -> bool:
        blk, i = self._bitmap(start, kind, bit)
        return bool(blk.bits[i >> 3] >> (i & 7) & 1)

    def _set(self, start: int, kind: fmt.BlockKind, bit: int, value: bool) -> None:
        blk, i = self._bitmap(start, kind, bit)
        if value:
            blk.bits[i >> 3] |= 1 << (i & 7)
        else:
            blk.bits[i >> 3] &= ~(1 << (i & 7)) & 0xFF
        self.cache.note(blk, i)

    def is_allocated(self, chunk: int) -> bool:
        f = self.sbs.f
        return self._get(f.cbitmap_start, fmt.BlockKind.CBITMAP, chunk)

    def is_meta(self, block: int) -> bool:
        f = self.sbs.f
        if block >= f.store_chunks * self.k:
            return False
        return self._get(f.mbitmap_start, fmt.BlockKind.MBITMAP, block)

    def chunk_has_meta(self, chunk: int) -> bool:
        """True if any block of ``chunk`` is marked as metadata."""
        f = self.sbs.f
        lo = chunk * self.k
        if self.k == 1:
            return self._get(f.mbitmap_start, fmt.BlockKind.MBITMAP, lo)
        blk, i = self._bitmap(f.mbitmap_start, fmt.BlockKind.MBITMAP, lo)
        if i % 8 == 0 and self.k % 8 == 0 and i + self.k <= self.bpb:
            return any(blk.bits[i >> 3:(i + self.k) >> 3])
        return any(self._get(f.mbitmap_start, fmt.BlockKind.MBITMAP, b) for b in range(lo, lo + self.k))

    # -- chunks -----------------------------------------------------------
    @property
    def quarantined(self) -> int:
        return len(self.freed_now) + len(self.freed_sealed) + len(self.freed_committed)

    def _quarantined(self, chunk: int) -> bool:
        return chunk in self.freed_now or chunk in self.freed_sealed \
            or chunk in self.freed_committed

    @property
    def available(self) -> int:
        """Chunks that can be allocated right now."""
        return self.sbs.f.free_chunks - self.quarantined

    def alloc_chunk(self) -> int | None:
        """Allocate one chunk at or after the cursor (wrapping); None if full."""
        f = self.sbs.f
        if self.available <= 0:
            return None
        start = f.alloc_cursor if f.alloc_cursor < f.store_chunks else 0
        chunk = self._search(start, f.store_chunks)
        if chunk is None:
            chunk = self._search(0, start)
        if chunk is None:
            return None
        self._set(f.cbitmap_start, fmt.BlockKind.CBITMAP, chunk, True)
        f.free_chunks -= 1
        f.alloc_cursor = chunk + 1
        self.sbs.touch()
        return chunk

    def _search(self, lo: int, hi: int) -> int | None:
        f, bpb = self.sbs.f, self.bpb
        bit = lo
        while bit < hi:
            blk, i = self._bitmap(f.cbitmap_start, fmt.BlockKind.CBITMAP, bit)
            base = bit - i
            m = _NOT_FULL.search(blk.bits, i >> 3)
            while m is not None:
                byte = m.start()
                value = blk.bits[byte]
                for b in range(8):
                    chunk = base + byte * 8 + b
                    if value >> b & 1 or chunk < bit:
                        continue
                    if chunk >= hi:
                        return None
                    if self._quarantined(chunk):
                        continue
                    return chunk
                m = _NOT_FULL.search(blk.bits, byte + 1)
            bit = base + bpb
        return None

    def _clear(self, start: int, kind: fmt.BlockKind, bit: int, what: str) -> None:
        """Clear a bit that must be set: a clear one means the metadata is damaged."""
        if not self._get(start, kind, bit):
            raise CorruptionError(start + bit // self.bpb, kind.name, f"freeing {what} {bit}, "
                                  "which is not marked as allocated")
        self._set(start, kind, bit, False)

    def free_chunk(self, chunk: int) -> None:
        f = self.sbs.f
        self._clear(f.cbitmap_start, fmt.BlockKind.CBITMAP, chunk, "chunk")
        f.free_chunks += 1
        self.freed_now.add(chunk)
        self.sbs.touch()

    def take_freed(self) -> set[int]:
        """The open transaction is sealed: its frees stay quarantined with it."""
        freed, self.freed_now = self.freed_now, set()
        self.freed_sealed |= freed
        return freed

    def committed(self, freed: set[int]) -> None:
        """The sealed transaction that freed ``freed`` is durable."""
        self.freed_sealed -= freed
        self.freed_committed |= freed

    def capture_release(self) -> set[int]:
        """The chunks a checkpoint captured now may release once it is durable."""
        return set(self.freed_committed)

    def checkpointed(self, released: set[int]) -> None:
        """Chunks freed by checkpointed transactions may be reused."""
        self.freed_committed -= released

    def abandon(self) -> None:
        """Forget frees that are not durable (after a failure nothing more is written)."""
        self.freed_now = set()
        self.freed_sealed = set()

    # -- metadata blocks --------------------------------------------------
    def alloc_block(self) -> int | None:
        """Allocate one metadata block; None if the store is full."""
        f = self.sbs.f
        for chunk in self._meta_candidates():
            block = self._free_slot(chunk)
            if block is not None:
                self._set(f.mbitmap_start, fmt.BlockKind.MBITMAP, block, True)
                return block
            self.partial_meta.discard(chunk)
        chunk = self.alloc_chunk()
        if chunk is None:
            return None
        if self.k > 1:
            f.meta_chunk = chunk
            self.sbs.touch()
        block = chunk * self.k
        self._set(f.mbitmap_start, fmt.BlockKind.MBITMAP, block, True)
        return block

    def _meta_candidates(self) -> list[int]:
        if self.k == 1:
            return []
        current = self.sbs.f.meta_chunk
        out = [current] if current else []
        out.extend(c for c in list(self.partial_meta)[:4] if c != current)
        return out

    def _free_slot(self, chunk: int) -> int | None:
        f = self.sbs.f
        for block in range(chunk * self.k, chunk * self.k + self.k):
            if not self._get(f.mbitmap_start, fmt.BlockKind.MBITMAP, block):
                return block
        return None

    def free_block(self, block: int) -> None:
        f = self.sbs.f
        if block >= f.store_chunks * self.k:
            raise CorruptionError(f.mbitmap_start, "MBITMAP", f"block {block} is beyond the store")
        self._clear(f.mbitmap_start, fmt.BlockKind.MBITMAP, block, "metadata block")
        self.cache.forget(block)
        chunk = block // self.k
        if self.chunk_has_meta(chunk):
            self.partial_meta.add(chunk)
            return
        self.partial_meta.discard(chunk)
        if f.meta_chunk == chunk:
            f.meta_chunk = 0
            self.sbs.touch()
        self.free_chunk(chunk)
