"""Shared fixtures and helpers for the store tests.

Small geometry everywhere (4 KiB chunks, 512-byte metadata blocks) so trees
get deep and journals fill quickly.  ``audit`` is an independent consistency
check written against the on-disk rules, so the tests do not depend on
csnapd/store/check.py (which is used too, when present).
"""

from __future__ import annotations

import importlib.util

import pytest

from csnapd.store import create
from csnapd.store import format as fmt
from csnapd.store.device import Device, MemoryDevice, VolatileDevice
from csnapd.store.store import Store

CS = 4096
BS = 512


def make_store(store_bytes: int = 4 << 20, origin_chunks: int = 128, chunk_size: int = CS,
               block_size: int = BS, journal_blocks: int = 128, volatile: bool = False,
               **options: int) -> tuple[MemoryDevice | VolatileDevice, MemoryDevice]:
    """Create a fresh store; return (store device, origin device)."""
    inner = MemoryDevice(store_bytes)
    origin = MemoryDevice(origin_chunks * chunk_size)
    create.create(inner, origin.size, chunk_size=chunk_size, block_size=block_size,
                  journal_bytes=journal_blocks * block_size, **options)
    dev = VolatileDevice(inner) if volatile else inner
    return dev, origin


def open_store(dev, origin, **kw) -> Store:  # noqa: ANN001
    return Store.open(dev, origin, **kw)


