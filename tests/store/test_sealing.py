"""The sealed-commit protocol: seal on the owning thread, write on a worker, done back.

A seal freezes exactly what changed before it: later changes neither reach its
journal transaction nor become durable with it.  A failed write fails the store
safely.  A checkpoint writes only committed state while changes go on.
Operations themselves do no device I/O.
"""

from __future__ import annotations

import threading

import pytest

from csnapd.store import format as fmt
from csnapd.store.blocks import image_bytes
from csnapd.store.check import check_store
from csnapd.store.device import Device, MemoryDevice
from csnapd.store.errors import ReadOnlyError, SealOrderError, StoreFullError
from csnapd.store.store import Store

from .conftest import BS, CS, audit, chunk_bytes, fill_origin, make_store, snapshot_read


class Counting(Device):
    """Pass-through device that counts writes and flushes, and can fail on demand."""

    def __init__(self, inner: Device) -> None:
        self.inner, self.path = inner, inner.path
        self.writes = self.flushes = 0
        self.fail_writes = False
        self.log: list[tuple[int, bytes]] = []

    @property
    def size(self) -> int:
        return self.inner.size

    def pread(self, offset: int, length: int) -> bytes:
        return self.inner.pread(offset, length)

    def pwrite(self, offset: int, data) -> None:
        if self.fail_writes:
            raise OSError(5, "injected write error")
        self.writes += 1
        self.log.append((offset, bytes(data)))
        self.inner.pwrite(offset, data)

    def flush(self) -> None:
        self.flushes += 1
        self.inner.flush()

    def close(self) -> None:
        """The test reopens the inner device."""


def opened(**kw):
    inner, origin = make_store(**kw)
    data = fill_origin(origin)
    dev = Counting(inner)
    return Store.open(dev, origin), inner, origin, data


def overwrite_origin(origin: MemoryDevice, chunks, version: int) -> None:
    for c in chunks:
        origin.pwrite(c * CS, chunk_bytes(c, version))


def reopen(inner: MemoryDevice, origin: MemoryDevice) -> Store:
    """What a crash right now leaves: open a copy of the device as it is now.

    A copy, because the store under test goes on writing the original.
    """
    dev = MemoryDevice(inner.size)
    dev.data[:] = inner.data
    copy = MemoryDevice(origin.size)
    copy.data[:] = origin.data
    return Store.open(dev, copy)


def on_thread(fn) -> threading.Thread:
    t = threading.Thread(target=fn)
    t.start()
    return t


def test_operations_do_no_device_io():
    s, _, _, _ = opened()
    s.create_snapshot("a")
    s.commit()
    dev = s.dev
    before = (dev.writes, dev.flushes)
    s.origin_write([(0, 40)])
    s.snapshot_write(s.snaps.find("a").slot, [(50, 5)])
    s.create_snapshot("b")
    s.delete_snapshot("b")
    while s.delete_step():
        pass
    assert (dev.writes, dev.flushes) == before
    assert s.has_changes()
    s.commit()
    audit(s)


def test_a_seal_writes_exactly_the_state_it_froze():
    s, inner, origin, data = opened()
    a = s.create_snapshot("a")
    s.commit()
    s.origin_write([(0, 4)])
    sealed = s.seal()
    assert sealed is not None and not s.has_changes()
    # later changes, made before the sealed transaction is even written
    s.origin_write([(10, 4)])
    b = s.create_snapshot("b")
    assert s.has_changes()
    sealed.write()
    s.sealed_done(sealed)
    assert s.durable_ticket == sealed.ticket
    overwrite_origin(origin, range(4), 1)
    # crash now: the first origin write is durable, the later changes are not
    t = reopen(inner, origin)
    assert [e.name for e in t.snaps.visible()] == ["a"]
    assert t.sb.exceptions == 4
    for c in range(14):
        assert snapshot_read(t, a.slot, c) == data[c]
    audit(t)
    # the store that sealed goes on and makes the rest durable
    s.commit()
    overwrite_origin(origin, range(10, 14), 1)
    t = reopen(inner, origin)
    assert sorted(e.name for e in t.snaps.visible()) == ["a", "b"]
    assert all(snapshot_read(t, b.slot, c) == chunk_bytes(c, 1) for c in range(4))
    assert all(snapshot_read(t, a.slot, c) == data[c] for c in range(20))


