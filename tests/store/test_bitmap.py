"""Chunk allocation: allocate, free, quarantine, cursor wrap, full store."""

from __future__ import annotations

import pytest

from csnapd.store.errors import StoreError, StoreFullError
from csnapd.store.store import Store

from .conftest import CS, audit, chunk_bytes, fill_origin, make_store, snapshot_read


def test_alloc_free_and_quarantine(small):
    s, _ = small
    a = s.alloc
    free0 = s.sb.free_chunks
    c1, c2 = a.alloc_chunk(), a.alloc_chunk()
    assert c2 == c1 + 1 and a.is_allocated(c1) and a.is_allocated(c2)
    assert s.sb.free_chunks == free0 - 2
    a.free_chunk(c1)
    assert not a.is_allocated(c1) and s.sb.free_chunks == free0 - 1
    assert a.quarantined == 1 and a.available == free0 - 2
    with pytest.raises(StoreError):
        a.free_chunk(c1)  # double free is corruption, not silently accepted
    # a freed chunk is not handed out again before a checkpoint, even on wrap
    s.sb.alloc_cursor = c1
    assert a.alloc_chunk() not in (c1, c2)
    s.commit()
    assert a.quarantined == 1
    s._checkpoint()
    assert a.quarantined == 0
    s.sb.alloc_cursor = c1
    assert a.alloc_chunk() == c1


def test_cursor_wraps_to_start(small):
    s, _ = small
    a, f = s.alloc, s.sb
    first = a.alloc_chunk()
    a.free_chunk(first)
    s.commit()
    s._checkpoint()
    f.alloc_cursor = f.store_chunks - 3
    got = [a.alloc_chunk() for _ in range(4)]
    last_free = [c for c in range(f.store_chunks - 3, f.store_chunks) if c not in got[:3]]
    assert got[:3] == [f.store_chunks - 3, f.store_chunks - 2, f.store_chunks - 1], got
    assert not last_free
    assert got[3] == first  # wrapped to the lowest free chunk
    assert f.alloc_cursor == first + 1
    f.alloc_cursor = f.store_chunks  # a cursor past the end also restarts at 0
    assert a.alloc_chunk() == first + 1


def test_alloc_until_full_returns_none(small):
    s, _ = small
    a = s.alloc
    n = a.available
    got = [a.alloc_chunk() for _ in range(n)]
    assert None not in got and len(set(got)) == n
    assert all(c >= s.sb.data_start_chunk for c in got)
    assert s.sb.free_chunks == 0
    assert a.alloc_chunk() is None
    assert a.alloc_block() is None or s.alloc.k > 1  # a partial metadata chunk may remain


def test_store_full_origin_write_raises_and_store_stays_usable():
    # 64 KiB of journal and bitmaps plus 48 data chunks, origin of 200 chunks
    dev, origin = make_store(store_bytes=(4 + 16 + 48) * CS, origin_chunks=200, journal_blocks=128)
    data = fill_origin(origin, CS)
    s = Store.open(dev, origin)
    free0 = s.sb.free_chunks
    e = s.create_snapshot("a")
    s.commit()
    with pytest.raises(StoreFullError) as info:
        s.origin_write([(0, 200)])
    assert "full" in str(info.value)
    assert not s.failed
    s.commit()
    copied = [c for c in range(200) if s.snapshot_lookup(e.slot, c) is not None]
    assert copied == list(range(len(copied))) and 0 < len(copied) < 200
    for c in copied:  # the prefix copied before the error holds the right data
        assert snapshot_read(s, e.slot, c) == data[c]
    stats = audit(s)
    assert stats["exceptions"] == len(copied)
    # once full, further copy-outs fail cleanly, metadata-only operations work
    with pytest.raises(StoreFullError):
        s.origin_write([(199, 1)])
    with pytest.raises(StoreFullError):
        s.snapshot_write(e.slot, [(150, 1)])
    s.commit()
    audit(s)
    s.close()
    s = Store.open(dev, origin)
    audit(s)
    # deleting the snapshot frees everything, and copy-outs work again
    s.delete_snapshot("a")
    while s.delete_step():
        pass
    s.commit()
    assert s.sb.free_chunks == free0
    e2 = s.create_snapshot("b")
    s.commit()
    assert s.origin_write([(100, 10)]) == 10
    s.commit()
    for c in range(100, 110):
        origin.pwrite(c * CS, chunk_bytes(c, 5))
        assert snapshot_read(s, e2.slot, c) == data[c]
    audit(s)
    s.close()
