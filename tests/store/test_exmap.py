"""The exception-map API: lookups, changes through a leaf span, walks and usage counts."""

from __future__ import annotations

import pytest

from csnapd.store.errors import LimitError, StoreFullError
from csnapd.store.store import Store
from csnapd.store.walk import snapshot_usage

from .conftest import audit, fill_origin, make_store


@pytest.fixture
def store():
    dev, origin = make_store(origin_chunks=512, store_bytes=8 << 20)
    fill_origin(origin)
    s = Store.open(dev, origin)
    yield s
    if not s.failed:
        s.tree.check_invariants()


def test_lookup_and_map_range_agree(store):
    s = store
    a = s.create_snapshot("a").slot
    s.origin_write([(10, 300)])
    b = s.create_snapshot("b").slot
    s.origin_write([(200, 200)])
    s.snapshot_write(b, [(250, 5)])
    s.commit()
    assert s.sb.depth >= 1  # many leaves
    got = s.exmap.map_range(a, 0, 512)
    assert [c for c, _ in got] == list(range(512))
    for chunk, store_chunk in got:
        assert s.exmap.lookup(a, chunk) == store_chunk
        assert (store_chunk is not None) == (10 <= chunk < 400)
    unique_b = dict(s.exmap.map_range(b, 250, 5))
    shared = dict(s.exmap.map_range(a, 250, 5))
    assert all(unique_b[c] != shared[c] for c in unique_b)
    audit(s)


def test_span_changes_and_limits(store):
    s = store
    span = s.exmap.span(7)
    assert span.lo <= 7 < span.hi and span.copies(7) == ()
    allocated = []

    def alloc():
        allocated.append(s.alloc.alloc_chunk())
        return allocated[-1]

    st = span.add(7, 0b1, alloc)
    assert span.copies(7) == ((st, 0b1),) and span.lookup(0, 7) == st
    # unsharing a slot that reads a shared copy returns that copy as the source
    span.add(8, 0b110, alloc)
    new, source = span.unshare(8, 1, alloc)
    assert source == allocated[1] and span.copies(8) == ((allocated[1], 0b100), (new, 0b10))
    new2, source2 = span.unshare(9, 3, alloc)
    assert source2 is None and span.copies(9) == ((new2, 0b1000),)
    assert span.missing(0b1111, 7, 10) == [(7, 0b1110), (8, 0b1001), (9, 0b0111)]
    assert span.unique(1, 7, 10) == [(7, None), (8, new), (9, None)]
    span.finish()
    # an entry may not outgrow half a leaf: refused before any chunk is allocated
    free, before = s.alloc.available, len(allocated)
    bit = 4
    with pytest.raises(LimitError):
        while True:
            span = s.exmap.span(100)
            span.add(100, 1 << bit, alloc)
            span.finish()
            bit += 1
    span.finish()
    assert len(allocated) - before == free - s.alloc.available  # no chunk for the refused one

    def full():
        raise StoreFullError("full")

    span = s.exmap.span(300)
    with pytest.raises(StoreFullError):
        span.add(300, 1, full)
    assert span.copies(300) == ()  # no empty entry left behind
    span.finish()


def test_clear_bits_reports_freed_chunks(store):
    s = store
    a = s.create_snapshot("a").slot
    s.origin_write([(0, 20)])
    b = s.create_snapshot("b").slot
    s.origin_write([(10, 20)])
    s.commit()
    owned_by_a = {st for c, st in s.exmap.map_range(a, 0, 30) if st is not None}
    owned_by_b = {st for c, st in s.exmap.map_range(b, 0, 30) if st is not None}
    freed, key = [], 0
    while key < 30:  # 512-byte leaves: a few spans
        span = s.exmap.span(key)
        freed += span.clear_bits(1 << a)
        key = span.hi
        span.finish()
    assert set(freed) == owned_by_a - owned_by_b and len(freed) == 20
    assert all(st is None for _, st in s.exmap.map_range(a, 0, 30))
    assert {st for _, st in s.exmap.map_range(b, 0, 30) if st} == owned_by_b


def test_cursors_walk_entries_and_usage(store):
    s = store
    a = s.create_snapshot("a").slot
    s.origin_write([(0, 400)])
    b = s.create_snapshot("b").slot
    s.snapshot_write(b, [(0, 100)])
    s.origin_write([(400, 50)])  # copies both snapshots share
    s.commit()
    entries = list(s.exmap.entries())
    assert [c for c, _ in entries] == list(range(450))
    leaves = [v for v in s.exmap.walk() if v.depth == 0]
    assert sum(len(v.entries) for v in leaves) == 450
    assert all(v.lo <= c < v.hi for v in leaves for c, _ in v.entries)
    assert [c for c, _ in s.exmap.entries(350)] == list(range(350, 450))
    usage = snapshot_usage(s)
    assert usage[a] == {"unique": 400, "shared": 50}
    assert usage[b] == {"unique": 100, "shared": 50}
    # the incremental scan gives the same counts, a few leaves at a time
    acc: dict[int, dict[str, int]] = {}
    cursor, done, steps = 0, False, 0
    while not done:
        cursor, done = s.usage_step(cursor, 2, acc)
        steps += 1
    assert acc == usage and steps > 1
