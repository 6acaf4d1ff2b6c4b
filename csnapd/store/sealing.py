"""The sealed-commit protocol of the store: seal on the owning thread, write on a worker.

This is a mixin of :class:`~csnapd.store.store.Store`; everything here runs on
the thread that owns the store (csnapd's event loop), except the ``write()``
of the objects it hands out (store/seal.py says what those may touch).

The contract
------------

* Metadata operations (``origin_write``, ``snapshot_map``, ``snapshot_write``,
  ``create_snapshot``, ``delete_step``, the grant changes, ...) are
  synchronous, change memory only, and do no device I/O except cache-miss
  reads of metadata blocks.  An operation too large for one transaction is cut
  into several at consistent points (``_cut``: frozen in memory, no I/O).
  Exception, documented in ``Store._reserve``: when free space is held only by
  quarantined chunks and nothing is in flight, the operation commits and
  checkpoints synchronously (it blocks); with work in flight it raises
  StoreFullError with ``awaiting_checkpoint`` set instead.
* ``seal()`` freezes everything changed since the previous seal (copy-outs,
  block images, superblock) into a :class:`Sealed` with its journal position;
  later changes go to the next one.  Several may be sealed ahead; they must be
  written one at a time, in order, and each reported with ``sealed_done`` or
  ``sealed_failed`` in that order.  ``needs_seal()`` says the open transaction
  is large enough to seal between requests; ``can_seal()`` whether the next
  one fits in the journal now.
* ``Sealed.write()`` on a worker thread; then ``sealed_done(sealed)``: the
  committed state advances (``durable_ticket``), or ``sealed_failed(sealed,
  exc)``: nothing of that transaction counts as durable, every later sealed
  one is void, and the store refuses changes (``failed``), as after any I/O
  error on metadata.
* Checkpoints write home only committed state.  ``seal_checkpoint()`` may be
  called whenever no sealed transaction is outstanding (sealed and not yet
  done) and no checkpoint is in flight; open changes may exist, they are not
  part of it.  ``wants_checkpoint()`` says the journal is half full.
  ``Checkpoint.write()`` runs on a worker thread while the owning thread goes
  on: seals made meanwhile are placed after the checkpoint's head, in the
  journal space the checkpoint does not reclaim.  **Rule:** a seal whose
  transaction does not fit in that space must wait for ``checkpoint_done``
  (``can_seal()`` is False until then; ``seal()`` raises SealOrderError).
* Dependencies: ``take_dependency()`` returns the ticket of the transaction
  that the answers of the operations since the previous call rely on (what
  they changed, or read while it was not durable yet), or 0 when they rely on
  nothing that is not durable: such an answer may be sent at once.
  Otherwise it may be sent once ``durable_ticket`` reaches that ticket.
* ``commit()`` (seal, write, done until nothing is left, checkpointing when
  the journal is full) and ``checkpoint()`` are the synchronous forms, for the
  tools, the tests and recovery.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from typing import Any

from . import format as fmt
from . import journal as jnl
from . import superblock as sbk
from .errors import FencedError, ReadOnlyError, SealOrderError
from .seal import Checkpoint, Frozen, Sealed
from .usage import SpaceCounts


class Sealing:
    """Mixin: the open transaction, sealed transactions and checkpoints of a Store."""

    def _init_sealing(self) -> None:
        self._ready: deque[Frozen] = deque()  # cut from the open changes, not sealed yet
        self._outstanding: deque[Sealed] = deque()  # sealed, not yet done
        self._checkpoint_out: Checkpoint | None = None
        self._flag_after_checkpoint = 0
        self.durable_ticket = 0
        self._ops_open = 0
        self._seen_changes = 0
        #: blocks with an image in the journal since the last checkpoint capture:
        #: only these may be journaled as records (compact format, seal.py)
        self._imaged: set[int] = set()
        self._last_super: tuple[int, ...] = ()  # SUPER record fields as last sealed
        self._last_geometry: tuple[int, ...] = ()  # geometry as last sealed (store/grow.py)
        #: new bitmap blocks of a growth, for the next transaction (store/grow.py)
        self._direct: list[Any] = []  # growth.NewBitmaps
        #: a snapshot write happened in the open transaction (Frozen.handout)
        self._handout = False
        #: (ticket, store chunks) of sealed transactions whose copies a DATA record
        #: covers and that no later durable transaction follows yet (datacheck.py):
        #: a client may not write those chunks before one does
        self._unconfirmed: list[tuple[int, set[int]]] = []

    # ------------------------------------------------------------------
    # the open transaction
    @property
    def open_ticket(self) -> int:
        """Ticket of the transaction that changes made now belong to."""
        return self.cache.ticket

    def _changes(self) -> int:
        return self.cache.changes + self.sbs.changes

    @property
    def change_ticket(self) -> int:
        """Ticket of the newest transaction that holds a change: the open one if it has
        changes, else the one cut or sealed last (an operation's changes may all have gone
        into a transaction cut in memory; waiting for the empty open one would wait until
        somebody else changed something)."""
        ticket = self.cache.ticket
        return ticket if self._open_changed() else ticket - 1

    @property
    def settled_ticket(self) -> int:
        """Answers depending on tickets up to this one may go: ``durable_ticket``, or
        every ticket so far when nothing is unwritten or in flight."""
        if self._ready or self._open_changed() or self.in_flight:
            return self.durable_ticket
        return self.cache.ticket

    def take_dependency(self) -> int:
        """Ticket the answers of the operations since the last call depend on; 0 = none."""
        need = self.cache.need
        changes = self._changes()
        if changes != self._seen_changes:
            self._seen_changes = changes
            need = max(need, self.change_ticket)
        self.cache.need = 0
        return need if need > self.durable_ticket else 0

    def has_changes(self) -> bool:
        """Anything not yet sealed (open changes or transactions cut from them)."""
        return bool(self._ready or self._open_changed())

    def _open_changed(self) -> bool:
        return bool(self.cache.dirty or self.sbs.dirty or self.copier.pending)

    @property
    def open_ops(self) -> int:
        """Operations (origin and snapshot writes, creates, ...) in the open transaction."""
        return self._ops_open

    def open_blocks(self) -> int:
        """Blocks the open transaction has changed so far (its size, in journal images)."""
        return len(self.cache.dirty)

    def needs_seal(self) -> bool:
        """Seal soon: a transaction was cut, or the open one is half its limit."""
        return bool(self._ready) or 2 * (len(self.cache.dirty) + 1) > self.journal.max_images

    def _next_span(self) -> int:
        """Journal blocks of the next transaction (an upper bound for the open one); 0: none."""
        j = self.journal
        if self._ready:
            images, stream = self._ready[0].payload(j.version, self._imaged)
            return j.span(len(images) + (j.version != jnl.COMPACT), len(stream))
        if not self._open_changed():
            return 0
        # at most every changed block as an image, and the superblock (a growth's too)
        records = 2 * (len(fmt.super_record(self.sb)) + len(fmt.clone_record(self.sb))
                       + len(fmt.revert_record(self.sb)))
        if self.sb.geometry != self._last_geometry:
            records += len(fmt.geometry_record(self.sb))
        records += fmt.data_record_size(len(self.copier.pending))
        return j.span(len(self.cache.dirty) + 1, records)

    def can_seal(self) -> bool:
        """True if the next transaction fits in the journal now (or there is none)."""
        return self._next_span() <= self.journal.free

    def wants_checkpoint(self) -> bool:
        """Start a checkpoint (none is in flight): the journal is half full, or the
        committed images waiting for their home write take half as many blocks as the
        journal has (a compact journal holds many more changes than it has blocks; this
        bounds their memory and a checkpoint's home writes)."""
        j = self.journal
        waiting = len(self.cache.pending_home) + len(self.cache.freed_pending)
        return self._checkpoint_out is None and 2 * max(j.used, waiting) >= j.nblocks

    @property
    def in_flight(self) -> bool:
        """A sealed transaction or a checkpoint is not done yet."""
        return bool(self._outstanding) or self._checkpoint_out is not None

    def _super_now(self) -> tuple[int, ...]:
        f = self.sbs.f
        return tuple(getattr(f, name) for name in fmt.SUPER_RECORD_FIELDS
                     + fmt.CLONE_RECORD_FIELDS + fmt.REVERT_RECORD_FIELDS)

    def _freeze(self) -> Frozen | None:
        """Everything changed since the previous freeze, frozen; the next ticket opens."""
        cache, sbs = self.cache, self.sbs
        if not self._open_changed():
            return None
        runs = self.copier.take()
        blocks, freed_blocks = cache.take_dirty()
        fields = sbs.snapshot()
        now = self._super_now()
        n = len(fmt.SUPER_RECORD_FIELDS)
        m = n + len(fmt.CLONE_RECORD_FIELDS)
        last = self._last_super
        record = fmt.super_record(fields) if now[:n] != last[:n] else b""
        if now[n:m] != last[n:m]:
            record += fmt.clone_record(fields)
        if now[m:] != last[m:]:
            record += fmt.revert_record(fields)
        self._last_super = now
        geometry = fields.geometry != self._last_geometry
        self._last_geometry = fields.geometry
        direct, self._direct = self._direct, []
        sbs.dirty = False
        frozen = Frozen(cache.ticket, runs, blocks, fields, record, self.alloc.take_freed(),
                        freed_blocks, self._ops_open, geometry, direct, self._handout)
        self._ops_open = 0
        self._handout = False
        cache.ticket += 1
        return frozen

    def _cut(self) -> None:
        """End the open transaction at a consistent point, in memory only."""
        frozen = self._freeze()
        if frozen is not None:
            self._ready.append(frozen)

    # ------------------------------------------------------------------
    # sealed transactions
    def _refuse_if_failed(self) -> None:
        if self.failed:
            raise ReadOnlyError(f"store refuses changes after an error: {self.failed}")

    def seal(self) -> Sealed | None:
        """Freeze the next transaction for ``write()`` on a worker; None if nothing changed.

        If it does not fit in the journal and nothing is in flight, a
        checkpoint is written first, synchronously (it blocks: call
        ``wants_checkpoint``/``can_seal`` in time to avoid that); with work in
        flight, SealOrderError.
        """
        if self.readonly:
            return None
        self._refuse_if_failed()
        span = self._next_span()
        if span == 0:
            return None
        if span > self.journal.free:
            if self.in_flight:
                raise SealOrderError("no journal room for the next transaction until the "
                                     "checkpoint or sealed transaction in flight is done")
            self.checkpoint()
        frozen = self._ready.popleft() if self._ready else self._freeze()
        assert frozen is not None
        j = self.journal
        images, stream = frozen.payload(j.version, self._imaged)
        if j.version == jnl.COMPACT:
            self._imaged.update(home for home, _ in images)
        else:
            # The superblock image carries the current generation: recovery must
            # never step it back (format 5.4).
            images.append((0, sbk.seal_super(0, dataclasses.replace(
                frozen.fields, generation=self.sb.generation))))
        pos, seq = j.reserve(len(images), len(stream))
        sealed = Sealed(frozen, j.ring(), pos, seq, images, stream, self.dev, self.origin,
                        self.chunk_size, self.fence)
        self._outstanding.append(sealed)
        if sealed.one_flush:
            self._unconfirmed.append((frozen.ticket, {dest + i for _, _, dest, n in frozen.runs
                                                      for i in range(n)}))
        return sealed

    def _hand_out(self, chunks: list[tuple[int, int]]) -> None:
        """A snapshot write hands these (chunk, store chunk) pairs to a writer: no DATA
        record may cover them while its transaction is the journal's last (datacheck.py).
        The open and cut transactions flush their copies first; a chunk copied by a
        sealed one that nothing durable follows yet gets one more transaction after it,
        which the answer then depends on."""
        self._handout = True
        for frozen in self._ready:
            frozen.handout = True
        vouched = [copied for _, copied in self._unconfirmed]
        if vouched and any(store in copied for _, store in chunks for copied in vouched):
            self._last_super = ()  # the transaction carries a SUPER record, at least
            self.sbs.touch()

    def sealed_done(self, sealed: Sealed) -> None:
        """``sealed.write()`` returned: its transaction is durable."""
        if not self._outstanding or self._outstanding[0] is not sealed:
            raise SealOrderError("sealed transactions are done one at a time, in seal order")
        self._outstanding.popleft()
        fr = sealed.frozen
        self.cache.committed(fr.ticket, fr.blocks, fr.freed_blocks)
        self.alloc.committed(fr.freed_chunks)
        self.committed_super = dataclasses.replace(fr.fields, generation=self.sb.generation)
        for bitmaps in fr.direct:  # home and durable now: read from there
            self.cache.direct = [d for d in self.cache.direct if d is not bitmaps]
        self.durable_ticket = fr.ticket
        if self._unconfirmed:  # a durable transaction confirms the data of earlier ones
            self._unconfirmed = [u for u in self._unconfirmed if u[0] >= fr.ticket]
        self.journal.commits += 1
        st = self.stats
        st["commits"] += 1
        st["flushes"] += sealed.flushes
        st["bytes_copied"] += sealed.bytes_copied
        st["journal_bytes"] += sealed.journal_bytes
        st["ops_committed"] += fr.ops
        self.cache.trim()

    def sealed_failed(self, sealed: Sealed, exc: BaseException) -> None:
        """``sealed.write()`` raised: nothing in it (or sealed after it) is durable."""
        if isinstance(exc, FencedError):  # another server leads: write nothing more
            self.detach(str(exc))
            return
        self._fail(f"I/O error during commit: {exc}")

    # ------------------------------------------------------------------
    # checkpoints
    def seal_checkpoint(self) -> Checkpoint:
        """Capture the committed state for ``write()`` on a worker thread."""
        if self.readonly:
            raise ReadOnlyError("store is open read-only")
        if self._outstanding:
            raise SealOrderError("seal_checkpoint() while a sealed transaction is not done")
        if self._checkpoint_out is not None:
            raise SealOrderError("a checkpoint is already in flight")
        images = self.cache.capture_home()
        self._imaged = set()  # the next window starts here: first changes go as images
        f = dataclasses.replace(self.committed_super)
        f.generation = self.sb.generation + 1
        f.journal_tail, f.journal_seq = self.journal.head, self.journal.seq
        ck = Checkpoint(self.dev, self.block_size, images, f, self.journal.used,
                        self.alloc.capture_release(), fence=self.fence,
                        ticket=self.durable_ticket)
        self._checkpoint_out = ck
        return ck

    def checkpoint_done(self, ck: Checkpoint) -> None:
        """``ck.write()`` returned: its images are home and the journal is reclaimed."""
        if ck is not self._checkpoint_out:
            raise SealOrderError("checkpoint_done() for a checkpoint that is not in flight")
        self._checkpoint_out = None
        self.cache.homed()
        self.sb.generation = self.committed_super.generation = ck.generation
        self.journal.checkpointed(ck.head, ck.seq, ck.reclaimed)
        self.alloc.checkpointed(ck.released)
        # the new tail is past every transaction done before the capture
        self._unconfirmed = [u for u in self._unconfirmed if u[0] > ck.ticket]
        self.stats["checkpoints"] += 1
        self.stats["flushes"] += ck.flushes
        self.stats["home_bytes"] += ck.home_bytes
        if self._flag_after_checkpoint:
            flag, self._flag_after_checkpoint = self._flag_after_checkpoint, 0
            self._write_flag(flag)

    def checkpoint_failed(self, ck: Checkpoint, exc: BaseException) -> None:
        """``ck.write()`` raised: the journal still holds everything; stop changes."""
        self._checkpoint_out = None
        for addr, image in ck.images.items():  # still the newest committed images
            self.cache.pending_home.setdefault(addr, image)
        self.cache.homed()
        if isinstance(exc, FencedError):
            self.detach(str(exc))
            return
        self._fail(f"I/O error during checkpoint: {exc}")

    # ------------------------------------------------------------------
    # the synchronous forms
    def commit(self) -> int:
        """Make every change so far durable; return the last journal sequence (or -1)."""
        if self.readonly or not self.has_changes():
            return -1
        self._refuse_if_failed()
        if self.in_flight:
            raise SealOrderError("commit() while sealed work is in flight")
        seq = -1
        while True:
            sealed = self.seal()
            if sealed is None:
                if len(self.cache.pending_home) >= self.journal.nblocks:
                    self.checkpoint()  # bound the committed images kept in memory
                return seq
            try:
                sealed.write()
            except OSError as exc:
                self.sealed_failed(sealed, exc)
                raise
            self.sealed_done(sealed)
            seq = sealed.seq

    def checkpoint(self) -> None:
        """Write committed blocks home, then advance the journal tail (synchronously)."""
        ck = self.seal_checkpoint()
        try:
            ck.write()
        except OSError as exc:
            self.checkpoint_failed(ck, exc)
            raise
        self.checkpoint_done(ck)

    _checkpoint = checkpoint  # the name older callers use

    # ------------------------------------------------------------------
    # failure
    def _drop_unsealed(self) -> None:
        """Forget every change that is not durable: open, cut and sealed ones."""
        for sealed in self._outstanding:
            sealed.void = True
        self._outstanding.clear()
        self._ready.clear()
        self._direct = []
        self._handout = False
        self._unconfirmed = []
        self.sbs.dirty = False
        self.cache.drop_all()
        self.copier.pending = []
        self.alloc.abandon()
        self.exmap.counts = SpaceCounts()  # counted changes were dropped: count again

    def _write_flag(self, flag: int) -> None:
        """Record ``flag`` in a superblock slot, best effort (synchronous, rare)."""
        try:
            if self.fence is not None:
                self.fence()  # FencedError is an OSError: a fenced server writes nothing
            f = dataclasses.replace(self.committed_super)
            f.flags |= flag
            f.generation = self.sb.generation + 1
            f.journal_tail, f.journal_seq = self.journal.tail, self.journal.tail_seq
            sbk.write_slot(self.dev, f)
            self._flush()
            self.sb.generation = self.committed_super.generation = f.generation
        except OSError:
            pass
