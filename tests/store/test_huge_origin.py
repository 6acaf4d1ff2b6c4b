"""Origins of 2^40 chunks and more are addressable (csnap's 32-bit chunk numbers were not)."""

from __future__ import annotations

from csnapd.store import create
from csnapd.store.check import check_store
from csnapd.store.device import MemoryDevice
from csnapd.store.store import Store

from .conftest import SparseDevice

CS = 4096


def test_chunks_beyond_2_to_the_40_round_trip():
    origin = SparseDevice((1 << 41) * CS)  # 8 PiB, 2^41 chunks, sparse
    far = [(1 << 40) + 5, (1 << 41) - 1, 3]
    for i, chunk in enumerate(far):
        origin.pwrite(chunk * CS, bytes([i + 1]) * CS)
    store_dev = MemoryDevice(16 << 20)
    create.create(store_dev, origin.size, chunk_size=CS, block_size=512,
                  journal_bytes=128 * 512)
    store = Store.open(store_dev, origin)
    assert store.origin_chunks == 1 << 41
    snap = store.create_snapshot("far")
    store.commit()
    for chunk in far:
        store.origin_write([(chunk, 1)])
    store.commit()
    for i, chunk in enumerate(far):
        origin.pwrite(chunk * CS, b"\xee" * CS)  # the client overwrites the origin
        copy = store.snapshot_lookup(snap.slot, chunk)
        assert copy is not None
        assert store_dev.pread(copy * CS, CS) == bytes([i + 1]) * CS
    assert store.snapshot_lookup(snap.slot, (1 << 40) + 6) is None
    store.close()
    again = Store.open(store_dev, origin)
    assert [again.snapshot_lookup(snap.slot, c) is not None for c in far] == [True] * 3
    assert not check_store(again).problems
    again.close()
