"""Every byte layout of the snapshot store, and nothing else.

This module is the format specification in code: no other module knows an
offset.  docs/on-disk-format.md is the prose version of the tables below and
must be kept in step with them.

All integers are little-endian.  Addresses of metadata blocks are *block
numbers* (byte offset // block_size); addresses of data are *chunk numbers*
(byte offset // chunk_size).  Chunk c holds blocks c*k .. c*k+k-1 where
k = chunk_size // block_size (block_size <= chunk_size always).

Common block header (every metadata block, 32 bytes)::

    OFFSET SIZE DESCRIPTION
         0    4 magic b"CSnp"
         4    2 kind (BlockKind)
         6    2 reserved, zero
         8    4 CRC32C of the whole block with this field zeroed, seeded with
                the kind's salt (KIND_SALT) so a block of one kind can never
                verify as another kind
        12    4 count: number of items in the payload (meaning per kind)
        16    8 self address: the block number this image belongs at (for a
                journal commit block, its own journal block number); catches
                misdirected writes
        24    8 store id: first 8 bytes of the store UUID; catches blocks left
                over from an earlier store on the same device

The payload follows at offset 32 and runs to the end of the block; unused
payload bytes are zero.  The per-kind payload layouts are documented on the
encode/decode functions below.

Invariants:
  * A block verifies only if magic, kind, self address, store id and CRC all
    match; structural checks (counts within capacity, keys strictly
    increasing, lengths in range) run on every decode.  Any failure raises
    CorruptionError naming the block.
  * Nothing here performs I/O.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import crc32c as _crc

from .errors import CorruptionError

BLOCK_MAGIC = b"CSnp"
SUPER_MAGIC = b"CSNAPSTO"
FORMAT_VERSION = 1

HEADER = struct.Struct("<4sHHIIQQ")
HEADER_SIZE = 32
assert HEADER.size == HEADER_SIZE

#: Feature bits, as in qcow2: an unknown *incompatible* bit makes the store
#: unopenable; unknown *compatible* bits are ignored; unknown *autoclear* bits
#: are cleared by any writer that does not understand them.
#:
#: INCOMPAT_GRANTS: the store keeps a table of client grants (chunks and snapshot
#: slots clients may still write without asking, see grants.py) and snapshots may be
#: in the CREATING state; a csnap that ignored either could let a stalled client
#: change a snapshot.
INCOMPAT_GRANTS = 1 << 0
#:
#: INCOMPAT_JOURNAL_V2: the journal holds redundant transactions (commit record,
#: images, parity, trailing commit record; see "Journal commit record, redundant
#: format" below).  Without it the journal holds the single-CRC format.
INCOMPAT_JOURNAL_V2 = 1 << 1
#:
#: INCOMPAT_COMPACT_JOURNAL: the journal holds compact transactions (kind COMMIT3):
#: logical records of what changed (an entry's exceptions, bitmap bits, grant
#: records, the superblock's changing fields) plus whole images of blocks changed
#: for the first time since the checkpoint, in the redundant envelope (see
#: "Journal commit record, compact format" below).  Set together with
#: INCOMPAT_JOURNAL_V2, whose envelope it keeps.
INCOMPAT_COMPACT_JOURNAL = 1 << 2
#:
#: INCOMPAT_HOLDS: a snapshot table entry's use count is the number of holds on the
#: snapshot (``csnapctl hold``), and a held snapshot is never deleted or squashed.  A
#: csnap that ignored it would delete or squash a snapshot an operator is relying on.
#: Set at every read-write open by a csnap that knows it (as INCOMPAT_GRANTS is).
INCOMPAT_HOLDS = 1 << 3
#:
#: INCOMPAT_CLONES: snapshots may be clones of other snapshots (snapshot entry flag
#: SNAP_FLAG_CLONE), and a clone may still be being filled (superblock offsets 272..287,
#: journal record CLONE): until its fill pass is done, a clone's copies of the chunks
#: past the fill cursor are its parent's.  A csnap that ignored the fill would change
#: or free those chunks under the clone.  Set at every read-write open by a csnap that
#: knows it (as INCOMPAT_HOLDS is).
INCOMPAT_CLONES = 1 << 4
#:
#: INCOMPAT_ORIGIN_GROWN: the origin was grown while snapshots existed, and the
#: superblock lists origin growth records (offset 288): a snapshot created before a
#: record's time has that record's (smaller) origin size.  A csnap that ignored them
#: would show such a snapshot chunks written to the origin after it was taken, and
#: would not copy them out for it.  Set by an origin growth that leaves records;
#: cleared by a read-write open once no snapshot needs a record (store/grow.py).
INCOMPAT_ORIGIN_GROWN = 1 << 5
#:
#: INCOMPAT_BITMAPS_MOVED: a store growth moved the bitmaps into the data area
#: (store/growth.py), and the journal may hold GEOMETRY records.  A csnap that did not
#: know it would take the moved bitmap blocks for leaked metadata (and csnap-check
#: --repair would free them).  Set by the growth that moves them, for good.
INCOMPAT_BITMAPS_MOVED = 1 << 6
#:
#: INCOMPAT_REVERT: the origin is being reverted to a snapshot (superblock offsets
#: 432..447, journal record REVERT; store/revert.py): chunks below the revert cursor
#: already hold the snapshot's data, the rest do not yet.  A csnap that ignored it
#: would serve the half-reverted origin as if it were whole.  Set while a revert runs.
INCOMPAT_REVERT = 1 << 7
#:
#: INCOMPAT_DATA_CRC: journal transactions may carry DATA records (the CRC32C of the
#: chunks they copied out, written under the same flush; store/datacheck.py), and
#: recovery drops a last transaction whose copied chunks do not match them.  A csnap
#: that ignored it would replay such a transaction and point snapshots at chunks that
#: never reached the disk.  Set at every read-write open by a csnap that knows it.
INCOMPAT_DATA_CRC = 1 << 8
INCOMPAT_KNOWN = (INCOMPAT_GRANTS | INCOMPAT_JOURNAL_V2 | INCOMPAT_COMPACT_JOURNAL
                  | INCOMPAT_HOLDS | INCOMPAT_CLONES | INCOMPAT_ORIGIN_GROWN
                  | INCOMPAT_BITMAPS_MOVED | INCOMPAT_REVERT | INCOMPAT_DATA_CRC)
COMPAT_KNOWN = 0
#:
#: AUTOCLEAR_SPACE_COUNTS: every non-free snapshot table entry's exclusive and shared
#: counts (offsets 20 and 26) are exactly those of the exception tree.  Set by a clean
#: close that knew them, cleared by every read-write open (and, being autoclear, by any
#: writer that does not know it); while it is set a reader may take the counts as they
#: are instead of counting the tree.
AUTOCLEAR_SPACE_COUNTS = 1 << 0
AUTOCLEAR_KNOWN = AUTOCLEAR_SPACE_COUNTS

#: Superblock flags.
FLAG_BUSY = 1 << 0  # a server or tool has the store open read-write
FLAG_NEEDS_CHECK = 1 << 1  # an I/O error hit metadata; run csnap-check
FLAG_CORRUPT = 1 << 2  # a checksum or overlap violation was detected

MIN_BLOCK_SIZE = 512
MAX_BLOCK_SIZE = 1 << 20
MIN_CHUNK_SIZE = 4096
MAX_CHUNK_SIZE = 1 << 20
MAX_SNAPSHOTS_LIMIT = 16384
NO_BLOCK = 0  # block 0 is a superblock slot, so 0 never addresses a tree block


class BlockKind(IntEnum):
    """What a metadata block holds."""

    SUPER = 1
    COMMIT = 2
    LEAF = 3
    NODE = 4
    CBITMAP = 5  # chunk allocation bitmap
    MBITMAP = 6  # metadata-block bitmap
    SNAPTAB = 7
    COMMIT2 = 8  # journal commit record, redundant format
    GRANTS = 9  # client grant table (grants.py)
    COMMIT3 = 10  # journal commit record, compact format


KIND_SALT = {
    BlockKind.SUPER: 0x5B1A7E01,
    BlockKind.COMMIT: 0xC0111702,
    BlockKind.LEAF: 0x1EAF0003,
    BlockKind.NODE: 0x90DE0004,
    BlockKind.CBITMAP: 0xB17C0005,
    BlockKind.MBITMAP: 0xB17B0006,
    BlockKind.SNAPTAB: 0x5AA70007,
    BlockKind.COMMIT2: 0xC0112708,
    BlockKind.GRANTS: 0x6AA17009,
    BlockKind.COMMIT3: 0xC011370A,
}


# ---------------------------------------------------------------------------
# Sealing and verifying blocks


def _crc_of(block: bytes | bytearray | memoryview, salt: int) -> int:
    view = memoryview(block)
    value = _crc.crc32c(view[:8], salt)
    value = _crc.crc32c(b"\0\0\0\0", value)
    return _crc.crc32c(view[12:], value)


def seal(kind: BlockKind, addr: int, store_id: int, count: int, payload: bytes,
         block_size: int) -> bytes:
    """Return a complete block image with header and checksum filled in."""
    if len(payload) > block_size - HEADER_SIZE:
        raise ValueError(f"{kind.name} payload of {len(payload)} bytes exceeds block")
    buf = bytearray(block_size)
    HEADER.pack_into(buf, 0, BLOCK_MAGIC, kind, 0, 0, count, addr, store_id)
    buf[HEADER_SIZE:HEADER_SIZE + len(payload)] = payload
    struct.pack_into("<I", buf, 8, _crc_of(buf, KIND_SALT[kind]))
    return bytes(buf)


def block_crc(block: bytes) -> int:
    """The stored CRC field of a block image."""
    return struct.unpack_from("<I", block, 8)[0]


@dataclass(frozen=True, slots=True)
class Header:
    kind: int
    crc: int
    count: int
    addr: int
    store_id: int


def peek_header(block: bytes) -> Header | None:
    """Decode a header without verifying; None if the magic is wrong."""
    magic, kind, _, crc, count, addr, store_id = HEADER.unpack_from(block, 0)
    if magic != BLOCK_MAGIC:
        return None
    return Header(kind, crc, count, addr, store_id)


def verify(block: bytes, kind: BlockKind, addr: int, store_id: int | None) -> int:
    """Check a block image; return its item count or raise CorruptionError."""
    hdr = peek_header(block)
    if hdr is None:
        raise CorruptionError(addr, kind.name, "bad magic (not a csnap metadata block)")
    if hdr.kind != kind:
        found = BlockKind(hdr.kind).name if hdr.kind in KIND_SALT else str(hdr.kind)
        raise CorruptionError(addr, kind.name, f"wrong block kind {found}")
    if _crc_of(block, KIND_SALT[kind]) != hdr.crc:
        raise CorruptionError(addr, kind.name, "checksum mismatch")
    if hdr.addr != addr:
        raise CorruptionError(addr, kind.name, f"misdirected: block says it belongs at {hdr.addr}")
    if store_id is not None and hdr.store_id != store_id:
        raise CorruptionError(addr, kind.name, "block belongs to a different store")
    return hdr.count


# ---------------------------------------------------------------------------
# Superblock (kind SUPER), stored twice: block 0 (slot A) and block 1 (slot B).
#
# A checkpoint writes the slot generation % 2, so a torn superblock write only
# ever damages the older copy.  Open reads both and uses the valid one with the
# higher generation.  Inside the journal the superblock image has home
# address 0.
#
# Payload (offsets relative to the block start):
#
#   OFFSET SIZE DESCRIPTION
#       32    8 magic b"CSNAPSTO"
#       40    4 format version (1)
#       44    4 incompatible feature bits
#       48    4 compatible feature bits
#       52    4 autoclear feature bits
#       56    4 metadata block size in bytes
#       60    4 chunk size in bytes
#       64    4 max snapshots (sharemap width in bits)
#       68    4 flags (FLAG_BUSY, FLAG_NEEDS_CHECK, FLAG_CORRUPT)
#       72   16 store UUID
#       88    8 store size in chunks
#       96    8 origin size in bytes (as seen at init; checked at open)
#      104    8 origin size in chunks (rounded up)
#      112    8 snapshot table first block
#      120    4 snapshot table block count
#      124    4 chunk bitmap block count
#      128    8 chunk bitmap first block
#      136    8 metadata bitmap first block
#      144    4 metadata bitmap block count
#      148    4 journal block count
#      152    8 journal first block
#      160    8 first chunk not reserved for fixed metadata
#      168    8 checkpoint generation (slot = generation % 2)
#      176    8 journal sequence expected at the tail
#      184    4 journal tail (block index inside the journal)
#      188    4 B-tree depth (number of index levels; 0 = the root is a leaf)
#      192    8 B-tree root block
#      200    8 free chunks
#      208    8 allocation cursor (chunk)
#      216    8 metadata chunk being carved into blocks (0 = none)
#      224    8 exception count
#      232    8 snapshot-delete pass cursor (logical chunk)
#      240    8 creation time (unix nanoseconds)
#      248    8 last open time (unix nanoseconds)
#      256    8 first block of the client grant table (0 = empty; grants.py)
#      264    8 HA epoch: the election epoch of the leader that last took the store
#               over (0 = never run in HA mode); journal transactions written
#               under an older epoch are ignored at replay (docs/reliability.md)
#      272    4 clone being filled: its snapshot slot + 1 (0 = no fill; INCOMPAT_CLONES)
#      276    4 that clone's parent slot
#      280    8 clone fill cursor (logical chunk): chunks below it are filled
#
# Stores made before the grant table have zeros at 256 (unused payload bytes are
# always zero), which reads as an empty table; likewise zeros at 264 read as
# "never taken over", so neither field needs a feature bit.

SUPER = struct.Struct("<8sIIIIIII I16sQQQ QI I Q Q I I Q Q Q Q I I Q Q Q Q Q Q Q Q Q Q IIQ")
SUPER_OFFSET = HEADER_SIZE
assert SUPER.size == 256, SUPER.size
#: Byte offset of the store UUID inside a superblock block (72 in the table above).
SUPER_UUID_OFFSET = SUPER_OFFSET + struct.calcsize("<8sIIIIIII I")
assert SUPER_UUID_OFFSET == 72


@dataclass(slots=True)
class SuperFields:
    """Decoded superblock; see the table above for meaning and layout."""

    version: int
    incompat: int
    compat: int
    autoclear: int
    block_size: int
    chunk_size: int
    max_snapshots: int
    flags: int
    uuid: bytes
    store_chunks: int
    origin_bytes: int
    origin_chunks: int
    snaptab_start: int
    snaptab_blocks: int
    cbitmap_blocks: int
    cbitmap_start: int
    mbitmap_start: int
    mbitmap_blocks: int
    journal_blocks: int
    journal_start: int
    data_start_chunk: int
    generation: int
    journal_seq: int
    journal_tail: int
    depth: int
    root: int
    free_chunks: int
    alloc_cursor: int
    meta_chunk: int
    exceptions: int
    delete_cursor: int
    created_ns: int
    opened_ns: int
    grants_root: int = 0
    ha_epoch: int = 0
    clone_slot: int = 0  # slot + 1 of the clone being filled; 0: none
    clone_parent: int = 0
    clone_cursor: int = 0
    revert_slot: int = 0  # slot + 1 of the snapshot the origin is being reverted to; 0: none
    revert_cursor: int = 0
    #: origin growth records, oldest first: (grown_ns, origin bytes before that growth);
    #: a snapshot created before grown_ns has that size (offset 288, store/grow.py)
    size_records: tuple[tuple[int, int], ...] = ()

    @property
    def store_id(self) -> int:
        return int.from_bytes(self.uuid[:8], "little")

    @property
    def geometry(self) -> tuple[int, ...]:
        """The fields only a growth changes (journaled as a GEOMETRY record, store/growth.py)."""
        return (self.store_chunks, self.origin_bytes, self.origin_chunks, self.cbitmap_start,
                self.cbitmap_blocks, self.mbitmap_start, self.mbitmap_blocks,
                self.incompat, *(v for r in self.size_records for v in r))


_SUPER_ORDER = (
    "version incompat compat autoclear block_size chunk_size max_snapshots flags uuid "
    "store_chunks origin_bytes origin_chunks snaptab_start snaptab_blocks cbitmap_blocks "
    "cbitmap_start mbitmap_start mbitmap_blocks journal_blocks journal_start data_start_chunk "
    "generation journal_seq journal_tail depth root free_chunks alloc_cursor meta_chunk "
    "exceptions delete_cursor created_ns opened_ns grants_root ha_epoch "
    "clone_slot clone_parent clone_cursor"
).split()

#: Origin growth records (INCOMPAT_ORIGIN_GROWN), after the fixed fields:
#:   OFFSET SIZE DESCRIPTION
#:      288    4 number of records g (0 = none; at most SIZE_RECORDS_MAX)
#:      292    4 reserved, zero
#:      296 16*g records, oldest first: u64 grown_ns, u64 origin bytes before it
SIZE_RECORDS = struct.Struct("<II")
SIZE_RECORD = struct.Struct("<QQ")
SIZE_RECORDS_OFFSET = SUPER_OFFSET + SUPER.size
assert SIZE_RECORDS_OFFSET == 288
SIZE_RECORDS_MAX = 8  # fits a 512-byte block: 296 + 8 * 16 = 424
#: The revert in progress (INCOMPAT_REVERT), at a fixed place after the growth records:
#:   OFFSET SIZE DESCRIPTION
#:      432    4 snapshot slot + 1 the origin is being reverted to (0 = no revert)
#:      436    4 reserved, zero
#:      440    8 revert cursor (logical chunk): chunks below it hold the snapshot's data
REVERT = struct.Struct("<IIQ")
REVERT_OFFSET = 432


def encode_super(sb: SuperFields) -> bytes:
    """Payload bytes of a superblock."""
    out = SUPER.pack(SUPER_MAGIC, *(getattr(sb, name) for name in _SUPER_ORDER))
    if sb.size_records:
        out += SIZE_RECORDS.pack(len(sb.size_records), 0) + b"".join(
            SIZE_RECORD.pack(*r) for r in sb.size_records)
    if sb.revert_slot:
        out = out.ljust(REVERT_OFFSET - SUPER_OFFSET, b"\0")
        out += REVERT.pack(sb.revert_slot, 0, sb.revert_cursor)
    return out


def decode_super(block: bytes, slot: int) -> SuperFields:
    """Verify and decode a superblock image read from ``slot``."""
    verify(block, BlockKind.SUPER, slot, None)
    values = SUPER.unpack_from(block, SUPER_OFFSET)
    if values[0] != SUPER_MAGIC:
        raise CorruptionError(slot, "SUPER", "bad superblock magic")
    sb = SuperFields(*values[1:])
    if HEADER.unpack_from(block, 0)[6] != sb.store_id:
        raise CorruptionError(slot, "SUPER", "store id in header does not match UUID")
    count, _ = SIZE_RECORDS.unpack_from(block, SIZE_RECORDS_OFFSET)
    if count:
        if count > SIZE_RECORDS_MAX:
            raise CorruptionError(slot, "SUPER", f"{count} origin growth records (at most "
                                  f"{SIZE_RECORDS_MAX})")
        base = SIZE_RECORDS_OFFSET + SIZE_RECORDS.size
        sb.size_records = tuple(SIZE_RECORD.unpack_from(block, base + i * SIZE_RECORD.size)
                                for i in range(count))
    sb.revert_slot, _, sb.revert_cursor = REVERT.unpack_from(block, REVERT_OFFSET)
    return sb


# ---------------------------------------------------------------------------
# Journal commit block, single-CRC format (kind COMMIT), used while the
# superblock lacks INCOMPAT_JOURNAL_V2 (stores made before it existed; a
# read-write open replays such a journal and then switches to the redundant
# format).  A transaction occupies 1 + n consecutive
# journal blocks (wrapping at the end of the journal): the commit block first,
# then the n block images in the order of the address list.
#
#   OFFSET SIZE DESCRIPTION
#       12    4 (header count) n, the number of block images that follow
#       16    8 (header self address) this commit block's own block number
#       32    8 transaction sequence number
#       40    4 n again (cross-check)
#       44    4 reserved, zero
#       48  8*n home block number of each image (0 = the superblock)
#
# The header CRC of a commit block is special: it is the CRC32C, seeded with
# the COMMIT salt, of the commit block (CRC field zeroed) followed by all n
# images.  A transaction is committed iff that CRC matches, so a torn or
# partly written transaction is never replayed.

COMMIT = struct.Struct("<QII")
COMMIT_FIXED = HEADER_SIZE + COMMIT.size


def commit_capacity(block_size: int) -> int:
    """How many block images one commit block can describe."""
    return (block_size - COMMIT_FIXED) // 8


def seal_commit(addr: int, store_id: int, seq: int, homes: list[int],
                images: list[bytes], block_size: int) -> bytes:
    """Build a commit block whose CRC covers itself and every image."""
    n = len(homes)
    buf = bytearray(block_size)
    HEADER.pack_into(buf, 0, BLOCK_MAGIC, BlockKind.COMMIT, 0, 0, n, addr, store_id)
    COMMIT.pack_into(buf, HEADER_SIZE, seq, n, 0)
    struct.pack_into(f"<{n}Q", buf, COMMIT_FIXED, *homes)
    value = _crc_of(buf, KIND_SALT[BlockKind.COMMIT])
    for image in images:
        value = _crc.crc32c(image, value)
    struct.pack_into("<I", buf, 8, value)
    return bytes(buf)


@dataclass(frozen=True, slots=True)
class CommitInfo:
    seq: int
    homes: list[int]
    crc: int


def decode_commit(block: bytes, addr: int, store_id: int) -> CommitInfo | None:
    """Parse a commit block's header; None if it is not a plausible commit.

    The CRC cannot be checked until the images are read: see commit_valid().
    """
    hdr = peek_header(block)
    if hdr is None or hdr.kind != BlockKind.COMMIT or hdr.addr != addr:
        return None
    if hdr.store_id != store_id:
        return None
    seq, n, _ = COMMIT.unpack_from(block, HEADER_SIZE)
    if n != hdr.count or n > commit_capacity(len(block)):
        return None
    homes = list(struct.unpack_from(f"<{n}Q", block, COMMIT_FIXED))
    return CommitInfo(seq, homes, hdr.crc)


def commit_valid(block: bytes, images: list[bytes]) -> bool:
    """True if the commit CRC covers exactly this commit block and images."""
    value = _crc_of(block, KIND_SALT[BlockKind.COMMIT])
    for image in images:
        value = _crc.crc32c(image, value)
    return value == block_crc(block)


# ---------------------------------------------------------------------------
# Journal commit record, redundant format (kind COMMIT2; INCOMPAT_JOURNAL_V2).
# A transaction of n images occupies n + 3 consecutive journal blocks,
# wrapping at the end of the journal:
#
#   JOURNAL POSITION  BLOCK
#   first             leading commit record
#   first + 1 + i     image i (i = 0 .. n-1), in the order of the lists below
#   first + n + 1     parity: the XOR of the n images (all zero when n = 0)
#   first + n + 2     trailing commit record: the leading record with only the
#                     header self address (and so the header CRC) changed
#
# Commit record:
#
#   OFFSET    SIZE DESCRIPTION
#       12       4 (header count) n, the number of images
#       16       8 (header self address) this record's own block number
#       32       8 transaction sequence number
#       40       8 epoch of the writer (carried for fencing; 0 = none)
#       48       4 first: journal position of the leading record
#       52       4 n again (cross-check)
#       56     8*n home block number of each image (0 = the superblock)
#   56+8n      4*n CRC32C (seed 0) of each image, all block_size bytes as stored
#   56+12n       4 CRC32C (seed 0) of the parity block
#
# The header CRC is the ordinary kind-salted block CRC, so a record verifies on
# its own.  A record whose self address is journal_start + first is the
# leading copy; journal_start + (first + n + 2) % journal_blocks, the trailing
# one.  Every block of the transaction is covered by a CRC that both records
# list, so any one damaged block is found, and the other record or the parity
# stands in for it.  n MUST NOT exceed max_images (journal.py), which bounds
# the search for a trailing record.

COMMIT2 = struct.Struct("<QQII")
COMMIT2_FIXED = HEADER_SIZE + COMMIT2.size
assert COMMIT2_FIXED == 56


def commit2_capacity(block_size: int) -> int:
    """How many images one redundant-format commit record can describe."""
    return (block_size - COMMIT2_FIXED - 4) // 12


def image_crc(block: bytes | bytearray | memoryview) -> int:
    """The CRC a redundant commit record lists for an image or parity block."""
    return _crc.crc32c(block)


@dataclass(frozen=True, slots=True)
class CommitRecord:
    """The decoded payload of a redundant-format commit record."""

    seq: int
    epoch: int
    first: int
    homes: tuple[int, ...]
    crcs: tuple[int, ...]
    parity_crc: int

    @property
    def span(self) -> int:
        """Journal blocks the transaction occupies."""
        return len(self.homes) + 3

    @property
    def payload_blocks(self) -> int:
        return len(self.homes)


def seal_commit2(addr: int, store_id: int, rec: CommitRecord, block_size: int) -> bytes:
    """A sealed commit record for self address ``addr``."""
    n = len(rec.homes)
    if len(rec.crcs) != n or n > commit2_capacity(block_size):
        raise ValueError(f"commit record for {n} images does not fit or is inconsistent")
    payload = COMMIT2.pack(rec.seq, rec.epoch, rec.first, n) + struct.pack(
        f"<{n}Q{n + 1}I", *rec.homes, *rec.crcs, rec.parity_crc)
    return seal(BlockKind.COMMIT2, addr, store_id, n, payload, block_size)


def readdress_commit2(block: bytes, addr: int, kind: BlockKind = BlockKind.COMMIT2) -> bytes:
    """A sealed commit record moved to self address ``addr`` (one CRC pass, one copy)."""
    head = bytearray(block[:HEADER_SIZE])
    struct.pack_into("<IIQ", head, 8, 0, struct.unpack_from("<I", block, 12)[0], addr)
    value = _crc.crc32c(memoryview(block)[HEADER_SIZE:], _crc_of(head, KIND_SALT[kind]))
    struct.pack_into("<I", head, 8, value)
    return bytes(head) + block[HEADER_SIZE:]


def decode_commit2(block: bytes, addr: int, store_id: int) -> CommitRecord | None:
    """A verified commit record read at ``addr``, or None if it is not one."""
    hdr = peek_header(block)
    if (hdr is None or hdr.kind != BlockKind.COMMIT2 or hdr.addr != addr
            or hdr.store_id != store_id or hdr.count > commit2_capacity(len(block))):
        return None
    if _crc_of(block, KIND_SALT[BlockKind.COMMIT2]) != hdr.crc:
        return None
    seq, epoch, first, n = COMMIT2.unpack_from(block, HEADER_SIZE)
    if n != hdr.count:
        return None
    values = struct.unpack_from(f"<{n}Q{n + 1}I", block, COMMIT2_FIXED)
    return CommitRecord(seq, epoch, first, values[:n], values[n:2 * n], values[2 * n])


# ---------------------------------------------------------------------------
# Journal commit record, compact format (kind COMMIT3; INCOMPAT_COMPACT_JOURNAL).
# A transaction holds *records* (a stream of the logical changes below) and
# whole *images* of some blocks, in the redundant envelope of COMMIT2:
#
#   JOURNAL POSITION  BLOCK
#   first             leading commit record (it may hold the start of the stream)
#   first + 1 + i     payload block i, i = 0 .. n-1: first the images (sealed
#                     blocks, self address == home), then the rest of the record
#                     stream in raw blocks (the last one zero padded)
#   first + n + 1     parity: the XOR of the n payload blocks; only when n > 0
#   last              trailing commit record: the leading one with only the
#                     header self address (and so the header CRC) changed
#
# so a transaction spans n + 3 blocks, or 2 when n = 0 (everything inline).
#
#   OFFSET    SIZE DESCRIPTION
#       12       4 (header count) n, the number of payload blocks
#       16       8 (header self address) this record's own block number
#       32       8 transaction sequence number
#       40       8 epoch of the writer (0 = none)
#       48       4 first: journal position of the leading record
#       52       4 n again (cross-check)
#       56       4 m: images among the payload blocks (the first m)
#       60       4 L: length in bytes of the whole record stream
#       64       4 I: bytes of the stream held in this record (the rest, L - I,
#                  fills the n - m stream blocks: n - m == ceil((L - I) / block_size))
#       68       4 reserved, zero
#       72     8*m home block number of each image
#   72+8m      4*n CRC32C (seed 0) of each payload block, all block_size bytes
#   72+8m+4n     4 CRC32C (seed 0) of the parity block (zero when n = 0)
#   76+8m+4n     I the first I bytes of the record stream
#
# Record stream: records back to back, each starting with a type byte:
#
#   ENTRY  1 | u64 leaf block | u64 logical chunk | u16 m | m exceptions as in a
#            leaf entry (u64 store chunk, u16 offset, u16 length, bytes):
#            the chunk's exception list in that leaf is now exactly this (m = 0:
#            the chunk has no entry any more)
#   BITS   2 | u64 bitmap block | u32 first bit | u32 count | u8 value (0/1):
#            bits first..first+count-1 of that block's payload are now value
#   SUPER  3 | u32 flags | u32 depth | u64 root | u64 free chunks | u64 alloc
#            cursor | u64 metadata chunk | u64 exceptions | u64 delete cursor |
#            u64 grant table root: the superblock's changing fields are now these
#   GRANT  4 | u64 grant block | u16 record slot | u64 client | u8 kind | u16
#            snapshot slot | u16 n | n runs (u64 start, u64 count): that record
#            slot is now this (kind 0: free)
#   CLONE  5 | u32 clone slot + 1 (0: none) | u32 parent slot | u64 fill cursor:
#            the superblock's clone-fill fields are now these (INCOMPAT_CLONES)
#   REVERT 7 | u32 snapshot slot + 1 (0: none) | u64 revert cursor: the superblock's
#            revert fields are now these (INCOMPAT_REVERT)
#   GEOMETRY 6 | u64 store chunks | u64 origin bytes | u64 origin chunks | u64 chunk
#            bitmap start | u32 its blocks | u64 metadata bitmap start | u32 its
#            blocks | u32 incompatible bits | u8 g | g origin growth records (u64
#            grown_ns, u64 bytes before): a growth's superblock fields (growth.py)
#
# Every record states a result, not a difference, so applying it twice is the
# same as once.  A record names a block that has an image earlier in the
# replayed journal (the writer images a block the first time it changes after
# a checkpoint, and whenever its shape changes): replay applies records to
# those images only, never to a home block a crashed checkpoint may have torn.

COMMIT3 = struct.Struct("<QQIIIIII")
COMMIT3_FIXED = HEADER_SIZE + COMMIT3.size
assert COMMIT3_FIXED == 72


@dataclass(frozen=True, slots=True)
class CommitRecord3:
    """The decoded payload of a compact-format commit record."""

    seq: int
    epoch: int
    first: int
    homes: tuple[int, ...]  # of the images, the first len(homes) payload blocks
    crcs: tuple[int, ...]  # of every payload block
    parity_crc: int
    stream_bytes: int
    inline: bytes

    @property
    def payload_blocks(self) -> int:
        return len(self.crcs)

    @property
    def span(self) -> int:
        """Journal blocks the transaction occupies (no parity when it has no payload)."""
        n = len(self.crcs)
        return n + 3 if n else 2


def commit3_room(block_size: int, images: int, payload: int) -> int:
    """Stream bytes a commit record with these counts holds inline (negative: too many)."""
    return block_size - COMMIT3_FIXED - 8 * images - 4 * payload - 4


def seal_commit3(addr: int, store_id: int, rec: CommitRecord3, block_size: int) -> bytes:
    """A sealed compact-format commit record for self address ``addr``."""
    m, n = len(rec.homes), len(rec.crcs)
    if m > n or len(rec.inline) > commit3_room(block_size, m, n):
        raise ValueError(f"commit record for {m} images, {n} payload blocks does not fit")
    payload = COMMIT3.pack(rec.seq, rec.epoch, rec.first, n, m, rec.stream_bytes,
                           len(rec.inline), 0) + struct.pack(
        f"<{m}Q{n + 1}I", *rec.homes, *rec.crcs, rec.parity_crc) + rec.inline
    return seal(BlockKind.COMMIT3, addr, store_id, n, payload, block_size)


def decode_commit3(block: bytes, addr: int, store_id: int) -> CommitRecord3 | None:
    """A verified compact-format commit record read at ``addr``, or None."""
    hdr = peek_header(block)
    if (hdr is None or hdr.kind != BlockKind.COMMIT3 or hdr.addr != addr
            or hdr.store_id != store_id):
        return None
    if _crc_of(block, KIND_SALT[BlockKind.COMMIT3]) != hdr.crc:
        return None
    seq, epoch, first, n, m, total, inline, _ = COMMIT3.unpack_from(block, HEADER_SIZE)
    bs = len(block)
    room = commit3_room(bs, m, n)
    if n != hdr.count or m > n or inline > total or room < 0 or inline > room:
        return None
    if n - m != -(-(total - inline) // bs):
        return None
    values = struct.unpack_from(f"<{m}Q{n + 1}I", block, COMMIT3_FIXED)
    at = COMMIT3_FIXED + 8 * m + 4 * n + 4
    return CommitRecord3(seq, epoch, first, values[:m], values[m:m + n], values[m + n],
                         total, bytes(block[at:at + inline]))


def commit_fields_unverified(block: bytes, addr: int, store_id: int,
                             kind: BlockKind) -> tuple[int, int] | None:
    """(sequence, first) of what looks like a commit record of ``kind`` at ``addr``.

    CRC unchecked: used to tell a torn transaction from the plain end of the
    journal in reports, and to skip blocks that cannot be the record sought
    before paying for a CRC; never to accept anything.  Both redundant formats
    keep these two fields at the same offsets (32 and 48).
    """
    hdr = peek_header(block)
    if hdr is None or hdr.kind != kind or hdr.addr != addr or hdr.store_id != store_id:
        return None
    seq, _epoch, first = struct.unpack_from("<QQI", block, HEADER_SIZE)
    return seq, first


REC_ENTRY, REC_BITS, REC_SUPER, REC_GRANT, REC_CLONE, REC_GEOMETRY, REC_REVERT, REC_DATA = (
    1, 2, 3, 4, 5, 6, 7, 8)
_REC_DATA = struct.Struct("<BH")  # kind, number of runs
#: One run of a DATA record: first store chunk, chunks, CRC32C of their bytes.
DATA_RUN = struct.Struct("<QII")
#: Runs in one DATA record at most (a transaction with more carries several).
DATA_RUNS_MAX = 0xFFFF
_REC_REVERT = struct.Struct("<BIQ")
#: The superblock fields a REVERT record carries, in record order.
REVERT_RECORD_FIELDS = ("revert_slot", "revert_cursor")
_REC_ENTRY = struct.Struct("<BQQH")
_REC_CLONE = struct.Struct("<BIIQ")
_REC_BITS = struct.Struct("<BQIIB")
_REC_SUPER = struct.Struct("<BIIQQQQQQQ")
_REC_GRANT = struct.Struct("<BQHQBHH")
_REC_GEOMETRY = struct.Struct("<BQQQQIQIIB")
#: The superblock fields a GEOMETRY record carries (a growth, store/growth.py), in record
#: order; then the origin growth records (u64 grown_ns, u64 bytes before), as many as the
#: last byte says.
GEOMETRY_RECORD_FIELDS = ("store_chunks", "origin_bytes", "origin_chunks", "cbitmap_start",
                          "cbitmap_blocks", "mbitmap_start", "mbitmap_blocks", "incompat")
#: The superblock fields a SUPER record carries, in record order.  Every other
#: field changes only at open (followed by a checkpoint) or never.
SUPER_RECORD_FIELDS = ("flags", "depth", "root", "free_chunks", "alloc_cursor", "meta_chunk",
                       "exceptions", "delete_cursor", "grants_root")
#: The superblock fields a CLONE record carries (the clone fill), in record order.
CLONE_RECORD_FIELDS = ("clone_slot", "clone_parent", "clone_cursor")


def entry_record(block: int, chunk: int, excs: Excs) -> bytes:
    """ENTRY: the exceptions of ``chunk`` in leaf ``block`` are now ``excs``."""
    out = bytearray(_REC_ENTRY.pack(REC_ENTRY, block, chunk, len(excs)))
    encode_exceptions(out, excs)
    return bytes(out)


def bits_record(block: int, first: int, count: int, value: int) -> bytes:
    """BITS: payload bits ``first .. first+count-1`` of bitmap ``block`` are now ``value``."""
    return _REC_BITS.pack(REC_BITS, block, first, count, value)


def super_record(f: SuperFields) -> bytes:
    """SUPER: the superblock's changing fields are now those of ``f``."""
    return _REC_SUPER.pack(REC_SUPER, *(getattr(f, name) for name in SUPER_RECORD_FIELDS))


