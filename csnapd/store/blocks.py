"""In-memory forms of metadata blocks, decoded once when read.

The cache keeps these objects, not raw bytes: a leaf is decoded into Python
lists once and encoded again only when it is sealed into a journal
transaction.  Each class knows its kind, how to decode itself from a verified
block image, how to produce its payload, and roughly what it costs in memory
(so the cache can stay within its byte budget).
"""

from __future__ import annotations

from . import format as fmt
from .format import BlockKind


class Leaf:
    """Exception B-tree leaf: sorted logical chunks, each with its exceptions.

    ``vals[i]`` is the list of exceptions (``format.Exc``) of logical chunk
    ``keys[i]``; ``nbytes`` tracks the encoded payload size so splits and
    merges never need to re-encode.  Only the B-tree layer (btree.py, exmap.py)
    looks inside a leaf.
    """

    kind = BlockKind.LEAF
    __slots__ = ("addr", "keys", "vals", "nbytes")

    def __init__(self, addr: int, keys: list[int] | None = None,
                 vals: list[list[fmt.Exc]] | None = None, nbytes: int = 0) -> None:
        self.addr = addr
        self.keys = keys if keys is not None else []
        self.vals = vals if vals is not None else []
        self.nbytes = nbytes

    @classmethod
    def decode(cls, block: bytes, addr: int, count: int) -> Leaf:
        keys, vals, used = fmt.decode_leaf(block, addr, count)
        if used > fmt.leaf_capacity(len(block)):
            raise fmt.CorruptionError(addr, "LEAF", "entries overflow the block")
        return cls(addr, keys, vals, used)

    def payload(self) -> tuple[int, bytes]:
        return len(self.keys), fmt.encode_leaf(self.keys, self.vals)

    def cost(self) -> int:
        return 160 + 72 * len(self.keys) + 120 * sum(len(v) for v in self.vals)

    def recount(self) -> None:
        self.nbytes = sum(fmt.entry_size(v) for v in self.vals)


class Node:
    """Exception B-tree index node: ``keys[i]`` is the lower bound of child i."""

    kind = BlockKind.NODE
    __slots__ = ("addr", "keys", "children")

    def __init__(self, addr: int, keys: list[int] | None = None,
                 children: list[int] | None = None) -> None:
        self.addr = addr
        self.keys = keys if keys is not None else []
        self.children = children if children is not None else []

    @classmethod
    def decode(cls, block: bytes, addr: int, count: int) -> Node:
        keys, children = fmt.decode_node(block, addr, count)
        return cls(addr, keys, children)

    def payload(self) -> tuple[int, bytes]:
        return len(self.keys), fmt.encode_node(self.keys, self.children)

    def cost(self) -> int:
        return 160 + 80 * len(self.keys)


class Bitmap:
    """One block of the chunk bitmap or the metadata-block bitmap."""

    __slots__ = ("addr", "kind", "bits")

    def __init__(self, addr: int, kind: BlockKind, bits: bytearray) -> None:
        self.addr, self.kind, self.bits = addr, kind, bits

    @classmethod
    def decoder(cls, kind: BlockKind):  # noqa: ANN206 - returns a decode callable
        def decode(block: bytes, addr: int, count: int) -> Bitmap:
            return cls(addr, kind, bytearray(block[fmt.HEADER_SIZE:]))
        return decode

    def payload(self) -> tuple[int, bytes]:
        return 0, bytes(self.bits)

    def cost(self) -> int:
        return 120 + len(self.bits)


class SnapTable:
    """One block of the snapshot table."""

    kind = BlockKind.SNAPTAB
    __slots__ = ("addr", "entries")

    def __init__(self, addr: int, entries: list[fmt.SnapEntry]) -> None:
        self.addr, self.entries = addr, entries

    def payload(self) -> tuple[int, bytes]:
        return 0, b"".join(fmt.encode_snap_entry(e) for e in self.entries)

    def cost(self) -> int:
        return 200 + 200 * len(self.entries)


def snaptab_decoder(first_block: int, per_block: int):  # noqa: ANN201 - decode callable
    """A decoder that numbers entries by their table slot."""
    def decode(block: bytes, addr: int, count: int) -> SnapTable:
        base = (addr - first_block) * per_block
        entries = []
        for i in range(per_block):
            off = fmt.HEADER_SIZE + i * fmt.SNAP_ENTRY_SIZE
            raw = block[off:off + fmt.SNAP_ENTRY_SIZE]
            entries.append(fmt.decode_snap_entry(raw, base + i, addr))
        return SnapTable(addr, entries)
    return decode


class GrantBlock:
    """One block of the client grant table: a link and fixed record slots."""

    kind = BlockKind.GRANTS
    __slots__ = ("addr", "next", "records", "block_size")

    def __init__(self, addr: int, next_block: int, records: list[fmt.GrantRecord | None],
                 block_size: int) -> None:
        self.addr, self.next, self.records = addr, next_block, records
        self.block_size = block_size

    @classmethod
    def decode(cls, block: bytes, addr: int, count: int) -> GrantBlock:
        next_block, records = fmt.decode_grants(block, addr, count)
        return cls(addr, next_block, records, len(block))

    def payload(self) -> tuple[int, bytes]:
        used = sum(r is not None for r in self.records)
        return used, fmt.encode_grants(self.next, self.records, self.block_size)

    def cost(self) -> int:
        return 200 + 400 * len(self.records)
