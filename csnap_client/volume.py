"""Byte-level volumes: read and write any byte range of the origin or of a snapshot.

Owns: splitting byte ranges into chunks, the chunk queries that make I/O safe, the data
I/O itself on the shared origin and store devices, and the client caches' use.

How each operation works (the "why" is docs/protocol.md and the design paper):

* **origin write**: chunks in the unique cache are written at once; for the others one
  QUERY_WRITE (split only when over the protocol limits); on WRITE_OK they are cached as
  unique and written. Partial-chunk writes are fine: the server already copied the whole
  chunk out.
* **origin read**: straight from the origin device, no message.
* **snapshot read**: chunks whose store address is known are read from the store; for the
  rest QUERY_SNAPSHOT_READ, then store chunks from the store and origin chunks from the
  origin (read-locked by the server), then FINISH_SNAPSHOT_READ. ``valid: false`` (the
  server broke the lock) means the origin data may be torn: those chunks are queried again.
  Known store addresses are the unique map (SNAPSHOT_WRITE_OK) and the **read map**: the
  ``store`` part of SNAPSHOT_READ_OK and MAP_OK answers, which the protocol lets clients
  cache for the life of the snapshot (origin answers are never cached: they need a fresh
  lock each time). Sequential reads ask QUERY_MAP ahead of themselves (``READ_AHEAD``
  bytes, no locks), so a scan of chunks the snapshot has in the store sends one query per
  window instead of one per read. The read map is for reads only (its chunks may be shared
  with other snapshots, so a write must still ask); a write through this volume forgets
  its chunks there, and answers to reads that were in flight across a write, a reset or a
  deletion are not cached (``_map_gen``). Reads that need the server at the same moment
  (started in one event-loop iteration, e.g. the NBD gateway's queue of requests, or
  queued while ``SHARED_ROUNDS`` such rounds are already in flight) share one
  QUERY_SNAPSHOT_READ and one FINISH_SNAPSHOT_READ: one lock covers all their chunks,
  each read gets its own pieces, and a broken lock sends each of them back for its own
  origin chunks.
* **snapshot write**: QUERY_WRITE answers with the store chunks to write (SNAPSHOT_WRITE_OK);
  the client writes there and caches the addresses as unique to this snapshot.

NEW_CLONE advice (a snapshot being cloned): like NEW_SNAPSHOT for its writes: writes are
held, store addresses in flight are voided, running writes finish, the store is
fdatasync'ed, the address cache is cleared, ACK_ADVICE.

NEW_SNAPSHOT advice (origin): the moment it is decoded (``_advice_sync``, before any later
message) new writes are held and approvals in flight are voided; then writes already past
their approval check are finished, the origin is fdatasync'ed, the unique cache is
cleared, and ACK_ADVICE is sent. DELETE_SNAPSHOT advice (snapshot): the cache is dropped at
once, running I/O finishes, ACK_ADVICE, and every later call raises
:class:`SnapshotDeletedError`.

A lost connection voids every cache (``_on_reset``) and the reconnect waits until the
transfers started under the old session have finished (``_drain``) before it identifies
as ``clean``: that is what lets the server forget what this client may write.

Invariant (origin safety): an origin chunk is written without a fresh WRITE_OK only if it
is in the unique cache, the cache generation is unchanged since the approval, no advice is
being handled and the lease is fresh; all checked synchronously right before the write is
counted as active (``_active``), which is what the advice handler and ``_drain`` wait
for. The server does not rely on it: a write that stalls between that check and the
device (a paused process) can only reach the origin, because the server copies out, for
a new snapshot, every chunk a client that did not acknowledge may still write.

Data I/O uses os.pread/os.pwrite (preadv into the result buffer) in a small thread pool so
the event loop never blocks, except where the page cache answers at once: reads of the
origin volume and of store chunks first try ``preadv(RWF_NOWAIT)`` on the event loop (a
page-cache hit costs a few microseconds, the thread hand-off tens of them), and only what
the cache could not give goes to the pool. Origin chunks read under a snapshot read lock
always go through the pool (``_pread_into``). Must not import csnapd.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from .addresses import Address
from .cache import DEFAULT_MAX_RUNS, RunSet, StoreMap
from .client import Client, SessionInfo, Slots
from .devices import DeviceCheck
from .protocol import (
    ORIGIN,
    ErrorCode,
    Message,
    SnapshotDeletedError,
    UnknownLockError,
    finish_snapshot_read,
    query_map,
    query_snapshot_read,
    query_write,
)

log = logging.getLogger("csnap_client")

Piece = tuple[int, int, int, int]
"""``(fd, device_offset, buffer_offset, nbytes)``: one contiguous device transfer."""


def batch_ranges(ranges: list[list[int]], max_ranges: int, max_chunks: int
                 ) -> list[list[list[int]]]:
    """Split ``[[start, count], ...]`` into requests within the protocol's limits."""
    batches: list[list[list[int]]] = []
    cur: list[list[int]] = []
    chunks = 0
    for start, count in ranges:
        while count > 0:
            if len(cur) >= max_ranges or chunks >= max_chunks:
                batches.append(cur)
                cur, chunks = [], 0
            take = min(count, max_chunks - chunks)
            cur.append([start, take])
            chunks += take
            start += take
            count -= take
    if cur:
        batches.append(cur)
    return batches


