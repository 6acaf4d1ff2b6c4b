"""The circular write-ahead journal for metadata changes.

A transaction holds what one operation (or one group of operations) changed.
It is written to the next free journal blocks.  Three formats exist; the
superblock's feature bits say which one a journal holds (``format_of``):

* compact (INCOMPAT_COMPACT_JOURNAL, every store made or opened read-write by
  this version): logical records of what changed (an entry's exceptions,
  bitmap bits, a grant record, the superblock's changing fields) plus whole
  images of blocks changed for the first time since the checkpoint, in the
  redundant envelope: commit record, payload blocks, parity, second copy of
  the commit record (format.py, txn.py; replay.py applies the records);
* redundant (INCOMPAT_JOURNAL_V2 only): the same envelope around whole images;
* single CRC (neither): a commit block and the images.

The two older formats are only ever replayed by a writer (invariant 8).

Durability invariants (the store relies on every one of them):
  1. Write-ahead: every block of a transaction is flushed before any of its
     images is written to its home location.
  2. Data first, or vouched for: copy-out data that a transaction points at
     is flushed before the transaction is written (``Sealed.write`` copies,
     flushes, then writes the journal blocks; seal.py), or the transaction
     carries a DATA record for it and both share one flush; recovery then
     drops the last transaction if its copies are not on disk, and no client
     writes a covered chunk before a later transaction is durable
     (datacheck.py).
  3. Reclaim after home: journal space is reused only after a checkpoint,
     i.e. after every home write of the reclaimed transactions has been
     flushed and a superblock naming the new tail has been flushed.
  4. Replay is idempotent: it applies whole block images and records that
     state results (not differences) in sequence order and writes nothing to
     the journal, so replaying twice (a crash during recovery) gives the same
     result.
  5. Single faults are mended: each block of a transaction is covered by a
     CRC that both commit records list, so after a transaction was written
     and flushed any one of its blocks, damaged in any way (a flipped bit,
     zeros, a stale block of an older lap), is found and replaced: the other
     commit record, or the parity XOR the good images.  Every mended or
     unneeded damaged block is reported (ScanResult.notes, .corrected).
  6. Torn tail: a transaction that cannot be made whole (no commit record
     verifies, or two or more images, or an image and the parity, are bad)
     is a torn write.  If it is the last thing in the journal it is dropped
     and reported: it was never acknowledged, because acknowledgement comes
     only after the flush that follows the whole transaction write.  If a
     verified transaction with a later sequence number exists anywhere in
     the journal, the hole is damage, and recovery refuses (CorruptionError)
     instead of silently dropping acknowledged work.
  7. A transaction never exceeds ``max_images``, chosen so that it occupies at
     most half the journal: one always fits after a checkpoint.
  8. The format follows the superblock (``format_of``).  A read-write open of
     an older store replays its journal in that format, checkpoints (the
     journal is then empty), sets the compact format's bits in both
     superblock slots and writes only the compact format from then on.
  9. Done means durable: a transaction counts as committed (and an operation
     whose answer depends on it may be acknowledged) only after the flush that
     follows its whole write; the owning thread learns it through
     ``Store.sealed_done``, in sequence order.
 10. Quarantine: a chunk freed by a transaction is reused only after a
     checkpoint captured once that transaction was durable is itself durable,
     so within the transactions one recovery replays no freed chunk was reused.
 11. Full-page images (compact format): a block's first change after a
     checkpoint is captured is journaled as a whole image, and so is every
     change of its shape; records apply only to an image earlier in the
     replayed transactions, never to a home block, which a checkpoint cut
     short by a crash may have torn.

This module must not import the B-tree, allocator or store.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from . import format as fmt
from . import txn
from .device import Device
from .errors import CorruptionError

#: Journal blocks read per pread when the whole journal is searched.
_SWEEP = 256


#: Journal formats: the superblock's feature bits say which one the journal holds.
SINGLE_CRC, REDUNDANT, COMPACT = 1, 2, 3


def format_of(incompat: int) -> int:
    """The journal format a superblock's incompatible feature bits announce."""
    if incompat & fmt.INCOMPAT_COMPACT_JOURNAL:
        return COMPACT
    return REDUNDANT if incompat & fmt.INCOMPAT_JOURNAL_V2 else SINGLE_CRC


