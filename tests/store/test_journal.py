"""Journal commit and recovery, torn tails, damage in the middle; superblock slots."""

from __future__ import annotations

import pytest

from csnapd.store import format as fmt
from csnapd.store import superblock as sbk
from csnapd.store.errors import CorruptionError, FormatError
from csnapd.store.store import Store

from .conftest import BS, CS, audit, chunk_bytes, fill_origin, make_store, snapshot_read


def names(s: Store) -> list[str]:
    return sorted(e.name for e in s.snaps.visible())


def txn_blocks(s: Store, head_before: int) -> list[int]:
    """Absolute block numbers of the transaction written since ``head_before``."""
    j = s.journal
    n = (j.head - head_before) % j.nblocks
    return [j.start + (head_before + i) % j.nblocks for i in range(n)]


def committed(s: Store, fn) -> list[int]:  # noqa: ANN001
    """Run ``fn`` and commit; return the journal blocks of that transaction."""
    before, cps = s.journal.head, s.stats["checkpoints"]
    fn()
    s.commit()
    assert s.stats["checkpoints"] == cps, "test needs the transaction after the last checkpoint"
    return txn_blocks(s, before)


@pytest.fixture
def journaled():
    """A store with three committed, un-checkpointed transactions.

    The store "crashes" (is simply dropped without close) after them; the
    MemoryDevice keeps every write, so what is on it is exactly what a power
    cut after the last commit leaves.
    """
    dev, origin = make_store()
    data = fill_origin(origin)
    s = Store.open(dev, origin)
    t1 = committed(s, lambda: s.create_snapshot("one"))
    t2 = committed(s, lambda: s.origin_write([(0, 8)]))
    for c in range(8):
        origin.pwrite(c * CS, chunk_bytes(c, 1))
    t3 = committed(s, lambda: s.create_snapshot("three"))
    return dev, origin, data, (t1, t2, t3)


def test_commit_then_recovery_replays_everything(journaled):
    dev, origin, data, _ = journaled
    s = Store.open(dev, origin)
    assert s.recovery.unclean
    assert s.recovery.transactions == 3
    assert names(s) == ["one", "three"]
    one = s.snaps.find("one")
    for c in range(16):
        assert snapshot_read(s, one.slot, c) == data[c]
    assert s.sb.exceptions == 8
    audit(s)
    # recovery is idempotent: crash again right after recovering, replay again
    s2 = Store.open(dev, origin)
    assert names(s2) == ["one", "three"] and s2.recovery.transactions == 0
    audit(s2)


#: A torn write of the newest transaction (create_snapshot "three": leading
#: record with the superblock record inline, snapshot table image, parity,
#: trailing record): which of its blocks did not land or landed torn.
TORN = {
    "both commit records garbled": (0, 3),
    "the image and the parity garbled": (1, 2),
    "only the leading record landed": (1, 2, 3),
    "nothing landed": (0, 1, 2, 3),
}


@pytest.mark.parametrize("damage", sorted(TORN))
def test_torn_tail_is_dropped_and_reported(journaled, damage):
    dev, origin, data, (_, _, t3) = journaled
    assert len(t3) == 4
    for i in TORN[damage]:
        if "landed" in damage:
            dev.pwrite(t3[i] * BS, bytes(BS))
        else:
            dev.pwrite(t3[i] * BS + 40, b"\xa5" * 64)
    s = Store.open(dev, origin)
    assert s.recovery.transactions == 2
    assert names(s) == ["one"]  # the torn third transaction is gone, the rest is there
    one = s.snaps.find("one")
    for c in range(8):
        assert snapshot_read(s, one.slot, c) == data[c]
    if damage == "nothing landed":  # indistinguishable from the end of the journal
        assert s.recovery.journal_notes == []
    else:
        pos = t3[0] - s.sb.journal_start
        assert s.recovery.journal_notes == [
            f"torn transaction 3 at journal block {pos} dropped: never acknowledged"]
    audit(s)
    # the store goes on working and the new tail is written over the torn one
    s.create_snapshot("again")
    s.commit()
    s.close()
    assert names(Store.open(dev, origin)) == ["again", "one"]


@pytest.mark.parametrize("which", ["commit", "image"])
def test_one_bad_block_in_the_middle_is_mended(journaled, which):
    dev, origin, data, (_, t2, _) = journaled
    block = t2[0] if which == "commit" else t2[1]
    raw = bytearray(dev.pread(block * BS, BS))
    raw[100] ^= 0x10
    dev.pwrite(block * BS, bytes(raw))
    s = Store.open(dev, origin)
    assert s.recovery.transactions == 3 and s.recovery.journal_corrected == 1
    assert names(s) == ["one", "three"]
    audit(s)


