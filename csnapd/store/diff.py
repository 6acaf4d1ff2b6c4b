"""Changed chunks between two volumes, answered from the exception tree alone.

A volume is the origin or a live snapshot (a sharemap bit). Chunk ``c`` of volume ``V``
lives in the store chunk of the exception at ``c`` whose sharemap has ``V``'s bit, or on the
origin if there is none (the origin has no bit: it always reads the origin). ``c`` has
*changed* between ``V`` and ``W`` when those two places differ: two different store chunks,
or a store chunk on one side and the origin on the other. Chunks where both read the same
store chunk, or both the origin, hold the same bytes, so a diff made of the changed chunks,
applied to an image of ``W``, gives ``V``. Two copies that happen to hold equal bytes still
count as changed: the answer is what the metadata knows, without reading data.

Only chunks with exceptions can differ, so a scan visits tree entries, never the chunks in
between: its cost grows with the entries in the range scanned (the exceptions of every
snapshot there), not with the volume size. Each call is bounded: at most ``max_entries``
entries looked at and ``max_chunks`` chunks reported; ``next`` says where to go on.

All tree access is in :func:`_entries` (leaf keys and values in key order from a chunk), so
a port to another tree API changes that one function.

Must not import asyncio, sockets or the engine.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from .format import Excs

#: Tree entries one scan looks at before it stops and reports ``next`` (bounds the CPU
#: time of one request: about 4-6 µs of Python per entry, so some 20 ms).
SCAN_ENTRIES = 4096


@dataclass(slots=True)
class ChangeScan:
    """One bounded piece of a change scan over chunks ``[start, end)``."""

    ranges: list[list[int]] = field(default_factory=list)  # [[chunk, count], ...], merged
    next: int | None = None  # first chunk not yet scanned; None when the range is done
    entries: int = 0  # tree entries looked at

    @property
    def chunks(self) -> int:
        """Chunks reported."""
        return sum(n for _, n in self.ranges)


def every_chunk(start: int, end: int, max_chunks: int) -> ChangeScan:
    """The scan against nothing (a full diff): every chunk of ``[start, end)`` changed."""
    if start >= end:
        return ChangeScan()
    stop = min(end, start + max_chunks)
    return ChangeScan([[start, stop - start]], stop if stop < end else None)


def changed_chunks(store, volume: int | None, base: int | None, start: int, end: int,  # noqa: ANN001
                   max_chunks: int, max_entries: int = SCAN_ENTRIES) -> ChangeScan:
    """Chunks of ``[start, end)`` where ``volume`` and ``base`` (snapshot slots, None for
    the origin) read different copies; see the module docstring for the exact rule."""
    scan = ChangeScan()
    if start >= end or volume == base:
        return scan
    vbit = 0 if volume is None else 1 << volume
    bbit = 0 if base is None else 1 << base
    both = vbit | bbit
    # a clone still being filled reads its parent's copy where it has none of its own
    fill = store.fill
    cbit = pbit = cursor = 0
    if fill.active and (1 << fill.clone) & both:
        cbit, pbit, cursor = 1 << fill.clone, 1 << fill.parent, fill.cursor
    ranges = scan.ranges
    reported = 0
    last = -2  # last chunk reported
    for chunk, excs in _entries(store, start, end):
        if scan.entries >= max_entries or reported >= max_chunks:
            scan.next = chunk
            return scan
        scan.entries += 1
        here = there = parent = -1  # -1: reads the origin
        for store_chunk, sharemap in excs:
            if sharemap & (both | pbit):
                if sharemap & vbit:
                    here = store_chunk
                if sharemap & bbit:
                    there = store_chunk
                if sharemap & pbit:
                    parent = store_chunk
        if cbit and chunk >= cursor:
            if vbit == cbit and here == -1:
                here = parent
            if bbit == cbit and there == -1:
                there = parent
        if here == there:
            continue
        if chunk == last + 1:
            ranges[-1][1] += 1
        else:
            ranges.append([chunk, 1])
        last = chunk
        reported += 1
    return scan


def _entries(store, start: int, end: int) -> Iterator[tuple[int, Excs]]:  # noqa: ANN001
    """``(chunk, exceptions)`` for every tree entry in ``[start, end)``, in chunk order,
    read through the store's exception map."""
    for chunk, excs in store.exmap.entries(start):
        if chunk >= end:
            return
        yield chunk, excs
