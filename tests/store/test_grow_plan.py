"""Growth planning (store/grow.py) over superblocks of real stores made by create."""

from __future__ import annotations

import pytest

from csnapd.store import format as fmt
from csnapd.store import superblock
from csnapd.store.grow import GrowthRefused, bitmap_reach, plan_origin_growth, plan_store_growth

from .conftest import CS, make_store


def _fields() -> fmt.SuperFields:
    dev, _ = make_store(store_bytes=4 << 20, origin_chunks=128)
    f, _, _ = superblock.load(dev)
    return f


def test_store_shrink_refused_with_reason() -> None:
    f = _fields()
    with pytest.raises(GrowthRefused, match="shrinking the store is refused"):
        plan_store_growth(f, (f.store_chunks - 1) * CS)


def test_store_growth_within_bitmap_reach_and_beyond() -> None:
    f = _fields()
    reach = bitmap_reach(f)
    bpb = fmt.bitmap_bits_per_block(f.block_size)
    assert reach >= f.store_chunks
    assert reach <= f.cbitmap_blocks * bpb
    same = plan_store_growth(f, f.store_chunks * CS + CS - 1)  # a partial chunk is unused
    assert same.added_chunks == 0 and not same.needs_bitmap_extension
    edge = plan_store_growth(f, reach * CS)
    assert edge.new_chunks == reach and not edge.needs_bitmap_extension
    beyond = plan_store_growth(f, (reach + 1) * CS)
    assert beyond.needs_bitmap_extension and beyond.added_chunks == reach + 1 - f.store_chunks


def test_origin_growth_rules() -> None:
    f = _fields()
    assert plan_origin_growth(f, f.origin_bytes + 1) == (f.origin_bytes + 1, f.origin_chunks + 1)
    assert plan_origin_growth(f, 2 * f.origin_bytes, size=f.origin_bytes + CS) == \
        (f.origin_bytes + CS, f.origin_chunks + 1)
    with pytest.raises(GrowthRefused, match="exceeds the origin device"):
        plan_origin_growth(f, f.origin_bytes, size=f.origin_bytes + 1)
    with pytest.raises(GrowthRefused, match="shrinking the origin is refused"):
        plan_origin_growth(f, f.origin_bytes - 1)