@pytest.mark.parametrize("which", ["commit records", "images"])
def test_two_bad_blocks_in_the_middle_are_corruption(journaled, which):
    dev, origin, _, (_, t2, _) = journaled
    for block in ((t2[0], t2[-1]) if which == "commit records" else (t2[1], t2[2])):
        raw = bytearray(dev.pread(block * BS, BS))
        raw[100] ^= 0x10
        dev.pwrite(block * BS, bytes(raw))
    with pytest.raises(CorruptionError, match="journal damaged") as info:
        Store.open(dev, origin)
    assert info.value.block == t2[0]


def test_replay_across_journal_wrap():
    """Many small transactions: checkpoints reclaim the journal and it wraps."""
    dev, origin = make_store(journal_blocks=128)
    fill_origin(origin)
    s = Store.open(dev, origin)
    for i in range(150):
        s.create_snapshot(f"s{i % 40}")
        s.commit()
        s.delete_snapshot(f"s{i % 40}")
        s.commit()
        while s.delete_step():
            pass
        s.commit()
    s.create_snapshot("keep")
    s.commit()
    assert s.stats["checkpoints"] > 3
    assert s.journal.seq > s.journal.nblocks  # the sequence went round more than once
    s2 = Store.open(dev, origin)  # crash: no close
    assert names(s2) == ["keep"]
    audit(s2)


def test_superblock_torn_write_falls_back_to_older_slot():
    dev, origin = make_store()
    data = fill_origin(origin)
    s = Store.open(dev, origin)
    e = s.create_snapshot("a")
    s.commit()
    s.origin_write([(0, 4)])
    s.close()
    slots = sbk.read_slots(dev)
    newest_gen, newest = max((f.generation, slot) for slot, f, _ in slots)
    assert newest == newest_gen % 2
    raw = bytearray(dev.pread(newest * BS, BS))
    raw[60:90] = b"\xff" * 30  # torn: half old, half garbage
    dev.pwrite(newest * BS, bytes(raw))
    s = Store.open(dev, origin)
    assert any(f"slot {newest}" in note for note in s.recovery.notes)
    assert names(s) == ["a"]
    for c in range(8):
        assert snapshot_read(s, e.slot, c) == data[c]
    assert s.sb.exceptions == 4
    s.tree.check_invariants()
    s.close()
    # the open rewrote the damaged slot: both are valid again
    assert all(f is not None for _, f, _ in sbk.read_slots(dev))


def test_both_superblocks_gone_is_not_a_store():
    dev, origin = make_store()
    dev.pwrite(0, bytes(2 * BS))
    with pytest.raises(FormatError):
        Store.open(dev, origin)


def test_recovery_checkpoint_never_overwrites_newest_superblock():
    """Regression: a commit whose transaction triggers a checkpoint used to seal
    the journaled superblock *before* that checkpoint, carrying the old
    generation.  Replaying it after a crash stepped the generation back, so the
    recovery checkpoint overwrote the newest valid slot; a torn write there
    left only a slot whose journal tail had been overwritten: unopenable."""
    dev, origin = make_store(volatile=True, journal_blocks=128)
    fill_origin(origin)
    s = Store.open(dev, origin)
    i = 0
    while True:  # stop right after a commit that had to checkpoint first
        cps = s.stats["checkpoints"]
        s.create_snapshot(f"x{i}")
        s.commit()
        i += 1
        if s.stats["checkpoints"] != cps:
            break
    dev.crash()  # nothing is lost: everything was committed
    before = {slot: (f.generation, dev.inner.pread(slot * BS, BS))
              for slot, f, _ in sbk.read_slots(dev.inner)}
    newest_slot = max(before, key=lambda slot: before[slot][0])
    s = Store.open(dev.inner, origin)
    assert s.sb.generation > before[newest_slot][0]
    assert dev.inner.pread(newest_slot * BS, BS) == before[newest_slot][1]
    # simulate the recovery checkpoint's superblock write being torn
    written = 1 - newest_slot
    raw = bytearray(dev.inner.pread(written * BS, BS))
    raw[100:140] = b"\xee" * 40
    dev.inner.pwrite(written * BS, bytes(raw))
    s = Store.open(dev.inner, origin)
    assert len(s.snaps.visible()) == i
    audit_notes = [n for n in s.recovery.notes if "slot" in n]
    assert audit_notes
    s.tree.check_invariants()


def test_journal_images_go_home_only_at_checkpoint():
    """Write-ahead: a commit writes the journal, never a block's home."""
    dev, origin = make_store()
    fill_origin(origin)
    s = Store.open(dev, origin)
    s.create_snapshot("a")
    s.commit()
    table = s.sb.snaptab_start
    home = dev.pread(table * BS, BS)
    s.create_snapshot("b")
    s.commit()
    assert dev.pread(table * BS, BS) == home
    assert table in s.cache.pending_home
    s._checkpoint()
    assert dev.pread(table * BS, BS) != home
    assert fmt.verify(dev.pread(table * BS, BS), fmt.BlockKind.SNAPTAB, table, s.sb.store_id) == 0
