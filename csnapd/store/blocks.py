"""In-memory forms of metadata blocks, decoded once when read.

The cache keeps these objects, not raw bytes: a leaf is decoded into Python
lists once and encoded again only when it is sealed into a journal
transaction.  Each class knows its kind, how to decode itself from a verified
block image, how to produce its payload, and roughly what it costs in memory
(so the cache can stay within its byte budget).

``changes`` says what changed since the block was last sealed, for the
compact journal's records: a set of units (a leaf's logical chunks, a
bitmap's bits, a grant block's record slots), or None when the block must be
journaled as a whole image (it is new, its shape changed, or its kind has no
records).  ``records(limit)`` encodes those units' current state, or returns
None when they would take more than ``limit`` bytes (an image is then
cheaper).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable

from . import format as fmt
from .format import BlockKind


class FrozenImage:
    """A block's committed state, sealed into its image only when the bytes are needed.

    A commit journals most leaf and bitmap changes as records, yet each block's committed
    image must be kept for the checkpoint's home write.  Sealing (encoding, CRC) every
    changed block at every commit was most of a small commit's CPU; this keeps a frozen
    copy of the state instead (cheap: a leaf's lists hold immutable tuples, a bitmap is
    one byte string) and seals it once, when a checkpoint writes it home or an evicted
    block is read back.  Safe to seal on any thread: nothing changes it after it is made.
    """

    __slots__ = ("kind", "addr", "store_id", "block_size", "count", "_payload", "_image")

    def __init__(self, kind: BlockKind, addr: int, store_id: int, block_size: int, count: int,
                 payload: bytes | Callable[[], bytes]) -> None:
        self.kind, self.addr, self.store_id = kind, addr, store_id
        self.block_size, self.count, self._payload = block_size, count, payload
        self._image: bytes | None = None

    def image(self) -> bytes:
        """The sealed block image (made the first time it is asked for)."""
        image = self._image
        if image is None:
            payload = self._payload
            if not isinstance(payload, bytes):
                payload = payload()
            image = fmt.seal(self.kind, self.addr, self.store_id, self.count, payload,
                             self.block_size)
            self._image = image  # (the state stays: another thread may be sealing too)
        return image


def image_bytes(image: bytes | FrozenImage) -> bytes:
    """The bytes of a committed image, whichever form it is kept in."""
    return image if isinstance(image, bytes) else image.image()


class Leaf:
    """Exception B-tree leaf: sorted logical chunks, each with its exceptions.

    ``vals[i]`` is the tuple of exceptions (``format.Excs``) of logical chunk
    ``keys[i]``; ``nbytes`` tracks the encoded payload size so splits and
    merges never need to re-encode.  Only the B-tree layer (btree.py, exmap.py)
    looks inside a leaf.
    """

    kind = BlockKind.LEAF
    TRACKS = True
    __slots__ = ("addr", "keys", "vals", "nbytes", "changes")

    def __init__(self, addr: int, keys: list[int] | None = None,
                 vals: list[fmt.Excs] | None = None, nbytes: int = 0) -> None:
        self.addr = addr
        self.keys = keys if keys is not None else []
        self.vals = vals if vals is not None else []
        self.nbytes = nbytes
        self.changes: set[int] | None = None

    @classmethod
    def decode(cls, block: bytes, addr: int, count: int) -> Leaf:
        keys, vals, used = fmt.decode_leaf(block, addr, count)
        if used > fmt.leaf_capacity(len(block)):
            raise fmt.CorruptionError(addr, "LEAF", "entries overflow the block")
        leaf = cls(addr, keys, vals, used)
        leaf.changes = set()
        return leaf

    def records(self, limit: int) -> bytes | None:
        """ENTRY records of the changed chunks (their exception lists as they are now)."""
        if self.changes is None:
            return None
        out = bytearray()
        keys, vals = self.keys, self.vals
        for chunk in sorted(self.changes):
            i = bisect_left(keys, chunk)
            excs = vals[i] if i < len(keys) and keys[i] == chunk else ()
            out += fmt.entry_record(self.addr, chunk, excs)
            if len(out) > limit:
                return None
        return bytes(out)

    def set_entry(self, chunk: int, excs: fmt.Excs) -> None:
        """Replay: the exceptions of ``chunk`` are now ``excs`` (none: no entry)."""
        keys, vals = self.keys, self.vals
        i = bisect_left(keys, chunk)
        present = i < len(keys) and keys[i] == chunk
        if excs and present:
            vals[i] = excs
        elif excs:
            keys.insert(i, chunk)
            vals.insert(i, excs)
        elif present:
            del keys[i], vals[i]

    def payload(self) -> tuple[int, bytes]:
        return len(self.keys), fmt.encode_leaf(self.keys, self.vals)

    def frozen(self, store_id: int, block_size: int) -> FrozenImage:
        """This leaf's state now, to be sealed only when its bytes are needed."""
        keys, vals = list(self.keys), list(self.vals)
        return FrozenImage(self.kind, self.addr, store_id, block_size, len(keys),
                           lambda: fmt.encode_leaf(keys, vals))

    def cost(self) -> int:
        return 160 + 72 * len(self.keys) + 120 * sum(len(v) for v in self.vals)

    def recount(self) -> None:
        self.nbytes = sum(fmt.entry_size(v) for v in self.vals)


