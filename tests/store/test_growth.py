"""Online growth of the store and the origin (store/growth.py): journaled, checked, reopened."""

from __future__ import annotations

import dataclasses

import pytest

from csnapd.store import format as fmt
from csnapd.store import superblock as sbk
from csnapd.store.check import check_store
from csnapd.store.device import MemoryDevice, VolatileDevice
from csnapd.store.errors import OutOfRange, StoreFullError
from csnapd.store.grow import GrowthRefused, bitmap_reach
from csnapd.store.store import Store

from .conftest import CS, chunk_bytes, fill_origin, make_store, snapshot_read


def _problems(store: Store) -> list[str]:
    return [p.message for p in check_store(store).problems]


def _fill(store: Store, origin: MemoryDevice, snap: str = "fill") -> int:
    """Copy out chunks until the store is full (a fresh snapshot each round); return copies."""
    copied, round_ = 0, 0
    while True:
        round_ += 1
        store.create_snapshot(f"{snap}{round_}")
        store.commit()
        try:
            copied += store.origin_write([(0, store.origin_chunks)])
            store.commit()
        except StoreFullError:
            store.commit()
            return copied
        if round_ > 6:
            return copied


def _reopen(store: Store) -> Store:
    store.close()
    return Store.open(store.dev, store.origin)


@pytest.fixture
def small():
    dev, origin = make_store(store_bytes=1 << 20, origin_chunks=64)
    fill_origin(origin)
    return dev, origin


def test_growth_within_the_bitmaps_reach(small):
    dev, origin = small
    store = Store.open(dev, origin)
    reach, old = bitmap_reach(store.sb), store.store_chunks
    assert reach > old
    free = store.sb.free_chunks
    dev.grow(reach * CS)
    grown = store.grow_store()
    assert grown.as_dict() == {"what": "store", "old": old, "new": reach, "how": "in place"}
    store.commit()
    assert store.sb.free_chunks == free + reach - old
    assert _problems(store) == []
    store = _reopen(store)
    assert store.store_chunks == reach and _problems(store) == []
    _fill(store, origin)  # the new chunks are used
    assert store.sb.free_chunks < reach - old
    assert _problems(store) == []


def test_growth_beyond_the_reach_moves_the_bitmaps_twice(small):
    dev, origin = small
    store = Store.open(dev, origin)
    store.create_snapshot("before")
    store.origin_write([(0, 8)])
    store.commit()
    reach, old = bitmap_reach(store.sb), store.store_chunks
    dev.grow(3 * reach * CS)
    grown = store.grow_store()
    assert grown.how == "bitmaps moved" and grown.new == 3 * reach
    f = store.sb
    assert f.cbitmap_start == old * store.alloc.k
    assert f.incompat & fmt.INCOMPAT_BITMAPS_MOVED  # an older csnap would see leaks
    store.commit()
    assert _problems(store) == []
    assert snapshot_read(store, 0, 3) == chunk_bytes(3, 0)
    store = _reopen(store)
    assert store.store_chunks == 3 * reach and _problems(store) == []
    first = store.sb.cbitmap_start
    dev.grow(9 * reach * CS)
    store.grow_store()
    store.commit()
    # the bitmaps the first growth placed in the data area are free again
    assert not store.alloc.is_meta(first)
    assert _problems(store) == []
    store.checkpoint()
    store = _reopen(store)
    assert _problems(store) == [] and store.store_chunks == 9 * reach
    assert snapshot_read(store, 0, 3) == chunk_bytes(3, 0)
    _fill(store, origin)
    assert _problems(store) == []


