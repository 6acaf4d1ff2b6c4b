"""Changed chunks from the sharemaps (csnapd/store/diff.py) against the data itself."""

from __future__ import annotations

import random

from csnapd.store import diff as sd

from .conftest import (
    CS,
    chunk_bytes,
    fill_origin,
    make_store,
    open_store,
    read_chunk,
    snapshot_read,
)

CHUNKS = 300


def _image(s, slot):
    """Every chunk of a volume (slot None: the origin) as the clients would read it."""
    if slot is None:
        return [read_chunk(s.origin, c) for c in range(CHUNKS)]
    return [snapshot_read(s, slot, c) for c in range(CHUNKS)]


def _scan_all(s, vol, base, max_chunks, max_entries, start=0, end=CHUNKS):
    """Page through a scan like a client does; return the chunk set and the page count."""
    got: list[int] = []
    pos, pages = start, 0
    while pos is not None:
        scan = sd.changed_chunks(s, vol, base, pos, end, max_chunks, max_entries)
        assert scan.chunks <= max_chunks and scan.entries <= max_entries
        for a, n in scan.ranges:
            assert a >= pos and (not got or a > got[-1])
            got.extend(range(a, a + n))
        assert scan.next is None or scan.next > pos or scan.ranges
        pos, pages = scan.next, pages + 1
    return got, pages


def test_random_workload_every_pair_exact():
    rng = random.Random(13)
    dev, origin = make_store(16 << 20, origin_chunks=CHUNKS)
    fill_origin(origin)
    s = open_store(dev, origin)
    slots = []
    version = 1
    for round_ in range(5):
        slots.append(s.create_snapshot(f"s{round_}").slot)
        s.commit()
        for _ in range(40):  # origin writes: copy-out, then new data
            a = rng.randrange(CHUNKS)
            n = rng.randint(1, 6)
            n = min(n, CHUNKS - a)
            s.origin_write([[a, n]])
            s.commit()
            for c in range(a, a + n):
                origin.pwrite(c * CS, chunk_bytes(c, version))
            version += 1
        for _ in range(8):  # snapshot writes into older snapshots
            slot = rng.choice(slots)
            c = rng.randrange(CHUNKS)
            (_, sc), = s.snapshot_write(slot, [[c, 1]])
            s.commit()
            dev.pwrite(sc * CS, chunk_bytes(c, version))
            version += 1
    images = {v: _image(s, v) for v in [None, *slots]}
    for vol in images:
        for base in images:
            got, _ = _scan_all(s, vol, base, 1 << 16, 1 << 20)
            where = {c for c in range(CHUNKS)
                     if (None if vol is None else s.snapshot_lookup(vol, c))
                     != (None if base is None else s.snapshot_lookup(base, c))}
            assert set(got) == where, (vol, base)
            # applying the changed chunks of vol to base gives vol exactly
            patched = list(images[base])
            for c in got:
                patched[c] = images[vol][c]
            assert patched == images[vol], (vol, base)
            # small pages and a tiny entry budget give the same answer
            small, pages = _scan_all(s, vol, base, 3, 5)
            assert small == got and (pages > 1 or len(got) <= 3)
            # a sub-range is the same answer clipped
            part, _ = _scan_all(s, vol, base, 7, 9, start=50, end=200)
            assert part == [c for c in got if 50 <= c < 200]


def test_same_volume_and_empty_range_change_nothing():
    dev, origin = make_store(4 << 20, origin_chunks=64)
    s = open_store(dev, origin)
    slot = s.create_snapshot("a").slot
    s.origin_write([[0, 64]])
    s.commit()
    assert sd.changed_chunks(s, slot, slot, 0, 64, 100).ranges == []
    assert sd.changed_chunks(s, slot, None, 10, 10, 100).ranges == []
    assert sd.changed_chunks(s, slot, None, 0, 64, 100).ranges == [[0, 64]]
    assert sd.changed_chunks(s, None, slot, 0, 64, 100).ranges == [[0, 64]]


def test_every_chunk_pages():
    assert sd.every_chunk(0, 10, 4) == sd.ChangeScan([[0, 4]], 4)
    assert sd.every_chunk(8, 10, 4) == sd.ChangeScan([[8, 2]], None)
    assert sd.every_chunk(10, 10, 4) == sd.ChangeScan([], None)


def test_a_clone_being_filled_diffs_as_its_content():
    """Until the fill reaches a chunk, a clone reads its parent's copy there: a diff
    against the clone (either side) says what its content says, part way and after."""
    rng = random.Random(29)
    dev, origin = make_store(16 << 20, origin_chunks=CHUNKS)
    fill_origin(origin)
    s = open_store(dev, origin)
    parent = s.create_snapshot("p").slot
    s.commit()
    for version in range(1, 30):
        a = rng.randrange(CHUNKS)
        n = min(CHUNKS - a, rng.randint(1, 20))
        s.origin_write([[a, n]])
        s.commit()
        for c in range(a, a + n):
            origin.pwrite(c * CS, chunk_bytes(c, version))
    clone = s.clone_snapshot("c", "p").slot
    s.commit()
    s.clone_step(max_leaves=3)  # part filled
    s.commit()
    (_, sc), = s.snapshot_write(clone, [[CHUNKS - 1, 1]])  # one chunk its own
    s.commit()
    dev.pwrite(sc * CS, chunk_bytes(CHUNKS - 1, 99))
    assert s.cloning
    for _ in range(2):
        images = {v: _image(s, v) for v in (None, parent, clone)}
        for vol in images:
            for base in images:
                got, _ = _scan_all(s, vol, base, 1 << 16, 1 << 20)
                want = {c for c in range(CHUNKS) if images[vol][c] != images[base][c]}
                assert want <= set(got), (vol, base, sorted(want - set(got))[:5])
                if {vol, base} == {parent, clone}:
                    assert set(got) == {CHUNKS - 1}, sorted(got)[:10]
        while s.clone_step():
            s.commit()
        s.commit()