def test_sealed_bytes_do_not_change_with_later_changes():
    s, _, _, _ = opened()
    s.create_snapshot("a")
    s.commit()
    s.origin_write([(0, 3)])
    sealed = s.seal()
    frozen = [(home, bytes(image)) for home, image in sealed.images]
    blocks = sealed.ring.encode(sealed.pos, sealed.seq, sealed.images)
    for i in range(3, 60):  # change the very same leaf and bitmap blocks again and again
        s.origin_write([(i, 1)])
        s.snapshot_write(s.snaps.find("a").slot, [(i, 1)])
    assert [(h, bytes(i)) for h, i in sealed.images] == frozen
    assert sealed.ring.encode(sealed.pos, sealed.seq, sealed.images) == blocks
    sealed.write()
    s.sealed_done(sealed)
    s.commit()
    audit(s)


def test_write_on_a_worker_while_the_owner_keeps_changing():
    s, inner, origin, data = opened()
    a = s.create_snapshot("a")
    s.commit()
    written = []
    for round_ in range(6):
        s.origin_write([(round_ * 10, 10)])
        sealed = s.seal()
        worker = on_thread(sealed.write)
        # the owning thread goes on with the next batch meanwhile
        s.origin_write([(round_ * 10 + 5, 8)])
        s.snapshot_map(a.slot, [(0, 128)])
        worker.join()
        s.sealed_done(sealed)
        written.append(sealed.seq)
    s.commit()
    assert written == sorted(written)
    overwrite_origin(origin, range(0, 63), 1)
    t = reopen(inner, origin)
    for c in range(128):
        assert snapshot_read(t, a.slot, c) == data[c]
    audit(t)


def test_seals_can_be_made_ahead_and_are_done_in_order():
    s, inner, origin, _ = opened()
    s.create_snapshot("a")
    first = s.seal()
    s.create_snapshot("b")
    second = s.seal()
    assert second.pos == (first.pos + first.span) % s.journal.nblocks
    with pytest.raises(SealOrderError):
        s.sealed_done(second)
    first.write()
    s.sealed_done(first)
    second.write()
    s.sealed_done(second)
    assert s.durable_ticket == second.ticket
    assert sorted(e.name for e in reopen(inner, origin).snaps.visible()) == ["a", "b"]


def test_a_failed_write_fails_safely():
    s, inner, origin, data = opened()
    a = s.create_snapshot("a")
    s.commit()
    s.origin_write([(0, 4)])
    sealed = s.seal()
    s.create_snapshot("b")
    ahead = s.seal()
    s.dev.fail_writes = True
    with pytest.raises(OSError):
        sealed.write()
    s.sealed_failed(sealed, OSError(5, "injected"))
    assert s.failed and s.durable_ticket < sealed.ticket
    with pytest.raises(ReadOnlyError):
        ahead.write()  # sealed after the failed one: void
    with pytest.raises(ReadOnlyError):
        s.origin_write([(20, 1)])
    with pytest.raises(ReadOnlyError):
        s.seal()
    # reads still answer from the durable state
    assert s.snapshot_lookup(a.slot, 0) is None
    t = reopen(inner, origin)
    assert [e.name for e in t.snaps.visible()] == ["a"] and t.sb.exceptions == 0
    assert all(snapshot_read(t, a.slot, c) == data[c] for c in range(8))
    audit(t)


def test_a_failed_flush_after_the_journal_write_is_a_failure_too():
    s, inner, origin, _ = opened()
    s.create_snapshot("a")
    sealed = s.seal()
    real = s.dev.flush

    def failing_flush():
        raise OSError(5, "injected flush error")

    s.dev.flush = failing_flush
    with pytest.raises(OSError):
        sealed.write()
    s.dev.flush = real
    s.sealed_failed(sealed, OSError(5, "flush"))
    assert s.failed
    # the transaction may or may not be on the device; either way it is all or nothing
    t = reopen(inner, origin)
    assert [e.name for e in t.snaps.visible()] in ([], ["a"])
    assert t.sb.flags & fmt.FLAG_NEEDS_CHECK  # the next open knows
    assert [p.severity for p in check_store(t).problems] == ["flag"]


