"""Journal replay: the committed transactions applied, in memory, in sequence order.

Recovery scans the journal (journal.py) and hands every transaction found to
:class:`Replay`, which keeps the newest state of each block it touched:

* an image replaces the block's state (every format);
* a compact-format record (format.py, "Journal commit record, compact
  format") sets one unit of a block (a leaf entry, a run of bitmap bits, a
  grant record slot) to the value it states, on the decoded block;
* a SUPER record sets the superblock's changing fields, a GEOMETRY record (a
  growth) its sizes and the bitmaps' places; in the older formats the superblock
  travels as an image with home 0.

Records state results, so replay is idempotent: a crash during recovery, which
writes nothing to the journal, is fixed by recovering again.  A record always
names a block with an image earlier in the replayed transactions (the writer
images a block the first time it changes after a checkpoint): replay never
reads a home block, which a checkpoint interrupted by the crash may have torn.
A record for a block without such an image means the journal is damaged.

Must not import the store facade, the cache or the B-tree.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import format as fmt
from .errors import CorruptionError
from .journal import Transaction

Decoder = Callable[[bytes, int, int], Any]
_KINDS = {fmt.REC_ENTRY: (fmt.BlockKind.LEAF,),
          fmt.REC_BITS: (fmt.BlockKind.CBITMAP, fmt.BlockKind.MBITMAP),
          fmt.REC_GRANT: (fmt.BlockKind.GRANTS,)}


class Replay:
    """Newest images of the blocks the replayed transactions touched, and superblock fields."""

    def __init__(self, block_size: int, store_id: int, decoders: dict[fmt.BlockKind, Decoder],
                 journal_start: int) -> None:
        self.block_size, self.store_id, self.decoders = block_size, store_id, decoders
        self.journal_start = journal_start
        self._blocks: dict[int, bytes | Any] = {}  # home -> image, or the decoded block
        self.super_image: bytes | None = None  # older formats: the last journaled superblock
        self.super_fields: dict[str, int] = {}  # compact format: from SUPER records
        self.records = 0

    def transaction(self, t: Transaction) -> None:
        """Apply one transaction on top of everything before it."""
        for home, image in t.images:
            if home == 0:  # the older formats journal the whole superblock
                self.super_image = image
                self.super_fields = {}
            else:
                self._blocks[home] = image
        if t.records:
            where = self.journal_start + t.position
            for rec in fmt.decode_records(t.records, where):
                self._apply(rec, where)
                self.records += 1

    def _apply(self, rec: fmt.Record, where: int) -> None:
        kind = rec[0]
        if kind == fmt.REC_DATA:  # checked before replay (datacheck.py): nothing to apply
            return
        if kind in (fmt.REC_SUPER, fmt.REC_CLONE, fmt.REC_GEOMETRY, fmt.REC_REVERT):  # GEOMETRY: growth.py
            self.super_fields.update(rec[1])
            return
        block = self._decoded(rec[1], _KINDS[kind], where)
        if kind == fmt.REC_ENTRY:
            block.set_entry(rec[2], rec[3])
        elif kind == fmt.REC_BITS:
            _, _, first, count, value = rec
            if first + count > 8 * len(block.bits):
                raise CorruptionError(where, "COMMIT3", f"bits record runs past block {rec[1]}")
            block.set_bits(first, count, value)
        else:
            _, _, index, grant = rec
            if index >= len(block.slots):
                raise CorruptionError(where, "COMMIT3", f"grant record slot {index} is not in "
                                      f"block {rec[1]}")
            block.slots[index] = grant

    def _decoded(self, home: int, kinds: tuple[fmt.BlockKind, ...], where: int) -> Any:  # noqa: ANN401
        """The decoded block a record changes; it must have an image earlier in the journal."""
        state = self._blocks.get(home)
        if state is None:
            raise CorruptionError(where, "COMMIT3", f"journal record for block {home}, which has "
                                  "no image earlier in the journal")
        if not isinstance(state, bytes):
            if state.kind not in kinds:
                raise CorruptionError(where, "COMMIT3", f"journal record for block {home} of "
                                      f"the wrong kind {state.kind.name}")
            return state
        hdr = fmt.peek_header(state)
        kind = next((k for k in kinds if hdr is not None and hdr.kind == k), None)
        if kind is None:
            raise CorruptionError(where, "COMMIT3", f"journal record for block {home}, whose "
                                  "image is not of a kind records apply to")
        count = fmt.verify(state, kind, home, self.store_id)
        block = self.decoders[kind](state, home, count)
        self._blocks[home] = block
        return block

    def images(self) -> dict[int, bytes]:
        """The newest image of every block the transactions touched, encoded."""
        out = {}
        for home, state in self._blocks.items():
            if isinstance(state, bytes):
                out[home] = state
            else:
                count, payload = state.payload()
                try:
                    out[home] = fmt.seal(state.kind, home, self.store_id, count, payload,
                                         self.block_size)
                except ValueError as exc:
                    raise CorruptionError(home, state.kind.name, "the journal's records make "
                                          "this block overflow") from exc
        return out
