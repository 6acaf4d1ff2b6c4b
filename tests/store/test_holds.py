"""Holds, renames and priority changes in the snapshot table: persistent, journaled,
and a held snapshot is neither deleted nor squashed."""

from __future__ import annotations

import pytest

from csnapd.store import format as fmt
from csnapd.store.check import check_store
from csnapd.store.device import VolatileDevice
from csnapd.store.errors import LimitError, NoSuchSnapshot, SnapshotExists, SnapshotHeld
from csnapd.store.superblock import load

from .conftest import make_store, open_store


def _reopen_after_crash(dev: VolatileDevice, origin):  # noqa: ANN001
    """Lose everything not flushed, then recover."""
    dev.crash()
    return open_store(dev, origin)


def test_hold_refuses_delete_until_released_and_survives_a_crash():
    dev, origin = make_store(volatile=True)
    s = open_store(dev, origin)
    s.create_snapshot("keep")
    s.hold_snapshot("keep")
    s.hold_snapshot("keep")
    s.commit()
    s = _reopen_after_crash(dev, origin)
    entry = s.snaps.find("keep")
    assert entry.use_count == 2
    with pytest.raises(SnapshotHeld, match=r"held \(2 holds; 'csnapctl release keep'"):
        s.delete_snapshot("keep")
    assert s.snaps.find("keep").state == fmt.SNAP_LIVE
    with pytest.raises(SnapshotHeld):
        s.squash_snapshot(entry)
    s.release_snapshot("keep")
    s.release_snapshot("keep")
    with pytest.raises(LimitError, match="is not held"):
        s.release_snapshot("keep")
    s.delete_snapshot("keep")
    s.commit()
    assert check_store(s).clean


def test_uncommitted_hold_is_lost_in_a_crash():
    dev, origin = make_store(volatile=True)
    s = open_store(dev, origin)
    s.create_snapshot("a")
    s.commit()
    s.hold_snapshot("a")
    s = _reopen_after_crash(dev, origin)
    assert s.snaps.find("a").use_count == 0


def test_rename_and_priority_are_one_transaction_and_persist():
    dev, origin = make_store(volatile=True)
    s = open_store(dev, origin)
    a = s.create_snapshot("a", priority=3)
    s.create_snapshot("b")
    s.commit()
    with pytest.raises(SnapshotExists):
        s.set_snapshot("a", name="b", priority=9)
    assert (a.name, a.priority) == ("a", 3)  # nothing changed: checked first
    with pytest.raises(LimitError, match="priority"):
        s.set_snapshot("a", name="c", priority=200)
    assert a.name == "a"
    with pytest.raises(LimitError, match="digits"):
        s.set_snapshot("a", name="123")
    s.set_snapshot(a.tag, name="c", priority=-5)
    s.commit()
    s = _reopen_after_crash(dev, origin)
    with pytest.raises(NoSuchSnapshot):
        s.snaps.find("a")
    c = s.snaps.find("c")
    assert (c.tag, c.slot, c.priority) == (a.tag, a.slot, -5)
    s.create_snapshot("a")  # the old name is free again
    assert check_store(s).clean


def test_a_squashed_snapshot_cannot_be_held():
    dev, origin = make_store()
    s = open_store(dev, origin)
    e = s.create_snapshot("x")
    s.squash_snapshot(e)
    with pytest.raises(LimitError, match="squashed"):
        s.hold_snapshot("x")


def test_opening_read_write_declares_the_holds_feature():
    dev, origin = make_store()
    s = open_store(dev, origin)
    assert s.sb.incompat & fmt.INCOMPAT_HOLDS
    s.close()
    assert load(dev)[0].incompat & fmt.INCOMPAT_HOLDS


def test_check_reports_a_hold_on_a_snapshot_being_deleted():
    dev, origin = make_store()
    s = open_store(dev, origin)
    e = s.create_snapshot("x")
    s.hold_snapshot("x")
    e.state = fmt.SNAP_DELETING  # what a csnap ignoring holds could leave behind
    report = check_store(s)
    assert any("has 1 hold(s) but is being deleted" in p.message for p in report.problems)