def test_checkpoint_while_the_owner_keeps_changing_blocks():
    s, inner, origin, data = opened(journal_blocks=256)
    a = s.create_snapshot("a")
    s.origin_write([(0, 20)])
    s.commit()
    overwrite_origin(origin, range(20), 1)
    leaf = s.exmap.span(0).addr
    ck = s.seal_checkpoint()
    captured = dict(ck.images)
    assert leaf in captured
    with pytest.raises(SealOrderError):
        s.seal_checkpoint()
    # changes go on: the same leaf, the bitmaps, the superblock
    s.origin_write([(20, 20)])
    b = s.create_snapshot("b")
    s.origin_write([(0, 5)])
    sealed = s.seal()
    assert sealed.pos == ck.head  # placed after the checkpoint's head
    worker = on_thread(ck.write)
    s.snapshot_map(a.slot, [(0, 128)])  # reads during the checkpoint are served
    worker.join()
    assert ck.images == captured  # later changes never reached the images
    s.checkpoint_done(ck)
    assert inner.pread(leaf * BS, BS) == image_bytes(captured[leaf])  # committed at capture
    sealed.write()
    s.sealed_done(sealed)
    overwrite_origin(origin, range(20, 40), 1)
    overwrite_origin(origin, range(5), 2)
    t = reopen(inner, origin)
    assert sorted(e.name for e in t.snaps.visible()) == ["a", "b"]
    for c in range(64):
        assert snapshot_read(t, a.slot, c) == data[c]
    for c in range(5):
        assert snapshot_read(t, b.slot, c) == chunk_bytes(c, 1)
    audit(t)


