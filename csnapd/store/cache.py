"""Bounded buffer cache of decoded metadata blocks, verifying on every read.

Every metadata block the store touches comes through here.  A block read from
disk is verified (checksum salted by kind, self address, store id, structure)
and decoded once; the decoded object stays cached until evicted.

The cache belongs to the thread that runs metadata operations (the event-loop
thread of csnapd).  A worker thread writing a sealed transaction or a
checkpoint never touches it: it works on the bytes sealed into those objects.

Block states:
  clean       cached, identical to the newest committed image
  dirty       changed by the open (unsealed) transaction; never evicted,
              never written anywhere but the journal
  sealed      sealed into a transaction that is not durable yet; pinned in
              memory (its newest state exists nowhere else) until that
              transaction is done
  pending     a committed image (bytes) not yet written to its home; kept in
              ``pending_home`` until a checkpoint captures it, and served to
              readers in preference to the (older) home copy
  homing      an image a checkpoint in flight is writing home; served from
              the checkpoint's own map until it is done

Tickets: every transaction has a ticket (store/pipeline.py); ``stamps`` maps
a block to the ticket of the transaction holding its newest change, until
that one is durable.  ``depend`` lets a read record that its answer relies on
that change.

Invariants:
  * A dirty or sealed block's home location is never written before the
    transaction holding it is durable in the journal.
  * Eviction only happens in ``trim()``, which the store calls between
    operation steps, so no caller ever holds a stale twin of a cached block.
  * Home writes pass the overlap check: the target must be marked as a
    metadata block in the metadata bitmap (checked when a checkpoint is
    captured, on the owning thread).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from . import format as fmt
from .blocks import FrozenImage, image_bytes
from .device import Device
from .errors import CorruptionError

Decoder = Callable[[bytes, int, int], Any]
#: Kinds whose committed image is kept frozen until needed (blocks.FrozenImage).
_FROZEN_KINDS = frozenset((fmt.BlockKind.LEAF, fmt.BlockKind.CBITMAP, fmt.BlockKind.MBITMAP))


class BlockCache:
    """LRU cache of decoded blocks with dirty tracking and a byte budget."""

    def __init__(self, dev: Device, block_size: int, store_id: int, budget: int,
                 decoders: dict[fmt.BlockKind, Decoder]) -> None:
        self.dev, self.block_size, self.store_id = dev, block_size, store_id
        self.budget = max(budget, 64 * block_size)
        self.decoders = decoders
        self._lru: OrderedDict[int, Any] = OrderedDict()
        self._costs: dict[int, int] = {}
        self.used = 0
        self.dirty: dict[int, Any] = {}
        #: committed images not home yet (a leaf journaled as records keeps its state as a
        #: FrozenImage, encoded only when needed: blocks.py)
        self.pending_home: dict[int, bytes | FrozenImage] = {}
        #: images a checkpoint in flight is writing home (read-only here)
        self.homing: dict[int, bytes | FrozenImage] = {}
        #: new bitmap blocks of a growth whose transaction is not durable yet: written
        #: home by that transaction itself, before its journal write (store/grow.py)
        self.direct: list[Any] = []  # growth.NewBitmaps: image(addr) -> bytes | None
        #: committed images of blocks that a transaction not yet durable frees:
        #: the committed tree still uses them, so a checkpoint must write them
        self.freed_pending: dict[int, bytes | FrozenImage] = {}
        #: block -> ticket of the newest transaction that frees it
        self.freed_at: dict[int, int] = {}
        self._freed_now: list[int] = []  # freed by the open transaction
        #: block -> ticket of the transaction holding its newest change (not durable)
        self.stamps: dict[int, int] = {}
        self._pinned: dict[int, int] = {}  # sealed, not durable: block -> ticket
        self.ticket = 1  # the open transaction's ticket (set by the pipeline)
        self.need = 0  # highest ticket a read depended on since the last take
        self.changes = 0  # count of changes, to tell whether an operation changed anything
        self.is_meta: Callable[[int], bool] = lambda addr: True
        self.hits = self.misses = 0
        #: the last trim found only dirty or sealed blocks to evict: trim again only after
        #: a transaction is durable (blocks become evictable only then)
        self._stuck = False

    # -- reading ----------------------------------------------------------
    def get(self, addr: int, kind: fmt.BlockKind) -> Any:
        """The decoded block at ``addr``, which must be of ``kind``."""
        obj = self._lru.get(addr)
        if obj is not None:
            self._lru.move_to_end(addr)
            if obj.kind != kind:
                raise CorruptionError(addr, kind.name, f"expected {kind.name}, found {obj.kind.name}")
            self.hits += 1
            return obj
        self.misses += 1
        raw = self.read_image(addr)
        count = fmt.verify(raw, kind, addr, self.store_id)
        obj = self.decoders[kind](raw, addr, count)
        self._insert(obj)
        return obj

    def read_image(self, addr: int) -> bytes:
        """Newest committed image of a block: pending, homing, else from disk."""
        raw = self.pending_home.get(addr)
        if raw is None:
            raw = self.homing.get(addr)
        if raw is not None:
            return image_bytes(raw)
        for new in self.direct:
            found = new.image(addr)
            if found is not None:
                return found
        return self.dev.pread(addr * self.block_size, self.block_size)

    def depend(self, addr: int) -> None:
        """The caller's answer relies on the newest state of block ``addr``."""
        t = self.stamps.get(addr)
        if t is not None and t > self.need:
            self.need = t

    # -- changing ---------------------------------------------------------
    def add_new(self, obj: Any) -> None:
        """Install a freshly allocated block (replacing anything cached there)."""
        self.forget(obj.addr, freeing=False)
        self._insert(obj)
        self.mark_dirty(obj)

    def mark_dirty(self, obj: Any, whole: bool = True) -> None:
        """``obj`` changed in the open transaction.

        ``whole``: it is to be journaled as a whole image (the safe default);
        otherwise the caller recorded its changed units in ``obj.changes``.
        """
        addr = obj.addr
        if addr not in self._lru:
            self._insert(obj)
        if whole and obj.TRACKS:
            obj.changes = None
        self.dirty[addr] = obj
        self.stamps[addr] = self.ticket
        self.changes += 1

    def note(self, obj: Any, unit: int) -> None:
        """``obj`` changed in ``unit`` only (a bit, a record slot): journal just that."""
        changes = obj.changes
        if changes is not None:
            changes.add(unit)
        self.mark_dirty(obj, whole=False)

    def forget(self, addr: int, freeing: bool = True) -> None:
        """Drop a freed block everywhere (its journal images stay harmless).

        A committed image not yet home moves to ``freed_pending`` until the
        freeing transaction is durable: a checkpoint taken before that moves
        the journal tail past the image, so it must still write it home.
        """
        if self._lru.pop(addr, None) is not None:
            self.used -= self._costs.pop(addr)
        self.dirty.pop(addr, None)
        image = self.pending_home.pop(addr, None)
        if image is not None:
            self.freed_pending[addr] = image
        if freeing:
            self.freed_at[addr] = self.ticket
            self._freed_now.append(addr)

    def _insert(self, obj: Any) -> None:
        cost = obj.cost()
        old = self._costs.get(obj.addr)
        if old is not None:
            self.used -= old
        self._lru[obj.addr] = obj
        self._lru.move_to_end(obj.addr)
        self._costs[obj.addr] = cost
        self.used += cost

    # -- transactions -----------------------------------------------------
    def seal(self, obj: Any) -> bytes:
        count, payload = obj.payload()
        return fmt.seal(obj.kind, obj.addr, self.store_id, count, payload, self.block_size)

    def take_dirty(self) -> tuple[list[tuple[int, bytes | FrozenImage, bytes | None]],
                                  list[int]]:
        """Seal every dirty block (they become sealed, pinned) and take the frees.

        Returns (home, image, records or None) for each changed block (records:
        its changes as compact-journal records, when it has them and they are
        small), and the blocks the open transaction freed.
        """
        out: list[tuple[int, bytes | FrozenImage, bytes | None]] = []
        ticket, limit = self.ticket, self.block_size // 4
        sid, bs = self.store_id, self.block_size
        for addr, obj in self.dirty.items():
            records = obj.records(limit)
            if records is not None and obj.kind in _FROZEN_KINDS:
                # journaled as records: seal the image only when a checkpoint needs it
                out.append((addr, obj.frozen(sid, bs), records))
            else:
                out.append((addr, self.seal(obj), records))
            if obj.TRACKS:
                obj.changes = set()
            self._pinned[addr] = ticket
            self._insert(obj)  # its cost may have changed
        self.dirty.clear()
        freed, self._freed_now = self._freed_now, []
        return out, freed

    def committed(self, ticket: int,
                  blocks: list[tuple[int, bytes | FrozenImage, bytes | None]],
                  freed: list[int]) -> None:
        """Transaction ``ticket`` is durable: its images wait for their home write."""
        freed_at, stamps, pinned = self.freed_at, self.stamps, self._pinned
        self._stuck = False
        for addr, image, _ in blocks:
            if freed_at.get(addr, 0) > ticket:  # a later transaction frees it
                self.freed_pending[addr] = image
            else:
                self.pending_home[addr] = image
            if pinned.get(addr) == ticket:
                del pinned[addr]
            if stamps.get(addr) == ticket:
                del stamps[addr]
        for addr in freed:  # their freeing is durable now
            self.freed_pending.pop(addr, None)
            if freed_at.get(addr) == ticket:
                del freed_at[addr]

    def capture_home(self) -> dict[int, bytes | FrozenImage]:
        """Every committed image not home yet, for a checkpoint; served from it until done.

        Overlap check: each target must be a metadata block, except blocks freed
        by a transaction not yet durable (metadata in the committed state; their
        chunks are quarantined).
        """
        for addr in self.pending_home:
            if not self.is_meta(addr):
                raise CorruptionError(addr, "BLOCK", "overlap check: home is not a metadata block")
        images = dict(self.freed_pending)
        images.update(self.pending_home)
        self.freed_pending = {}
        self.pending_home = {}
        self.homing = images
        return images

    def homed(self) -> None:
        """The checkpoint in flight is durable: its images are home."""
        self.homing = {}

    # -- memory -----------------------------------------------------------
    def trim(self) -> None:
        """Evict least recently used clean blocks until well within budget."""
        if self.used <= self.budget:
            return
        if self._stuck:
            return
        low = self.budget - self.budget // 8
        lru, dirty, pinned = self._lru, self.dirty, self._pinned
        keep = len(dirty) + len(pinned)
        skipped = 0
        while self.used > low and lru and skipped <= keep:
            addr, obj = lru.popitem(last=False)
            if addr in dirty or addr in pinned:
                lru[addr] = obj
                skipped += 1
                continue
            self.used -= self._costs.pop(addr)
        # Everything left is dirty or sealed: nothing can go until a transaction is
        # durable. Scanning them again at every insert would make a long pass over a
        # large tree (a clone fill, a count, a delete) quadratic in the blocks held.
        self._stuck = self.used > low

    def drop_all(self) -> None:
        """Forget every cached object and every uncommitted change (after a failure)."""
        self._lru.clear()
        self._costs.clear()
        self.dirty.clear()
        self._pinned.clear()
        self.stamps.clear()
        self.direct.clear()
        self._freed_now = []
        self.used = 0
        self._stuck = False

    def __len__(self) -> int:
        return len(self._lru)
