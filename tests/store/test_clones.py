"""Clones in the store: content at once, the background fill, lineage, refusals, check."""

from __future__ import annotations

import pytest

from csnapd.store import check
from csnapd.store import format as fmt
from csnapd.store.device import VolatileDevice
from csnapd.store.errors import LimitError, SnapshotHeld, StoreFullError
from csnapd.store.store import Store

from .conftest import CS, audit, chunk_bytes, fill_origin, make_store, snapshot_read, tree_blocks


def _write_origin(s: Store, chunks: range, version: int) -> None:
    s.origin_write([(chunks.start, len(chunks))])
    s.commit()
    for c in chunks:
        s.origin.pwrite(c * CS, chunk_bytes(c, version))


def _write_snapshot(s: Store, slot: int, chunks: range, version: int) -> None:
    pairs = s.snapshot_write(slot, [(chunks.start, len(chunks))])
    s.commit()
    for c, sc in pairs:
        s.dev.pwrite(sc * CS, chunk_bytes(c, version))


def _content(s: Store, slot: int, n: int) -> list[bytes]:
    return [snapshot_read(s, slot, c) for c in range(n)]


def test_a_clone_has_its_parents_content_at_once_and_keeps_it():
    dev, origin = make_store(origin_chunks=64)
    fill_origin(origin)
    s = Store.open(dev, origin)
    p = s.create_snapshot("p")
    s.commit()
    _write_origin(s, range(0, 40), 1)  # p now has copies of 0..39
    _write_snapshot(s, p.slot, range(30, 50), 2)  # and its own data at 30..49
    want = _content(s, p.slot, 64)
    c = s.clone_snapshot("c", "p")
    s.commit()
    assert s.cloning and s.snaps.parent_of(c) is p
    assert _content(s, c.slot, 64) == want  # before any fill step
    # all three change while the fill has not started: each keeps its own content
    _write_origin(s, range(35, 60), 3)
    _write_snapshot(s, p.slot, range(45, 64), 4)  # 50..63: both read the origin before
    _write_snapshot(s, c.slot, range(0, 5), 5)
    want_c = want[:]
    for i in range(5):
        want_c[i] = chunk_bytes(i, 5)
    assert _content(s, c.slot, 64) == want_c
    while s.clone_step(max_leaves=1):
        s.commit()
    s.commit()
    assert not s.cloning
    assert _content(s, c.slot, 64) == want_c
    assert [snapshot_read(s, p.slot, i) for i in range(45, 64)] == \
        [chunk_bytes(i, 4) for i in range(45, 64)]
    audit(s)
    s.close()


def test_the_fill_resumes_after_a_crash():
    dev, origin = make_store(origin_chunks=128, volatile=True)
    fill_origin(origin)
    s = Store.open(dev, origin)
    p = s.create_snapshot("p")
    s.commit()
    _write_origin(s, range(0, 128), 1)
    want = _content(s, p.slot, 128)
    s.clone_snapshot("c", "p")
    s.commit()
    s.clone_step(max_leaves=1)
    s.commit()
    s.clone_step(max_leaves=1)  # not committed: lost, and done again
    cursor = s.sb.clone_cursor
    dev.crash()
    s = Store.open(VolatileDevice(dev.inner), origin)
    assert s.cloning and 0 < s.sb.clone_cursor < cursor
    c = s.snaps.find("c")
    assert _content(s, c.slot, 128) == want
    while s.clone_step(max_leaves=2):
        s.commit()
    s.commit()
    assert _content(s, c.slot, 128) == want
    audit(s)


def test_a_parent_being_cloned_is_not_deleted_but_a_filling_clone_is():
    dev, origin = make_store(origin_chunks=64)
    fill_origin(origin)
    s = Store.open(dev, origin)
    s.create_snapshot("p")
    s.commit()
    _write_origin(s, range(0, 64), 1)
    free_before = s.sb.free_chunks
    c = s.clone_snapshot("c", "p")
    s.commit()
    with pytest.raises(SnapshotHeld, match="still being filled"):
        s.delete_snapshot("p")
    with pytest.raises(LimitError, match="still being filled"):
        s.clone_snapshot("c2", "p")
    s.clone_step(max_leaves=1)
    _write_snapshot(s, c.slot, range(0, 4), 2)
    s.delete_snapshot("c")  # ends the fill; its own chunks are freed by the delete pass
    s.commit()
    assert not s.cloning
    while s.delete_step():
        s.commit()
    s.commit()
    assert s.sb.free_chunks == free_before
    s.delete_snapshot("p")  # no fill any more
    s.commit()
    audit(s)


def test_lineage_survives_reopen_and_deleting_a_parent_repoints_to_the_grandparent():
    dev, origin = make_store(origin_chunks=32)
    s = Store.open(dev, origin)
    a = s.create_snapshot("a")
    s.commit()
    b = s.clone_snapshot("b", "a")
    s.commit()
    while s.clone_step():
        s.commit()
    c = s.clone_snapshot("c", "b")
    s.commit()
    while s.clone_step():
        s.commit()
    s.commit()
    s.close()
    s = Store.open(dev, origin)
    find = s.snaps.find
    assert s.snaps.parent_of(find("c")).name == "b"
    assert s.snaps.parent_of(find("b")).name == "a"
    assert s.snaps.parent_of(find("a")) is None
    s.delete_snapshot("b")
    s.commit()
    assert s.snaps.parent_of(find("c")).name == "a"
    assert (a.slot, b.slot, c.slot) == (find("a").slot, b.slot, find("c").slot)
    s.close()


