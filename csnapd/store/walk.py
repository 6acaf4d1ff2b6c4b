"""Visitors over the tree and the bitmaps, shared by check, dump and status.

Walking reads every block through the cache (so every block is verified) and
trims the cache as it goes, so memory stays bounded whatever the tree size.
A damaged block is reported to ``on_error`` with its tree path and skipped;
the walk carries on with the rest of the tree.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from . import format as fmt
from .blocks import Leaf, Node
from .btree import KEY_LIMIT
from .errors import CorruptionError

ErrorHook = Callable[[CorruptionError], None]


@dataclass(slots=True)
class Visit:
    """One tree block reached by the walk."""

    addr: int
    depth: int  # levels below this block (0 = leaf)
    lo: int
    hi: int
    path: str
    block: Leaf | Node


def walk_tree(store, on_error: ErrorHook | None = None) -> Iterator[Visit]:  # noqa: ANN001
    """Yield every reachable tree block, parents before children, in key order."""
    f = store.sb
    stack = [(f.root, f.depth, 0, KEY_LIMIT, "root")]
    seen = 0
    while stack:
        addr, depth, lo, hi, path = stack.pop()
        kind = fmt.BlockKind.LEAF if depth == 0 else fmt.BlockKind.NODE
        try:
            block = store.cache.get(addr, kind)
        except CorruptionError as exc:
            exc.path = path
            if on_error is None:
                raise
            on_error(exc)
            continue
        yield Visit(addr, depth, lo, hi, path, block)
        seen += 1
        if seen % 256 == 0:
            store.cache.trim()
        if depth:
            bounds = block.keys[1:] + [hi]
            children = list(zip(block.children, block.keys, bounds, strict=True))
            for i in range(len(children) - 1, -1, -1):
                child, clo, chi = children[i]
                stack.append((child, depth - 1, clo, chi, f"{path}/{i}"))


def snapshot_usage(store) -> dict[int, dict[str, int]]:  # noqa: ANN001
    """Per snapshot slot: chunks it owns alone ("unique") and shares ("shared")."""
    usage: dict[int, dict[str, int]] = {}
    for visit in walk_tree(store):
        if visit.depth == 0:
            add_leaf_usage(usage, visit.block)
    return usage


def add_leaf_usage(usage: dict[int, dict[str, int]], leaf: Leaf) -> None:
    """Add one leaf's exceptions to per-slot unique/shared counts."""
    for excs in leaf.vals:
        for _store, sharemap in excs:
            single = sharemap & (sharemap - 1) == 0
            bits = sharemap
            while bits:
                low = bits & -bits
                entry = usage.setdefault(low.bit_length() - 1, {"unique": 0, "shared": 0})
                entry["unique" if single else "shared"] += 1
                bits ^= low


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
