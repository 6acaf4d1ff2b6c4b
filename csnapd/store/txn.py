"""One journal transaction in the redundant format: its blocks, and mending them.

journal.py knows the ring (positions, sequence numbers, the scan); this module
knows a single transaction and nothing about the others.  The byte layout is
in format.py ("Journal commit record, redundant format").

A transaction of n images is n + 3 blocks: leading commit record, the images,
a parity block (the XOR of the images) and a trailing copy of the commit
record.  The record lists the CRC of every image and of the parity, so each
block can be judged on its own.  A transaction can be made whole when at least
one commit record verifies and at most one image is bad, with the parity good
if one is: that image is then the parity XOR the good images, and it must match
the CRC the record lists for it.  So any single damaged block is mended, and a
stale block from an older lap (even a valid image of the same home) is caught
by its listed CRC.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import format as fmt

#: Blocks a transaction occupies besides its images.
OVERHEAD = 3


def xor_blocks(blocks: list[bytes], size: int) -> bytes:
    """Byte-wise XOR of ``blocks`` (zeros for none), one big-integer pass each."""
    acc = 0
    for block in blocks:
        acc ^= int.from_bytes(block, "little")
    return acc.to_bytes(size, "little")


def encode(start: int, nblocks: int, pos: int, store_id: int, seq: int, epoch: int,
           images: list[tuple[int, bytes]], block_size: int) -> list[bytes]:
    """The n + 3 blocks of one transaction written at journal position ``pos``."""
    blobs = [image for _, image in images]
    parity = xor_blocks(blobs, block_size)
    rec = fmt.CommitRecord(seq, epoch, pos, tuple(home for home, _ in images),
                           tuple(fmt.image_crc(b) for b in blobs), fmt.image_crc(parity))
    lead = fmt.seal_commit2(start + pos, store_id, rec, block_size)
    trail = fmt.readdress_commit2(lead, start + (pos + len(blobs) + 2) % nblocks)
    return [lead, *blobs, parity, trail]


def role(rec: fmt.CommitRecord, pos: int, nblocks: int) -> str | None:
    """"leading" or "trailing" for a record read at journal position ``pos``."""
    if pos == rec.first:
        return "leading"
    if pos == (rec.first + len(rec.homes) + 2) % nblocks:
        return "trailing"
    return None


@dataclass(slots=True)
class Mended:
    """A transaction made whole: its verified images and what was wrong with it."""

    record: fmt.CommitRecord
    images: list[bytes]
    damaged: list[int]  # offsets in the transaction (0 .. n+2) of blocks that did not verify
    rebuilt: int | None  # index of the image rebuilt from parity


def mend(rec: fmt.CommitRecord, blocks: list[bytes], start: int, nblocks: int,
         store_id: int) -> Mended | None:
    """Check the n + 3 ``blocks`` read for ``rec``; None if they cannot be made whole."""
    n = len(rec.homes)
    images, parity = list(blocks[1:n + 1]), blocks[n + 1]
    crc = fmt.image_crc
    bad = [i for i in range(n) if crc(images[i]) != rec.crcs[i]]
    parity_ok = crc(parity) == rec.parity_crc
    rebuilt = None
    if bad:
        if len(bad) > 1 or not parity_ok:
            return None
        rebuilt = bad[0]
        fixed = xor_blocks([parity, *images[:rebuilt], *images[rebuilt + 1:]], len(parity))
        if crc(fixed) != rec.crcs[rebuilt]:
            return None
        images[rebuilt] = fixed
    damaged = []
    if fmt.decode_commit2(blocks[0], start + rec.first, store_id) != rec:
        damaged.append(0)
    damaged += [1 + i for i in bad]
    if not parity_ok:
        damaged.append(n + 1)
    trail_at = start + (rec.first + n + 2) % nblocks
    if fmt.decode_commit2(blocks[n + 2], trail_at, store_id) != rec:
        damaged.append(n + 2)
    return Mended(rec, images, damaged, rebuilt)


def describe(offset: int, n: int, homes: tuple[int, ...]) -> str:
    """Human name of the block at ``offset`` inside a transaction of n images."""
    if offset == 0:
        return "leading commit record"
    if offset == n + 1:
        return "parity block"
    if offset == n + 2:
        return "trailing commit record"
    return f"image {offset - 1} (home block {homes[offset - 1]})"