def chunk_span(offset: int, length: int, chunk_size: int) -> tuple[int, int]:
    """``(first_chunk, count)`` of the chunks touched by bytes ``[offset, offset+length)``."""
    first = offset // chunk_size
    last = (offset + length - 1) // chunk_size
    return first, last - first + 1


def map_pieces(fd: int, chunk: int, count: int, dev_chunk: int, chunk_size: int,
               offset: int, length: int) -> Piece | None:
    """The transfer for logical chunks ``[chunk, chunk+count)`` living at device chunk
    ``dev_chunk`` onwards, clipped to the request's bytes ``[offset, offset+length)``."""
    lo = max(offset, chunk * chunk_size)
    hi = min(offset + length, (chunk + count) * chunk_size)
    if hi <= lo:
        return None
    return (fd, dev_chunk * chunk_size + lo - chunk * chunk_size, lo - offset, hi - lo)


def _pread_into(fd: int, buf: memoryview, dev_off: int) -> None:
    """Fill ``buf`` from ``fd`` at ``dev_off``; bytes past end-of-file read as zeros."""
    done = 0
    while done < len(buf):
        n = os.preadv(fd, [buf[done:]], dev_off + done)
        if n == 0:
            buf[done:] = bytes(len(buf) - done)
            return
        done += n


#: Bytes of map a sequential snapshot read asks ahead of itself (QUERY_MAP, no locks).
READ_AHEAD = 16 << 20
#: A snapshot read starting within this many chunks of where the last one ended counts as
#: sequential (concurrent readers of one scan arrive slightly out of order).
SEQUENTIAL_SLACK = 64

#: Shared QUERY_SNAPSHOT_READ rounds in flight per volume; reads that need the server while
#: all are busy queue up and share the next round (fewer, larger queries under load).
SHARED_ROUNDS = 4

#: ``preadv`` flag: fail with EAGAIN instead of waiting for the device (0 if unsupported).
RWF_NOWAIT: int = getattr(os, "RWF_NOWAIT", 0)


def _pread_cached(fd: int, buf: memoryview, dev_off: int) -> int:
    """Fill what the page cache holds of ``buf`` (from ``dev_off``) without blocking.

    Returns the bytes filled from the start of ``buf`` (a prefix; 0 if nothing was
    cached). Raises OSError only for errors other than "would block" (EOPNOTSUPP on a
    file system without RWF_NOWAIT is left to the caller). A zero-byte read (end of file)
    stops here: the blocking path zero-fills past the end.
    """
    done, total = 0, len(buf)
    while done < total:
        try:
            n = os.preadv(fd, [buf[done:]], dev_off + done, RWF_NOWAIT)
        except BlockingIOError:
            return done
        if n <= 0:
            return done
        done += n
    return done


#: Writes up to this size are done on the event loop (see Volume._io).
INLINE_WRITE = 64 << 10


#: Pool transfers up to this many bytes in all are done in one thread hand-off.
ONE_HOP = 1 << 20

Transfer = tuple[int, memoryview, int]
"""``(fd, buffer_view, device_offset)``: one transfer ready to run."""


def _run_all(fn: Any, jobs: list[Transfer]) -> None:
    """Run ``fn(fd, view, device_offset)`` for every job, in order (in one pool thread)."""
    for fd, view, dev in jobs:
        fn(fd, view, dev)


def _pwrite_all(fd: int, buf: memoryview, dev_off: int) -> None:
    """Write all of ``buf`` to ``fd`` at ``dev_off``."""
    done = 0
    while done < len(buf):
        done += os.pwrite(fd, buf[done:], dev_off + done)


def merge_ranges(ranges: Iterable[list[int]]) -> list[list[int]]:
    """The union of ``[[start, count], ...]`` (any order, overlaps allowed), sorted, merged."""
    out: list[list[int]] = []
    for start, count in sorted((r[0], r[1]) for r in ranges if r[1] > 0):
        if out and start <= out[-1][0] + out[-1][1]:
            out[-1][1] = max(out[-1][1], start + count - out[-1][0])
        else:
            out.append([start, count])
    return out


