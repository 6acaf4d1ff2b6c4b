"""Scale: 200,000+ exceptions over 8 snapshots in a 3-level tree, then delete all.

block_size 512 keeps leaves small (a handful of 8-exception entries each), so
the tree is deep; the store is a sparse in-memory device so copy-outs of
zero-filled chunks cost no memory.  Selected origin chunks carry real data,
rewritten after every snapshot, and are read back through every snapshot.
"""

from __future__ import annotations

import time

import pytest

from csnapd.store import create
from csnapd.store.device import MemoryDevice
from csnapd.store.store import Store

from .conftest import BS, CS, SparseDevice, audit, chunk_bytes, snapshot_read

SNAPSHOTS = 8
ORIGIN_CHUNKS = 25_600
STORE_CHUNKS = SNAPSHOTS * ORIGIN_CHUNKS + 12_000
SPOT = range(0, ORIGIN_CHUNKS, 997)


@pytest.mark.slow
def test_scale_200k_exceptions_deep_tree_and_full_delete():
    t0 = time.monotonic()
    dev = SparseDevice(STORE_CHUNKS * CS)
    origin = MemoryDevice(ORIGIN_CHUNKS * CS)
    create.create(dev, origin.size, chunk_size=CS, block_size=BS)
    for c in SPOT:
        origin.pwrite(c * CS, chunk_bytes(c, 0))
    s = Store.open(dev, origin)
    free_after_init = s.sb.free_chunks
    slots = []
    for v in range(SNAPSHOTS):
        slots.append(s.create_snapshot(f"snap{v}").slot)
        s.commit()
        assert s.origin_write([(0, ORIGIN_CHUNKS)]) == ORIGIN_CHUNKS
        s.commit()
        for c in SPOT:  # the client writes new data after the commit
            origin.pwrite(c * CS, chunk_bytes(c, v + 1))
    t_fill = time.monotonic() - t0
    exceptions = s.sb.exceptions
    assert exceptions == SNAPSHOTS * ORIGIN_CHUNKS >= 200_000
    depth = s.sb.depth
    assert depth >= 3
    stats = audit(s)
    assert stats["exceptions"] == exceptions
    for v, slot in enumerate(slots):
        for c in SPOT:
            assert snapshot_read(s, slot, c) == chunk_bytes(c, v)
        assert snapshot_read(s, slot, 1) == bytes(CS)
    # survive a clean reopen with a small cache (blocks come back from disk)
    s.close()
    s = Store.open(dev, origin, cache_size=1 << 20)
    assert s.sb.exceptions == exceptions and s.sb.depth == depth
    for v, slot in enumerate(slots):
        assert snapshot_read(s, slot, SPOT[-1]) == chunk_bytes(SPOT[-1], v)
    t_check = time.monotonic() - t0 - t_fill
    for v in range(SNAPSHOTS):
        s.delete_snapshot(f"snap{v}")
    s.commit()
    while s.delete_step(max_leaves=64):
        s.commit()
    s.commit()
    t_delete = time.monotonic() - t0 - t_fill - t_check
    assert s.sb.exceptions == 0
    assert s.sb.free_chunks == free_after_init
    assert s.sb.depth == 0
    final = audit(s)
    assert final == {"exceptions": 0, "leaves": 1, "nodes": 0, "data_chunks": 0}
    s.close()
    total = time.monotonic() - t0
    print(f"\nscale: {exceptions} exceptions over {SNAPSHOTS} snapshots, depth {depth}, "
          f"{stats['leaves']} leaves, {stats['nodes']} index nodes; fill {t_fill:.1f}s, "
          f"check+reopen {t_check:.1f}s, delete {t_delete:.1f}s, total {total:.1f}s")
