"""Producing diffs: an rbd diff v1 file (csnap-diff) or a csnap-send stream.

Both read the same extents (:mod:`csnap_diff.source`) from a snapshot volume and write them
to a file descriptor from a worker thread, so a slow pipe (ssh) never blocks the event loop
that keeps the csnap session and its read locks alive.
"""

from __future__ import annotations

import asyncio
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from . import stream as st
from .progress import RateLimit, bar
from .rbd import RbdDiffWriter
from .remote import find_snapshot
from .source import ExportStats, extents, list_changes
from .state import Token

#: A checkpoint record after this many stream bytes, or this many seconds, whichever first.
CHECKPOINT_BYTES = 64 << 20
CHECKPOINT_SECONDS = 5.0


class DiffSourceError(Exception):
    """The diff cannot be made as asked (no such snapshot, the origin as ``to``, a resume
    token for other snapshots)."""


def _write_all(fd: int, parts: list[Any]) -> None:
    views = [memoryview(p).cast("B") for p in parts if len(p)]
    while views:
        n = os.writev(fd, views[:1024])
        while n:
            if n >= len(views[0]):
                n -= len(views[0])
                views.pop(0)
            else:
                views[0] = views[0][n:]
                n = 0


class _Out:
    """Ordered writes to ``fd`` on one worker thread (the file object is unbuffered)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="csnap-diff-out")
        self.bytes = 0

    async def put(self, parts: list[Any]) -> None:
        self.bytes += sum(len(p) for p in parts)
        await asyncio.get_running_loop().run_in_executor(self.pool, _write_all, self.fd, parts)

    def close(self) -> None:
        self.pool.shutdown(wait=True)


async def _names(volume: Any, from_ref: str | int | None
                 ) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """The snapshot-info of ``from`` (or None) and of the volume (``to``)."""
    if volume.info.snapshot is None:
        raise DiffSourceError("the origin changes while it is read: diff a snapshot "
                              "(--to NAME)")
    base = None
    if from_ref is not None:
        base = await find_snapshot(volume, from_ref)
        if base is None:
            raise DiffSourceError(f"no snapshot {from_ref!r} (--from)")
    return base, volume.info.snapshot


async def export_diff(volume: Any, from_ref: str | int | None, fd: int, *,
                      progress: bool | None = None) -> ExportStats:
    """Write the rbd diff v1 from snapshot ``from_ref`` (None: the whole volume) to the
    snapshot ``volume`` serves, to file descriptor ``fd``."""
    base, to = await _names(volume, from_ref)
    from_name = None if base is None else base["name"]
    ranges = await list_changes(volume, from_name)
    stats = ExportStats(ranges=ranges, changed_chunks=sum(n for _, n in ranges))
    out = _Out(fd)
    records: list[Any] = []
    writer = RbdDiffWriter(_Collect(records))
    try:
        writer.header(volume.size, from_name, to["name"])
        await out.put(records)
        total = _bytes(ranges, volume.chunk_size, volume.size)
        with bar(total, f"diff {from_name or '(none)'}..{to['name']}", progress) as pbar:
            async for ext in extents(volume, ranges, stats=stats):
                records.clear()
                if ext.zero:
                    writer.zero(ext.offset, ext.length)
                else:
                    writer.write(ext.offset, ext.parts)  # type: ignore[arg-type]
                await out.put(records)
                pbar.update(ext.length)
        records.clear()
        writer.end()
        await out.put(records)
    finally:
        out.close()
    return stats


class _Collect:
    """A write() sink that keeps the buffers (no copy) for one writev."""

    def __init__(self, into: list[Any]) -> None:
        self.into = into

    def write(self, data: Any) -> None:
        self.into.append(data)


def _bytes(ranges: list[list[int]], chunk_size: int, size: int) -> int:
    return sum(min((a + n) * chunk_size, size) - a * chunk_size for a, n in ranges)


@dataclass(slots=True)
class SendStats:
    """What a send produced."""

    start: int = 0
    stream_bytes: int = 0
    data_bytes: int = 0
    zero_bytes: int = 0
    records: int = 0
    checkpoints: int = 0
    seconds: float = 0.0


async def send(volume: Any, from_ref: str | int | None, fd: int, *,
               resume: Token | None = None, rate: float | None = None,
               progress: bool | None = None, checkpoint_bytes: int = CHECKPOINT_BYTES,
               checkpoint_seconds: float = CHECKPOINT_SECONDS) -> SendStats:
    """Write the csnap-send stream of the diff ``from_ref`` -> the volume's snapshot to
    ``fd``; with ``resume``, from the token's verified position on."""
    t0 = time.monotonic()
    base, to = await _names(volume, from_ref)
    sid = st.stream_id(volume.info.store_uuid, base, to)
    cs, size = volume.chunk_size, volume.size
    start, chain = 0, st.chain_start(sid)
    if resume is not None:
        if resume.stream != sid:
            raise DiffSourceError(
                f"the resume token is for {resume.from_snap or '(full)'} -> {resume.to_snap} "
                "of another store or of snapshots since re-created; it cannot continue here")
        start, chain = resume.position, resume.chain
        if start > size or (start % cs and start != size):
            raise DiffSourceError(f"the resume token's position {start} is not a chunk "
                                  "boundary of this volume")
    header = st.StreamHeader(sid, volume.info.store_uuid, None if base is None else base["name"],
                             to["name"], size, cs, start, chain)
    enc = st.StreamEncoder(header)
    stats = SendStats(start=start)
    ranges = await list_changes(volume, header.from_snap, start // cs) if start < size else []
    limit = RateLimit(rate)
    out = _Out(fd)
    try:
        await out.put(enc.start())
        since, last = 0, time.monotonic()
        label = f"send {header.from_snap or '(none)'}..{to['name']}"
        with bar(_bytes(ranges, cs, size), label, progress) as pbar:
            async for ext in extents(volume, ranges, block=st.MAX_DATA):
                parts = (enc.zero(ext.offset, ext.length) if ext.zero
                         else enc.data(ext.offset, ext.parts))  # type: ignore[arg-type]
                n = sum(len(p) for p in parts)
                await limit.take(n)
                await out.put(parts)
                stats.records += 1
                if ext.zero:
                    stats.zero_bytes += ext.length
                else:
                    stats.data_bytes += ext.length
                pbar.update(ext.length)
                since += n
                if since >= checkpoint_bytes or time.monotonic() - last >= checkpoint_seconds:
                    await out.put(enc.checkpoint(ext.end))
                    stats.checkpoints += 1
                    since, last = 0, time.monotonic()
        await out.put(enc.end())
    finally:
        out.close()
    stats.stream_bytes = out.bytes
    stats.seconds = time.monotonic() - t0
    return stats


__all__ = ["DiffSourceError", "SendStats", "export_diff", "send"]
