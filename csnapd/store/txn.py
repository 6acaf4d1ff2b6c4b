"""One journal transaction in a redundant format: its blocks, and mending them.

journal.py knows the ring (positions, sequence numbers, the scan); this module
knows a single transaction and nothing about the others.  The byte layouts are
in format.py ("Journal commit record, redundant format" and "..., compact
format").

Both formats share the envelope: a leading commit record, the payload blocks,
a parity block (the XOR of the payload blocks) and a trailing copy of the
commit record.  In the redundant format (COMMIT2) the payload is block images;
in the compact format (COMMIT3) it is images followed by the blocks of the
record stream that did not fit in the commit record, and a transaction with no
payload block has no parity block either (lead, trail: two blocks).

The record lists the CRC of every payload block and of the parity, so each
block can be judged on its own.  A transaction can be made whole when at least
one commit record verifies and at most one payload block is bad, with the
parity good if one is: that block is then the parity XOR the good ones, and it
must match the CRC the record lists for it.  So any single damaged block is
mended, and a stale block from an older lap (even a valid image of the same
home) is caught by its listed CRC.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import format as fmt

#: Blocks a redundant-format transaction occupies besides its images.
OVERHEAD = 3

AnyRecord = fmt.CommitRecord | fmt.CommitRecord3


def xor_blocks(blocks: list[bytes], size: int) -> bytes:
    """Byte-wise XOR of ``blocks`` (zeros for none), one big-integer pass each."""
    acc = 0
    for block in blocks:
        acc ^= int.from_bytes(block, "little")
    return acc.to_bytes(size, "little")


def encode(start: int, nblocks: int, pos: int, store_id: int, seq: int, epoch: int,
           images: list[tuple[int, bytes]], block_size: int) -> list[bytes]:
    """The n + 3 blocks of one redundant-format transaction written at journal position ``pos``."""
    blobs = [image for _, image in images]
    parity = xor_blocks(blobs, block_size)
    rec = fmt.CommitRecord(seq, epoch, pos, tuple(home for home, _ in images),
                           tuple(fmt.image_crc(b) for b in blobs), fmt.image_crc(parity))
    lead = fmt.seal_commit2(start + pos, store_id, rec, block_size)
    trail = fmt.readdress_commit2(lead, start + (pos + len(blobs) + 2) % nblocks)
    return [lead, *blobs, parity, trail]


def stream_blocks(nimages: int, stream_bytes: int, block_size: int) -> int:
    """Raw blocks a compact transaction needs for the stream not held inline."""
    extra = 0
    while True:
        room = fmt.commit3_room(block_size, nimages, nimages + extra)
        if room < 0:
            raise ValueError(f"a commit record cannot list {nimages + extra} payload blocks")
        need = -(-max(0, stream_bytes - room) // block_size)
        if need <= extra:
            return extra
        extra = need


def span3(nimages: int, stream_bytes: int, block_size: int) -> int:
    """Journal blocks of a compact transaction with these images and stream."""
    n = nimages + stream_blocks(nimages, stream_bytes, block_size)
    return n + 3 if n else 2


def encode3(start: int, nblocks: int, pos: int, store_id: int, seq: int, epoch: int,
            images: list[tuple[int, bytes]], stream: bytes, block_size: int) -> list[bytes]:
    """The blocks of one compact-format transaction written at journal position ``pos``."""
    m = len(images)
    extra = stream_blocks(m, len(stream), block_size)
    inline = stream[:max(0, min(len(stream), fmt.commit3_room(block_size, m, m + extra)))]
    blobs = [image for _, image in images]
    for at in range(len(inline), len(stream), block_size):
        blobs.append(stream[at:at + block_size].ljust(block_size, b"\0"))
    parity = xor_blocks(blobs, block_size) if blobs else b""
    rec = fmt.CommitRecord3(seq, epoch, pos, tuple(home for home, _ in images),
                            tuple(fmt.image_crc(b) for b in blobs),
                            fmt.image_crc(parity) if blobs else 0, len(stream), inline)
    lead = fmt.seal_commit3(start + pos, store_id, rec, block_size)
    trail = fmt.readdress_commit2(lead, start + (pos + rec.span - 1) % nblocks,
                                  fmt.BlockKind.COMMIT3)
    return [lead, *blobs, *([parity] if blobs else []), trail]


def decode_record(block: bytes, addr: int, store_id: int, kind: fmt.BlockKind
                  ) -> AnyRecord | None:
    """A verified commit record of ``kind`` (COMMIT2 or COMMIT3) at ``addr``, or None."""
    if kind == fmt.BlockKind.COMMIT3:
        return fmt.decode_commit3(block, addr, store_id)
    return fmt.decode_commit2(block, addr, store_id)


def _kind(rec: AnyRecord) -> fmt.BlockKind:
    return fmt.BlockKind.COMMIT3 if isinstance(rec, fmt.CommitRecord3) else fmt.BlockKind.COMMIT2


def role(rec: AnyRecord, pos: int, nblocks: int) -> str | None:
    """"leading" or "trailing" for a record read at journal position ``pos``."""
    if pos == rec.first:
        return "leading"
    if pos == (rec.first + rec.span - 1) % nblocks:
        return "trailing"
    return None


@dataclass(slots=True)
class Mended:
    """A transaction made whole: its verified payload blocks and what was wrong with it."""

    record: AnyRecord
    images: list[bytes]  # every payload block (for COMMIT3: images, then stream blocks)
    damaged: list[int]  # offsets in the transaction (0 .. span-1) of blocks that did not verify
    rebuilt: int | None  # index of the payload block rebuilt from parity

    def stream(self) -> bytes:
        """The whole record stream of a compact transaction (b"" for COMMIT2)."""
        rec = self.record
        if not isinstance(rec, fmt.CommitRecord3):
            return b""
        tail = b"".join(self.images[len(rec.homes):])
        return rec.inline + tail[:rec.stream_bytes - len(rec.inline)]


def mend(rec: AnyRecord, blocks: list[bytes], start: int, nblocks: int,
         store_id: int) -> Mended | None:
    """Check the ``rec.span`` ``blocks`` read for ``rec``; None if they cannot be made whole."""
    n, span = rec.payload_blocks, rec.span
    has_parity = span == n + 3
    payload = list(blocks[1:n + 1])
    crc = fmt.image_crc
    bad = [i for i in range(n) if crc(payload[i]) != rec.crcs[i]]
    parity_ok = has_parity and crc(blocks[n + 1]) == rec.parity_crc
    rebuilt = None
    if bad:
        if len(bad) > 1 or not parity_ok:
            return None
        rebuilt = bad[0]
        fixed = xor_blocks([blocks[n + 1], *payload[:rebuilt], *payload[rebuilt + 1:]],
                           len(blocks[0]))
        if crc(fixed) != rec.crcs[rebuilt]:
            return None
        payload[rebuilt] = fixed
    kind = _kind(rec)
    damaged = []
    if decode_record(blocks[0], start + rec.first, store_id, kind) != rec:
        damaged.append(0)
    damaged += [1 + i for i in bad]
    if has_parity and not parity_ok:
        damaged.append(n + 1)
    trail_at = start + (rec.first + span - 1) % nblocks
    if decode_record(blocks[span - 1], trail_at, store_id, kind) != rec:
        damaged.append(span - 1)
    return Mended(rec, payload, damaged, rebuilt)


def describe(offset: int, rec: AnyRecord) -> str:
    """Human name of the block at ``offset`` inside the transaction of ``rec``."""
    n, span = rec.payload_blocks, rec.span
    if offset == 0:
        return "leading commit record"
    if offset == span - 1:
        return "trailing commit record"
    if offset == n + 1:
        return "parity block"
    i = offset - 1
    if i < len(rec.homes):
        return f"image {i} (home block {rec.homes[i]})"
    return f"record block {i - len(rec.homes)}"
