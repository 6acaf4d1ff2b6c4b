"""HA fencing at the store: a takeover's epoch on disk, and an old leader's late writes.

Two Store objects on one device play the old and the new leader: the old one keeps
its in-memory state after the new one took over, as a SIGSTOPped leader does.
"""

from __future__ import annotations

import pytest

from csnapd.store.errors import FencedError, NoSuchSnapshot
from csnapd.store.store import TAKEOVER_SEQ_JUMP

from .conftest import audit, fill_origin, make_store, open_store, run_check_py, snapshot_read


def _disk_fence(store, epoch: int):  # noqa: ANN001, ANN202
    """What csnapd's HA fence does on disk: refuse once a newer epoch is there."""
    def fence() -> None:
        if store.disk_epoch() > epoch:
            raise FencedError(f"a newer leader (epoch {store.disk_epoch()}) took over")
    return fence


def test_take_over_writes_the_epoch_in_both_slots_and_moves_the_journal():
    dev, origin = make_store()
    s = open_store(dev, origin)
    s.commit()
    s.checkpoint()
    seq, head = s.journal.seq, s.journal.head
    s.take_over(7)
    assert s.sb.ha_epoch == 7 and s.disk_epoch() == 7
    assert s.journal.seq == seq + TAKEOVER_SEQ_JUMP
    assert s.journal.head == (head + s.journal.nblocks // 2) % s.journal.nblocks
    s.create_snapshot("a")
    s.origin_write([(0, 4)])
    s.commit()
    s.abandon()  # a crash: nothing written at close
    again = open_store(dev, origin)
    assert again.sb.ha_epoch == 7 and again.journal.epoch == 7
    assert again.recovery.transactions >= 1
    assert again.snaps.find("a") is not None
    run_check_py(again)


def test_take_over_refuses_an_epoch_that_is_not_newer():
    dev, origin = make_store()
    s = open_store(dev, origin)
    s.take_over(5)
    s.abandon()
    s = open_store(dev, origin)
    with pytest.raises(FencedError, match="not newer"):
        s.take_over(5)
    with pytest.raises(FencedError):
        s.take_over(3)
    s.take_over(9)
    assert s.disk_epoch() == 9


def test_an_old_leaders_late_commit_is_ignored_and_harms_nothing():
    """Old leader A (epoch 3) stalls; B takes over (epoch 8) and commits; A resumes and
    commits without any fence (the worst case: its check passed just before the stall).
    Recovery keeps B's work and drops A's late transaction."""
    dev, origin = make_store()
    data = fill_origin(origin)
    a = open_store(dev, origin)
    a.take_over(3)
    a.create_snapshot("before")
    a.commit()
    b = open_store(dev, origin)  # the standby: replays A's durable work
    b.take_over(8)
    b.create_snapshot("by-b")
    b.origin_write([(0, 2)])
    b.commit()
    origin.pwrite(0, b"x" * 8192)  # B's client wrote chunks 0-1 after their copy-out
    # A, stalled until now, commits a change of its own under epoch 3.
    a.create_snapshot("by-a-late")
    a.origin_write([(10, 2)])
    a.commit()
    a.abandon()
    b.abandon()  # B crashes too: only the journal and the homes tell
    c = open_store(dev, origin)
    c.snaps.find("by-b")
    slot = c.snaps.find("before").slot
    with pytest.raises(NoSuchSnapshot):
        c.snaps.find("by-a-late")
    assert snapshot_read(c, slot, 0) == data[0]  # B's copy-out kept the old data
    assert c.sb.ha_epoch == 8
    run_check_py(c)
    audit(c)


def test_replay_stops_at_a_transaction_of_an_older_epoch():
    """A transaction under an epoch below the superblock's, exactly where the journal
    continues (what a late write would be without the takeover's journal jump), is
    dropped with a note, and so is everything after it."""
    dev, origin = make_store()
    fill_origin(origin)
    s = open_store(dev, origin)
    s.take_over(8)
    s.create_snapshot("kept")
    s.commit()
    s.journal.epoch = 3  # as an old leader's writer would stamp it
    s.create_snapshot("late")
    s.commit()
    s.abandon()
    c = open_store(dev, origin)
    c.snaps.find("kept")
    with pytest.raises(NoSuchSnapshot):
        c.snaps.find("late")
    assert c.recovery.journal_fenced == 1
    assert any("epoch 3" in n and "fenced" in n for n in c.recovery.journal_notes)
    run_check_py(c)


def test_a_fenced_store_writes_nothing_at_all():
    """With the fence on, the old leader's commit raises FencedError before any byte
    reaches the device, and the store refuses changes after it (without even the
    needs-check flag that an I/O error writes)."""
    dev, origin = make_store()
    fill_origin(origin)
    a = open_store(dev, origin)
    a.take_over(3)
    a.fence = _disk_fence(a, 3)
    a.create_snapshot("s")
    a.commit()
    b = open_store(dev, origin)
    b.take_over(4)
    b.commit()
    before = bytes(dev.data)
    a.origin_write([(0, 4)])  # a copy-out: data and journal writes refused
    with pytest.raises(FencedError):
        a.commit()
    assert bytes(dev.data) == before
    assert a.failed
    with pytest.raises(Exception):  # noqa: B017 - refuses changes now
        a.create_snapshot("t")
        a.commit()
    assert bytes(dev.data) == before
    a.abandon()
    b.abandon()
    c = open_store(dev, origin)
    assert c.sb.ha_epoch == 4 and not c.sb.flags & 0b110
    run_check_py(c)
