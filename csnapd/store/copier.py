"""Copy-outs: queued chunk copies, coalesced into large reads and writes.

The store queues one copy per new exception; contiguous runs (consecutive
sources and consecutive destinations) merge into one pread/pwrite of up to
``max_run`` bytes.  ``run()`` performs them just before a commit, and the
store flushes afterwards, so copied data is durable before any metadata
points at it.  Every destination passes the overlap check: it must be an
allocated chunk with no metadata block in it.
"""

from __future__ import annotations

from .bitmap import Allocator
from .device import Device
from .errors import CorruptionError


class Copier:
    """Pending copies from the origin (or the store) into store chunks."""

    def __init__(self, dev: Device, origin: Device, chunk_size: int, alloc: Allocator,
                 max_run: int = 4 << 20) -> None:
        self.dev, self.origin, self.chunk_size, self.alloc = dev, origin, chunk_size, alloc
        self.max_chunks = max(1, max_run // chunk_size)
        self.pending: list[list[int]] = []  # [from_store, source, dest, count]

    def queue(self, source: int, from_store: bool, dest: int) -> None:
        if self.pending:
            last = self.pending[-1]
            n = last[3]
            if (last[0] == from_store and last[1] + n == source and last[2] + n == dest
                    and n < self.max_chunks):
                last[3] = n + 1
                return
        self.pending.append([from_store, source, dest, 1])

    def run(self) -> int:
        """Perform every queued copy (not flushed); return bytes copied."""
        cs, moved = self.chunk_size, 0
        for from_store, source, dest, count in self.pending:
            for chunk in range(dest, dest + count):
                if not self.alloc.is_allocated(chunk) or self.alloc.chunk_has_meta(chunk):
                    raise CorruptionError(chunk, "DATA",
                                          "overlap check: copy-out target is not a data chunk")
            src = self.dev if from_store else self.origin
            data = src.pread(source * cs, count * cs)
            self.dev.pwrite(dest * cs, data)
            moved += len(data)
        self.pending.clear()
        return moved
