"""Planning an online growth of the store or the origin (issue 14), pure.

This module only decides whether a growth is possible and what it changes; it
reads superblock fields and sizes and writes nothing.  Why separate: the rules
(shrinking refused, the reach of the bitmaps fixed at init) are the part every
later step (the journaled geometry change, csnapctl, the control op) must agree
on, and they can be tested without a store.

The reach of the bitmaps: init sizes the chunk bitmap to
``ceil(store_chunks / bpb)`` blocks and the metadata bitmap to
``ceil(store_chunks * k / bpb)`` blocks, and the bits past the end of the
store are set.  So a store can grow in place only up to what both bitmaps
already cover; a larger growth needs the bitmaps relocated or extended, which
this version does not do (``GrowthPlan.needs_bitmap_extension``).
"""

from __future__ import annotations

from dataclasses import dataclass

from . import format as fmt


class GrowthRefused(ValueError):
    """A growth that cannot be done; the message says why, for the operator."""


@dataclass(frozen=True, slots=True)
class GrowthPlan:
    """What a store growth changes: old and new sizes in chunks, and the bitmaps' reach."""

    old_chunks: int
    new_chunks: int
    bitmap_reach: int  # chunks both bitmaps can describe without new blocks

    @property
    def added_chunks(self) -> int:
        return self.new_chunks - self.old_chunks

    @property
    def needs_bitmap_extension(self) -> bool:
        """True when the new size is beyond what the bitmaps fixed at init cover."""
        return self.new_chunks > self.bitmap_reach


def bitmap_reach(f: fmt.SuperFields) -> int:
    """How many store chunks the existing chunk and metadata bitmaps can describe."""
    bpb = fmt.bitmap_bits_per_block(f.block_size)
    k = f.chunk_size // f.block_size
    return min(f.cbitmap_blocks * bpb, (f.mbitmap_blocks * bpb) // k)


def plan_store_growth(f: fmt.SuperFields, device_bytes: int) -> GrowthPlan:
    """Plan growing the store to ``device_bytes`` (a partial last chunk is unused).

    Refuses (GrowthRefused) a size below the current one, naming both sizes:
    shrinking would drop chunks that may hold copies or metadata.
    """
    new_chunks = device_bytes // f.chunk_size
    if new_chunks < f.store_chunks:
        raise GrowthRefused(
            f"shrinking the store is refused: the device holds {new_chunks} chunks of "
            f"{f.chunk_size} bytes but the store uses {f.store_chunks}; chunks past the new "
            "end may hold snapshot copies or metadata")
    return GrowthPlan(f.store_chunks, new_chunks, bitmap_reach(f))


def plan_origin_growth(f: fmt.SuperFields, device_bytes: int,
                       size: int | None = None) -> tuple[int, int]:
    """Plan growing the origin; returns (new origin bytes, new origin chunks).

    ``size`` (optional) is the wanted origin size; it must not exceed the device
    and must not be below the current origin size (shrinking is refused: old
    snapshots and clients rely on every byte of the origin they know).
    """
    new_bytes = device_bytes if size is None else size
    if new_bytes > device_bytes:
        raise GrowthRefused(f"origin size {new_bytes} exceeds the origin device ({device_bytes} bytes)")
    if new_bytes < f.origin_bytes:
        raise GrowthRefused(
            f"shrinking the origin is refused: {new_bytes} bytes is below the current "
            f"{f.origin_bytes}; snapshots and clients rely on every byte they know")
    return new_bytes, -(-new_bytes // f.chunk_size)