def intersect_ranges(a: list[list[int]], b: list[list[int]]) -> list[list[int]]:
    """The chunks of ``a`` that are also in ``b`` (both as ``[[start, count], ...]``)."""
    out: list[list[int]] = []
    for s1, n1 in a:
        for s2, n2 in b:
            lo, hi = max(s1, s2), min(s1 + n1, s2 + n2)
            if lo < hi:
                out.append([lo, hi - lo])
    return merge_ranges(out)


@dataclass(slots=True)
class _Target:
    """One snapshot read's share of a QUERY_SNAPSHOT_READ: the chunks it needs and where
    its bytes go; ``done`` gets the origin ranges it must read again (a broken lock)."""

    ranges: list[list[int]]
    offset: int
    length: int
    buf: memoryview
    done: asyncio.Future[list[list[int]]] | None = None


class Volume:
    """The origin or one snapshot, as a byte-addressed device shared with other machines.

    Obtain one with :func:`connect`. ``size`` and ``chunk_size`` are in bytes.
    """

    def __init__(self, client: Client, origin: str | os.PathLike[str],
                 store: str | os.PathLike[str] | None, *, io_threads: int = 4,
                 cache_runs: int = DEFAULT_MAX_RUNS) -> None:
        info = client.info
        if info is None:
            raise ValueError("the client must be connected first")
        self.client = client
        self.info: SessionInfo = info
        self.is_origin = info.snapshot is None
        self.name: str | int = ORIGIN if self.is_origin else info.snapshot["name"]  # type: ignore[index]
        self.size = info.origin_bytes
        self.chunk_size = info.chunk_size
        self.read_only = info.read_only
        self.unique = RunSet(cache_runs)  # origin: chunks known unshared
        self.store_map = StoreMap(cache_runs)  # snapshot: chunks known unique in the store
        self.read_map = StoreMap(cache_runs)  # snapshot: store addresses for reads only
        self._mapped = RunSet(cache_runs)  # snapshot: chunks whose map was asked ahead
        self._map_gen = 0  # bumped when read-map answers in flight may be stale
        self._seq_next = -1  # snapshot: chunk after the last read (sequential detection)
        self._ahead: asyncio.Task[None] | None = None  # the QUERY_MAP read-ahead in flight
        self._ahead_chunks = max(1, min(info.max_chunks, READ_AHEAD // info.chunk_size))
        self._queued: list[_Target] = []  # snapshot reads waiting to share one query
        self._groups: set[asyncio.Task[None]] = set()  # shared query rounds running
        self._kicked = False  # _send_queued is scheduled
        self._gen = 0  # bumped whenever approvals obtained earlier become void
        self._active = 0  # data transfers past their safety checks, not yet finished
        self._idle = asyncio.Event()
        self._idle.set()
        self._advising = 0  # advices being handled; writes wait while > 0
        self._advice_done = asyncio.Event()
        self._advice_done.set()
        self._deleted: SnapshotDeletedError | None = None
        self._dirty_origin = self._dirty_store = False
        self._read_locks = Slots(info.max_read_locks)
        self._nowait = bool(RWF_NOWAIT)  # cleared if the file system refuses RWF_NOWAIT
        self._pool = ThreadPoolExecutor(max_workers=io_threads, thread_name_prefix="csnap-io")
        self._closed = False
        self._origin_fd = os.open(origin, os.O_RDWR if self.is_origin and not self.read_only
                                  else os.O_RDONLY)
        self._store_fd = -1
        try:
            if not self.is_origin:
                if store is None:
                    raise ValueError("a snapshot volume needs the store device path")
                self._store_fd = os.open(store, os.O_RDONLY if self.read_only else os.O_RDWR)
            if isinstance(client.device_check, DeviceCheck):  # verified: the same files?
                client.device_check.adopt(self._origin_fd, self._store_fd)
        except BaseException:
            os.close(self._origin_fd)
            if self._store_fd >= 0:
                os.close(self._store_fd)
            self._pool.shutdown(wait=False)
            raise
        client.advice_sync = self._advice_sync
        client.resize_listeners.append(self._resized)
        client.advice_handler = self._handle_advice
        client.on_reset = self._on_reset
        client.before_identify = self._drain

    # ------------------------------------------------------------------ public API

    async def read(self, offset: int, length: int) -> bytes:
        """Return ``length`` bytes of the volume from ``offset``."""
        buf = bytearray(length)
        await self.read_into(offset, buf)
        return bytes(buf)

    async def read_into(self, offset: int, buf: bytearray | memoryview) -> None:
        """Fill the writable buffer ``buf`` with the volume's bytes from ``offset``.

        Like :meth:`read` without the copy into a new ``bytes``: a gateway reads straight
        into the buffer it sends (with room for its reply header in front).
        """
        mv = memoryview(buf).cast("B")
        length = len(mv)
        self._check_range(offset, length)
        if length == 0:
            return
        if self.is_origin:
            await self._io(_pread_into, [(self._origin_fd, offset, 0, length)], mv)
        else:
            await self._read_snapshot(offset, length, mv)

    def read_cached(self, offset: int, buf: bytearray | memoryview) -> bool:
        """Fill ``buf`` from ``offset`` at once, without awaiting, if that needs nothing
        but the page cache: True if done, False if the caller must use :meth:`read_into`.

        Done for the origin volume, and for snapshot ranges whose every chunk has a known
        store address (unique or read map), when the page cache holds all the bytes. No message
        and no read lock is involved in either, so the answer is what :meth:`read_into`
        would give; the point is to skip the thread pool and the task a caller would
        otherwise need for each small read (the NBD gateway's sequential reads). On False
        ``buf`` may hold part of the data: read it again. Never raises for a closed or
        deleted volume: it returns False and :meth:`read_into` raises.
        """
        if not self._nowait or self._closed or self._deleted is not None:
            return False
        mv = memoryview(buf).cast("B")
        length = len(mv)
        if length == 0 or offset < 0 or offset + length > self.size:
            return False
        if self.is_origin:
            pieces: list[Piece] = [(self._origin_fd, offset, 0, length)]
        else:
            cs = self.chunk_size
            c0, n = chunk_span(offset, length, cs)
            pieces = []
            for c, k, s in self._read_lookup(c0, n):
                if s is None:
                    return False
                if (p := map_pieces(self._store_fd, c, k, s, cs, offset, length)) is not None:
                    pieces.append(p)
        try:
            for fd, dev, b, nbytes in pieces:
                if _pread_cached(fd, mv[b:b + nbytes], dev) < nbytes:
                    return False
        except OSError:
            self._nowait = False  # e.g. EOPNOTSUPP: this file system cannot; stop trying
            return False
        if not self.is_origin:
            self._read_ahead(*chunk_span(offset, length, self.chunk_size))
        return True

    async def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Write ``data`` at ``offset`` (any alignment); returns when the data is written
        (not necessarily durable: see :meth:`flush`)."""
        length = len(data)
        self._check_range(offset, length)
        if length == 0:
            return
        buf = memoryview(data).cast("B")
        if self.is_origin:
            if not self._write_cached(offset, buf):
                await self._write_origin(offset, buf)
        else:
            await self._write_snapshot(offset, buf)

    def write_cached(self, offset: int, data: bytes | bytearray | memoryview) -> bool:
        """Write ``data`` at ``offset`` at once, without awaiting, if no message is needed
        (origin chunks known unique, a small write): True if written, False if the caller
        must use :meth:`write`. The same checks as :meth:`write`'s own fast path; the
        point is to let a gateway answer such a write without a task of its own."""
        length = len(data)
        if not self.is_origin or self.read_only or self._closed or length == 0 \
                or offset < 0 or offset + length > self.size:
            return False
        return self._write_cached(offset, memoryview(data).cast("B"))

    async def flush(self) -> None:
        """Make every completed write durable (fdatasync of the devices written)."""
        loop = asyncio.get_running_loop()
        if self._dirty_origin:
            self._dirty_origin = False
            await loop.run_in_executor(self._pool, os.fdatasync, self._origin_fd)
        if self._dirty_store:
            self._dirty_store = False
            await loop.run_in_executor(self._pool, os.fdatasync, self._store_fd)

    async def close(self) -> None:
        """Finish running transfers, flush, end the session (DETACH), close the devices.

        Idempotent.
        """
        if self._closed:
            return
        if self._ahead is not None:
            self._ahead.cancel()
        try:
            await self._idle.wait()
            await self.flush()
        finally:
            self._closed = True
            await self.client.close()
            self._pool.shutdown(wait=True)
            os.close(self._origin_fd)
            if self._store_fd >= 0:
                os.close(self._store_fd)

    async def __aenter__(self) -> Volume:
        return self

    async def __aexit__(self, et: type[BaseException] | None, ev: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    def _resized(self, info: SessionInfo) -> None:
        """The origin grew: I/O may go up to its new end (a snapshot keeps its size)."""
        if self.is_origin:
            self.info, self.size = info, info.origin_bytes

    def __repr__(self) -> str:
        return (f"<Volume {self.name!r} size={self.size} chunk_size={self.chunk_size} "
                f"server={self.client.address}>")

    # ------------------------------------------------------------------ checks and helpers

    def _check_range(self, offset: int, length: int) -> None:
        if self._closed:
            raise ValueError("I/O on a closed volume")
        if self._deleted is not None:
            raise self._deleted
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ValueError(f"range [{offset}, {offset + length}) outside the volume "
                             f"(size {self.size})")

    def _check_alive(self) -> None:
        if self._deleted is not None:
            raise self._deleted

    async def _io(self, fn: Any, pieces: list[Piece], buf: bytearray | memoryview) -> None:
        """Run ``fn(fd, buffer_slice, device_offset)`` for every piece.

        Small writes go straight to the page cache on the event loop (a thread hand-off
        costs more than the copy); large writes run in the thread pool, so a slow device
        never stalls the loop. Reads (``fn`` is ``_pread_into``) first take what the page
        cache holds without blocking (``RWF_NOWAIT``) on the loop, except origin pieces of a
        snapshot read (read under a read lock: those always go through ``_pread_into``);
        the rest of each piece goes to the pool.
        """
        mv = memoryview(buf)
        await self._transfer(fn, [(fd, mv[b:b + n], dev) for fd, dev, b, n in pieces])

    async def _transfer(self, fn: Any, jobs: list[Transfer]) -> None:
        """Run ``fn(fd, view, device_offset)`` for every job, as :meth:`_io` describes.

        What goes to the pool goes in hand-offs of up to ``ONE_HOP`` bytes each (a
        snapshot read's pieces, from one or many reads sharing a query, in one or a few):
        a thread hand-off costs far more than the copy from the page cache, and paying it
        once per piece was most of the time of a locked read. The hand-offs run in
        parallel, so a large transfer from a slow device still uses several threads.
        """
        loop = asyncio.get_running_loop()
        self._active += 1
        self._idle.clear()
        try:
            if fn is _pwrite_all and sum(len(v) for _, v, _ in jobs) <= INLINE_WRITE:
                for fd, view, dev in jobs:
                    fn(fd, view, dev)
                return
            if fn is _pread_into and self._nowait:
                jobs = self._read_cached_jobs(jobs)
            if not jobs:
                return
            hops: list[list[Transfer]] = []
            size = ONE_HOP
            for job in jobs:
                if size + len(job[1]) > ONE_HOP:
                    hops.append([])
                    size = 0
                hops[-1].append(job)
                size += len(job[1])
            await asyncio.gather(*(loop.run_in_executor(self._pool, _run_all, fn, hop)
                                   for hop in hops))
        finally:
            self._active -= 1
            if self._active == 0:
                self._idle.set()

    def _read_cached_jobs(self, jobs: list[Transfer]) -> list[Transfer]:
        """Read what the page cache holds of ``jobs`` now; the jobs (or their tails)
        still to read. Origin pieces of a snapshot volume are left whole."""
        rest: list[Transfer] = []
        for fd, view, dev in jobs:
            got = 0
            if self._nowait and (self.is_origin or fd != self._origin_fd):
                try:
                    got = _pread_cached(fd, view, dev)
                except OSError:
                    self._nowait = False  # e.g. EOPNOTSUPP; the pool reads it all
            if got < len(view):
                rest.append((fd, view[got:], dev + got))
        return rest

    async def _query_all(self, build: Any, ranges: list[list[int]]) -> list[Message]:
        """Send one query per batch of ranges (normally one) concurrently; all replies."""
        info = self.client.info or self.info
        batches = batch_ranges(ranges, info.max_ranges, info.max_chunks)
        return list(await asyncio.gather(*(self.client.request(build, b) for b in batches)))

    # ------------------------------------------------------------------ origin

    async def _wait_writable(self) -> None:
        """Wait until no advice is being handled and the session lease is fresh."""
        while True:
            self._check_alive()
            if self._advising:
                await self._advice_done.wait()
                continue
            await self.client.wait_ready()
            if not self._advising:
                return

    def _write_cached(self, offset: int, buf: memoryview) -> bool:
        """Fast path: a small write to chunks known unique, done at once; False if not.

        Same safety checks as _write_origin (no advice running, lease fresh, every
        chunk approved since the last reset), without a single await in between.
        """
        if len(buf) > INLINE_WRITE or self._advising or self._deleted is not None:
            return False
        c0, n = chunk_span(offset, len(buf), self.chunk_size)
        if not self.unique.covers(c0, n) or not self.client.lease_fresh():
            return False
        self._dirty_origin = True
        _pwrite_all(self._origin_fd, buf, offset)
        return True

    async def _write_origin(self, offset: int, buf: memoryview) -> None:
        c0, n = chunk_span(offset, len(buf), self.chunk_size)
        while True:
            await self._wait_writable()
            gen = self._gen
            missing = self.unique.missing(c0, n)
            if missing:
                await self._query_all(query_write, missing)
                if gen != self._gen:
                    continue  # an advice or reset came in between: approvals may be stale
                for start, count in missing:
                    self.unique.add(start, count)
            # Synchronous safety check, then counted as active (see module invariant).
            if self._advising or gen != self._gen or not self.client.lease_fresh():
                continue
            self._dirty_origin = True
            await self._io(_pwrite_all, [(self._origin_fd, offset, 0, len(buf))], buf)
            self._dirty_origin = True  # again: a flush() that ran meanwhile cleared the flag
            return

    def _on_reset(self, why: str) -> None:
        """The session lost its guarantees (disconnect, lease, restart): forget approvals
        and store addresses; the reconnect says ``clean`` once transfers are done."""
        self._gen += 1
        if self.is_origin and len(self.unique):
            log.info("origin unique cache cleared: %s", why)
        self.unique.clear()
        self._forget_maps()

    def _forget_maps(self) -> None:
        """Drop every store address (a reset, a deletion): the snapshot may be gone."""
        self.store_map.clear()
        self.read_map.clear()
        self._mapped.clear()
        self._map_gen += 1

    async def _drain(self) -> None:
        """Before re-identifying: wait for every transfer started under the old session."""
        await self._idle.wait()

    # ------------------------------------------------------------------ advice

    def _advice_sync(self, msg: Message) -> None:
        """The part of an ADVICE that must happen before any later message: close the
        write gate (origin) or mark the snapshot gone, and void approvals in flight."""
        kind = msg["kind"]
        if kind == "NEW_SNAPSHOT" and self.is_origin:
            self._advising += 1
            self._advice_done.clear()
            self._gen += 1
        elif kind == "NEW_CLONE" and not self.is_origin and msg["snapshot"] == self.name:
            self._advising += 1
            self._advice_done.clear()
            self._gen += 1
            self.store_map.clear()
        elif kind == "DELETE_SNAPSHOT" and not self.is_origin and msg["snapshot"] == self.name:
            self._deleted = SnapshotDeletedError(
                ErrorCode.SNAPSHOT_DELETED, f"snapshot {self.name!r} was deleted")
            self._forget_maps()

    async def _handle_advice(self, msg: Message) -> None:
        """The rest of an ADVICE (after ``_advice_sync``): finish, flush, acknowledge."""
        kind = msg["kind"]
        if kind == "NEW_SNAPSHOT" and self.is_origin:
            await self._let_go(msg, "_dirty_origin", self._origin_fd, self.unique)
        elif kind == "NEW_CLONE" and not self.is_origin and msg["snapshot"] == self.name:
            await self._let_go(msg, "_dirty_store", self._store_fd, self.store_map)
        elif kind == "DELETE_SNAPSHOT" and not self.is_origin and msg["snapshot"] == self.name:
            await self._idle.wait()
            await self.client.ack_advice(msg)
        else:
            await self.client.ack_advice(msg)

    async def _let_go(self, msg: Message, dirty: str, fd: int,
                      cache: RunSet | StoreMap) -> None:
        """Finish the writes already approved, make them durable on ``fd``, forget what
        they were approved for (``cache``), acknowledge; then let writes go on."""
        try:
            await self._idle.wait()
            if getattr(self, dirty):
                setattr(self, dirty, False)
                await asyncio.get_running_loop().run_in_executor(self._pool, os.fdatasync, fd)
            cache.clear()
            await self.client.ack_advice(msg)
        finally:
            self._advising -= 1
            if not self._advising:
                self._advice_done.set()

    # ------------------------------------------------------------------ snapshot

    async def _write_snapshot(self, offset: int, buf: memoryview) -> None:
        c0, n = chunk_span(offset, len(buf), self.chunk_size)
        # The write may move these chunks (unsharing): reads must not trust the read map's
        # addresses for them, nor cache answers to reads still in flight.
        self.read_map.discard(c0, n)
        self._map_gen += 1
        while True:
            await self._wait_writable()  # a clone of this snapshot being made: wait
            gen = self._gen
            segs = self.store_map.lookup(c0, n)
            located = [(c, k, s) for c, k, s in segs if s is not None]
            missing = [[c, k] for c, k, s in segs if s is None]
            if missing:
                replies = await self._query_all(query_write, missing)
                self._check_alive()
                # Again now that the chunks have moved: a read that asked in between may
                # have been told the old address (and must not have cached it).
                self.read_map.discard(c0, n)
                self._map_gen += 1
                if gen != self._gen:
                    continue  # a clone or reset came in between: the addresses may be shared
                for reply in replies:
                    self.store_map.add_mapping(reply["map"])
                    located.extend(tuple(e) for e in reply["map"])
            # Synchronous check right before the write is counted as active (the clone
            # advice waits for active writes, then drops the addresses).
            if self._advising or gen != self._gen:
                continue
            break
        pieces = [p for c, k, s in sorted(located)
                  if (p := map_pieces(self._store_fd, c, k, s, self.chunk_size, offset,
                                      len(buf))) is not None]
        self._dirty_store = True
        await self._io(_pwrite_all, pieces, buf)
        self._dirty_store = True  # again: a flush() that ran meanwhile cleared the flag

    def _read_lookup(self, start: int, count: int) -> list[tuple[int, int, int | None]]:
        """Segments ``(chunk, count, store | None)`` of a snapshot read: the unique map
        first (it follows this volume's writes), then the read map."""
        out: list[tuple[int, int, int | None]] = []
        for c, k, s in self.store_map.lookup(start, count):
            if s is None and len(self.read_map):
                out.extend(self.read_map.lookup(c, k))
            else:
                out.append((c, k, s))
        return out

    def _read_ahead(self, first: int, count: int) -> None:
        """On a sequential snapshot read of chunks ``[first, first + count)``, make sure
        the map of the next window is known or being asked (one QUERY_MAP at a time)."""
        end = first + count
        sequential = abs(first - self._seq_next) <= SEQUENTIAL_SLACK
        self._seq_next = end
        if not sequential or self._ahead is not None or self._deleted is not None:
            return
        limit = self.size // self.chunk_size
        want = min(self._ahead_chunks, limit - end)
        if want <= 0 or self._mapped.covers(end, max(1, want // 2)):
            return
        missing = self._mapped.missing(end, want)
        start = missing[0][0]
        count = min(self._ahead_chunks, limit - start)
        self._ahead = asyncio.get_running_loop().create_task(
            self._ask_map(start, count, self._map_gen))

    async def _ask_map(self, start: int, count: int, gen: int) -> None:
        """QUERY_MAP of ``[start, start + count)`` into the read map (a hint: on any
        failure the reads just ask for themselves)."""
        try:
            reply = await self.client.request(query_map, [[start, count]])
            if gen == self._map_gen and self._deleted is None:
                self.read_map.add_mapping(reply["store"])
                self._mapped.add(start, count)
        except Exception as exc:  # noqa: BLE001 - read-ahead is only a hint
            log.debug("snapshot map read-ahead of %d+%d failed: %s", start, count, exc)
        finally:
            self._ahead = None

    async def _read_snapshot(self, offset: int, length: int, buf: memoryview) -> None:
        cs, length_ = self.chunk_size, length
        c0, n = chunk_span(offset, length, cs)
        pieces: list[Piece] = []
        missing: list[list[int]] = []
        for c, k, s in self._read_lookup(c0, n):
            if s is None:
                missing.append([c, k])
            elif (p := map_pieces(self._store_fd, c, k, s, cs, offset, length_)) is not None:
                pieces.append(p)
        self._read_ahead(c0, n)
        if pieces:
            await self._io(_pread_into, pieces, buf)
        rounds = 0
        info = self.info
        while missing:
            self._check_alive()
            rounds += 1
            if len(missing) <= info.max_ranges and \
                    sum(k for _, k in missing) <= info.max_chunks:
                missing = await self._queue_read(_Target(missing, offset, length, buf))
            else:  # too big to share a query: this read's own queries, concurrently
                target = [_Target(missing, offset, length, buf)]
                batches = batch_ranges(missing, info.max_ranges, info.max_chunks)
                results = await asyncio.gather(*(self._read_locked(b, target)
                                                 for b in batches))
                missing = [r for redo in results for r in redo]
            if missing:
                log.info("snapshot read lock broken; re-reading %d ranges (round %d)",
                         len(missing), rounds)

    async def _queue_read(self, target: _Target) -> list[list[int]]:
        """Read ``target`` through the server together with the other reads queued in
        this event-loop iteration; the origin ranges it must read again."""
        target.done = asyncio.get_running_loop().create_future()
        self._queued.append(target)
        self._kick()
        return await target.done

    def _kick(self) -> None:
        """Schedule :meth:`_send_queued` (once) if reads wait and a round may start."""
        if self._queued and not self._kicked and len(self._groups) < SHARED_ROUNDS:
            self._kicked = True
            asyncio.get_running_loop().call_soon(self._send_queued)

    def _send_queued(self) -> None:
        """Group the queued reads into as few queries as the limits allow and start up to
        ``SHARED_ROUNDS`` rounds in all; the rest wait for a round to end (``_kick``), by
        which time more reads have queued up to share the next one."""
        self._kicked = False
        info = self.info
        while self._queued and len(self._groups) < SHARED_ROUNDS:
            group: list[_Target] = []
            ranges: list[list[int]] = []
            while self._queued:
                target = self._queued[0]
                merged = merge_ranges(ranges + target.ranges)
                if group and (len(merged) > info.max_ranges
                              or sum(k for _, k in merged) > info.max_chunks):
                    break
                group.append(self._queued.pop(0))
                ranges = merged
            log.debug("%d snapshot reads share one read query", len(group))
            self._start_group(ranges, group)

    def _start_group(self, ranges: list[list[int]], group: list[_Target]) -> None:
        """Run one shared QUERY_SNAPSHOT_READ round for ``group`` in a task of its own."""
        async def run() -> None:
            try:
                redo = await self._read_locked(ranges, group)
            except BaseException as exc:
                for t in group:
                    assert t.done is not None
                    if not t.done.done():
                        t.done.set_exception(exc)
                        t.done.exception()  # its reader may be gone (cancelled): no warning
                if not isinstance(exc, Exception):
                    raise
                return
            for t in group:
                assert t.done is not None
                if not t.done.done():
                    t.done.set_result(intersect_ranges(redo, t.ranges) if redo else [])

        task = asyncio.get_running_loop().create_task(run())
        self._groups.add(task)  # a strong reference until it ends
        task.add_done_callback(self._round_ended)

    def _round_ended(self, task: asyncio.Task[None]) -> None:
        self._groups.discard(task)
        self._kick()

    async def _read_locked(self, ranges: list[list[int]], targets: list[_Target]
                           ) -> list[list[int]]:
        """One QUERY_SNAPSHOT_READ round for ``ranges`` filling every target's buffer with
        its bytes; returns the origin ranges to read again (all of them if the lock was
        broken, else none)."""
        cs = self.chunk_size
        await self._read_locks.acquire()
        try:
            gen = self._map_gen
            reply = await self.client.request(query_snapshot_read, ranges)
            if gen == self._map_gen and self._deleted is None:
                self.read_map.add_mapping(reply["store"])  # the protocol lets us cache these
            jobs: list[Transfer] = []
            for t in targets:
                off, length, mv = t.offset, t.length, t.buf
                pieces = [p for c, k, s in reply["store"]
                          if (p := map_pieces(self._store_fd, c, k, s, cs, off, length))]
                pieces += [p for c, k in reply["origin"]
                           if (p := map_pieces(self._origin_fd, c, k, c, cs, off, length))]
                jobs += [(fd, mv[b:b + n], dev) for fd, dev, b, n in pieces]
            # The transfers end before the lock is released, even when they fail.
            error: BaseException | None = None
            try:
                await self._transfer(_pread_into, jobs)
            except Exception as exc:  # noqa: BLE001 - raised after the FINISH
                error = exc
            valid = await self._finish(reply["id"]) if reply["origin"] else True
            if error is not None:
                raise error
            return [] if valid else [list(r) for r in reply["origin"]]
        finally:
            self._read_locks.release()

    async def _finish(self, lock: int) -> bool:
        """Release read lock ``lock``; False if the server broke it (data must be re-read)."""
        try:
            reply = await self.client.request(finish_snapshot_read, lock)
        except UnknownLockError:
            return False  # lost across a reconnect: we cannot know, so re-read
        return bool(reply["valid"])


async def connect(host: str, port: int, volume: str | int = ORIGIN, *,
                  origin: str | os.PathLike[str], store: str | os.PathLike[str] | None = None,
                  servers: Iterable[str | Address] | None = None,
                  client_id: int | None = None, timeout: float = 10.0,
                  io_threads: int = 4, cache_runs: int = DEFAULT_MAX_RUNS,
                  **client_options: Any) -> Volume:
    """Connect to csnapd at ``host:port`` and open ``volume`` ("origin", a snapshot name or
    an int tag) with the shared ``origin`` and ``store`` device paths.

    ``servers`` (``["h1:p1", "[::1]:p2", ...]``) names the other csnapd nodes of a
    high-availability set serving the same store: the session goes to whichever leads,
    on connect and after every failover (docs/protocol.md, "Failover");
    ``volume.client.address`` is the node in use. Extra keyword options go to
    :class:`~csnap_client.client.Client` (``reconnect``, ``reconnect_delay``,
    ``reconnect_max_delay``, ``reconnect_timeout``, ``heartbeat``).
    Raises OSError if the server is unreachable (:class:`~csnap_client.client.NoLeaderError`
    when no address of several gave a session) and the IDENTIFY's RemoteError (e.g.
    UnknownSnapshotError) if it refuses the volume. Before any data I/O (and again after
    every reconnect) the devices opened are checked against the server's
    (:mod:`csnap_client.devices`): a device that is not the server's raises
    :class:`~csnap_client.protocol.WrongDeviceError` naming its path.
    """
    client = Client(host, port, volume, servers=servers, client_id=client_id,
                    timeout=timeout, **client_options)
    check = client.device_check = DeviceCheck(origin, None if volume == ORIGIN else store)
    try:
        await client.connect()
        return Volume(client, origin, store, io_threads=io_threads, cache_runs=cache_runs)
    except BaseException:
        await client.close()
        check.close()
        raise