def test_a_checkpoint_written_in_parts_with_commits_between_them():
    """The server's worker writes a long checkpoint a part at a time and commits between
    the parts; a crash at any part boundary loses nothing acknowledged."""
    s, inner, origin, data = opened(journal_blocks=256)
    a = s.create_snapshot("a")
    for c in range(0, 96, 8):  # leaves and bitmap blocks wait for their home write
        s.origin_write([(c, 8)])
        s.commit()
    ck = s.seal_checkpoint()
    assert len(ck.images) >= 4
    images = list(ck.images.items())
    size = -(-len(images) // 4)
    parts, committed = 0, []
    while not ck.write_part(size):
        parts += 1
        c = 96 + parts
        s.origin_write([(c, 1)])
        sealed = s.seal()
        sealed.write()
        s.sealed_done(sealed)
        committed.append(c)
        overwrite_origin(origin, [c], 1)
        # a crash here: some images home, the superblock still names the old tail
        t = reopen(inner, origin)
        for k in [*range(0, 96, 7), *committed]:
            assert snapshot_read(t, a.slot, k) == data[k]
        audit(t)
    assert parts == -(-len(images) // size) - 1 and s.in_flight  # the last part ends it
    s.checkpoint_done(ck)
    for home, image in images:
        assert inner.pread(home * BS, BS) == image_bytes(image)
    t = reopen(inner, origin)
    for k in [*range(128)]:
        assert snapshot_read(t, a.slot, k) == data[k]
    audit(t)


def test_cache_trim_waits_while_every_cached_block_is_dirty():
    """A cache over budget with only dirty blocks stops scanning them at every insert
    (a long clone fill or delete made that quadratic) and evicts again after a commit."""
    s, _, _, _ = opened(journal_blocks=256)
    s.create_snapshot("a")
    s.commit()
    cache = s.cache
    cache.budget = 1  # everything is over budget
    s.origin_write([(0, 64)])
    cache.trim()
    assert cache._stuck and cache.dirty
    held = len(cache)
    cache.trim()
    assert len(cache) == held
    s.commit()
    assert not cache._stuck
    cache.trim()
    assert len(cache) < held


def test_a_seal_waits_for_the_checkpoint_when_the_journal_has_no_room():
    s, _, _, _ = opened(journal_blocks=128)
    s.create_snapshot("a")
    s.commit()
    i = 0
    while not s.wants_checkpoint():
        s.origin_write([(i % 128, 1)])
        s.commit()
        i += 1
    ck = s.seal_checkpoint()
    while s.can_seal():
        s.origin_write([(i % 128, 1)])
        sealed = s.seal()
        sealed.write()
        s.sealed_done(sealed)
        i += 1
        s.origin_write([(i % 128, 1)])
        i += 1
    with pytest.raises(SealOrderError):
        s.seal()
    ck.write()
    s.checkpoint_done(ck)
    assert s.can_seal()
    s.commit()
    audit(s)


def test_an_operation_too_large_for_one_transaction_is_cut_in_memory():
    s, inner, origin, data = opened(store_bytes=8 << 20, origin_chunks=1024)
    a = s.create_snapshot("a")
    s.commit()
    dev = s.dev
    before = dev.writes
    s.origin_write([(0, 1024)])  # many leaves: more blocks than one transaction holds
    assert dev.writes == before
    assert s.needs_seal()
    seals = 0
    while s.has_changes():
        if not s.can_seal():
            s.checkpoint()
        sealed = s.seal()
        sealed.write()
        s.sealed_done(sealed)
        seals += 1
    assert seals > 1
    overwrite_origin(origin, range(1024), 1)
    t = reopen(inner, origin)
    assert all(snapshot_read(t, a.slot, c) == data[c] for c in range(0, 1024, 7))
    audit(t)


def test_dependencies_say_which_answers_may_go_at_once():
    s, _, _, _ = opened()
    a = s.create_snapshot("a")
    assert s.take_dependency() == s.open_ticket  # a change
    s.commit()
    assert s.take_dependency() == 0
    s.origin_write([(0, 2)])
    t1 = s.take_dependency()
    assert t1 == s.open_ticket
    sealed = s.seal()
    # a rewrite of the chunk copied by the sealed (not yet durable) transaction
    assert s.origin_write([(0, 1)]) == 0
    assert s.take_dependency() == sealed.ticket
    assert s.snapshot_lookup(a.slot, 1) is not None
    assert s.take_dependency() == sealed.ticket
    sealed.write()
    s.sealed_done(sealed)
    assert s.origin_write([(0, 1)]) == 0
    assert s.take_dependency() == 0  # durable: answer at once
    assert s.snapshot_map(a.slot, [(0, 4)])
    assert s.take_dependency() == 0
    # a delete not yet durable: an origin write that skips the copy depends on it
    s.delete_snapshot("a")
    s.take_dependency()
    assert s.origin_write([(9, 1)]) == 0
    assert s.take_dependency() == s.open_ticket


def test_store_full_with_work_in_flight_says_a_checkpoint_would_help():
    s, _, _, _ = opened(store_bytes=1 << 20, origin_chunks=300)
    s.create_snapshot("a")
    s.commit()
    with pytest.raises(StoreFullError):
        s.origin_write([(0, 300)])
    s.commit()
    s.delete_snapshot("a")
    while s.delete_step():
        pass
    s.create_snapshot("b")
    sealed = s.seal()  # frees not durable yet, and something in flight
    with pytest.raises(StoreFullError) as info:
        s.origin_write([(0, 100)])
    assert info.value.awaiting_checkpoint > 0
    sealed.write()
    s.sealed_done(sealed)
    # nothing in flight: the store checkpoints by itself and the write fits
    s.origin_write([(0, 100)])
    s.commit()
    audit(s)


def test_changes_all_in_a_cut_transaction_depend_on_it_not_on_the_empty_open_one():
    """The answers of an operation whose changes all went into a transaction cut in memory
    wait for that one; on the previous code they waited for the (empty) open transaction,
    which nothing seals until someone else changes something: csnapd's last replies of a
    burst hung, and its shutdown with them."""
    s, _, _, _ = opened()
    s.create_snapshot("a")
    s.commit()
    s.origin_write([(0, 4)])
    s._cut()  # what a large operation does in memory when it nears the journal's limit
    assert not s.has_changes() or s._ready
    dep = s.take_dependency()
    assert dep == s.open_ticket - 1
    while (sealed := s.seal()) is not None:
        sealed.write()
        s.sealed_done(sealed)
    assert s.durable_ticket >= dep
    assert s.settled_ticket >= s.open_ticket  # nothing unwritten: everything has settled
    s.origin_write([(8, 1)])
    assert s.settled_ticket < s.take_dependency()
