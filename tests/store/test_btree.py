"""The exception B-tree: leaf insert/split/merge, index split, depth growth and shrink.

block_size 512: a leaf holds about 20 single-snapshot entries and a node 30
children, so a few thousand exceptions make the tree three levels deep.
"""

from __future__ import annotations

from csnapd.store import format as fmt
from csnapd.store.device import MemoryDevice
from csnapd.store.store import Store

from .conftest import (
    CS,
    audit,
    chunk_bytes,
    fill_origin,
    make_store,
    read_chunk,
    snapshot_read,
    tree_blocks,
)


def write_origin(s: Store, origin: MemoryDevice, data: dict[int, bytes], start: int,
                 count: int, version: int) -> None:
    """Act as the client: ask for copy-outs, commit, then overwrite the origin."""
    s.origin_write([(start, count)])
    s.commit()
    for c in range(start, start + count):
        data[c] = chunk_bytes(c, version)
        origin.pwrite(c * CS, data[c])


def test_leaf_insert_keeps_entries_sorted(small):
    s, data = small
    e = s.create_snapshot("a")
    s.commit()
    for c in (50, 3, 17, 99, 4, 60):
        assert s.origin_write([(c, 1)]) == 1
    s.commit()
    _, leaves, entries = tree_blocks(s)
    assert len(leaves) == 1 and s.sb.depth == 0
    assert [c for c, _ in entries] == [3, 4, 17, 50, 60, 99]
    assert all(len(excs) == 1 and excs[0][1] == 1 << e.slot for _, excs in entries)
    for c in (50, 3, 17, 99, 4, 60):
        assert read_chunk(s.dev, s.snapshot_lookup(e.slot, c)) == data[c]
    assert s.snapshot_lookup(e.slot, 5) is None
    assert s.origin_write([(3, 2)]) == 0  # already unshared
    audit(s)


def test_leaf_split_grows_depth_to_one(small):
    s, data = small
    e = s.create_snapshot("a")
    s.commit()
    per_leaf = s.tree.leaf_cap // (fmt.ENTRY_OVERHEAD + 13)
    s.origin_write([(0, per_leaf)])
    s.commit()
    assert s.sb.depth == 0
    s.origin_write([(per_leaf, 1)])
    s.commit()
    assert s.sb.depth == 1
    nodes, leaves, entries = tree_blocks(s)
    assert len(nodes) == 1 and len(leaves) == 2
    assert [c for c, _ in entries] == list(range(per_leaf + 1))
    root, left, right = list(s.exmap.walk())
    assert root.keys[0] == 0 and root.keys[1] == right.entries[0][0] == right.lo
    assert abs(len(left.entries) - len(right.entries)) <= 1  # split in the middle
    for c in range(per_leaf + 1):
        assert snapshot_read(s, e.slot, c) == data[c]
    audit(s)


def test_leaf_merge_after_partial_delete():
    """Chunks 0..59 are copied for A only, 60..119 for A and B together.
    Deleting A empties the first leaves (they merge away) while the shared
    copies survive with B's bit alone."""
    dev, origin = make_store(origin_chunks=128)
    data = fill_origin(origin)
    s = Store.open(dev, origin)
    a = s.create_snapshot("a")
    s.commit()
    write_origin(s, origin, data, 0, 60, 1)
    b = s.create_snapshot("b")
    s.commit()
    b_view = dict(data)
    write_origin(s, origin, data, 60, 60, 1)
    leaves_before = len(tree_blocks(s)[1])
    assert leaves_before >= 5
    s.delete_snapshot("a")
    s.commit()
    while s.delete_step(max_leaves=1):
        s.commit()
    s.commit()
    nodes, leaves, entries = tree_blocks(s)
    assert len(leaves) < leaves_before
    assert [c for c, _ in entries] == list(range(60, 120))
    assert all(excs == [[excs[0][0], 1 << b.slot]] for _, excs in entries)
    for c in range(128):
        assert snapshot_read(s, b.slot, c) == b_view[c]
    stats = audit(s)
    assert stats["exceptions"] == 60 == s.sb.exceptions
    assert a.slot not in {e.slot for e in s.snaps.entries if e.state != fmt.SNAP_FREE}


def test_index_split_and_depth_growth_then_shrink_to_zero():
    origin_chunks = 2500
    dev, origin = make_store(store_bytes=16 << 20, origin_chunks=origin_chunks)
    s = Store.open(dev, origin)
    initial_free = s.sb.free_chunks
    e = s.create_snapshot("a")
    s.commit()
    depths = []
    for start in range(0, origin_chunks, 250):
        s.origin_write([(start, 250)])
        s.commit()
        depths.append(s.sb.depth)
        s.tree.check_invariants()
    assert depths == sorted(depths)  # depth only grows while inserting
    assert s.sb.depth >= 2, depths
    nodes, leaves, _ = tree_blocks(s)
    root = next(s.exmap.walk())
    assert len(root.children) >= 2
    # index nodes below the root were split (a single node holds at most 30 children)
    assert len(leaves) > s.tree.node_cap and len(nodes) >= 3
    assert s.sb.exceptions == origin_chunks
    audit(s)
    # clean reopen: the tree is read back from disk
    s.close()
    s = Store.open(dev, origin)
    assert s.snapshot_lookup(e.slot, origin_chunks - 1) is not None
    assert audit(s)["exceptions"] == origin_chunks
    s.delete_snapshot("a")
    s.commit()
    seen_depths = set()
    while s.delete_step(max_leaves=8):
        s.commit()
        seen_depths.add(s.sb.depth)
        s.tree.check_invariants()
    s.commit()
    assert s.sb.depth == 0
    assert len(seen_depths) > 1  # it shrank level by level
    assert s.sb.exceptions == 0
    assert s.sb.free_chunks == initial_free
    stats = audit(s)
    assert stats == {"exceptions": 0, "leaves": 1, "nodes": 0, "data_chunks": 0}
    s.close()
    s = Store.open(dev, origin)
    assert s.sb.depth == 0 and s.sb.free_chunks == initial_free
    audit(s)


def test_snapshot_write_splits_shared_exception(small):
    s, data = small
    a = s.create_snapshot("a")
    b = s.create_snapshot("b")
    s.commit()
    s.origin_write([(7, 1)])
    s.commit()
    shared = s.snapshot_lookup(a.slot, 7)
    assert shared == s.snapshot_lookup(b.slot, 7)
    [(chunk, mine)] = s.snapshot_write(a.slot, [(7, 1)])
    s.commit()
    assert chunk == 7 and mine != shared
    assert read_chunk(s.dev, mine) == data[7]  # the new copy starts as the shared data
    s.dev.pwrite(mine * CS, chunk_bytes(7, 99))
    assert snapshot_read(s, a.slot, 7) == chunk_bytes(7, 99)
    assert snapshot_read(s, b.slot, 7) == data[7]
    # writing again reuses the now-unique copy
    assert s.snapshot_write(a.slot, [(7, 1)]) == [(7, mine)]
    # a snapshot write to a chunk still on the origin copies the origin
    [(_, fresh)] = s.snapshot_write(b.slot, [(9, 1)])
    s.commit()
    assert read_chunk(s.dev, fresh) == data[9]
    assert s.snapshot_lookup(a.slot, 9) is None
    audit(s)
