"""Reverting the origin to a snapshot at the store layer: content, other snapshots intact,
crashes at every step, refusals."""

from __future__ import annotations

import random

import pytest

from csnapd.store import revert
from csnapd.store.device import MemoryDevice, VolatileDevice
from csnapd.store.errors import LimitError, SnapshotHeld, StoreFullError
from csnapd.store.store import Store

from .conftest import CS, audit, chunk_bytes, fill_origin, make_store, snapshot_read

N = 96


def _origin_write(s: Store, chunks: range, version: int) -> None:
    s.origin_write([(chunks.start, len(chunks))])
    s.commit()
    for c in chunks:
        s.origin.pwrite(c * CS, chunk_bytes(c, version))


def _content(s: Store, slot: int | None) -> list[bytes]:
    if slot is None:
        return [s.origin.pread(c * CS, CS) for c in range(N)]
    return [snapshot_read(s, slot, c) for c in range(N)]


def _history(s: Store) -> dict[str, int]:
    """Three snapshots with copies, own writes and shared chunks; returns name -> slot."""
    a = s.create_snapshot("a").slot
    s.commit()
    _origin_write(s, range(0, 40), 1)
    b = s.create_snapshot("b").slot
    s.commit()
    _origin_write(s, range(20, 60), 2)
    pairs = s.snapshot_write(a, [(5, 10)])
    s.commit()
    for c, sc in pairs:
        s.dev.pwrite(sc * CS, chunk_bytes(c, 3))
    c = s.create_snapshot("c").slot  # shares the origin everywhere: a revert must copy out
    s.commit()
    return {"a": a, "b": b, "c": c}


def _run(s: Store, origin, batch: int = 7, steps: int | None = None) -> int:  # noqa: ANN001
    """The engine's sequence: copy-outs committed, then the restore with the next commit."""
    n = 0
    while revert.active(s) and (steps is None or n < steps):
        b = revert.prepare(s, batch)
        s.commit()
        revert.apply(s, b, origin)
        s.commit()
        n += 1
    return n


def test_revert_makes_the_origin_the_snapshot_and_keeps_the_others():
    dev, origin = make_store(origin_chunks=N)
    fill_origin(origin)
    s = Store.open(dev, origin)
    slots = _history(s)
    before = {name: _content(s, slot) for name, slot in slots.items()}
    revert.start(s, "a")
    s.commit()
    assert revert.active(s)
    steps = _run(s, origin)
    assert steps > 2 and not revert.active(s)
    assert _content(s, None) == before["a"]
    for name, slot in slots.items():
        assert _content(s, slot) == before[name], name
    # and the origin goes on as an origin: a new write copies out for every snapshot
    _origin_write(s, range(0, N), 9)
    for name, slot in slots.items():
        assert _content(s, slot) == before[name], name
    audit(s)


@pytest.mark.parametrize("seed", range(12))
def test_a_crash_at_any_step_resumes_to_the_same_result(seed):
    """Power cut after a random number of steps, with or without the restore's commit;
    the origin's writes may or may not have reached the disk. Reopen and finish."""
    rng = random.Random(seed)
    inner = MemoryDevice(4 << 20)
    from csnapd.store import create
    origin_inner = MemoryDevice(N * CS)
    create.create(inner, origin_inner.size, chunk_size=CS, block_size=512,
                  journal_bytes=128 * 512)
    fill_origin(origin_inner)
    dev, origin = VolatileDevice(inner), VolatileDevice(origin_inner)
    s = Store.open(dev, origin)
    slots = _history(s)
    origin.flush()
    before = {name: _content(s, slot) for name, slot in slots.items()}
    revert.start(s, "a")
    s.commit()
    _run(s, origin, batch=5, steps=rng.randrange(0, 6))
    if revert.active(s):
        b = revert.prepare(s, 5)
        if rng.random() < 0.5:
            s.commit()
            revert.apply(s, b, origin)
            if rng.random() < 0.7:
                sealed = s.seal()  # sealed; the crash cuts its write short
                if sealed is not None and rng.random() < 0.7:
                    for d in sealed.frozen.direct:  # the origin restored and flushed,
                        d.write(dev)  # the journal record moving the cursor never written
    dev.crash()
    origin.crash()
    dev, origin = VolatileDevice(inner), VolatileDevice(origin_inner)
    s = Store.open(dev, origin)
    _run(s, origin, batch=5)
    assert _content(s, None) == before["a"]
    for name, slot in slots.items():
        assert _content(s, slot) == before[name], name
    audit(s)


def test_refusals_while_reverting_and_before():
    dev, origin = make_store(origin_chunks=N)
    fill_origin(origin)
    s = Store.open(dev, origin)
    _history(s)
    revert.start(s, "b")
    s.commit()
    with pytest.raises(LimitError, match="already being reverted"):
        revert.start(s, "a")
    with pytest.raises(SnapshotHeld, match="being reverted"):
        s.delete_snapshot("b")
    _run(s, origin)
    s.delete_snapshot("b")  # fine once done
    s.commit()


def test_a_revert_that_would_not_fit_is_refused():
    dev, origin = make_store(store_bytes=(4 + 16 + 30) * CS, origin_chunks=N)
    fill_origin(origin)
    s = Store.open(dev, origin)
    s.create_snapshot("a")
    s.commit()
    _origin_write(s, range(0, 20), 1)  # a owns 20 copies
    s.create_snapshot("b")
    s.commit()
    with pytest.raises(StoreFullError, match="may need up to 20 copy-outs"):
        revert.start(s, "a")
    assert not revert.active(s)


def test_check_finds_a_revert_whose_snapshot_is_gone():
    from csnapd.store import check

    dev, origin = make_store(origin_chunks=N)
    s = Store.open(dev, origin)
    s.create_snapshot("a")
    s.commit()
    revert.start(s, "a")
    s.commit()
    assert check.check_store(s).clean
    s.sb.revert_slot = 9  # a free slot
    problems = [p.message for p in check.check_store(s).problems]
    assert any("revert in progress" in p for p in problems), problems
