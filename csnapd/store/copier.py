"""Copy-outs: queued chunk copies, coalesced into large reads and writes.

The store queues one copy per new exception; contiguous runs (consecutive
sources and consecutive destinations) merge into one pread/pwrite of up to
``max_run`` bytes.  When the open transaction is sealed, ``take()`` hands the
runs to the sealed object (store/seal.py), which performs them on a worker
thread just before the journal write and flushes afterwards, so copied data
is durable before any metadata points at it.  Every destination passes the
overlap check when it is taken, on the thread that owns the bitmaps: it must
be an allocated chunk with no metadata block in it.
"""

from __future__ import annotations

from .bitmap import Allocator
from .datacheck import crc
from .device import Device
from .errors import CorruptionError

#: One coalesced copy: (from the store?, first source chunk, first destination, count).
Run = tuple[bool, int, int, int]


class Copier:
    """Pending copies from the origin (or the store) into store chunks."""

    def __init__(self, chunk_size: int, alloc: Allocator, max_run: int = 4 << 20) -> None:
        self.chunk_size, self.alloc = chunk_size, alloc
        self.max_chunks = max(1, max_run // chunk_size)
        self.pending: list[list] = []  # [from_store, source, dest, count]

    def queue(self, source: int, from_store: bool, dest: int) -> None:
        if self.pending:
            last = self.pending[-1]
            n = last[3]
            if (last[0] == from_store and last[1] + n == source and last[2] + n == dest
                    and n < self.max_chunks):
                last[3] = n + 1
                return
        self.pending.append([from_store, source, dest, 1])

    def take(self) -> list[Run]:
        """Every queued copy, overlap-checked, for a sealed transaction."""
        runs: list[Run] = []
        for from_store, source, dest, count in self.pending:
            for chunk in range(dest, dest + count):
                if not self.alloc.is_allocated(chunk) or self.alloc.chunk_has_meta(chunk):
                    raise CorruptionError(chunk, "DATA",
                                          "overlap check: copy-out target is not a data chunk")
            runs.append((bool(from_store), source, dest, count))
        self.pending = []
        return runs


def run_copies(dev: Device, origin: Device, chunk_size: int, runs: list[Run],
               crcs: list[tuple[int, int, int]] | None = None) -> int:
    """Perform copies (not flushed); return bytes copied.  Touches only the devices.

    With ``crcs``, append (first destination, count, CRC32C of the bytes) for each run:
    a DATA record's runs (datacheck.py)."""
    moved = 0
    for from_store, source, dest, count in runs:
        src = dev if from_store else origin
        data = src.pread(source * chunk_size, count * chunk_size)
        dev.pwrite(dest * chunk_size, data)
        if crcs is not None:
            crcs.append((dest, count, crc(data)))
        moved += len(data)
    return moved
