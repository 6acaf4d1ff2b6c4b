"""Snapshot sizes after origin growth: the growth records of the superblock (pure).

Why: a snapshot shows the origin as it was when it was taken, its size included.
Snapshot table entries have no room for a size, so the superblock keeps one record
per origin growth that older snapshots still need: ``(grown_ns, origin bytes before
it)`` (format 4.1, offset 288; INCOMPAT_ORIGIN_GROWN).  A snapshot created before
``grown_ns`` has the size of the first such record after its creation; a snapshot
created after every record has the current origin size.  Creation times are made
strictly ordered against the records: a growth takes ``grown_ns`` above every
existing creation time, and a create takes a creation time not below the newest
record (``created_ns_floor``), so a clock that steps back cannot misplace a snapshot.

What a snapshot does with chunks past its size: nothing.  They did not exist when it
was taken; reads and writes of them are refused as out of range (the snapshot volume
is exactly as large as the origin was), and origin writes there copy nothing out
for it.
"""

from __future__ import annotations

from collections.abc import Iterable

from . import format as fmt

Records = tuple[tuple[int, int], ...]


def entry_bytes(f: fmt.SuperFields, created_ns: int) -> int:
    """The origin size, in bytes, of a snapshot created at ``created_ns``."""
    for grown_ns, before in f.size_records:
        if created_ns < grown_ns:
            return before
    return f.origin_bytes


def entry_chunks(f: fmt.SuperFields, created_ns: int) -> int:
    """The origin size, in chunks, of a snapshot created at ``created_ns``."""
    return -(-entry_bytes(f, created_ns) // f.chunk_size)


def created_ns_floor(f: fmt.SuperFields) -> int:
    """The smallest creation time a new snapshot may take (it must be after every growth)."""
    return f.size_records[-1][0] if f.size_records else 0


def needed(records: Records, created: Iterable[int]) -> Records:
    """The records some snapshot (by creation time) still takes its size from."""
    used = set()
    for ns in created:
        for i, (grown_ns, _) in enumerate(records):
            if ns < grown_ns:
                used.add(i)
                break
    return tuple(r for i, r in enumerate(records) if i in used)


def with_growth(f: fmt.SuperFields, created: list[int], now_ns: int) -> Records:
    """The records after growing the origin now, with snapshots created at ``created``.

    No snapshot: no record is needed (nothing is older than the growth).
    """
    if not created:
        return ()
    kept = needed(f.size_records, created)
    grown_ns = max([now_ns, max(created) + 1, *(r[0] + 1 for r in kept)])
    return (*kept, (grown_ns, f.origin_bytes))


def limits(f: fmt.SuperFields, slots: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """``(size in chunks, sharemap bits)`` of the given (slot, created_ns) whose size is
    below the origin's, smallest size first: origin chunks from that size on need no copy
    for those bits."""
    by_size: dict[int, int] = {}
    for slot, created_ns in slots:
        n = entry_chunks(f, created_ns)
        if n < f.origin_chunks:
            by_size[n] = by_size.get(n, 0) | 1 << slot
    return sorted(by_size.items())


def live_from(bounds: list[tuple[int, int]], live: int, chunk: int,
              end: int) -> tuple[int, int]:
    """The sharemap bits of ``live`` that chunk ``chunk`` exists for, and the chunk (at
    most ``end``) where that set changes next."""
    for size, bits in bounds:
        if chunk >= size:
            live &= ~bits
        else:
            return live, min(end, size)
    return live, end