def revert_record(f: SuperFields) -> bytes:
    """REVERT: the superblock's revert fields are now those of ``f``."""
    return _REC_REVERT.pack(REC_REVERT, *(getattr(f, name) for name in REVERT_RECORD_FIELDS))


def clone_record(f: SuperFields) -> bytes:
    """CLONE: the superblock's clone-fill fields are now those of ``f``."""
    return _REC_CLONE.pack(REC_CLONE, *(getattr(f, name) for name in CLONE_RECORD_FIELDS))


def geometry_record(f: SuperFields) -> bytes:
    """GEOMETRY: the sizes, the bitmaps' places, the incompatible features and the origin
    growth records are now those of ``f`` (only a growth changes them while serving)."""
    out = _REC_GEOMETRY.pack(REC_GEOMETRY, *(getattr(f, n) for n in GEOMETRY_RECORD_FIELDS),
                             len(f.size_records))
    return out + b"".join(SIZE_RECORD.pack(*r) for r in f.size_records)


def grant_record(block: int, index: int, rec: GrantRecord | None) -> bytes:
    """GRANT: record slot ``index`` of grant ``block`` is now ``rec`` (None: free)."""
    if rec is None:
        return _REC_GRANT.pack(REC_GRANT, block, index, 0, GRANT_FREE, 0, 0)
    runs = rec.runs or []
    out = bytearray(_REC_GRANT.pack(REC_GRANT, block, index, rec.client, rec.kind, rec.slot,
                                    len(runs)))
    for start, count in runs:
        out += GRANT_RUN.pack(start, count)
    return bytes(out)


