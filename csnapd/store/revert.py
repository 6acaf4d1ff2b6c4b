"""Reverting the origin to a snapshot, keeping every other snapshot intact.

The origin must end up holding the snapshot's content.  Only chunks where the snapshot
has a copy of its own in the store can differ (elsewhere it reads the origin), so the
revert walks the snapshot's exceptions from a cursor, a batch at a time, and for each
batch does what an origin writer would:

1. **copy out** (``prepare``): an origin write of the batch's chunks, so every other
   snapshot that still shares the origin there gets its own copy first; this goes into
   the open transaction like any copy-out;
2. once that transaction is **durable** and no snapshot reader holds a read lock on the
   chunks (the engine waits for both, as for a client's write), **restore**
   (``apply``): the snapshot's store chunks are copied onto the origin chunks by the
   next sealed transaction, after its copy-outs and with an fdatasync of the origin,
   *before* its journal write, which moves the cursor past the batch.

A crash before step 2's journal write leaves the cursor where it was: the batch is
done again (its copy-outs are no-ops the second time, and copying the same store
chunks onto the origin again is harmless).  The cursor and the snapshot are in the
superblock (format 4.1, offsets 432..447, journal record REVERT; INCOMPAT_REVERT while
it runs).  Until the revert ends the origin is half old, half reverted: the engine
keeps origin clients out, refuses writes to the snapshot, and the snapshot can be
neither deleted nor squashed.

Must not import the engine, the journal writer or asyncio.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import format as fmt
from . import sizes
from .btree import KEY_LIMIT
from .device import Device, FileDevice
from .errors import LimitError, StoreFullError

if TYPE_CHECKING:
    from .store import Store

#: Chunks restored per batch (one copy-out transaction, then one restore transaction).
BATCH_CHUNKS = 256


@dataclass(slots=True)
class Batch:
    """One batch: (origin chunk, store chunk holding the snapshot's data) pairs, and the
    cursor after it (None: the last batch)."""

    pairs: list[tuple[int, int]]
    next: int | None

    @property
    def ranges(self) -> list[tuple[int, int]]:
        """The origin chunks of the batch as (start, count) runs."""
        out: list[tuple[int, int]] = []
        for c, _ in self.pairs:
            if out and out[-1][0] + out[-1][1] == c:
                out[-1] = (out[-1][0], out[-1][1] + 1)
            else:
                out.append((c, 1))
        return out


class Restore:
    """Store chunks copied onto origin chunks, run by the worker thread with the
    copy-outs of a sealed transaction and flushed on the origin before its journal
    write (a ``direct`` write of seal.py)."""

    def __init__(self, origin: Device, chunk_size: int, pairs: list[tuple[int, int]]) -> None:
        self.origin, self.chunk_size, self.pairs = origin, chunk_size, pairs

    def write(self, dev: Device) -> None:
        """Copy, then make the origin durable (the journal write that follows moves the
        cursor past these chunks)."""
        cs = self.chunk_size
        for origin_chunk, store_chunk, n in self._runs():
            self.origin.pwrite(origin_chunk * cs, dev.pread(store_chunk * cs, n * cs))
        self.origin.flush()

    def _runs(self, max_bytes: int = 1 << 20) -> list[tuple[int, int, int]]:
        """The pairs as runs contiguous on both sides: (origin chunk, store chunk, count)."""
        runs: list[list[int]] = []
        limit = max(1, max_bytes // self.chunk_size)
        for o, s in self.pairs:
            if runs and runs[-1][0] + runs[-1][2] == o and runs[-1][1] + runs[-1][2] == s \
                    and runs[-1][2] < limit:
                runs[-1][2] += 1
            else:
                runs.append([o, s, 1])
        return [(o, s, n) for o, s, n in runs]


def active(store: Store) -> bool:
    return store.sb.revert_slot != 0


def target(store: Store) -> fmt.SnapEntry | None:
    """The snapshot the origin is being reverted to, or None."""
    slot = store.sb.revert_slot - 1
    return store.snaps.entries[slot] if slot >= 0 else None


def writable_origin(store: Store) -> Device:
    """The origin device, opened for writing if the store's own handle is read-only
    (the server opens it read-only: only a revert ever writes it)."""
    dev = store.origin
    if isinstance(dev, FileDevice) and not dev.writable:
        return FileDevice(dev.path, writable=True)
    return dev


def start(store: Store, ident: str | int) -> fmt.SnapEntry:
    """Begin reverting the origin to snapshot ``ident``; durable with the next commit.

    Refused (with the reason) when another revert runs, for a squashed snapshot, one
    smaller than the origin (taken before an origin growth), and when the copy-outs it
    may need would not fit in the store.
    """
    f = store.sb
    entry = store.snaps.find(ident)
    if active(store):
        raise LimitError(f"the origin is already being reverted to {target(store).name!r}")
    if entry.squashed or entry.state != fmt.SNAP_LIVE:
        raise LimitError(f"snapshot {entry.name!r} was squashed: there is nothing to revert to")
    if sizes.entry_bytes(f, entry.created_ns) != f.origin_bytes:
        raise LimitError(f"snapshot {entry.name!r} is smaller than the origin (the origin was "
                         "grown after it was taken): a revert would leave the chunks past "
                         "its end as they are, so it is refused")
    usage, counted = store.space_usage()
    u = usage.get(entry.slot, {"unique": 0, "shared": 0})
    need = u["unique"] + u["shared"] if counted >= 1.0 else f.exceptions
    spare = f.free_chunks - store.alloc.quarantined
    if need > spare - 64:
        raise StoreFullError(
            f"cannot revert to {entry.name!r}: it may need up to {need} copy-outs for the "
            f"other snapshots and the store has {spare} free chunks; free space first")
    f.revert_slot, f.revert_cursor = entry.slot + 1, 0
    f.incompat |= fmt.INCOMPAT_REVERT
    store.sbs.touch()
    return entry


def prepare(store: Store, max_chunks: int = BATCH_CHUNKS) -> Batch:
    """The next batch from the cursor, with its copy-outs queued (step 1)."""
    entry = target(store)
    assert entry is not None
    pairs: list[tuple[int, int]] = []
    nxt: int | None = None
    for chunk, _excs in store.exmap.entries(store.sb.revert_cursor):
        if len(pairs) >= max_chunks:
            nxt = chunk
            break
        sc = store.snapshot_lookup(entry.slot, chunk)
        if sc is not None:
            pairs.append((chunk, sc))
    batch = Batch(pairs, nxt)
    if pairs:
        store.origin_write(batch.ranges)
        # an origin write may fill a clone first, and never moves the snapshot's copies
        batch.pairs = [(c, store.snapshot_lookup(entry.slot, c)) for c, _ in pairs]
    return batch


def apply(store: Store, batch: Batch, origin: Device) -> None:
    """Step 2: restore the batch with the next sealed transaction and move the cursor
    (the end of the revert when it was the last batch)."""
    f = store.sb
    if batch.pairs:
        store._direct.append(Restore(origin, f.chunk_size, batch.pairs))
    if batch.next is None:
        f.revert_slot = f.revert_cursor = 0
        f.incompat &= ~fmt.INCOMPAT_REVERT
    else:
        f.revert_cursor = min(batch.next, KEY_LIMIT)
    store.sbs.touch()


def progress(store: Store) -> dict[str, object]:
    """How far the revert has come (for status)."""
    entry = target(store)
    if entry is None:
        return {"active": False, "fraction": 1.0}
    total = max(1, store.sb.origin_chunks)
    return {"active": True, "snapshot": entry.name, "cursor": store.sb.revert_cursor,
            "fraction": min(store.sb.revert_cursor, total) / total}
