"""Consuming diffs: applying an rbd diff (csnap-apply) and receiving a stream (csnap-receive).

Input is read on a worker thread (a pipe from ssh may stall) while writes go to the target
through :class:`csnap_diff.targets.Applier`.

Receiving is verified and resumable (:mod:`csnap_diff.stream`, :mod:`csnap_diff.state`):
a record is applied only after its CRC matched; at each checkpoint whose digest matched,
the target is made durable and then the state file records the position. An interrupted
or refused stream leaves the state at the last verified checkpoint, and the resume token
continues from there (records after it are sent again; writing them twice is harmless).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, BinaryIO

from . import stream as st
from .rbd import DiffFormatError, DiffHeader, RbdDiffReader
from .remote import FromStateError
from .state import Progress, StateFile
from .targets import Applier, FileTarget, VolumeTarget

Target = FileTarget | VolumeTarget
Hook = Callable[[str | None], Awaitable[None]]


class ReceiveError(Exception):
    """A receive stopped; ``progress`` is the verified state kept for a resume (or None)."""

    def __init__(self, message: str, progress: Progress | None = None) -> None:
        super().__init__(message)
        self.progress = progress


@dataclass(slots=True)
class ApplyStats:
    """What an apply or receive wrote."""

    data_bytes: int = 0
    zero_bytes: int = 0
    records: int = 0
    checkpoints: int = 0
    resumed_at: int = 0


class _Pull:
    """Pulls items from a blocking iterator on one worker thread."""

    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="csnap-diff-in")

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    async def next(self, it: Iterator[Any]) -> Any:
        return await self.call(next, it, None)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


async def read_rbd_header(inp: BinaryIO) -> RbdDiffReader:
    """Open an rbd diff (reads its metadata records) without blocking the loop."""
    pull = _Pull()
    try:
        return await pull.call(RbdDiffReader, inp)
    finally:
        pull.close()


async def apply_rbd(reader: RbdDiffReader, target: Target, depth: int = 4) -> ApplyStats:
    """Apply every data record of ``reader`` to ``target`` and make it durable.

    Raises DiffFormatError if the diff ends before its 'e' record (what came before it
    has then been applied: a plain rbd diff has no checksums to verify first).
    """
    h: DiffHeader = reader.header
    if h.size is not None and h.size != target.size:
        raise FromStateError(f"the diff is of a {h.size}-byte image, the target has "
                             f"{target.size} bytes")
    stats = ApplyStats()
    applier = Applier(target, depth)
    pull = _Pull()
    try:
        it = iter(reader)
        while (rec := await pull.next(it)) is not None:
            kind, offset, value = rec
            stats.records += 1
            if kind == "w":
                await applier.write(offset, value)
                stats.data_bytes += len(value)
            else:
                await applier.zero(offset, value)
                stats.zero_bytes += value
        await applier.sync()
    finally:
        pull.close()
        await applier.drain()
    if not reader.complete:
        raise DiffFormatError("the rbd diff ended without its end record")
    return stats


async def receive(inp: BinaryIO, open_target: Callable[[st.StreamHeader], Awaitable[Target]],
                  state: StateFile, *, check_from: Hook, finish: Hook, force: bool = False,
                  target_name: str = "", depth: int = 4) -> ApplyStats:
    """Receive one stream into the target ``open_target(header)`` returns.

    ``check_from(from_snap)`` refuses a target not in the stream's from state (fresh
    streams only, skipped with ``force``); ``finish(to_snap)`` runs once every byte is
    durable (creates the snapshot, or records the file's state). The state file is
    cleared only after ``finish`` succeeded.
    """
    pull = _Pull()
    target: Target | None = None
    applier: Applier | None = None
    progress: Progress | None = None
    try:
        try:
            dec: st.StreamDecoder = await pull.call(st.StreamDecoder, inp)
        except st.StreamError as exc:
            raise ReceiveError(f"refused: {exc}", state.load()) from None
        h = dec.header
        progress = _admit(h, state.load(), force, target_name)
        target = await open_target(h)
        if h.start == 0 and not force:
            await check_from(h.from_snap)
        if target.size != h.size:
            raise ReceiveError(f"the stream is of a {h.size}-byte volume, the target has "
                               f"{target.size} bytes", progress)
        if isinstance(target, FileTarget):
            target.record_state(None)  # no longer any snapshot until the end
        state.save(progress)
        stats = ApplyStats(resumed_at=h.start)
        applier = Applier(target, depth)
        events = iter(dec)
        while True:
            try:
                ev = await pull.next(events)
            except st.StreamError as exc:
                await applier.sync()  # verified records stay applied; state unchanged
                raise ReceiveError(f"refused at {exc}; the target is intact up to byte "
                                   f"{progress.position} (last verified checkpoint)",
                                   progress) from None
            if ev is None:
                raise ReceiveError("stream ended without an end record", progress)
            if isinstance(ev, st.Data):
                await applier.write(ev.offset, ev.data)
                stats.data_bytes += len(ev.data)
                stats.records += 1
            elif isinstance(ev, st.Zero):
                await applier.zero(ev.offset, ev.length)
                stats.zero_bytes += ev.length
                stats.records += 1
            else:
                await applier.sync()
                progress.position, progress.chain = (h.size, ev.chain) \
                    if isinstance(ev, st.End) else (ev.position, ev.chain)
                state.save(progress)
                stats.checkpoints += 1
                if isinstance(ev, st.End):
                    break
        await finish(h.to_snap)
        state.clear()
        return stats
    finally:
        pull.close()
        if applier is not None:
            try:
                await applier.drain()
            except Exception:  # noqa: BLE001, S110 - the first error is already on its way
                pass
        if target is not None:
            await target.close()


def _admit(h: st.StreamHeader, saved: Progress | None, force: bool, target: str) -> Progress:
    """The progress to continue from: fresh (start 0) or the saved one, which must match."""
    fresh = Progress(h.stream, h.from_snap, h.to_snap, h.size, h.chunk_size, h.start, h.chain,
                     target)
    if h.start == 0:
        if saved is not None and saved.stream != h.stream and not force:
            raise ReceiveError(
                f"a receive of {saved.from_snap or '(full)'} -> {saved.to_snap} into this "
                f"target is unfinished (at byte {saved.position}); resume it with "
                "csnap-send --resume $(csnap-receive --token ...), or drop it with "
                "csnap-receive --abort", saved)
        if h.chain != st.chain_start(h.stream):
            raise ReceiveError("refused: the stream header's digest start is wrong")
        return fresh
    if saved is None or saved.stream != h.stream:
        raise ReceiveError("this stream resumes a receive that this target has no record "
                           "of (another target, or already finished or aborted)", saved)
    if (saved.position, saved.chain) != (h.start, h.chain):
        raise ReceiveError(f"this stream resumes at byte {h.start}, but the target's last "
                           f"verified checkpoint is byte {saved.position}: ask for a new "
                           "token (csnap-receive --token)", saved)
    saved.target = target or saved.target
    return saved
