"""Sealed transactions and checkpoints: frozen work that a worker thread writes.

The store's metadata operations run on one thread (csnapd's event loop) and
change only memory.  Making them durable is split in two:

* on the owning thread, ``Store.seal()`` freezes everything changed since the
  previous seal into a :class:`Sealed`: the copy-out runs, the sealed block
  images, the superblock image, its journal position and sequence number;
* on a worker thread, ``Sealed.write()`` performs the copies, flushes, writes
  the journal transaction and flushes again.  It touches **only the devices
  and the object's own fields** (immutable bytes, tuples and ints, plus the
  frozen journal ``Ring``); never the cache, the allocator, the tree or the
  superblock state, which keep changing on the owning thread meanwhile.

A :class:`Checkpoint` works the same way: captured on the owning thread
(committed images and the superblock naming the new tail), written on a
worker thread (home writes, flush, superblock slot, flush).

The write order inside ``write()`` is the durability order of journal.py:
data copied and flushed before the transaction that points at it
(invariant 2), the transaction flushed before anyone may say "done".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import format as fmt
from . import superblock as sbk
from .blocks import FrozenImage, image_bytes
from .copier import Run, run_copies
from .device import Device
from .errors import ReadOnlyError
from .journal import COMPACT, Ring


@dataclass(eq=False, slots=True)
class Frozen:
    """One transaction's changes, frozen on the owning thread; no journal position yet.

    ``blocks`` holds (home, image, records or None) for every changed block:
    the image always (it becomes the committed image), the compact-journal
    records when the block has them.  ``fields`` is the superblock as this
    transaction leaves it and ``super_record`` its SUPER record (b"" when the
    changing fields did not change); ``freed_chunks``/``freed_blocks`` what it
    frees, which stays quarantined (chunks) or pending (committed images) until
    it is durable.
    """

    ticket: int
    runs: list[Run]
    blocks: list[tuple[int, bytes | FrozenImage, bytes | None]]
    fields: fmt.SuperFields
    super_record: bytes
    freed_chunks: set[int]
    freed_blocks: list[int]
    ops: int
    #: a growth changed the geometry: the transaction carries a GEOMETRY record (the
    #: compact format; the older ones journal the whole superblock anyway)
    geometry: bool = False
    #: new bitmaps (growth.NewBitmaps) in space the committed store does not use yet:
    #: written home with the copy-outs, before the journal transaction that makes the
    #: store use them (store/growth.py)
    direct: list[Any] = field(default_factory=list)
    #: a snapshot write happened in this transaction: its copies may go to a writer,
    #: so they are flushed before the journal write (no DATA record; datacheck.py)
    handout: bool = False

    @property
    def checks_data(self) -> bool:
        """Copied chunks and journal go under one flush, with a DATA record
        (datacheck.py): copies from the origin only, none handed to a writer, no
        direct writes."""
        return (bool(self.runs) and not self.direct and not self.handout
                and not any(from_store for from_store, _, _, _ in self.runs))

    def payload(self, version: int, imaged: set[int]) -> tuple[list[tuple[int, bytes]], bytes]:
        """The images and record stream this transaction journals (compact format).

        A block goes as records only if it has them and already has an image
        in the journal since the last checkpoint (``imaged``); otherwise as an
        image (a full-page write: replay never applies records to a home block).
        For the older formats every block is an image and there is no stream.
        """
        if version != COMPACT:
            return [(home, image_bytes(image)) for home, image, _ in self.blocks], b""
        images, parts = [], []
        for home, image, records in self.blocks:
            if records is not None and home in imaged:
                parts.append(records)
            else:
                images.append((home, image_bytes(image)))
        if self.geometry:
            parts.append(fmt.geometry_record(self.fields))
        parts.append(self.super_record)
        if self.checks_data:  # a placeholder of the right size; Sealed.write fills it in
            parts.append(bytes(fmt.data_record_size(len(self.runs))))
        return images, b"".join(parts)


class Sealed:
    """A transaction ready to be written by ``write()`` on a worker thread.

    ``ticket`` orders it among transactions (``Store.durable_ticket``); ``seq``
    is its journal sequence number.  After ``Store.sealed_failed`` (for this
    or an earlier transaction) it is void and ``write()`` refuses.
    """

    def __init__(self, frozen: Frozen, ring: Ring, pos: int, seq: int,
                 images: list[tuple[int, bytes]], stream: bytes, dev: Device, origin: Device,
                 chunk_size: int, fence: Callable[[], None] | None = None) -> None:
        self.frozen, self.ring, self.pos, self.seq = frozen, ring, pos, seq
        self.ticket = frozen.ticket
        self.images, self.stream = images, stream
        self.dev, self.origin, self.chunk_size = dev, origin, chunk_size
        self.fence = fence  # raises FencedError when this server may no longer write
        self.void = False
        #: one flush for copies and journal (datacheck.py); else copies flushed first
        self.one_flush = frozen.checks_data and ring.version == COMPACT
        self.flushes = 0  # done by write(), counted by the owning thread afterwards
        self.bytes_copied = 0
        self.journal_bytes = 0

    @property
    def span(self) -> int:
        """Journal blocks this transaction occupies."""
        return self.ring.span(len(self.images), len(self.stream))

    def write(self) -> None:
        """Copy, flush, write the journal transaction, flush.  Raises OSError on I/O failure."""
        if self.void:
            raise ReadOnlyError("this sealed transaction was voided by an earlier failure")
        if self.frozen.runs or self.frozen.direct:
            if self.fence is not None:
                self.fence()
            self._copy_out()
            self._write_direct()
            if not self.one_flush:
                self._flush()
        if self.fence is not None:
            self.fence()
        self._write_journal()
        self._flush()

    def _copy_out(self) -> None:
        if not self.one_flush:
            self.bytes_copied += run_copies(self.dev, self.origin, self.chunk_size,
                                            self.frozen.runs)
            return
        crcs: list[tuple[int, int, int]] = []
        self.bytes_copied += run_copies(self.dev, self.origin, self.chunk_size,
                                        self.frozen.runs, crcs)
        record = fmt.data_record(crcs)  # in place of the placeholder at the stream's end
        self.stream = self.stream[:len(self.stream) - len(record)] + record

    def _write_direct(self) -> None:
        """New bitmaps of a growth, in space nothing committed uses (store/growth.py)."""
        for bitmaps in self.frozen.direct:
            bitmaps.write(self.dev)

    def _write_journal(self) -> None:
        blocks = self.ring.encode(self.pos, self.seq, self.images, self.stream)
        self.ring.write_run(self.pos, blocks)
        self.journal_bytes += len(blocks) * self.ring.block_size

    def _flush(self) -> None:
        self.dev.flush()
        self.flushes += 1

    def __repr__(self) -> str:
        return (f"<Sealed ticket {self.ticket} seq {self.seq} at {self.pos}: "
                f"{len(self.images)} images, {len(self.stream)} record bytes, "
                f"{len(self.frozen.runs)} copy runs>")


#: Home images one ``Checkpoint.write_part`` writes: a sealed transaction can go between
#: two parts, so a checkpoint of thousands of blocks never holds commits back for long.
PART_BLOCKS = 64


@dataclass(eq=False)
class Checkpoint:
    """Committed images to write home, then the superblock naming the new tail.

    ``images`` are the committed images captured on the owning thread (no later
    change can reach them); ``fields`` the superblock as of the last durable
    transaction with the new generation, tail and sequence.  ``head``, ``seq``,
    ``reclaimed`` and ``released`` are what the owning thread applies when it
    is done.

    It is written whole (``write``) or in parts (``write_part``), with sealed
    transactions written between parts: home writes of committed images may land
    in any order and be torn by a crash (replay starts from full images,
    journal.py invariant 11), and the superblock naming the new tail is written
    only after every one of them has been flushed.
    """

    dev: Device
    block_size: int
    images: dict[int, bytes | FrozenImage]  # encoded here, on the worker, when written
    fields: fmt.SuperFields
    reclaimed: int
    released: set[int]
    flushes: int = 0
    home_bytes: int = field(default=0)
    fence: Callable[[], None] | None = None  # as Sealed.fence
    ticket: int = 0  # the durable ticket when it was captured
    _order: list[int] | None = field(default=None, repr=False)  # home addresses, sorted
    _at: int = field(default=0, repr=False)  # how many of them are written

    @property
    def head(self) -> int:
        return self.fields.journal_tail

    @property
    def seq(self) -> int:
        return self.fields.journal_seq

    @property
    def generation(self) -> int:
        return self.fields.generation

    def write(self) -> None:
        """Home writes, flush, superblock slot, flush.  Raises OSError on I/O failure."""
        while not self.write_part(len(self.images) or 1):
            pass

    def write_part(self, max_blocks: int = 0) -> bool:
        """The next ``max_blocks`` (default PART_BLOCKS) home writes, or, once all are
        written, the end (flush, superblock slot, flush).  True when it is complete."""
        max_blocks = max_blocks or PART_BLOCKS
        if self.fence is not None:
            self.fence()
        if self._order is None:
            self._order = sorted(self.images)
        if self._at < len(self._order):
            part = self._order[self._at:self._at + max_blocks]
            self._write_home(part)
            self._at += len(part)
            if self._at < len(self._order):
                return False
        self._flush()
        if self.fence is not None:
            self.fence()
        sbk.write_slot(self.dev, self.fields)
        self._flush()
        return True

    def _write_home(self, addrs: list[int]) -> None:
        """Write the images of ``addrs`` (ascending) home, adjacent blocks in one write."""
        bs, images = self.block_size, self.images
        i = 0
        while i < len(addrs):
            j = i + 1
            while j < len(addrs) and addrs[j] == addrs[j - 1] + 1 and j - i < 64:
                j += 1
            first = addrs[i]
            self.dev.pwrite(first * bs, b"".join(image_bytes(images[a]) for a in addrs[i:j]))
            i = j
        self.home_bytes += len(addrs) * bs

    def _flush(self) -> None:
        self.dev.flush()
        self.flushes += 1
