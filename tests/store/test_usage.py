"""Per-snapshot space counts (store/usage.py): kept exact through every change, counted
after an open a few leaves at a time while changes go on, and verified by the checker."""

from __future__ import annotations

import random

from csnapd.store import format as fmt
from csnapd.store.check import check_store, repair
from csnapd.store.superblock import load
from csnapd.store.walk import snapshot_usage

from .conftest import make_store, open_store


def _walked(s) -> dict:  # noqa: ANN001
    return {k: v for k, v in snapshot_usage(s).items() if v["unique"] or v["shared"]}


def _random_op(s, rng: random.Random, names: list[str], serial: list[int]) -> None:  # noqa: ANN001
    n = s.origin_chunks
    kind = rng.choice(["owrite"] * 4 + ["swrite"] * 4 + ["create", "delete", "step"])
    if kind == "create" and len(names) < 5:
        serial[0] += 1
        names.append(f"s{serial[0]}")
        s.create_snapshot(names[-1])
    elif kind == "delete" and names:
        s.delete_snapshot(names.pop(rng.randrange(len(names))))
    elif kind == "swrite" and names:
        start = rng.randrange(n)
        s.snapshot_write(s.snaps.find(rng.choice(names)).slot,
                         [(start, min(n - start, rng.randint(1, 12)))])
    elif kind == "step":
        s.delete_step(max_leaves=rng.randint(1, 4))
    else:
        start = rng.randrange(n)
        s.origin_write([(start, min(n - start, rng.randint(1, 24)))])
    s.commit()


def test_counts_follow_every_change_exactly():
    dev, origin = make_store(origin_chunks=256, store_bytes=8 << 20)
    s = open_store(dev, origin)
    assert not s.count_step(1)  # empty map: counted at once
    rng, names, serial = random.Random(7), [], [0]
    for _ in range(300):
        _random_op(s, rng, names, serial)
        assert s.exmap.counts.as_usage() == _walked(s)
    assert any(u["unique"] for u in _walked(s).values())
    assert any(u["shared"] for u in _walked(s).values())
    assert check_store(s).clean


def test_counting_after_an_open_goes_on_while_the_map_changes():
    """Changes below the scan cursor are applied, above it left to the scan; leaves that
    split or merge between slices are counted once."""
    dev, origin = make_store(origin_chunks=512, store_bytes=16 << 20)
    s = open_store(dev, origin)
    rng, names, serial = random.Random(3), [], [0]
    for _ in range(200):
        _random_op(s, rng, names, serial)
    s.close()
    slices = 0
    for seed in range(4):
        s = open_store(dev, origin)
        usage, counted = s.space_usage()
        assert counted == 0.0 and not s.exmap.counts.complete
        rng = random.Random(seed)
        names = [e.name for e in s.snaps.visible()]
        while s.count_step(1):
            slices += 1
            _random_op(s, rng, names, serial)
            if names and rng.random() < 0.1:  # a whole delete pass: leaves merge
                s.delete_snapshot(names.pop(rng.randrange(len(names))))
                while s.delete_step(max_leaves=8):
                    pass
                s.commit()
        assert s.space_usage() == (_walked(s), 1.0)
        s.commit()  # and stop without a clean close: the next open counts again
    assert slices > 20


def test_check_finds_counts_that_drifted_and_repair_recounts():
    dev, origin = make_store()
    s = open_store(dev, origin)
    s.count_step(1)
    a = s.create_snapshot("a")
    s.origin_write([(0, 10)])
    s.commit()
    s.exmap.counts.unique[a.slot] += 3  # a bug that lost track
    report = check_store(s)
    assert [p.message for p in report.problems] == [
        f"space counts of snapshot slot {a.slot}: 13 exclusive and 0 shared kept, 10 and 0 "
        "in the tree"]
    assert report.repairable
    assert "counted the per-snapshot space again" in repair(s, report)
    assert check_store(s).clean and s.space_usage() == ({a.slot: {"unique": 10, "shared": 0}},
                                                       1.0)


def test_a_clean_close_keeps_the_counts_for_the_next_open():
    dev, origin = make_store(origin_chunks=256, store_bytes=8 << 20)
    s = open_store(dev, origin)
    s.count_step(1)
    rng, names, serial = random.Random(11), [], [0]
    for _ in range(120):
        _random_op(s, rng, names, serial)
    want = _walked(s)
    s.close()
    assert load(dev)[0].autoclear & fmt.AUTOCLEAR_SPACE_COUNTS
    ro = open_store(dev, origin, readonly=True)
    assert ro.space_usage() == (want, 1.0)  # taken from the table, no scan
    assert check_store(ro).clean  # ... and the checker compares them with its walk
    s = open_store(dev, origin)
    assert s.space_usage() == (want, 1.0)
    # from this open on, the table's counts are stale: the bit is gone from the disk
    assert not load(dev)[0].autoclear & fmt.AUTOCLEAR_SPACE_COUNTS
    _random_op(s, rng, names, serial)
    s.commit()  # a crash now: the next open counts the tree again
    s = open_store(dev, origin)
    assert s.space_usage()[1] == 0.0
    while s.count_step(8):
        pass
    assert s.space_usage() == (_walked(s), 1.0)
    s.close()


def test_check_finds_table_counts_that_do_not_match_the_tree():
    dev, origin = make_store()
    s = open_store(dev, origin)
    s.count_step(1)
    a = s.create_snapshot("a")
    s.origin_write([(0, 10)])
    s.commit()
    s.close()
    s = open_store(dev, origin, readonly=True)
    s.snaps.entries[a.slot].exclusive = 0  # as if the close had written the wrong number
    s.exmap.counts = type(s.exmap.counts)()
    s.snaps.load_counts(s.exmap.counts)
    assert any("10 and 0 in the tree" in p.message for p in check_store(s).problems)