@dataclass(slots=True)
class Transaction:
    """One committed transaction found by a journal scan.

    ``version`` is the journal format (1 single CRC, 2 redundant, 3 compact);
    ``images`` its whole block images and ``records`` its record stream
    (compact format only); ``damaged`` lists the offsets inside the
    transaction (0 = leading commit record) of blocks that did not verify, and
    ``rebuilt`` the payload block rebuilt from parity, if any.
    """

    seq: int
    position: int
    images: list[tuple[int, bytes]]
    epoch: int = 0
    version: int = REDUNDANT
    record: txn.AnyRecord | None = None
    damaged: list[int] = field(default_factory=list)
    rebuilt: int | None = None
    records: bytes = b""

    @property
    def span(self) -> int:
        """Journal blocks the transaction occupies."""
        if self.record is not None:
            return self.record.span
        return len(self.images) + 1


@dataclass(slots=True)
class ScanResult:
    """What a scan found: the transactions to replay, where the journal ends, and why."""

    transactions: list[Transaction]
    head: int
    next_seq: int
    blocks_used: int
    notes: list[str] = field(default_factory=list)
    corrected: int = 0  # damaged blocks of replayed transactions, mended or not needed
    torn: int | None = None  # journal position of a torn transaction that was dropped
    fenced: int | None = None  # journal position of a fenced leader's transaction, dropped

    @property
    def epochs(self) -> list[int]:
        """The writer epochs of the replayed transactions, ascending."""
        return sorted({t.epoch for t in self.transactions})


@dataclass(frozen=True, slots=True)
class Ring:
    """Where the journal lives, for writing one transaction (safe on a worker thread)."""

    dev: Device
    start: int
    nblocks: int
    block_size: int
    store_id: int
    epoch: int
    version: int = COMPACT

    def encode(self, pos: int, seq: int, images: list[tuple[int, bytes]],
               stream: bytes = b"") -> list[bytes]:
        """The blocks of the transaction at ``pos`` in the journal's format (pure)."""
        if self.version == COMPACT:
            return txn.encode3(self.start, self.nblocks, pos, self.store_id, seq, self.epoch,
                               images, stream, self.block_size)
        if self.version == REDUNDANT:
            return txn.encode(self.start, self.nblocks, pos, self.store_id, seq, self.epoch,
                              images, self.block_size)
        blobs = [image for _, image in images]
        return [fmt.seal_commit(self.start + pos, self.store_id, seq,
                                [home for home, _ in images], blobs, self.block_size), *blobs]

    def span(self, nimages: int, stream_bytes: int = 0) -> int:
        """Journal blocks of a transaction of ``nimages`` images and a record stream."""
        if self.version == COMPACT:
            return txn.span3(nimages, stream_bytes, self.block_size)
        return nimages + (txn.OVERHEAD if self.version == REDUNDANT else 1)

    def write_run(self, pos: int, blocks: list[bytes]) -> None:
        """Write consecutive journal blocks from ``pos``, wrapping (not flushed)."""
        first = min(len(blocks), self.nblocks - pos)
        bs = self.block_size
        self.dev.pwrite((self.start + pos) * bs, b"".join(blocks[:first]))
        if first < len(blocks):
            self.dev.pwrite(self.start * bs, b"".join(blocks[first:]))