def test_a_clones_name_leaves_room_for_its_parent_link():
    dev, origin = make_store(origin_chunks=8)
    s = Store.open(dev, origin)
    s.create_snapshot("p" * fmt.MAX_NAME_BYTES)  # an origin snapshot may use all 96 bytes
    s.commit()
    with pytest.raises(LimitError, match="92"):
        s.clone_snapshot("c" * 93, "p" * fmt.MAX_NAME_BYTES)
    c = s.clone_snapshot("c" * 92, "p" * fmt.MAX_NAME_BYTES)
    s.commit()
    with pytest.raises(LimitError, match="92"):
        s.set_snapshot(c.name, name="d" * 93)
    s.close()
    s = Store.open(dev, origin)
    assert s.snaps.find("c" * 92).parent == s.snaps.find("p" * 96).slot


def test_wide_sharemaps_split_leaves_during_the_fill():
    """A clone's slot far from its parent's widens every copy's sharemap by many bytes:
    the fill (and a touch) split overfull leaves as they go."""
    cs = 8192
    dev, origin = make_store(store_bytes=24 << 20, origin_chunks=2000, chunk_size=cs,
                             block_size=8192, max_snapshots=256)
    s = Store.open(dev, origin)
    p = s.create_snapshot("p")
    s.commit()
    s.origin_write([(0, 2000)])  # p has a copy of every chunk
    s.commit()
    for c in range(0, 2000, 7):
        origin.pwrite(c * cs, chunk_bytes(c, 1, cs))
    for i in range(200):  # slots 1..200, no copies of their own
        s.create_snapshot(f"f{i}")
    s.commit()
    want = [snapshot_read(s, p.slot, c) for c in range(2000)]
    leaves = len(tree_blocks(s)[1])
    c = s.clone_snapshot("c", "p")
    s.commit()
    assert c.slot == 201
    s.origin_write([(1990, 10)])  # a touch in the last leaf
    s.commit()
    while s.clone_step(max_leaves=1):
        s.commit()
    s.commit()
    assert len(tree_blocks(s)[1]) > 1.5 * leaves
    assert [snapshot_read(s, c.slot, i) for i in range(2000)] == want
    audit(s)


def test_check_finds_a_fill_whose_parent_is_gone():
    dev, origin = make_store(origin_chunks=32)
    s = Store.open(dev, origin)
    s.create_snapshot("p")
    s.commit()
    s.clone_snapshot("c", "p")
    s.commit()
    assert check.check_store(s).clean
    s.sb.clone_parent = 7  # a free slot
    problems = [p.message for p in check.check_store(s).problems]
    assert any("parent (slot 7)" in m for m in problems), problems


def test_a_clone_of_a_snapshot_older_than_an_origin_growth_keeps_its_size():
    """A clone's point in time is its parent's: after the origin grew, a clone of an older
    snapshot is as small as that snapshot (chunks the origin gained later are not in it)."""
    from csnapd.store import growth
    from csnapd.store.errors import OutOfRange

    dev, origin = make_store(origin_chunks=32)
    s = Store.open(dev, origin)
    p = s.create_snapshot("p")
    s.commit()
    origin.grow(48 * CS)
    s.grow_origin()
    s.commit()
    c = s.clone_snapshot("c", "p")
    s.commit()
    assert growth.snapshot_chunks(s, c.slot) == growth.snapshot_chunks(s, p.slot) == 32
    with pytest.raises(OutOfRange):
        s.snapshot_map(c.slot, [(40, 1)])
    assert growth.snapshot_chunks(s, s.create_snapshot("new").slot) == 48
    s.commit()
    s.close()
    s = Store.open(dev, origin)
    assert growth.snapshot_chunks(s, s.snaps.find("c").slot) == 32
    audit(s)


def test_a_fill_made_by_a_write_that_the_full_store_refuses_is_kept():
    """A parent's write fills the chunk into the clone, then finds no room for its own
    copy: the fill must still reach the disk (it did only in memory once, and the clone
    lost the chunk at the next open)."""
    dev, origin = make_store(store_bytes=(4 + 16 + 24) * CS, origin_chunks=64)
    fill_origin(origin)
    s = Store.open(dev, origin)
    p = s.create_snapshot("p")
    s.commit()
    _write_origin(s, range(0, 1), 1)  # p has a copy of chunk 0
    want = snapshot_read(s, p.slot, 0)
    c = s.clone_snapshot("c", "p")
    s.commit()
    for chunk in range(1, 64):  # fill the store with p's copies
        try:
            s.origin_write([(chunk, 1)])
        except StoreFullError:
            break
        s.commit()
    s.commit()
    with pytest.raises(StoreFullError):
        s.snapshot_write(p.slot, [(0, 1)])
    s.commit()
    while s.clone_step():  # the pass skips chunk 0: the clone has it (in memory at least)
        s.commit()
    s.commit()
    s.close()
    s = Store.open(dev, origin)
    assert snapshot_read(s, s.snaps.find("c").slot, 0) == want
    assert c.slot == s.snaps.find("c").slot
    audit(s)
