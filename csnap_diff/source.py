"""What changed between two snapshots, as extents of data and zeros, read through a Volume.

Two steps, both through the client library:

1. **Which chunks** (:func:`change_ranges`): QUERY_CHANGES on the session of snapshot
   ``to``, with ``base`` = the older snapshot (or None for a full diff), page by page. The
   server answers from the sharemaps; no data is read for this.
2. **Their bytes** (:func:`extents`): :meth:`Volume.read` of the changed ranges, in blocks
   of at most ``block`` bytes with ``depth`` reads in flight. ``Volume.read`` reads chunks
   the snapshot has in the store straight from the store and takes read locks
   (QUERY_SNAPSHOT_READ) for chunks it still shares with the origin, exactly as every
   client does. Each chunk that reads as zeros becomes part of a zero extent.

Adjacent extents of the same kind are merged: zero extents without limit, data extents up
to ``block`` bytes (so memory stays bounded; Ceph splits its own at object boundaries).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

from csnap_client.protocol import messages as m

#: Bytes per Volume.read and the largest data extent handed out.
BLOCK = 4 << 20
#: Bytes of Volume.read in flight at once, and the most reads in flight (small reads of
#: scattered changed chunks need many in flight to hide the read-lock round trips).
INFLIGHT_BYTES = 16 << 20
DEPTH = 64


@dataclass(slots=True)
class Extent:
    """``length`` bytes at ``offset``: ``parts`` of data, or zeros when ``parts`` is None."""

    offset: int
    length: int
    parts: list[memoryview] | None = None

    @property
    def zero(self) -> bool:
        """True for a zero extent."""
        return self.parts is None

    @property
    def end(self) -> int:
        """The first byte after the extent."""
        return self.offset + self.length

    def data(self) -> bytes:
        """The data as one byte string (zeros for a zero extent)."""
        return bytes(self.length) if self.parts is None else b"".join(self.parts)


@dataclass(slots=True)
class ExportStats:
    """What an export read and produced."""

    changed_chunks: int = 0
    bytes_read: int = 0
    data_bytes: int = 0
    zero_bytes: int = 0
    extents: int = 0
    ranges: list[list[int]] = field(default_factory=list)


async def change_ranges(volume: Any, base: str | int | None, start: int = 0,
                        end: int | None = None) -> AsyncIterator[tuple[int, int]]:
    """``(chunk, count)`` runs of ``volume``'s chunks that differ from ``base`` (a snapshot
    name or tag, "origin", or None for every chunk), from chunk ``start``, in order."""
    limit = volume.info.origin_chunks if end is None else end
    pos: int | None = start
    while pos is not None and pos < limit:
        reply = await volume.client.request(m.query_changes, base, pos, limit - pos,
                                            m.MAX_CHANGE_CHUNKS, resend=True)
        for a, n in reply["ranges"]:
            yield a, n
        pos = reply["next"]


async def list_changes(volume: Any, base: str | int | None, start: int = 0
                       ) -> list[list[int]]:
    """Every changed run from ``start`` (cheap: metadata only), merged."""
    out: list[list[int]] = []
    async for a, n in change_ranges(volume, base, start):
        if out and out[-1][0] + out[-1][1] == a:
            out[-1][1] += n
        else:
            out.append([a, n])
    return out


def _blocks(ranges: Iterable[list[int]], chunk_size: int, size: int, block: int
            ) -> Iterable[tuple[int, int]]:
    """Byte ``(offset, length)`` reads covering the ranges, each at most ``block`` long."""
    per = max(1, block // chunk_size)
    for a, n in ranges:
        while n > 0:
            k = min(n, per)
            off = a * chunk_size
            yield off, min(k * chunk_size, size - off)
            a, n = a + k, n - k


_ZEROS = [memoryview(bytes(BLOCK))]


def _zeros(n: int) -> memoryview:
    """A read-only view of at least ``n`` zero bytes (kept for the next call)."""
    if len(_ZEROS[0]) < n:
        _ZEROS[0] = memoryview(bytes(n))
    return _ZEROS[0]


def split_zeros(offset: int, data: bytes, chunk_size: int) -> list[Extent]:
    """Cut a chunk-aligned read into data and zero extents at chunk boundaries."""
    mv = memoryview(data)
    zero = _zeros(max(chunk_size, len(data)))
    if mv == zero[:len(data)]:
        return [Extent(offset, len(data))]
    out: list[Extent] = []
    for i in range(0, len(data), chunk_size):
        piece = mv[i:i + chunk_size]
        is_zero = piece == zero[:len(piece)]
        last = out[-1] if out else None
        if last is not None and last.zero == is_zero:
            last.length += len(piece)
            if not is_zero:
                last.parts[0] = mv[last.offset - offset:i + len(piece)]  # type: ignore[index]
        else:
            out.append(Extent(offset + i, len(piece), None if is_zero else [piece]))
    return out


async def extents(volume: Any, ranges: Iterable[list[int]], *, block: int = BLOCK,
                  depth: int = DEPTH, stats: ExportStats | None = None
                  ) -> AsyncIterator[Extent]:
    """The data of ``ranges`` (chunk runs) of ``volume`` as merged extents, in order."""
    stats = stats if stats is not None else ExportStats()
    cs, size = volume.chunk_size, volume.size
    inflight: deque[tuple[int, asyncio.Task[bytes]]] = deque()
    pending: Extent | None = None
    reads = iter(_blocks(ranges, cs, size, block))
    queued = 0  # bytes in flight
    nxt = next(reads, None)
    try:
        while True:
            while nxt is not None and len(inflight) < depth \
                    and (not inflight or queued + nxt[1] <= INFLIGHT_BYTES):
                inflight.append((nxt[0], asyncio.ensure_future(volume.read(*nxt))))
                queued += nxt[1]
                nxt = next(reads, None)
            if not inflight:
                break
            off, task = inflight.popleft()
            data = await task
            queued -= len(data)
            stats.bytes_read += len(data)
            for ext in split_zeros(off, data, cs):
                if pending is not None and pending.end == ext.offset \
                        and pending.zero == ext.zero \
                        and (ext.zero or pending.length + ext.length <= block):
                    pending.length += ext.length
                    if not ext.zero:
                        pending.parts += ext.parts  # type: ignore[operator]
                    continue
                if pending is not None:
                    _count(stats, pending)
                    yield pending
                pending = ext
        if pending is not None:
            _count(stats, pending)
            yield pending
    finally:
        for _, task in inflight:
            task.cancel()
        for _, task in inflight:
            try:
                await task
            except BaseException:  # noqa: BLE001, S110 - cancelled reads: nothing to keep
                pass


def _count(stats: ExportStats, ext: Extent) -> None:
    stats.extents += 1
    if ext.zero:
        stats.zero_bytes += ext.length
    else:
        stats.data_bytes += ext.length
