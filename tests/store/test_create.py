"""create.plan geometry rules, and a store with 1024 snapshot slots."""

from __future__ import annotations

import pytest

from csnapd.store import create
from csnapd.store import format as fmt
from csnapd.store.device import MemoryDevice
from csnapd.store.errors import GeometryError
from csnapd.store.store import Store

from .conftest import audit, chunk_bytes, fill_origin, read_chunk, snapshot_read


def test_too_small_store_says_how_much_is_needed():
    with pytest.raises(GeometryError, match=r"too small.*at least \d+ bytes") as info:
        create.plan(256 << 10, 1 << 30, chunk_size=64 << 10)
    least = int(str(info.value).split("at least ")[1].split()[0])
    create.plan(least, 1 << 30, chunk_size=64 << 10)  # the figure it names is enough
    with pytest.raises(GeometryError, match="too small"):
        create.plan(least - (64 << 10), 1 << 30, chunk_size=64 << 10)


@pytest.mark.parametrize("chunk_size", [0, 2048, 3000, 4095, 12288, 65537, 2 << 20, -4096])
def test_bad_chunk_sizes(chunk_size):
    with pytest.raises(GeometryError, match="chunk size"):
        create.plan(64 << 20, 1 << 30, chunk_size=chunk_size)


@pytest.mark.parametrize("block_size", [256, 1000, 3 << 10, 2 << 20])
def test_bad_block_sizes(block_size):
    with pytest.raises(GeometryError, match="block size"):
        create.plan(64 << 20, 1 << 30, chunk_size=1 << 20, block_size=block_size)


def test_block_larger_than_chunk_is_refused():
    with pytest.raises(GeometryError, match="must not exceed the chunk size"):
        create.plan(64 << 20, 1 << 30, chunk_size=4096, block_size=8192)


def test_other_geometry_errors():
    with pytest.raises(GeometryError, match="max-snapshots"):
        create.plan(64 << 20, 1 << 30, max_snapshots=0)
    with pytest.raises(GeometryError, match="max-snapshots"):
        create.plan(64 << 20, 1 << 30, max_snapshots=fmt.MAX_SNAPSHOTS_LIMIT + 1)
    with pytest.raises(GeometryError, match="origin is empty"):
        create.plan(64 << 20, 0)
    with pytest.raises(GeometryError, match="journal must hold"):
        create.plan(64 << 20, 1 << 30, block_size=4096, journal_bytes=4096 * 10)


def test_defaults():
    f = create.plan(1 << 30, 1 << 30)
    assert (f.chunk_size, f.block_size, f.max_snapshots) == (64 << 10, 4096, 64)
    assert f.journal_blocks * f.block_size == 8 << 20
    assert f.free_chunks == f.store_chunks - f.data_start_chunk - 1  # minus the root leaf


def test_max_snapshots_1024_raises_default_block_size():
    f = create.plan(1 << 30, 1 << 30, max_snapshots=1024)
    assert f.block_size > create.DEFAULT_BLOCK_SIZE
    # a logical chunk with a separate copy for each of 1024 snapshots fits half a leaf
    need = fmt.ENTRY_OVERHEAD + 1024 * (fmt.EXC_OVERHEAD + 1)
    assert fmt.leaf_capacity(f.block_size) // 2 >= need
    assert fmt.leaf_capacity(f.block_size // 2) // 2 < need  # and it is the smallest such
    with pytest.raises(GeometryError, match="needs a block size of at least"):
        create.plan(1 << 30, 1 << 30, max_snapshots=1024, block_size=4096)
    with pytest.raises(GeometryError, match="needs blocks of"):
        create.plan(1 << 30, 1 << 30, max_snapshots=1024, chunk_size=8192)


def test_store_with_1024_snapshots_uses_a_bit_above_1000():
    cs = 64 << 10
    dev, origin = MemoryDevice(24 << 20), MemoryDevice(16 * cs)
    f = create.create(dev, origin.size, chunk_size=cs, max_snapshots=1024)
    assert f.max_snapshots == 1024 and f.block_size >= 32768
    data = fill_origin(origin, cs)
    s = Store.open(dev, origin)
    entries = [s.create_snapshot(f"s{i}") for i in range(1005)]
    s.commit()
    high = entries[-1]
    assert high.slot == 1004 > 1000
    # one origin write copies the chunk once, shared by all 1005 snapshots
    assert s.origin_write([(3, 1)]) == 1
    s.commit()
    origin.pwrite(3 * cs, chunk_bytes(3, 1, cs))
    shared = s.snapshot_lookup(high.slot, 3)
    assert shared is not None and shared == s.snapshot_lookup(0, 3)
    # the high snapshot writes its own copy
    [(_, mine)] = s.snapshot_write(high.slot, [(3, 1)])
    s.commit()
    assert mine != shared
    dev.pwrite(mine * cs, chunk_bytes(3, 2, cs))
    s.close()
    s = Store.open(dev, origin)
    assert s.snaps.find("s1004").slot == 1004
    assert read_chunk(s.dev, s.snapshot_lookup(1004, 3), cs) == chunk_bytes(3, 2, cs)
    assert snapshot_read(s, 1003, 3) == data[3]
    assert snapshot_read(s, 1004, 4) == data[4]
    assert s.snapshot_lookup(1004, 4) is None
    audit(s)
    s.delete_snapshot("s1004")
    while s.delete_step():
        pass
    s.commit()
    assert s.snapshot_lookup(1004, 3) is None
    assert s.snaps.entries[1004].state == fmt.SNAP_FREE
    assert s.create_snapshot("again").slot == 1004
    s.commit()
    audit(s)
    s.close()