def test_growth_crash_after_the_commit_replays_the_new_geometry(small):
    dev, origin = small
    store = Store.open(dev, origin)
    dev.grow(4 * bitmap_reach(store.sb) * CS)
    store.grow_store()
    store.origin_write([(0, 4)])  # the same transaction changes the new bitmaps too
    store.create_snapshot("s")
    store.commit()
    store.origin_write([(10, 6)])  # a later transaction: SUPER records after the image
    store.commit()
    grown = dataclasses.replace(store.sb)
    # no close, no checkpoint: the journal holds the switch and what followed it
    again = Store.open(dev, origin)
    assert again.sb.geometry == grown.geometry
    assert (again.sb.free_chunks, again.sb.exceptions) == (grown.free_chunks,
                                                          grown.exceptions)
    assert _problems(again) == []


def test_check_finds_bits_past_the_end_cleared(small):
    dev, origin = small
    store = Store.open(dev, origin)
    f = store.sb
    blk = store.cache.get(f.cbitmap_start + f.cbitmap_blocks - 1, fmt.BlockKind.CBITMAP)
    last = len(blk.bits) * 8 - 1  # the last bit of the last block: past the end
    blk.set_bits(last, 1, 0)
    store.cache.mark_dirty(blk)
    store.commit()
    assert any("past the end of the store are not all set" in p for p in _problems(store))


def test_growth_lost_before_its_commit_leaves_the_old_store():
    inner, origin = make_store(store_bytes=1 << 20, origin_chunks=64)
    dev = VolatileDevice(inner)
    store = Store.open(dev, origin)
    old = dataclasses.replace(store.sb)
    inner.grow(4 * bitmap_reach(old) * CS)
    store.grow_store()
    sealed = store.seal()
    sealed._copy_out()
    sealed._write_direct()  # the new bitmaps reached the device, the switch did not
    dev.flush()
    again = Store.open(inner, origin)
    assert again.sb.geometry == old.geometry
    assert _problems(again) == []


def test_shrinking_and_too_small_growth_are_refused(small):
    dev, origin = small
    store = Store.open(dev, origin)
    with pytest.raises(GrowthRefused, match="shrinking the store is refused"):
        store.grow_store((store.store_chunks - 1) * CS)
    with pytest.raises(GrowthRefused, match="exceeds the store device"):
        store.grow_store(dev.size + CS)
    reach = bitmap_reach(store.sb)
    dev.grow((reach + 1) * CS)
    store.grow_store(reach * CS)  # up to the reach: fine
    store.commit()
    with pytest.raises(GrowthRefused, match="grow by at least"):
        store.grow_store()  # one chunk past the reach cannot hold new bitmaps
    with pytest.raises(GrowthRefused, match="shrinking the origin is refused"):
        store.grow_origin(origin.size - CS)
    assert store.grow_store(reach * CS).how == "unchanged"


def test_one_growth_at_a_time(small):
    dev, origin = small
    store = Store.open(dev, origin)
    dev.grow(4 * bitmap_reach(store.sb) * CS)
    store.grow_store(2 * bitmap_reach(store.sb) * CS)
    store.grow_origin()  # an origin growth may go with it
    with pytest.raises(GrowthRefused, match="still being committed"):
        store.grow_store()
    store.commit()
    store.grow_store()
    store.commit()
    assert _problems(store) == []