def chunk_bytes(chunk: int, version: int, size: int = CS) -> bytes:
    """Recognisable contents for one chunk version."""
    pattern = f"<chunk {chunk} v{version}>".encode()
    return (pattern * (size // len(pattern) + 1))[:size]


def fill_origin(origin: MemoryDevice, chunk_size: int = CS) -> dict[int, bytes]:
    """Give every origin chunk distinct contents; return chunk -> bytes."""
    data = {}
    for c in range(origin.size // chunk_size):
        data[c] = chunk_bytes(c, 0, chunk_size)
        origin.pwrite(c * chunk_size, data[c])
    return data


def read_chunk(dev, chunk: int, chunk_size: int = CS) -> bytes:  # noqa: ANN001
    return dev.pread(chunk * chunk_size, chunk_size)


def snapshot_read(s: Store, slot: int, chunk: int) -> bytes:
    """What a client reading snapshot ``slot`` at ``chunk`` would see."""
    sc = s.snapshot_lookup(slot, chunk)
    if sc is None:
        return read_chunk(s.origin, chunk, s.chunk_size)
    return read_chunk(s.dev, sc, s.chunk_size)


def tree_blocks(s: Store) -> tuple[list[int], list[int], list[tuple[int, list[list[int]]]]]:
    """(node addrs, leaf addrs, [(chunk, [(store chunk, sharemap)])]) by walking the tree."""
    nodes, leaves, entries = [], [], []
    for v in s.exmap.walk():
        if v.depth:
            nodes.append(v.addr)
            continue
        leaves.append(v.addr)
        entries.extend((c, [[st, sm] for st, sm in excs]) for c, excs in v.entries)
    return nodes, leaves, entries


def bitmap_bits(s: Store, kind: fmt.BlockKind, limit: int) -> set[int]:
    """Indexes of the set bits (below ``limit``) of the chunk or metadata bitmap."""
    f = s.sb
    start, count = ((f.cbitmap_start, f.cbitmap_blocks) if kind == fmt.BlockKind.CBITMAP
                    else (f.mbitmap_start, f.mbitmap_blocks))
    raw = b"".join(bytes(s.cache.get(start + b, kind).bits) for b in range(count))
    out = set()
    for i, byte in enumerate(raw):
        if byte:
            base = i * 8
            out.update(base + j for j in range(8) if byte >> j & 1 and base + j < limit)
    return out


def audit(s: Store) -> dict[str, int]:
    """Assert full space and sharing consistency; return a few counts.

    * the tree keeps its shape (check_invariants) and every tree block is
      marked as metadata; no other non-reserved block is;
    * every exception's store chunk is allocated, holds no metadata, and is
      used by exactly one exception; sharemaps are non-zero, name only live or
      deleting snapshots, and give a snapshot at most one copy per chunk;
    * allocated chunks = reserved + metadata chunks + data chunks (no leak);
    * free_chunks and exceptions in the superblock match.
    """
    f = s.sb
    s.tree.check_invariants()
    nodes, leaves, entries = tree_blocks(s)
    k = f.chunk_size // f.block_size
    reserved = f.data_start_chunk
    tree = set(nodes) | set(leaves)
    assert len(tree) == len(nodes) + len(leaves), "a tree block is referenced twice"
    mbits = bitmap_bits(s, fmt.BlockKind.MBITMAP, f.store_chunks * k)
    meta_marked = {b for b in mbits if b >= reserved * k} - set(s.grants.addrs)
    assert meta_marked == tree, (sorted(meta_marked - tree)[:10], sorted(tree - meta_marked)[:10])
    grant_blocks = set(s.grants.addrs)
    assert len(mbits) - len(meta_marked) - len(grant_blocks) == reserved * k  # every reserved
    #                                                             block is metadata
    meta_chunks = {b // k for b in tree | set(s.grants.addrs)}
    slots = {e.slot for e in s.snaps.entries if e.state != fmt.SNAP_FREE}
    data_chunks: set[int] = set()
    nexc = 0
    for chunk, excs in entries:
        assert 0 <= chunk < f.origin_chunks, chunk
        assert excs, chunk
        seen = 0
        for store_chunk, sharemap in excs:
            nexc += 1
            assert sharemap, (chunk, store_chunk)
            assert not sharemap & seen, f"chunk {chunk}: a snapshot has two copies"
            seen |= sharemap
            bits = {i for i in range(sharemap.bit_length()) if sharemap >> i & 1}
            assert bits <= slots, (chunk, bits - slots)
            assert reserved <= store_chunk < f.store_chunks, store_chunk
            assert store_chunk not in data_chunks, f"store chunk {store_chunk} used twice"
            assert store_chunk not in meta_chunks, f"store chunk {store_chunk} holds metadata"
            assert s.alloc.is_allocated(store_chunk), store_chunk
            data_chunks.add(store_chunk)
    allocated = bitmap_bits(s, fmt.BlockKind.CBITMAP, f.store_chunks)
    assert all(s.alloc.is_allocated(c) for c in list(allocated)[:50])  # same view as the allocator
    expected = set(range(reserved)) | meta_chunks | data_chunks
    assert allocated == expected, ("leaked", sorted(allocated - expected)[:10],
                                   "missing", sorted(expected - allocated)[:10])
    assert f.free_chunks == f.store_chunks - len(allocated), (f.free_chunks, len(allocated))
    assert f.exceptions == nexc, (f.exceptions, nexc)
    run_check_py(s)
    return {"exceptions": nexc, "leaves": len(leaves), "nodes": len(nodes),
            "data_chunks": len(data_chunks)}


_CHECK = importlib.util.find_spec("csnapd.store.check") is not None


def run_check_py(s: Store) -> None:
    """Run csnapd.store.check.check_store when it exists; it must find nothing."""
    if not _CHECK:
        return
    from csnapd.store import check

    fn = getattr(check, "check_store", None)
    if fn is None:
        return
    report = fn(s)
    problems = getattr(report, "problems", report)
    assert not list(problems), [getattr(p, "message", p) for p in problems][:10]


@pytest.fixture
def small():
    """A fresh small store with filled origin, open; yields (store, origin data)."""
    dev, origin = make_store()
    data = fill_origin(origin)
    s = Store.open(dev, origin)
    yield s, data
    if not s.failed:
        s.tree.check_invariants()


class SparseDevice(Device):
    """A large in-memory device that keeps only pages that are not all zero.

    Lets the scale test use a store of close to a gigabyte whose copy-outs are
    mostly zero-filled chunks without holding them in memory.
    """

    PAGE = 4096

    def __init__(self, size: int, path: str = "<sparse>") -> None:
        self._size = size
        self.path = path
        self.pages: dict[int, bytes] = {}
        self.flushes = 0
        self._zero = bytes(self.PAGE)

    @property
    def size(self) -> int:
        return self._size

    def pread(self, offset: int, length: int) -> bytes:
        P, out = self.PAGE, bytearray()
        end = offset + length
        while offset < end:
            page, skip = divmod(offset, P)
            n = min(P - skip, end - offset)
            out += self.pages.get(page, self._zero)[skip:skip + n]
            offset += n
        return bytes(out)

    def pwrite(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        P = self.PAGE
        if offset + len(data) > self._size:
            raise OSError(28, "write past end of device")
        view, pos = memoryview(data), 0
        while pos < len(view):
            page, skip = divmod(offset + pos, P)
            n = min(P - skip, len(view) - pos)
            if n == P:
                new = bytes(view[pos:pos + P])
            else:
                old = self.pages.get(page, self._zero)
                new = old[:skip] + bytes(view[pos:pos + n]) + old[skip + n:]
            if new == self._zero:
                self.pages.pop(page, None)
            else:
                self.pages[page] = new
            pos += n

    def flush(self) -> None:
        self.flushes += 1