class Node:
    """Exception B-tree index node: ``keys[i]`` is the lower bound of child i."""

    kind = BlockKind.NODE
    __slots__ = ("addr", "keys", "children")
    TRACKS = False
    changes = None  # always journaled whole

    def __init__(self, addr: int, keys: list[int] | None = None,
                 children: list[int] | None = None) -> None:
        self.addr = addr
        self.keys = keys if keys is not None else []
        self.children = children if children is not None else []

    def records(self, limit: int) -> bytes | None:
        return None

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

    __slots__ = ("addr", "kind", "bits", "changes")
    TRACKS = True

    def __init__(self, addr: int, kind: BlockKind, bits: bytearray) -> None:
        self.addr, self.kind, self.bits = addr, kind, bits
        self.changes: set[int] | None = set()

    @classmethod
    def decoder(cls, kind: BlockKind):  # noqa: ANN206 - returns a decode callable
        def decode(block: bytes, addr: int, count: int) -> Bitmap:
            return cls(addr, kind, bytearray(block[fmt.HEADER_SIZE:]))
        return decode

    def bit(self, i: int) -> int:
        return self.bits[i >> 3] >> (i & 7) & 1

    def set_bits(self, first: int, count: int, value: int) -> None:
        """Replay: payload bits ``first .. first+count-1`` are now ``value``."""
        for i in range(first, first + count):
            if value:
                self.bits[i >> 3] |= 1 << (i & 7)
            else:
                self.bits[i >> 3] &= ~(1 << (i & 7)) & 0xFF

    def records(self, limit: int) -> bytes | None:
        """BITS records: the changed bits as runs of equal value, as they are now."""
        if self.changes is None:
            return None
        out = bytearray()
        run_start = run_value = prev = -1
        for i in sorted(self.changes) + [-2]:
            value = self.bit(i) if i >= 0 else -1
            if i == prev + 1 and value == run_value:
                prev = i
                continue
            if run_start >= 0:
                out += fmt.bits_record(self.addr, run_start, prev - run_start + 1, run_value)
                if len(out) > limit:
                    return None
            run_start = prev = i
            run_value = value
        return bytes(out)

    def payload(self) -> tuple[int, bytes]:
        return 0, bytes(self.bits)

    def frozen(self, store_id: int, block_size: int) -> FrozenImage:
        """This bitmap's bits now, to be sealed only when the image is needed."""
        return FrozenImage(self.kind, self.addr, store_id, block_size, 0, bytes(self.bits))

    def cost(self) -> int:
        return 120 + len(self.bits)


class SnapTable:
    """One block of the snapshot table."""

    kind = BlockKind.SNAPTAB
    __slots__ = ("addr", "entries")
    TRACKS = False
    changes = None  # always journaled whole

    def __init__(self, addr: int, entries: list[fmt.SnapEntry]) -> None:
        self.addr, self.entries = addr, entries

    def records(self, limit: int) -> bytes | None:
        return None

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
    __slots__ = ("addr", "next", "slots", "block_size", "changes")
    TRACKS = True

    def __init__(self, addr: int, next_block: int, records: list[fmt.GrantRecord | None],
                 block_size: int) -> None:
        self.addr, self.next, self.slots = addr, next_block, records
        self.block_size = block_size
        self.changes: set[int] | None = None

    @classmethod
    def decode(cls, block: bytes, addr: int, count: int) -> GrantBlock:
        next_block, records = fmt.decode_grants(block, addr, count)
        blk = cls(addr, next_block, records, len(block))
        blk.changes = set()
        return blk

    def records(self, limit: int) -> bytes | None:
        """GRANT records of the changed record slots, as they are now."""
        if self.changes is None:
            return None
        out = bytearray()
        for i in sorted(self.changes):
            out += fmt.grant_record(self.addr, i, self.slots[i])
            if len(out) > limit:
                return None
        return bytes(out)

    def payload(self) -> tuple[int, bytes]:
        used = sum(r is not None for r in self.slots)
        return used, fmt.encode_grants(self.next, self.slots, self.block_size)

    def cost(self) -> int:
        return 200 + 400 * len(self.slots)
