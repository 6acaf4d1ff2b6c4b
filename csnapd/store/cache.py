"""Bounded buffer cache of decoded metadata blocks, verifying on every read.

Every metadata block the store touches comes through here.  A block read from
disk is verified (checksum salted by kind, self address, store id, structure)
and decoded once; the decoded object stays cached until evicted.

Block states:
  clean       cached, identical to the newest committed image
  dirty       changed by the running transaction; never evicted, never
              written anywhere but the journal
  pending     a committed image (bytes) not yet written to its home
              location; kept in ``pending_home`` until the next checkpoint,
              and served to readers in preference to the (older) home copy

Invariants:
  * A dirty block's home location is never written before the transaction
    holding it is durable in the journal.
  * Eviction only happens in ``trim()``, which the store calls between
    operation steps, so no caller ever holds a stale twin of a cached block.
  * Home writes pass the overlap check: the target must be marked as a
    metadata block in the metadata bitmap.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from . import format as fmt
from .device import Device
from .errors import CorruptionError

Decoder = Callable[[bytes, int, int], Any]


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
        self.pending_home: dict[int, bytes] = {}
        #: committed images of blocks freed by the running (uncommitted)
        #: transaction: the committed tree still uses them until it commits
        self.freed_pending: dict[int, bytes] = {}
        self.is_meta: Callable[[int], bool] = lambda addr: True
        self.hits = self.misses = 0

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
        """Newest committed image of a block: pending if any, else from disk."""
        raw = self.pending_home.get(addr)
        if raw is None:
            raw = self.dev.pread(addr * self.block_size, self.block_size)
        return raw

    # -- changing ---------------------------------------------------------
    def add_new(self, obj: Any) -> None:
        """Install a freshly allocated block (replacing anything cached there)."""
        self.forget(obj.addr)
        self._insert(obj)
        self.dirty[obj.addr] = obj

    def mark_dirty(self, obj: Any) -> None:
        if obj.addr not in self._lru:
            self._insert(obj)
        self.dirty[obj.addr] = obj

    def forget(self, addr: int) -> None:
        """Drop a freed block everywhere (its journal images stay harmless).

        A committed image not yet home is kept in ``freed_pending`` until the
        freeing transaction commits: a checkpoint run before that (commit()
        checkpoints when the transaction does not fit in the journal) moves the
        journal tail past the image, so it must still write it home.
        """
        if self._lru.pop(addr, None) is not None:
            self.used -= self._costs.pop(addr)
        self.dirty.pop(addr, None)
        image = self.pending_home.pop(addr, None)
        if image is not None:
            self.freed_pending[addr] = image

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

    def take_dirty(self) -> list[tuple[int, bytes]]:
        """Seal every dirty block for a journal transaction; they become clean."""
        images = []
        for addr, obj in self.dirty.items():
            images.append((addr, self.seal(obj)))
            self._costs_refresh(obj)
        self.dirty.clear()
        return images

    def _costs_refresh(self, obj: Any) -> None:
        if obj.addr in self._lru:
            self._insert(obj)

    def committed(self, images: list[tuple[int, bytes]]) -> None:
        """Record durable journal images as waiting for their home write."""
        for addr, image in images:
            self.pending_home[addr] = image
        self.freed_pending.clear()  # their freeing is durable now

    def write_home(self) -> int:
        """Write every pending image to its home (no flush); return the count."""
        bs = self.block_size
        # Blocks freed by the uncommitted transaction: metadata in the committed
        # state, and their chunks are quarantined, so no overlap check applies.
        for addr in sorted(self.freed_pending):
            if addr not in self.pending_home:
                self.dev.pwrite(addr * bs, self.freed_pending[addr])
        self.freed_pending.clear()
        for addr in sorted(self.pending_home):
            if not self.is_meta(addr):
                raise CorruptionError(addr, "BLOCK", "overlap check: home is not a metadata block")
            self.dev.pwrite(addr * bs, self.pending_home[addr])
        count = len(self.pending_home)
        self.pending_home.clear()
        return count

    # -- memory -----------------------------------------------------------
    def trim(self) -> None:
        """Evict least recently used clean blocks until well within budget."""
        if self.used <= self.budget:
            return
        low = self.budget - self.budget // 8
        lru, dirty = self._lru, self.dirty
        skipped = 0
        while self.used > low and lru and skipped <= len(dirty):
            addr, obj = lru.popitem(last=False)
            if addr in dirty:
                lru[addr] = obj
                skipped += 1
                continue
            self.used -= self._costs.pop(addr)

    def drop_all(self) -> None:
        """Forget every cached object (after a failed commit)."""
        self._lru.clear()
        self._costs.clear()
        self.dirty.clear()
        self.used = 0

    def __len__(self) -> int:
        return len(self._lru)