class Journal:
    """Writer side of the journal: where the next transaction goes, and how much is free.

    Positions are indexes inside the region.  ``tail``/``tail_seq`` are the
    checkpointed start; ``head``/``seq`` the end of everything handed out
    (reserved by sealed transactions, durable or not); ``used`` counts the
    blocks between them.  Space is reserved when a transaction is sealed and
    reclaimed only by a checkpoint (invariant 3).  Only the owning thread
    changes these fields; the sealed transaction writes its blocks itself
    through a frozen ``Ring``.
    """

    def __init__(self, dev: Device, start: int, nblocks: int, block_size: int,
                 store_id: int, tail: int, seq: int, version: int = COMPACT) -> None:
        self.dev, self.start, self.nblocks = dev, start, nblocks
        self.block_size, self.store_id = block_size, store_id
        self.tail = self.head = tail
        self.tail_seq = self.seq = seq
        self.used = 0
        self.commits = 0
        #: Written into every commit record: the store's HA epoch (replay drops older ones).
        self.epoch = 0
        self.version = version
        self.max_images = max_images(nblocks, block_size, version)

    @property
    def redundant(self) -> bool:
        """Every block of a transaction is covered twice (formats 2 and 3)."""
        return self.version >= REDUNDANT

    @property
    def free(self) -> int:
        return self.nblocks - self.used

    def span(self, nimages: int, stream_bytes: int = 0) -> int:
        """Journal blocks of a transaction of ``nimages`` images (and a record stream)."""
        if self.version == COMPACT:
            return txn.span3(nimages, stream_bytes, self.block_size)
        return nimages + (txn.OVERHEAD if self.version == REDUNDANT else 1)

    def fits(self, nimages: int, stream_bytes: int = 0) -> bool:
        return self.span(nimages, stream_bytes) <= self.free

    def use_format(self, version: int) -> None:
        """Write ``version`` from now on (the journal must be empty)."""
        if self.used:
            raise ValueError("the journal format changes only when the journal is empty")
        self.version = version
        self.max_images = max_images(self.nblocks, self.block_size, version)

    def reserve(self, nimages: int, stream_bytes: int = 0) -> tuple[int, int]:
        """Hand out the position and sequence number of the next transaction."""
        if nimages > self.max_images:
            raise ValueError(f"transaction of {nimages} blocks exceeds the limit {self.max_images}")
        span = self.span(nimages, stream_bytes)
        if span > self.free:
            raise ValueError("journal full: checkpoint before sealing")
        pos, seq = self.head, self.seq
        self.head = (pos + span) % self.nblocks
        self.used += span
        self.seq += 1
        return pos, seq

    def ring(self) -> Ring:
        """The journal's geometry, frozen: what a sealed transaction needs to write itself."""
        return Ring(self.dev, self.start, self.nblocks, self.block_size, self.store_id,
                    self.epoch, self.version)

    def checkpointed(self, head: int, seq: int, reclaimed: int) -> None:
        """The ``reclaimed`` blocks before ``head`` are home and durable: reuse them."""
        self.used -= reclaimed
        self.tail, self.tail_seq = head, seq