def data_record_size(runs: int) -> int:
    """Encoded bytes of the DATA records covering ``runs`` copy runs (0 for none)."""
    records = -(-runs // DATA_RUNS_MAX)
    return records * _REC_DATA.size + runs * DATA_RUN.size


def data_record(runs: list[tuple[int, int, int]]) -> bytes:
    """DATA: these (first store chunk, chunks, CRC32C) runs were copied by this
    transaction, under its own flush (store/datacheck.py)."""
    out = bytearray()
    for at in range(0, len(runs), DATA_RUNS_MAX):
        part = runs[at:at + DATA_RUNS_MAX]
        out += _REC_DATA.pack(REC_DATA, len(part))
        for run in part:
            out += DATA_RUN.pack(*run)
    return bytes(out)


Record = tuple  # (REC_*, fields...) as decode_records yields them


def decode_records(stream: bytes, where: int) -> list[Record]:
    """Every record of a stream; CorruptionError (at block ``where``) if it is malformed.

    ENTRY -> (1, block, chunk, ((store, sharemap), ...)); BITS -> (2, block, first, count, value);
    SUPER -> (3, {field: value}); GRANT -> (4, block, index, GrantRecord | None);
    CLONE -> (5, {field: value});
    GEOMETRY -> (6, {field: value, "size_records": ((grown_ns, bytes), ...)});
    REVERT -> (7, {field: value}); DATA -> (8, ((store chunk, chunks, crc), ...)).
    """
    out: list[Record] = []
    pos, end = 0, len(stream)
    try:
        while pos < end:
            kind = stream[pos]
            if kind == REC_ENTRY:
                _, block, chunk, m = _REC_ENTRY.unpack_from(stream, pos)
                excs, pos = decode_exceptions(stream, pos + _REC_ENTRY.size, m, end, where,
                                              chunk, "COMMIT3")
                out.append((REC_ENTRY, block, chunk, excs))
            elif kind == REC_BITS:
                _, block, first, count, value = _REC_BITS.unpack_from(stream, pos)
                if value > 1:
                    raise CorruptionError(where, "COMMIT3", f"bad bit value in record at {pos}")
                out.append((REC_BITS, block, first, count, value))
                pos += _REC_BITS.size
            elif kind == REC_SUPER:
                values = _REC_SUPER.unpack_from(stream, pos)[1:]
                out.append((REC_SUPER, dict(zip(SUPER_RECORD_FIELDS, values, strict=True))))
                pos += _REC_SUPER.size
            elif kind == REC_GRANT:
                _, block, index, client, gkind, slot, n = _REC_GRANT.unpack_from(stream, pos)
                pos += _REC_GRANT.size
                runs = [GRANT_RUN.unpack_from(stream, pos + 16 * i) for i in range(n)]
                pos += 16 * n
                if pos > end or gkind not in (GRANT_FREE, GRANT_ORIGIN, GRANT_WRITER):
                    raise CorruptionError(where, "COMMIT3", "bad grant record in the journal")
                rec = None if gkind == GRANT_FREE else GrantRecord(
                    client, gkind, slot, runs if gkind == GRANT_ORIGIN else None)
                out.append((REC_GRANT, block, index, rec))
            elif kind == REC_REVERT:
                values = _REC_REVERT.unpack_from(stream, pos)[1:]
                out.append((REC_REVERT, dict(zip(REVERT_RECORD_FIELDS, values, strict=True))))
                pos += _REC_REVERT.size
            elif kind == REC_CLONE:
                values = _REC_CLONE.unpack_from(stream, pos)[1:]
                out.append((REC_CLONE, dict(zip(CLONE_RECORD_FIELDS, values, strict=True))))
                pos += _REC_CLONE.size
            elif kind == REC_DATA:
                n = _REC_DATA.unpack_from(stream, pos)[1]
                pos += _REC_DATA.size
                if pos + n * DATA_RUN.size > end:
                    raise CorruptionError(where, "COMMIT3", "data record runs past its end")
                out.append((REC_DATA, tuple(DATA_RUN.unpack_from(stream, pos + DATA_RUN.size * i)
                                            for i in range(n))))
                pos += n * DATA_RUN.size
            elif kind == REC_GEOMETRY:
                values = _REC_GEOMETRY.unpack_from(stream, pos)
                pos += _REC_GEOMETRY.size
                n = values[-1]
                if n > SIZE_RECORDS_MAX or pos + n * SIZE_RECORD.size > end:
                    raise CorruptionError(where, "COMMIT3", "bad geometry record in the journal")
                fields: dict[str, Any] = dict(zip(GEOMETRY_RECORD_FIELDS, values[1:-1],
                                                  strict=True))
                fields["size_records"] = tuple(SIZE_RECORD.unpack_from(stream, pos + 16 * i)
                                               for i in range(n))
                pos += n * SIZE_RECORD.size
                out.append((REC_GEOMETRY, fields))
            else:
                raise CorruptionError(where, "COMMIT3", f"unknown record type {kind} at {pos}")
    except struct.error as exc:
        raise CorruptionError(where, "COMMIT3", "journal records run past their end") from exc
    return out


# ---------------------------------------------------------------------------
# B-tree index node (kind NODE).  count = number of children n (>= 1).
#
#   OFFSET     SIZE DESCRIPTION
#       32+16i    8 key i: lowest logical chunk routed to child i; key 0 is the
#                   lower bound of the whole node's range
#       40+16i    8 child i block number
#
# Keys are strictly increasing.  Child i covers [key i, key i+1) and the last
# child covers [key n-1, the node's own upper bound).

NODE_ENTRY = struct.Struct("<QQ")


def node_capacity(block_size: int) -> int:
    return (block_size - HEADER_SIZE) // NODE_ENTRY.size


def encode_node(keys: list[int], children: list[int]) -> bytes:
    flat = [v for pair in zip(keys, children, strict=True) for v in pair]
    return struct.pack(f"<{len(flat)}Q", *flat)


def decode_node(block: bytes, addr: int, count: int) -> tuple[list[int], list[int]]:
    if count < 1 or count > node_capacity(len(block)):
        raise CorruptionError(addr, "NODE", f"child count {count} out of range")
    flat = struct.unpack_from(f"<{2 * count}Q", block, HEADER_SIZE)
    keys, children = list(flat[0::2]), list(flat[1::2])
    for i in range(1, count):
        if keys[i] <= keys[i - 1]:
            raise CorruptionError(addr, "NODE", f"keys out of order at entry {i}")
    for child in children:
        if child == NO_BLOCK:
            raise CorruptionError(addr, "NODE", "null child pointer")
    return keys, children


# ---------------------------------------------------------------------------
# B-tree leaf (kind LEAF).  count = number of logical chunks listed.  Each
# logical chunk entry is variable length; entries are sorted by chunk:
#
#   SIZE DESCRIPTION
#      8 logical chunk
#      2 number of exceptions m (>= 1)
#   then m exceptions, each:
#      8 store chunk holding the copy
#      2 sharemap byte offset o
#      2 sharemap byte length l (>= 1)
#      l sharemap bytes: bit (8*(o+j) + b) is bit b of byte j; bit s set means
#        snapshot slot s uses this copy
#
# Sharemaps are trimmed to the bytes that hold set bits, so a copy used by one
# snapshot costs 13 bytes whatever --max-snapshots is.

LEAF_ENTRY = struct.Struct("<QH")
LEAF_EXC = struct.Struct("<QHH")
ENTRY_OVERHEAD = LEAF_ENTRY.size
EXC_OVERHEAD = LEAF_EXC.size


def leaf_capacity(block_size: int) -> int:
    return block_size - HEADER_SIZE


#: One exception as a leaf holds it: (store chunk, sharemap of its users); bit s of the
#: sharemap set means snapshot slot s reads this copy.  An entry's exceptions are a tuple
#: of them (``Excs``), replaced whole when they change (only store/exmap.py does).  Plain
#: tuples of ints on purpose: the garbage collector stops tracking them, so a cache of
#: millions of exceptions adds nothing to a full collection (as class instances, 2M of
#: them made every full collection stop the event loop for about 0.35 s).
Exc = tuple[int, int]
Excs = tuple[Exc, ...]


def sharemap_size(sharemap: int) -> int:
    """Encoded bytes of one exception carrying ``sharemap``."""
    low = (sharemap & -sharemap).bit_length() - 1
    return EXC_OVERHEAD + (sharemap.bit_length() + 7) // 8 - low // 8


def entry_size(excs: Excs) -> int:
    """Encoded bytes of one logical chunk entry with exceptions ``excs``."""
    return ENTRY_OVERHEAD + sum(sharemap_size(sharemap) for _, sharemap in excs)


_ONE_BYTE_EXC = struct.Struct("<QHHB")


def encode_exceptions(out: bytearray, excs: Excs) -> None:
    """Append the encoded exceptions of one entry (after its chunk and count)."""
    exc1, exc = _ONE_BYTE_EXC.pack, LEAF_EXC.pack
    for store, sharemap in excs:
        if sharemap < 256:  # the common case: snapshot slots 0..7
            out += exc1(store, 0, 1, sharemap)
            continue
        low = ((sharemap & -sharemap).bit_length() - 1) // 8
        raw = (sharemap >> (8 * low)).to_bytes((sharemap.bit_length() + 7) // 8 - low, "little")
        out += exc(store, low, len(raw))
        out += raw


def encode_leaf(keys: list[int], vals: list[Excs]) -> bytes:
    out = bytearray()
    entry, exc1, exc = LEAF_ENTRY.pack, _ONE_BYTE_EXC.pack, LEAF_EXC.pack
    for chunk, excs in zip(keys, vals, strict=True):
        out += entry(chunk, len(excs))
        for store, sharemap in excs:  # encode_exceptions, inlined: hot at every commit
            if sharemap < 256:
                out += exc1(store, 0, 1, sharemap)
                continue
            low = ((sharemap & -sharemap).bit_length() - 1) // 8
            raw = (sharemap >> (8 * low)).to_bytes((sharemap.bit_length() + 7) // 8 - low,
                                                   "little")
            out += exc(store, low, len(raw))
            out += raw
    return bytes(out)


def decode_exceptions(block: bytes | memoryview, pos: int, m: int, end: int, addr: int,
                      chunk: int, kind: str = "LEAF") -> tuple[Excs, int]:
    """``m`` exceptions from ``pos``; return them and the position after them."""
    excs = []
    exc_hdr, from_bytes = LEAF_EXC.unpack_from, int.from_bytes
    for _ in range(m):
        store, off, length = exc_hdr(block, pos)
        pos += EXC_OVERHEAD
        if length == 1 and pos < end:  # the common case: one sharemap byte
            sharemap = block[pos] << (8 * off)
        elif length == 0 or pos + length > end:
            raise CorruptionError(addr, kind, f"bad sharemap for chunk {chunk}")
        else:
            sharemap = from_bytes(block[pos:pos + length], "little") << (8 * off)
        if sharemap == 0:
            raise CorruptionError(addr, kind, f"empty sharemap for chunk {chunk}")
        pos += length
        excs.append((store, sharemap))
    return tuple(excs), pos


_ONE_EXC_ENTRY = struct.Struct("<QHQHHB")  # an entry of one exception, one sharemap byte


def decode_leaf(block: bytes, addr: int, count: int) -> tuple[list[int], list[Excs], int]:
    """Return keys, exception lists and the payload bytes used."""
    keys: list[int] = []
    vals: list[Excs] = []
    pos, end = HEADER_SIZE, len(block)
    prev = -1
    one, one_size = _ONE_EXC_ENTRY.unpack_from, _ONE_EXC_ENTRY.size
    try:
        for _ in range(count):
            if pos + one_size <= end:
                chunk, m, store, off, length, byte = one(block, pos)
                if m == 1 and length == 1 and byte and chunk > prev:  # the common case
                    prev = chunk
                    keys.append(chunk)
                    vals.append(((store, byte << (8 * off)),))
                    pos += one_size
                    continue
            chunk, m = LEAF_ENTRY.unpack_from(block, pos)
            pos += ENTRY_OVERHEAD
            if chunk <= prev or m == 0:
                raise CorruptionError(addr, "LEAF", f"bad entry for chunk {chunk}")
            prev = chunk
            excs, pos = decode_exceptions(block, pos, m, end, addr, chunk)
            keys.append(chunk)
            vals.append(excs)
    except struct.error as exc:
        raise CorruptionError(addr, "LEAF", "entries run past the end of the block") from exc
    return keys, vals, pos - HEADER_SIZE


# ---------------------------------------------------------------------------
# Bitmaps (kinds CBITMAP and MBITMAP).  count = 0.  The payload is a bit array:
# bit i of the store-wide map is bit (i % 8) of payload byte (i // 8) % P of
# bitmap block i // (8 * P), P = block_size - 32.  A set bit in the chunk
# bitmap means the chunk is allocated (data, metadata or reserved); a set bit in
# the metadata bitmap means that *block* holds metadata.  Bits past the end of
# the store are set so they are never allocated.


def bitmap_bits_per_block(block_size: int) -> int:
    return (block_size - HEADER_SIZE) * 8


# ---------------------------------------------------------------------------
# Snapshot table (kind SNAPTAB).  count = 0.  Fixed 128-byte entries; entry i
# of the table (block i // E, E = (block_size - 32) // 128) describes sharemap
# slot i.
#
#   OFFSET SIZE DESCRIPTION
#        0    1 state: 0 free, 1 live, 2 deleting (queued), 3 deleting (in the
#               current delete pass), 4 creating (its copy-outs are being made;
#               not visible; a crash leaves it to be deleted at the next open)
#        1    1 flags: bit 0 squashed (unreadable; its space was or is being
#               reclaimed), bit 1 cleared (a squashed snapshot's bits are gone
#               from every sharemap; the entry stays as a tombstone until deleted),
#               bit 2 clone (INCOMPAT_CLONES: made from another snapshot, whose
#               slot is in the last 4 bytes of the entry; the name then has at
#               most 92 bytes)
#        2    1 priority (signed; lower is squashed first when the store fills)
#        3    1 name length in bytes (1..96)
#        4    4 user tag (uint32)
#        8    8 creation time (unix nanoseconds)
#       16    4 use count: holds on the snapshot (INCOMPAT_HOLDS); while it is not
#               zero the snapshot is neither deleted nor squashed
#       20    6 exclusive copies (u48): exceptions whose sharemap is this slot alone
#       26    6 shared copies (u48): exceptions this slot shares with others; both
#               meaningful only while AUTOCLEAR_SPACE_COUNTS is set (else stale or 0)
#       32   96 name, UTF-8, zero padded; for a clone 92 bytes of name and then
#      124    4 (clones only) parent: the slot of the snapshot it was cloned from
#               (re-pointed to the grandparent when the parent is deleted; a
#               clone whose parent is gone has no flag bit 2)

SNAP_ENTRY = struct.Struct("<BBbBIQI6s6s96s")
SNAP_ENTRY_SIZE = 128
assert SNAP_ENTRY.size == SNAP_ENTRY_SIZE
MAX_NAME_BYTES = 96

SNAP_FREE, SNAP_LIVE, SNAP_DELETING, SNAP_IN_PASS, SNAP_CREATING = 0, 1, 2, 3, 4
SNAP_FLAG_SQUASHED = 1
SNAP_FLAG_CLEARED = 2
SNAP_FLAG_CLONE = 4
MAX_CLONE_NAME_BYTES = MAX_NAME_BYTES - 4
MAX_HOLDS = 2**32 - 1


def snap_entries_per_block(block_size: int) -> int:
    return (block_size - HEADER_SIZE) // SNAP_ENTRY_SIZE


@dataclass(slots=True)
class SnapEntry:
    """One snapshot table slot; ``slot`` is also the snapshot's sharemap bit."""

    slot: int
    state: int = SNAP_FREE
    flags: int = 0
    priority: int = 0
    tag: int = 0
    created_ns: int = 0
    use_count: int = 0
    name: str = ""
    exclusive: int = 0  # space counts as of the last clean close (AUTOCLEAR_SPACE_COUNTS)
    shared: int = 0
    parent: int = -1  # slot of the snapshot this one was cloned from; -1: none

    @property
    def live(self) -> bool:
        return self.state == SNAP_LIVE

    @property
    def squashed(self) -> bool:
        return bool(self.flags & SNAP_FLAG_SQUASHED)


def encode_snap_entry(e: SnapEntry) -> bytes:
    raw = e.name.encode("utf-8")
    flags, field = e.flags & ~SNAP_FLAG_CLONE, raw
    if e.parent >= 0:
        if len(raw) > MAX_CLONE_NAME_BYTES:
            raise ValueError(f"a clone's name has at most {MAX_CLONE_NAME_BYTES} bytes")
        flags |= SNAP_FLAG_CLONE
        field = raw.ljust(MAX_CLONE_NAME_BYTES, b"\0") + e.parent.to_bytes(4, "little")
    return SNAP_ENTRY.pack(e.state, flags, e.priority, len(raw), e.tag, e.created_ns,
                           e.use_count, e.exclusive.to_bytes(6, "little"),
                           e.shared.to_bytes(6, "little"), field)


def decode_snap_entry(raw: bytes, slot: int, addr: int) -> SnapEntry:
    state, flags, prio, nlen, tag, created, use, excl, shared, name = SNAP_ENTRY.unpack(raw)
    if state == SNAP_FREE:
        return SnapEntry(slot)
    if state > SNAP_CREATING or not 1 <= nlen <= MAX_NAME_BYTES:
        raise CorruptionError(addr, "SNAPTAB", f"bad entry for slot {slot}")
    parent = -1
    if flags & SNAP_FLAG_CLONE:
        parent = int.from_bytes(name[MAX_CLONE_NAME_BYTES:], "little")
        if nlen > MAX_CLONE_NAME_BYTES or parent == slot:
            raise CorruptionError(addr, "SNAPTAB", f"bad clone entry for slot {slot}")
    try:
        text = name[:nlen].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CorruptionError(addr, "SNAPTAB", f"name of slot {slot} is not UTF-8") from exc
    return SnapEntry(slot, state, flags & ~SNAP_FLAG_CLONE, prio, tag, created, use, text,
                     int.from_bytes(excl, "little"), int.from_bytes(shared, "little"), parent)


# ---------------------------------------------------------------------------
# Client grant table (kind GRANTS): a chain of blocks holding fixed-size
# records, one per client permission the server handed out that the client may
# keep using without another message (grants.py explains why they are kept).
# count = number of record slots in use in this block.
#
#   OFFSET SIZE DESCRIPTION
#       32    8 next GRANTS block of the chain (0 = last)
#       40    R record slots of GRANT_RECORD_SIZE(block size) bytes each:
#
#   record:
#        0    8 client id
#        8    1 kind: 0 free slot, 1 origin exposure, 2 snapshot writer
#        9    1 reserved, zero
#       10    2 snapshot slot (kind 2; zero otherwise)
#       12    4 number of runs n (kind 1; zero otherwise)
#       16 16*k runs, k = GRANT_RUNS(block size) slots: start chunk (8),
#               chunk count (8); the first n are used, sorted, disjoint,
#               non-adjacent; the rest are zero

GRANT_NEXT = struct.Struct("<Q")
GRANT_HEAD = struct.Struct("<QBBHI")
GRANT_RUN = struct.Struct("<QQ")
GRANT_FREE, GRANT_ORIGIN, GRANT_WRITER = 0, 1, 2
_GRANT_PAYLOAD_START = HEADER_SIZE + GRANT_NEXT.size


def grant_runs(block_size: int) -> int:
    """Runs one origin-exposure record holds (its exposure is coarsened to fit)."""
    room = block_size - _GRANT_PAYLOAD_START - GRANT_HEAD.size
    return max(1, min(30, room // GRANT_RUN.size))


def grant_record_size(block_size: int) -> int:
    return GRANT_HEAD.size + GRANT_RUN.size * grant_runs(block_size)


def grants_per_block(block_size: int) -> int:
    return (block_size - _GRANT_PAYLOAD_START) // grant_record_size(block_size)


@dataclass(slots=True)
class GrantRecord:
    """One persisted grant: who, what kind, and (origin) which chunk runs."""

    client: int
    kind: int
    slot: int = 0
    runs: list[tuple[int, int]] | None = None


def encode_grants(next_block: int, records: list[GrantRecord | None], block_size: int) -> bytes:
    """Payload of one GRANTS block."""
    size, k = grant_record_size(block_size), grant_runs(block_size)
    out = bytearray(GRANT_NEXT.pack(next_block))
    for rec in records:
        raw = bytearray(size)
        if rec is not None:
            runs = rec.runs or []
            GRANT_HEAD.pack_into(raw, 0, rec.client, rec.kind, 0, rec.slot, len(runs))
            for i, (start, count) in enumerate(runs[:k]):
                GRANT_RUN.pack_into(raw, GRANT_HEAD.size + i * GRANT_RUN.size, start, count)
        out += raw
    return bytes(out)


def decode_grants(block: bytes, addr: int, count: int
                  ) -> tuple[int, list[GrantRecord | None]]:
    """(next block, record slots) of a verified GRANTS block; structure checked."""
    bs = len(block)
    size, k, per = grant_record_size(bs), grant_runs(bs), grants_per_block(bs)
    (next_block,) = GRANT_NEXT.unpack_from(block, HEADER_SIZE)
    records: list[GrantRecord | None] = []
    for i in range(per):
        off = _GRANT_PAYLOAD_START + i * size
        client, kind, _, slot, n = GRANT_HEAD.unpack_from(block, off)
        if kind == GRANT_FREE:
            records.append(None)
            continue
        if kind not in (GRANT_ORIGIN, GRANT_WRITER) or n > k or (kind == GRANT_WRITER and n):
            raise CorruptionError(addr, "GRANTS", f"bad grant record {i}")
        runs = [GRANT_RUN.unpack_from(block, off + GRANT_HEAD.size + j * GRANT_RUN.size)
                for j in range(n)]
        prev_end = -1
        for start, cnt in runs:
            if cnt < 1 or start <= prev_end:
                raise CorruptionError(addr, "GRANTS", f"grant record {i}: runs out of order")
            prev_end = start + cnt
        records.append(GrantRecord(client, kind, slot, runs if kind == GRANT_ORIGIN else None))
    if sum(r is not None for r in records) != count:
        raise CorruptionError(addr, "GRANTS", "record count does not match the header")
    return next_block, records
