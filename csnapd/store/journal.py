"""The circular write-ahead journal for metadata blocks.

A transaction is the set of metadata block images one operation (or one group
of operations) changed.  It is written to the next free journal blocks as a
commit block followed by the images; the commit block lists the home address
of every image and carries a CRC32C over itself and all images (format.py).

Durability invariants (the store relies on every one of them):
  1. Write-ahead: a transaction's commit block and images are flushed before
     any of its blocks is written to its home location.
  2. Data first: copy-out data that a transaction points at is flushed before
     the transaction is written (the store flushes before calling write()).
  3. Reclaim after home: journal space is reused only after a checkpoint,
     i.e. after every home write of the reclaimed transactions has been
     flushed and a superblock naming the new tail has been flushed.
  4. Replay is idempotent: it writes whole block images in sequence order, so
     replaying twice (a crash during recovery) gives the same result.
  5. Torn tail: recovery stops at the first transaction that does not verify.
     If a verified transaction with a later sequence number exists anywhere in
     the journal, the gap is damage, not a torn tail, and recovery refuses
     instead of silently dropping acknowledged work.
  6. A transaction never exceeds ``max_images``, which is at most half the
     journal, so one always fits after a checkpoint.

This module must not import the B-tree, allocator or store.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import format as fmt
from .device import Device
from .errors import CorruptionError


@dataclass(slots=True)
class Transaction:
    """One committed transaction found by a journal scan."""

    seq: int
    position: int
    images: list[tuple[int, bytes]]


@dataclass(slots=True)
class ScanResult:
    transactions: list[Transaction]
    head: int
    next_seq: int
    blocks_used: int


class Journal:
    """Writer side of the journal; positions are indexes inside the region."""

    def __init__(self, dev: Device, start: int, nblocks: int, block_size: int,
                 store_id: int, tail: int, seq: int) -> None:
        self.dev, self.start, self.nblocks = dev, start, nblocks
        self.block_size, self.store_id = block_size, store_id
        self.tail = self.head = tail
        self.tail_seq = self.seq = seq
        self.used = 0
        self.commits = 0
        self.max_images = max_images(nblocks, block_size)

    @property
    def free(self) -> int:
        return self.nblocks - self.used

    def fits(self, nimages: int) -> bool:
        return nimages + 1 <= self.free

    def write(self, images: list[tuple[int, bytes]]) -> int:
        """Append one transaction (not flushed); return its sequence number."""
        n = len(images)
        if n > self.max_images:
            raise ValueError(f"transaction of {n} blocks exceeds the limit {self.max_images}")
        if not self.fits(n):
            raise ValueError("journal full: checkpoint before writing")
        pos, seq = self.head, self.seq
        homes = [home for home, _ in images]
        blobs = [image for _, image in images]
        commit = fmt.seal_commit(self.start + pos, self.store_id, seq, homes, blobs,
                                 self.block_size)
        self._write_run(pos, [commit, *blobs])
        self.head = (pos + n + 1) % self.nblocks
        self.used += n + 1
        self.seq += 1
        self.commits += 1
        return seq

    def _write_run(self, pos: int, blocks: list[bytes]) -> None:
        first = min(len(blocks), self.nblocks - pos)
        bs = self.block_size
        self.dev.pwrite((self.start + pos) * bs, b"".join(blocks[:first]))
        if first < len(blocks):
            self.dev.pwrite(self.start * bs, b"".join(blocks[first:]))

    def checkpointed(self) -> None:
        """Everything written so far is home and durable: reclaim it all."""
        self.tail, self.tail_seq, self.used = self.head, self.seq, 0


def max_images(nblocks: int, block_size: int) -> int:
    """Largest transaction (in images) a journal of this size accepts."""
    return max(1, min(fmt.commit_capacity(block_size), nblocks // 2 - 1))


def scan(dev: Device, start: int, nblocks: int, block_size: int, store_id: int,
         tail: int, seq: int) -> ScanResult:
    """Find the committed transactions after the checkpoint, in order."""
    reader = _Reader(dev, start, nblocks, block_size)
    found: list[Transaction] = []
    pos, expected, used = tail, seq, 0
    while True:
        txn = _read_transaction(reader, pos, expected, store_id, nblocks - used)
        if txn is None:
            break
        found.append(txn)
        step = 1 + len(txn.images)
        pos, used, expected = (pos + step) % nblocks, used + step, expected + 1
    _check_no_later_commit(reader, expected, store_id, pos)
    return ScanResult(found, pos, expected, used)


class _Reader:
    def __init__(self, dev: Device, start: int, nblocks: int, block_size: int) -> None:
        self.dev, self.start, self.nblocks, self.bs = dev, start, nblocks, block_size

    def block(self, pos: int) -> bytes:
        pos %= self.nblocks
        return self.dev.pread((self.start + pos) * self.bs, self.bs)


def _read_transaction(reader: _Reader, pos: int, expected: int, store_id: int,
                      room: int) -> Transaction | None:
    raw = reader.block(pos)
    info = fmt.decode_commit(raw, reader.start + pos, store_id)
    if info is None or info.seq != expected or len(info.homes) + 1 > room:
        return None
    images = [reader.block(pos + 1 + i) for i in range(len(info.homes))]
    if not fmt.commit_valid(raw, images):
        return None
    for home, image in zip(info.homes, images, strict=True):
        hdr = fmt.peek_header(image)
        if hdr is None or hdr.addr != home:
            raise CorruptionError(reader.start + pos, "COMMIT",
                                  f"transaction {expected} holds an image for the wrong home {home}")
    return Transaction(expected, pos, list(zip(info.homes, images, strict=True)))


def _check_no_later_commit(reader: _Reader, expected: int, store_id: int, stop: int) -> None:
    """Invariant 5: a verified commit past the stopping point means damage."""
    for pos in range(reader.nblocks):
        raw = reader.block(pos)
        info = fmt.decode_commit(raw, reader.start + pos, store_id)
        if info is None or info.seq < expected:
            continue
        if pos == stop and info.seq == expected:
            continue
        images = [reader.block(pos + 1 + i) for i in range(len(info.homes))]
        if fmt.commit_valid(raw, images):
            raise CorruptionError(
                reader.start + stop, "COMMIT",
                f"journal damaged: transaction {expected} at journal block {stop} does not "
                f"verify but later transaction {info.seq} at journal block {pos} does")