def test_origin_growth_keeps_older_snapshots_at_their_size(small):
    dev, origin = small
    store = Store.open(dev, origin)
    old_chunks, old_bytes = store.origin_chunks, store.sb.origin_bytes
    store.create_snapshot("old")
    store.commit()
    origin.grow(old_bytes + 16 * CS)
    for c in range(old_chunks, old_chunks + 16):
        origin.pwrite(c * CS, chunk_bytes(c, 0))
    grown = store.grow_origin()
    assert grown.as_dict() == {"what": "origin", "old": old_bytes,
                               "new": old_bytes + 16 * CS, "how": "recorded"}
    store.commit()
    assert store.origin_chunks == old_chunks + 16
    assert store.sb.incompat & fmt.INCOMPAT_ORIGIN_GROWN
    new = store.create_snapshot("new")
    store.commit()
    assert store.snapshot_bytes(0) == old_bytes
    assert store.snapshot_bytes(new.slot) == old_bytes + 16 * CS
    with pytest.raises(OutOfRange, match="older than the origin's growth"):
        store.snapshot_map(0, [(old_chunks, 1)])
    # a write past the old end copies out for the new snapshot only
    before = store.sb.exceptions
    store.origin_write([(old_chunks - 2, 4)])
    store.commit()
    assert store.sb.exceptions == before + 4  # two shared by both, two for the new one
    for c in (old_chunks, old_chunks + 1):
        assert store.snapshot_lookup(0, c) is None  # no copy for a snapshot without it
        assert store.snapshot_lookup(new.slot, c) is not None
    assert snapshot_read(store, new.slot, old_chunks + 1) == chunk_bytes(old_chunks + 1, 0)
    assert snapshot_read(store, 0, old_chunks - 1) == chunk_bytes(old_chunks - 1, 0)
    assert _problems(store) == []
    store = _reopen(store)
    assert store.snapshot_bytes(0) == old_bytes and store.origin_chunks == old_chunks + 16
    assert _problems(store) == []
    # once the old snapshot is gone, the record and the feature bit go at the next open
    store.delete_snapshot("old")
    while store.deleting:
        store.delete_step(8)
    store.commit()
    store = _reopen(store)
    assert store.sb.size_records == () and not store.sb.incompat & fmt.INCOMPAT_ORIGIN_GROWN
    assert _problems(store) == []


def test_origin_growth_without_snapshots_records_nothing(small):
    dev, origin = small
    store = Store.open(dev, origin)
    origin.grow(origin.size + CS + 100)
    store.grow_origin()
    store.commit()
    assert store.sb.size_records == ()
    assert store.sb.origin_bytes == origin.size
    store.close()
    again = Store.open(dev, origin)
    assert again.origin_chunks == 66


def test_check_catches_a_corrupted_new_geometry(small):
    dev, origin = small
    store = Store.open(dev, origin)
    dev.grow(4 * bitmap_reach(store.sb) * CS)
    store.grow_store()
    store.commit()
    store.close()
    f, _, _ = sbk.load(dev)
    for change, want in (
            ({"mbitmap_start": f.journal_start}, "overlaps the journal"),
            ({"cbitmap_blocks": 0}, "cover 0 bits"),
            ({"mbitmap_start": f.mbitmap_start + 1}, "is not marked in the metadata bitmap"),
                ({"cbitmap_blocks": f.cbitmap_blocks + 1}, "overlaps the metadata bitmap"),
            ({"size_records": ((1, f.origin_bytes * 2),)}, "growth records")):
        bad = dataclasses.replace(f, generation=f.generation + 1, **change)
        img = MemoryDevice(dev.size)
        img.data[:] = dev.data
        sbk.write_slot(img, bad)
        try:
            ro = Store.open(img, origin, readonly=True)
        except Exception as exc:  # noqa: BLE001 - a geometry this bad may not even open
            assert want and exc
            continue
        problems = " / ".join(_problems(ro))
        assert want in problems, (change, problems)


def test_geometry_record_round_trip(small):
    dev, origin = small
    store = Store.open(dev, origin)
    f = dataclasses.replace(store.sb, store_chunks=1 << 40, origin_bytes=12345,
                            size_records=((7, 100), (9, 4096)))
    raw = fmt.geometry_record(f) + fmt.super_record(f)
    (kind, fields), (kind2, _) = fmt.decode_records(raw, 0)
    assert (kind, kind2) == (fmt.REC_GEOMETRY, fmt.REC_SUPER)
    assert fields["store_chunks"] == 1 << 40 and fields["origin_bytes"] == 12345
    assert fields["size_records"] == ((7, 100), (9, 4096))
    with pytest.raises(Exception, match="geometry record|run past"):
        fmt.decode_records(raw[:len(fmt.geometry_record(f)) - 3], 0)
