"""Visitors over the tree and the bitmaps, shared by check, dump and status.

The tree walk itself belongs to the exception map (exmap.py: every block read
through the cache, so verified; the cache trimmed as it goes; a damaged block
reported to ``on_error`` with its tree path and skipped).  This module adds
the whole-store helpers built on it and on the bitmaps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from . import format as fmt
from .errors import CorruptionError
from .exmap import Visit

ErrorHook = Callable[[CorruptionError], None]

__all__ = ["Visit", "walk_tree", "snapshot_usage", "bitmap_int", "set_bits"]


def walk_tree(store, on_error: ErrorHook | None = None) -> Iterator[Visit]:  # noqa: ANN001
    """Every reachable tree block, parents before children, in key order (exmap.py)."""
    return store.exmap.walk(on_error)


def snapshot_usage(store) -> dict[int, dict[str, int]]:  # noqa: ANN001
    """Per snapshot slot: chunks it owns alone ("unique") and shares ("shared")."""
    usage: dict[int, dict[str, int]] = {}
    cursor, done = 0, False
    while not done:
        cursor, done = store.usage_step(cursor, 256, usage)
    return usage


def bitmap_int(store, kind: fmt.BlockKind, on_error: ErrorHook | None = None) -> int:  # noqa: ANN001
    """A whole bitmap as one Python int (bit i = chunk or block i)."""
    f = store.sb
    start, count = ((f.cbitmap_start, f.cbitmap_blocks) if kind == fmt.BlockKind.CBITMAP
                    else (f.mbitmap_start, f.mbitmap_blocks))
    parts = []
    for b in range(count):
        try:
            parts.append(bytes(store.cache.get(start + b, kind).bits))
        except CorruptionError as exc:
            if on_error is None:
                raise
            on_error(exc)
            parts.append(bytes(fmt.bitmap_bits_per_block(f.block_size) // 8))
        if b % 256 == 255:
            store.cache.trim()
    return int.from_bytes(b"".join(parts), "little")


def set_bits(value: int, limit: int = 1 << 62) -> Iterator[int]:
    """Indexes of the set bits of ``value``, lowest first (at most ``limit``)."""
    n = 0
    while value and n < limit:
        low = value & -value
        yield low.bit_length() - 1
        value ^= low
        n += 1