def max_images(nblocks: int, block_size: int, version: int = COMPACT) -> int:
    """Largest transaction (in changed blocks) a journal of this size and format accepts.

    A transaction then occupies at most half the journal (invariant 7).  In the
    compact format a changed block costs an image or records of at most a
    quarter block, so room is kept for the record blocks too.
    """
    if version == COMPACT:
        by_record = (block_size - fmt.COMMIT3_FIXED - 8) // 13
        by_journal = (nblocks // 2 - txn.OVERHEAD - 1) * 4 // 5
        return max(1, min(by_record, by_journal))
    if version == REDUNDANT:
        return max(1, min(fmt.commit2_capacity(block_size), nblocks // 2 - txn.OVERHEAD))
    return max(1, min(fmt.commit_capacity(block_size), nblocks // 2 - 1))


def scan(dev: Device, start: int, nblocks: int, block_size: int, store_id: int,
         tail: int, seq: int, version: int = COMPACT, min_epoch: int = 0) -> ScanResult:
    """Find the committed transactions after the checkpoint, in order, mending single faults.

    A transaction written under an epoch below ``min_epoch`` (the superblock's HA
    epoch) ends the journal: it is a fenced old leader's late write, never
    acknowledged, and neither it nor anything after it is replayed.
    """
    reader = _Reader(dev, start, nblocks, block_size, store_id)
    found: list[Transaction] = []
    result = ScanResult(found, tail, seq, 0)
    pos, expected, used = tail, seq, 0
    kind = fmt.BlockKind.COMMIT3 if version == COMPACT else fmt.BlockKind.COMMIT2
    # the largest span a transaction may have (invariant 7): how far a trailing
    # record can lie from its leading position
    window = (nblocks // 2 + 1 if version == COMPACT
              else max_images(nblocks, block_size, REDUNDANT) + txn.OVERHEAD)
    while True:
        room = nblocks - used
        if version == SINGLE_CRC:
            got, torn = _read_v1(reader, pos, expected, room)
        else:
            got, torn = _read_redundant(reader, pos, expected, room, window, kind)
        if got is None:
            break
        if got.epoch < min_epoch:
            result.notes.append(
                f"transaction {expected} at journal block {pos} was written under epoch "
                f"{got.epoch}, older than the store's {min_epoch}: a fenced leader's late "
                "write, never acknowledged; dropped")
            result.fenced = pos
            torn = False
            break
        found.append(got)
        _note_damage(result, got, nblocks)
        pos, used, expected = (pos + got.span) % nblocks, used + got.span, expected + 1
    later = (_later_v1(reader, expected, pos) if version == SINGLE_CRC
             else _later_redundant(reader, expected, pos, kind, min_epoch))
    if later is not None:
        raise CorruptionError(
            start + pos, kind.name if version != SINGLE_CRC else "COMMIT",
            f"journal damaged: transaction {expected} at journal block {pos} cannot be "
            f"recovered but later transaction {later[0]} at journal block {later[1]} verifies")
    if torn:
        result.torn = pos
        result.notes.append(f"torn transaction {expected} at journal block {pos} dropped: "
                            "never acknowledged")
    result.head, result.next_seq, result.blocks_used = pos, expected, used
    return result


def _note_damage(result: ScanResult, t: Transaction, nblocks: int) -> None:
    """Report every block of a replayed transaction that did not verify (invariant 5)."""
    if not t.damaged or t.record is None:
        return
    rec = t.record
    n = rec.payload_blocks
    for offset in t.damaged:
        what = txn.describe(offset, rec)
        if offset == 0:
            action = "damaged; the trailing copy was used"
        elif offset > n:
            action = "damaged; not needed"
        else:
            action = "rebuilt from parity"
        result.notes.append(f"journal transaction {t.seq} at journal block {t.position}: "
                            f"{what} at journal block {(t.position + offset) % nblocks} {action}")
    result.corrected += len(t.damaged)


class _Reader:
    """Reads journal blocks by position, wrapping at the end of the region."""

    def __init__(self, dev: Device, start: int, nblocks: int, block_size: int,
                 store_id: int) -> None:
        self.dev, self.start, self.nblocks, self.bs = dev, start, nblocks, block_size
        self.store_id = store_id

    def block(self, pos: int) -> bytes:
        pos %= self.nblocks
        return self.dev.pread((self.start + pos) * self.bs, self.bs)

    def run(self, pos: int, count: int) -> list[bytes]:
        """``count`` consecutive blocks from ``pos`` (at most two reads)."""
        pos %= self.nblocks
        first = min(count, self.nblocks - pos)
        bs = self.bs
        raw = self.dev.pread((self.start + pos) * bs, first * bs)
        if first < count:
            raw += self.dev.pread(self.start * bs, (count - first) * bs)
        return [raw[i * bs:(i + 1) * bs] for i in range(count)]

    def sweep(self) -> Iterator[tuple[int, bytes]]:
        """Every journal block with its position."""
        for lo in range(0, self.nblocks, _SWEEP):
            yield from enumerate(self.run(lo, min(_SWEEP, self.nblocks - lo)), lo)


# ---------------------------------------------------------------------------
# the redundant envelope (formats 2 and 3)


def _read_redundant(reader: _Reader, pos: int, expected: int, room: int, window: int,
                    kind: fmt.BlockKind) -> tuple[Transaction | None, bool]:
    """The transaction at ``pos``, mended if need be; else (None, whether one was torn)."""
    start, nb, sid = reader.start, reader.nblocks, reader.store_id
    lead = reader.block(pos)
    rec = txn.decode_record(lead, start + pos, sid, kind)
    torn = (fmt.commit_fields_unverified(lead, start + pos, sid, kind) or (0,))[0] == expected
    tried = None
    if rec is not None and rec.seq == expected and rec.first == pos:
        if rec.span <= room:
            blocks = [lead, *reader.run(pos + 1, rec.span - 1)]
            got = txn.mend(rec, blocks, start, nb, sid)
            if got is not None:
                return _redundant(got, pos, start), True
        tried = rec
    # No usable leading record: a trailing copy with this sequence number that
    # points back here lies within the largest transaction's span.
    span = min(window, room)
    blocks = reader.run(pos, span)
    for d in range(1, span):
        at = start + (pos + d) % nb
        if fmt.commit_fields_unverified(blocks[d], at, sid, kind) != (expected, pos):
            continue  # cannot be the copy sought: no CRC needed
        cand = txn.decode_record(blocks[d], at, sid, kind)
        if cand is None or cand.seq != expected or cand.first != pos:
            continue
        if cand.span - 1 != d or cand == tried:
            continue
        torn = True
        got = txn.mend(cand, blocks[:d + 1], start, nb, sid)
        if got is not None:
            return _redundant(got, pos, start), True
    return None, torn


def _redundant(m: txn.Mended, pos: int, start: int) -> Transaction:
    rec = m.record
    nimg = len(rec.homes)
    version = COMPACT if isinstance(rec, fmt.CommitRecord3) else REDUNDANT
    t = Transaction(rec.seq, pos, list(zip(rec.homes, m.images[:nimg], strict=True)), rec.epoch,
                    version, rec, m.damaged, m.rebuilt, m.stream())
    _check_homes(t, start)
    return t


def _later_redundant(reader: _Reader, expected: int, stop: int,
                     kind: fmt.BlockKind, min_epoch: int = 0) -> tuple[int, int] | None:
    """Invariant 6: (seq, position) of a transaction past the stopping point that verifies."""
    start, nb, sid = reader.start, reader.nblocks, reader.store_id
    for pos, raw in reader.sweep():
        fields = fmt.commit_fields_unverified(raw, start + pos, sid, kind)
        if fields is None or fields[0] < expected or fields == (expected, stop):
            continue  # an older lap, or the torn one itself: no CRC needed
        rec = txn.decode_record(raw, start + pos, sid, kind)
        if rec is None or rec.seq < expected or (rec.seq == expected and rec.first == stop):
            continue
        if rec.epoch < min_epoch:
            continue  # a fenced leader's late write: never acknowledged
        if txn.role(rec, pos, nb) is None or rec.span > nb:
            continue
        if txn.mend(rec, reader.run(rec.first, rec.span), start, nb, sid) is not None:
            return rec.seq, pos
    return None


# ---------------------------------------------------------------------------
# the single-CRC format (stores made before INCOMPAT_JOURNAL_V2)


def _read_v1(reader: _Reader, pos: int, expected: int,
             room: int) -> tuple[Transaction | None, bool]:
    raw = reader.block(pos)
    info = fmt.decode_commit(raw, reader.start + pos, reader.store_id)
    if info is None or info.seq != expected:
        return None, False
    if len(info.homes) + 1 > room:
        return None, True
    images = reader.run(pos + 1, len(info.homes)) if info.homes else []
    if not fmt.commit_valid(raw, images):
        return None, True
    t = Transaction(expected, pos, list(zip(info.homes, images, strict=True)), version=1)
    _check_homes(t, reader.start)
    return t, True


def _later_v1(reader: _Reader, expected: int, stop: int) -> tuple[int, int] | None:
    for pos, raw in reader.sweep():
        info = fmt.decode_commit(raw, reader.start + pos, reader.store_id)
        if info is None or info.seq < expected or (pos == stop and info.seq == expected):
            continue
        images = reader.run(pos + 1, len(info.homes)) if info.homes else []
        if fmt.commit_valid(raw, images):
            return info.seq, pos
    return None


def _check_homes(t: Transaction, start: int) -> None:
    """A verified image must carry its home address: anything else is a writer bug."""
    for home, image in t.images:
        hdr = fmt.peek_header(image)
        if hdr is None or hdr.addr != home:
            raise CorruptionError(start + t.position, ("COMMIT", "COMMIT2", "COMMIT3")[t.version - 1],
                                  f"transaction {t.seq} at journal block {t.position} holds an "
                                  f"image for the wrong home {home}")
