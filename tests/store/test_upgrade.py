"""Stores made before the compact journal (single-CRC, or redundant COMMIT2): replayed
in their own format, upgraded at the first read-write open, and never harmed by a crash
during that upgrade."""

from __future__ import annotations

import dataclasses

import pytest

from csnap_soak.recording import SECTOR, RecordingDevice, replay, torn
from csnapd.store import format as fmt
from csnapd.store import journal as jnl
from csnapd.store.check import check_store
from csnapd.store.device import MemoryDevice
from csnapd.store.errors import CorruptionError
from csnapd.store.store import Store
from csnapd.store.superblock import load, read_slots, write_slot
from tools.csnap_dump import dump_journal

from .conftest import BS, CS, audit, chunk_bytes, fill_origin, make_store, snapshot_read

V2 = fmt.INCOMPAT_JOURNAL_V2
V3 = fmt.INCOMPAT_COMPACT_JOURNAL
#: the older journal formats: the feature bits csnap wrote them with, and their commit kind
OLD = {"single-crc": (0, fmt.BlockKind.COMMIT),
       "redundant": (fmt.INCOMPAT_GRANTS | V2, fmt.BlockKind.COMMIT2)}


def test_new_stores_use_the_compact_journal():
    dev, _ = make_store()
    assert all(f.incompat & V2 and f.incompat & V3 for _, f, _ in read_slots(dev))


def old_store(monkeypatch, old: str = "single-crc"
              ) -> tuple[MemoryDevice, MemoryDevice, dict[int, bytes], list[int]]:
    """A store as an older csnap wrote it, crashed with three transactions pending.

    Returns the devices, the original origin data and the journal blocks of the
    three transactions' commit blocks.
    """
    incompat, kind = OLD[old]
    dev, origin = make_store()
    data = fill_origin(origin)
    f = load(dev)[0]
    for gen in (f.generation + 1, f.generation + 2):  # both slots without the bits
        g = dataclasses.replace(f, incompat=incompat, generation=gen)
        write_slot(dev, g)
    with monkeypatch.context() as m:
        m.setattr(Store, "_upgrade_journal", lambda self: None)  # as the old csnap did
        s = Store.open(dev, origin)
        assert s.journal.version == (1 if old == "single-crc" else 2)
        assert not s.sb.incompat & V3
        commits = []
        for step in ("create a", "owrite", "create b"):
            commits.append(s.journal.start + s.journal.head)
            if step == "owrite":
                s.origin_write([(0, 8)])
            else:
                s.create_snapshot(step.split()[1])
            s.commit()
            if step == "owrite":
                for c in range(8):
                    origin.pwrite(c * CS, chunk_bytes(c, 1))
    for block in commits:
        assert fmt.peek_header(dev.pread(block * BS, BS)).kind == kind
    return dev, origin, data, commits


def assert_old_content(s: Store, data: dict[int, bytes]) -> None:
    assert sorted(e.name for e in s.snaps.visible()) == ["a", "b"]
    a, b = s.snaps.find("a").slot, s.snaps.find("b").slot
    for c in range(8):
        assert snapshot_read(s, a, c) == data[c]
        assert snapshot_read(s, b, c) == chunk_bytes(c, 1)


@pytest.mark.parametrize("old", sorted(OLD))
def test_read_only_open_replays_the_old_journal_and_changes_nothing(monkeypatch, old):
    dev, origin, data, _ = old_store(monkeypatch, old)
    before = bytes(dev.data)
    s = Store.open(dev, origin, readonly=True)
    assert s.recovery.transactions == 3 and not s.recovery.upgraded
    assert not s.sb.incompat & V3 and s.journal.version == (1 if old == "single-crc" else 2)
    assert_old_content(s, data)
    report = check_store(s)
    assert report.clean and report.journal == []
    shown = dump_journal(s)  # what csnap-dump journal prints
    assert shown["format"] == old
    overhead = 1 if old == "single-crc" else 3
    assert [t["blocks"] - len(t.get("homes") or t["images"])
            for t in shown["pending_transactions"]] == [overhead] * 3
    s.close()
    assert bytes(dev.data) == before


@pytest.mark.parametrize("old", sorted(OLD))
def test_read_write_open_replays_then_upgrades_both_slots(monkeypatch, old):
    dev, origin, data, _ = old_store(monkeypatch, old)
    s = Store.open(dev, origin)
    assert s.recovery.transactions == 3 and s.recovery.upgraded
    assert s.journal.version == 3 and s.journal.max_images == jnl.max_images(128, BS)
    assert all(f.incompat & V2 and f.incompat & V3 for _, f, _ in read_slots(dev))
    assert_old_content(s, data)
    at = s.journal.start + s.journal.head
    s.create_snapshot("c")
    s.commit()
    assert fmt.peek_header(dev.pread(at * BS, BS)).kind == fmt.BlockKind.COMMIT3
    again = Store.open(dev, origin)  # crash: no close
    assert again.recovery.transactions == 1 and not again.recovery.upgraded
    assert sorted(e.name for e in again.snaps.visible()) == ["a", "b", "c"]
    audit(again)


def test_old_journal_keeps_the_old_rules(monkeypatch):
    """Damage before a valid single-CRC transaction still refuses the open."""
    dev, origin, _, commits = old_store(monkeypatch)
    raw = bytearray(dev.pread(commits[1] * BS, BS))
    raw[100] ^= 4
    dev.pwrite(commits[1] * BS, bytes(raw))
    with pytest.raises(CorruptionError, match="journal damaged") as info:
        Store.open(dev, origin, readonly=True)
    assert info.value.block == commits[1]


@pytest.mark.parametrize("old", sorted(OLD))
def test_a_crash_anywhere_in_the_upgrade_loses_nothing(monkeypatch, old):
    """Every prefix of the upgrading open's writes, and each write torn, recovers fully."""
    dev, origin, data, _ = old_store(monkeypatch, old)
    base = bytes(dev.data)
    rec = RecordingDevice(dev)
    Store.open(rec, origin)
    writes = rec.writes()
    supers = [w for w in writes if w[0] in (0, BS)]
    assert len(supers) == 3  # the replay checkpoint, then one per slot with the bit
    states = 0
    for k in range(len(writes) + 1):
        variants = [writes[:k]]
        if k < len(writes):
            off, new = writes[k]
            old = replay(base, writes[:k])[off:off + len(new)]
            unit = SECTOR if len(new) > SECTOR else 64
            variants.append([*writes[:k], (off, torn(old, new, max(1, len(new) // unit // 2),
                                                     True, unit=unit))])
        for ws in variants:
            img = MemoryDevice(len(base))
            img.data[:] = replay(base, ws)
            s = Store.open(img, origin)
            assert_old_content(s, data)
            assert s.journal.version == 3
            assert all(f.incompat & V2 and f.incompat & V3 for _, f, _ in read_slots(img))
            audit(s)
            states += 1
    assert states > 2 * len(writes)
