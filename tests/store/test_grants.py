"""The client grant table and snapshots in CREATING: persisted, bounded, checked."""

from __future__ import annotations

import random

import pytest

from csnapd.store import format as fmt
from csnapd.store.check import check_store
from csnapd.store.errors import CorruptionError
from csnapd.store.grants import Runs

from .conftest import CS, fill_origin, make_store, open_store, read_chunk, snapshot_read


def _clean(s) -> None:  # noqa: ANN001
    report = check_store(s)
    assert report.clean, [p.message for p in report.problems]


def test_runs_cover_what_was_added_and_stay_within_the_cap():
    rng = random.Random(7)
    for cap in (1, 3, 30, 10_000):
        runs, model = Runs(cap), set()
        for _ in range(300):
            start, count = rng.randrange(5000), rng.randrange(1, 40)
            runs.add(start, count)
            model |= set(range(start, start + count))
            assert len(runs) <= cap
        covered = {c for s, n in runs.items() for c in range(s, s + n)}
        assert model <= covered
        if cap == 10_000:
            assert covered == model
        pairs = runs.items()
        assert all(a + n < b for (a, n), (b, _) in zip(pairs, pairs[1:], strict=False))


def test_grants_survive_a_clean_reopen_and_a_crash():
    dev, origin = make_store(volatile=True)
    s = open_store(dev, origin)
    slot = s.create_snapshot("s").slot
    s.grants.add_origin(7, [(3, 4), (40, 1)])
    s.grants.add_writer(9, slot)
    s.commit()
    s.grants.add_origin(8, [(1, 1)])  # not committed: a crash loses it
    dev.crash()
    s2 = open_store(dev, origin)
    covered = {c for a, n in s2.grants.exposure(7) for c in range(a, a + n)}
    assert {3, 4, 5, 6, 40} <= covered  # persisted in aligned steps: never smaller
    assert s2.grants.exposure(8) == []
    assert s2.grants.writers() == {slot: {9}}
    _clean(s2)
    s2.grants.clear_client(7)
    s2.close()
    s3 = open_store(dev, origin)
    assert s3.grants.exposed_clients() == [] and s3.grants.writers() == {slot: {9}}
    _clean(s3)
    s3.close()


def test_many_clients_grow_the_chain_and_the_checker_accounts_for_it():
    dev, origin = make_store(origin_chunks=4096)
    s = open_store(dev, origin)
    per = s.grants.per_block
    clients = range(1, 3 * per + 2)
    for c in clients:
        s.grants.add_origin(c, [(c, 1), (c + 100, 2)])
    s.commit()
    assert len(s.grants.addrs) == 4
    _clean(s)
    s.close()
    s = open_store(dev, origin)
    assert s.grants.exposed_clients() == list(clients)
    for c in clients:
        s.grants.clear_client(c)
    s.grants.add_origin(999, [(0, 1)])  # reuses a freed record slot
    s.commit()
    assert len(s.grants.addrs) == 4
    _clean(s)
    s.close()


def test_persisted_exposure_is_coarsened_but_never_smaller():
    dev, origin = make_store(origin_chunks=4096)
    s = open_store(dev, origin)
    chunks = list(range(0, 4000, 7))
    for c in chunks:
        s.grants.add_origin(5, [(c, 1)])
    assert len(s.grants.exposure(5)) == len(chunks)  # exact in memory
    s.commit()
    s.close()
    s = open_store(dev, origin)
    runs = s.grants.exposure(5)
    assert len(runs) <= fmt.grant_runs(s.block_size)
    covered = {c for a, n in runs for c in range(a, a + n)}
    assert set(chunks) <= covered
    _clean(s)
    s.close()


def test_a_damaged_grant_block_is_refused_with_its_address():
    dev, origin = make_store()
    s = open_store(dev, origin)
    s.grants.add_origin(1, [(0, 2)])
    s.close()
    s = open_store(dev, origin)
    addr = s.grants.addrs[0]
    s.close()
    raw = bytearray(dev.pread(addr * 512, 512))
    raw[60] ^= 0x04
    dev.pwrite(addr * 512, bytes(raw))
    with pytest.raises(CorruptionError, match=f"GRANTS block {addr}"):
        open_store(dev, origin)


def test_writer_grant_holds_a_deleted_snapshot_until_released():
    dev, origin = make_store()
    fill_origin(origin)
    s = open_store(dev, origin)
    snap = s.create_snapshot("w")
    (chunk, store_chunk), = s.snapshot_write(snap.slot, [(5, 1)])
    s.grants.add_writer(77, snap.slot)
    s.commit()
    free_before = s.sb.free_chunks
    s.delete_snapshot("w")
    s.commit()
    assert not s.deleting and s.held_deleting == 1 << snap.slot
    assert s.delete_step(64) is False
    assert s.alloc.is_allocated(store_chunk) and s.sb.free_chunks == free_before
    _clean(s)
    s.grants.clear_writer(77, snap.slot)
    assert s.deleting
    while s.delete_step(64):
        pass
    s.commit()
    assert s.sb.exceptions == 0 and s.snaps.entries[snap.slot].state == fmt.SNAP_FREE
    _clean(s)
    s.close()


def test_creating_snapshot_copies_first_and_a_crash_deletes_it():
    dev, origin = make_store(volatile=True)
    data = fill_origin(origin)
    s = open_store(dev, origin)
    entry = s.create_snapshot("half", creating=True)
    assert s.snaps.visible() == [] and s.snaps.live_mask == 0
    s.origin_write([(2, 3)], extra=1 << entry.slot)
    s.commit()
    dev.crash()
    s = open_store(dev, origin)
    assert any("still being created" in n for n in s.recovery.info)
    assert s.snaps.visible() == [] and s.deleting
    while s.delete_step(64):
        pass
    s.commit()
    assert s.sb.exceptions == 0
    _clean(s)
    # the same, finished: the copies are the snapshot's own
    entry = s.create_snapshot("whole", creating=True)
    s.origin_write([(2, 3)], extra=1 << entry.slot)
    s.make_live(entry)
    s.commit()
    s.close()
    s = open_store(dev, origin)
    slot = s.snaps.find("whole").slot
    origin.pwrite(3 * CS, b"L" * CS)  # a late write lands on the origin only
    assert snapshot_read(s, slot, 3) == data[3]
    assert read_chunk(origin, 3) == b"L" * CS
    _clean(s)
    s.close()
