"""Copy-out data checked at recovery, so a commit needs one flush instead of two.

The plain durability order (journal.py invariant 2) flushes the copied chunks before
the journal transaction that points at them is written, then flushes that: two
fdatasyncs per commit.  A transaction whose copies only snapshot readers will ever read
(every copy-out of an origin write) instead carries a DATA record: for each run of
chunks it copied, the first store chunk, the count and the CRC32C of the bytes written.
The worker writes the chunks and the journal transaction and then flushes once
(seal.py).

Recovery relies on this: one write is in flight at a time and each one ends with a
flush, so every transaction but the last one in the journal was written after the
flush that made the previous one's data durable.  Only the **last** transaction can
point at chunks that never reached the disk, and then it was never acknowledged (the
answer waits for the flush).  ``check_tail`` reads the chunks its DATA records name;
if any run does not match, the transaction is dropped like a torn one, and the
journal's next sequence number skips it, so it can never be replayed later.

The rule that keeps this sound, kept by the store (store.py, ``snapshot_write``): no
client may write a chunk a DATA record covers while that transaction is still the last
in the journal.  Transactions with a snapshot write (its chunks go to a writer) use the
two-flush order, and an in-place snapshot write of a chunk copied by the newest such
transaction first commits one more transaction after it.

Must not import the store facade, the cache or the B-tree.
"""

from __future__ import annotations

import crc32c as _crc

from . import format as fmt
from .device import Device
from .errors import CorruptionError
from .journal import ScanResult, Transaction


def crc(data: bytes | bytearray | memoryview) -> int:
    """The CRC32C a DATA record carries for a run's bytes."""
    return _crc.crc32c(data)


def runs_of(t: Transaction, where: int) -> list[tuple[int, int, int]]:
    """The (first store chunk, chunks, CRC32C) runs of a transaction's DATA records."""
    if not t.records:
        return []
    return [run for rec in fmt.decode_records(t.records, where) if rec[0] == fmt.REC_DATA
            for run in rec[1]]


def mismatch(dev: Device, chunk_size: int, runs: list[tuple[int, int, int]]) -> str | None:
    """Why the chunks do not hold what the runs say (the first run that differs), or None."""
    for first, count, want in runs:
        try:
            got = crc(dev.pread(first * chunk_size, count * chunk_size))
        except OSError as exc:
            return f"store chunks {first}..{first + count - 1} cannot be read: {exc}"
        if got != want:
            return (f"store chunks {first}..{first + count - 1} do not hold the data it copied "
                    f"(CRC32C {got:#010x}, want {want:#010x})")
    return None


def check_tail(dev: Device, chunk_size: int, journal_start: int, scan: ScanResult) -> None:
    """Drop the scan's last transaction if the data its DATA records name is not on disk."""
    if not scan.transactions:
        return
    t = scan.transactions[-1]
    try:
        runs = runs_of(t, journal_start + t.position)
    except CorruptionError:
        return  # replay reports the damaged stream itself
    why = mismatch(dev, chunk_size, runs) if runs else None
    if why is None:
        return
    scan.transactions.pop()
    scan.head = t.position
    scan.next_seq = t.seq + 1  # never replayed later: the next transaction skips its number
    scan.blocks_used -= t.span
    scan.torn = t.position
    scan.notes.append(
        f"transaction {t.seq} at journal block {t.position}, the last one, was written but "
        f"its copied data was not ({why}): it was never acknowledged; dropped")
