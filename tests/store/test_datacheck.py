"""One flush per copy-out commit: DATA records, checked at recovery (store/datacheck.py).

An origin write's copies and its journal transaction share one flush; a crash that
kept the transaction but not the copies must drop that (never acknowledged)
transaction, and a writer must never overwrite a chunk the journal's last transaction
vouches for.
"""

from __future__ import annotations

from csnapd.store import datacheck
from csnapd.store import format as fmt
from csnapd.store import journal as jnl

from .conftest import CS, audit, chunk_bytes, snapshot_read
from .test_sealing import opened, overwrite_origin, reopen


def _last_transaction_runs(s):
    """The DATA runs of the newest transaction in the journal, as recovery would read it."""
    f, j = s.sb, s.journal
    scan = jnl.scan(s.dev, f.journal_start, f.journal_blocks, f.block_size, f.store_id,
                    j.tail, j.tail_seq, j.version)
    return datacheck.runs_of(scan.transactions[-1], 0) if scan.transactions else []


def test_an_origin_write_commits_with_one_flush_and_a_data_record():
    s, inner, origin, data = opened(journal_blocks=256)
    a = s.create_snapshot("a")
    s.commit()
    assert s.sb.incompat & fmt.INCOMPAT_DATA_CRC
    before = s.dev.flushes
    s.origin_write([(0, 4), (10, 2)])
    s.commit()
    assert s.dev.flushes - before == 1
    runs = _last_transaction_runs(s)
    assert sum(n for _, n, _ in runs) == 6
    for first, n, want in runs:
        assert datacheck.crc(inner.pread(first * CS, n * CS)) == want
    overwrite_origin(origin, [0, 1, 2, 3, 10, 11], 1)
    t = reopen(inner, origin)
    assert t.recovery.journal_dropped == 0
    for c in (0, 3, 10, 11):
        assert snapshot_read(t, a.slot, c) == data[c]
    audit(t)


def test_a_last_transaction_whose_copies_never_landed_is_dropped_once_and_for_all():
    s, inner, origin, data = opened(journal_blocks=256)
    a = s.create_snapshot("a")
    s.commit()
    s.origin_write([(5, 3)])
    s.commit()
    runs = _last_transaction_runs(s)
    assert runs
    # the power went out: the journal write reached the disk, the copies did not
    for first, n, _ in runs:
        inner.pwrite(first * CS, bytes(n * CS))
    # (and the client never wrote the origin: it was never answered)
    t = reopen(inner, origin)
    assert t.recovery.journal_dropped == 1
    assert any("copied data was not" in n for n in t.recovery.journal_notes)
    for c in (5, 6, 7):
        assert t.snapshot_lookup(a.slot, c) is None  # reads the origin again
        assert snapshot_read(t, a.slot, c) == data[c]
    audit(t)
    # the reopened store goes on; the dropped transaction never comes back
    t.origin_write([(5, 1)])
    t.commit()
    overwrite_origin(t.origin, [5], 2)
    u = reopen(t.dev, t.origin)
    assert u.recovery.journal_dropped == 0
    assert snapshot_read(u, a.slot, 5) == data[5]
    assert snapshot_read(u, a.slot, 6) == data[6]
    audit(u)


def test_an_in_place_snapshot_write_of_a_freshly_copied_chunk_commits_once_more_first():
    s, inner, origin, data = opened(journal_blocks=256)
    a = s.create_snapshot("a")
    s.commit()
    s.origin_write([(20, 1)])  # the copy only snapshot a uses
    s.commit()
    copy = s.snapshot_lookup(a.slot, 20)
    assert s._unconfirmed and any(copy in chunks for _, chunks in s._unconfirmed)
    s.take_dependency()
    [(chunk, where)] = s.snapshot_write(a.slot, [(20, 1)])
    assert (chunk, where) == (20, copy)  # in place: no copy needed
    ticket = s.take_dependency()
    assert ticket > s.durable_ticket  # the answer waits for one more transaction
    s.commit()
    assert not s._unconfirmed
    # the writer overwrites its chunk; a crash now keeps everything
    inner.pwrite(copy * CS, chunk_bytes(20, 9))
    t = reopen(inner, origin)
    assert t.recovery.journal_dropped == 0
    assert snapshot_read(t, a.slot, 20) == chunk_bytes(20, 9)
    audit(t)


def test_snapshot_writes_flush_their_copies_before_the_journal():
    """Copies that go to a writer are never vouched for by a DATA record."""
    s, inner, origin, data = opened(journal_blocks=256)
    a = s.create_snapshot("a")
    s.commit()
    before = s.dev.flushes
    s.snapshot_write(a.slot, [(30, 2)])
    s.commit()
    assert s.dev.flushes - before == 2
    assert _last_transaction_runs(s) == []
