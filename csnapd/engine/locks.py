"""Snapshot read locks on origin chunks, and origin writes that wait on them.

What this module owns
---------------------
A snapshot client that reads a chunk still shared with the origin reads it
*from the origin*.  The server therefore read-locks that origin chunk until
the client says it has finished, and an origin write to the chunk (already
copied out to the snapshot store by the server) must not be allowed to
proceed while such a lock is held.  :class:`LockTable` is that lock manager:
plain calls, no asyncio, no I/O and no clock (every time is passed in as
``now``, a float in seconds from one monotonic clock).  The server turns the
returned values and events into replies.

Vocabulary
----------
* A *lock* is held by ``(client, lock_id)``: ``client`` is any hashable that
  names the client, ``lock_id`` the id of the read request.  One lock covers a set of
  origin chunks given as ranges ``[[chunk, count], ...]``.
* A *waiting write* ``(client, write_id)`` is an origin write that may not
  proceed yet.  It is "done", as far as this table is concerned, the moment it
  is reported ready (:class:`WriteReady` or ``wait_write() -> True``): by then
  the server has recorded the copy-out, so later snapshot reads of those chunks
  go to the snapshot store and never lock the origin chunk again.  There is no
  ``write_done`` call.
* A *queued read* is a read request that arrived while an origin write was
  waiting on one of its chunks; it is granted (:class:`ReadGranted`) when every
  write it queued behind has become ready or was dropped.

Invariants (audited by :meth:`LockTable.check_invariants`)
----------------------------------------------------------
1. ``readers[c]`` is the number of held locks that cover chunk ``c``; a chunk
   with no holder has no entry (so "no locks anywhere" is ``not readers``).
2. For every waiting write ``w``: ``w.blocked`` is the number of its chunks
   that have a holder.  ``w.blocked > 0`` always; a write reaching 0 is
   reported ready at once.  Hence a write is never reported ready while a
   (non-broken) lock on one of its chunks is held, and never waits while none is.
3. A waiting write is registered on *all* of its chunks, and a new read that
   touches any of them queues behind it (no starvation of writes).
4. A queued read waits exactly on the writes that were waiting on its chunks
   when it arrived (all earlier than it); it is granted when the last of them
   leaves.  Writes wait only on *held* locks, never on queued reads.
5. Held locks wait on nothing, queued reads wait only on writes, writes wait
   only on held locks: there is no cycle, so everything is eventually granted
   once the holders release, disconnect or their leases run out.
6. Lease expiries are non-decreasing in ``_leases`` order (times are clamped
   to the largest ``now`` seen), so expiry is a scan from the front.
7. A lock's expiry is fixed when it is granted and never extended: the
   lease is the lock's maximum hold time, so a reader that stays connected
   but never finishes cannot block a write for longer than that.  Locks do
   not survive their client's disconnect, and are never re-created from a
   client's word: a FINISH for a lock the table does not hold is invalid.

Must not import: asyncio, sockets, the store, the protocol; no ``time`` calls.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

Ranges = tuple[tuple[int, int], ...]
"""Normalised chunk ranges: sorted, disjoint, non-adjacent ``(start, count)``."""

__all__ = [
    "DuplicateRequest",
    "Event",
    "InvalidRanges",
    "LockBroken",
    "LockError",
    "LockLimitExceeded",
    "LockStats",
    "LockTable",
    "QueuedRead",
    "ReadGrant",
    "ReadGranted",
    "ClientLockStats",
    "WriteReady",
    "normalize_ranges",
]


# --------------------------------------------------------------------- errors


class LockError(Exception):
    """Base class of lock-table errors; the server answers them with ERROR."""


class LockLimitExceeded(LockError):
    """A client asked for more locked chunks or queued requests than allowed."""


class DuplicateRequest(LockError):
    """A lock id or write id is already in use by the same client."""


class InvalidRanges(LockError, ValueError):
    """Ranges that are not ``[[chunk >= 0, count >= 0], ...]`` integers."""


# ---------------------------------------------------- results and events
# Frozen slotted dataclasses; don't subclass them (the server dispatches on type).


@dataclass(frozen=True, slots=True)
class ReadGrant:
    """Returned by ``acquire_read``: the locks are held now, until ``expiry``."""

    client: Hashable
    lock_id: Hashable
    ranges: Ranges
    expiry: float | None


@dataclass(frozen=True, slots=True)
class QueuedRead:
    """Returned by ``acquire_read``: queued behind ``waiting_writes`` writes.

    A :class:`ReadGranted` event follows later (or nothing, if the client drops).
    """

    client: Hashable
    lock_id: Hashable
    waiting_writes: int


@dataclass(frozen=True, slots=True)
class ReadGranted:
    """Event: a queued read now holds its locks; send the deferred read reply.

    The writes it waited for have copied those chunks out, so the server should
    do the snapshot lookup for this read now and release (partially) the
    chunks that are no longer shared with the origin.
    """

    client: Hashable
    lock_id: Hashable
    ranges: Ranges
    expiry: float | None
    payload: Any = field(default=None, compare=False)  # what acquire_read was given


@dataclass(frozen=True, slots=True)
class WriteReady:
    """Event: a waiting origin write may proceed; send its deferred reply."""

    client: Hashable
    write_id: Hashable
    payload: Any = field(default=None, compare=False)  # what wait_write was given


@dataclass(frozen=True, slots=True)
class LockBroken:
    """Event: a lease ran out and the lock was broken (for logs and stats).

    The holder learns it when it releases (``valid=False``) and must re-read.
    """

    client: Hashable
    lock_id: Hashable


Event = ReadGranted | WriteReady | LockBroken


@dataclass(frozen=True, slots=True)
class ClientLockStats:
    """Per-client counts for status output."""

    held_locks: int
    held_chunks: int
    queued_reads: int
    waiting_writes: int
    broken_remembered: int


@dataclass(frozen=True, slots=True)
class LockStats:
    """Table-wide counts for status output."""

    held_locks: int
    held_chunks: int
    locked_chunks: int
    queued_reads: int
    waiting_writes: int
    per_client: dict[Hashable, ClientLockStats]


# ------------------------------------------------------------------ ranges


def normalize_ranges(ranges: Iterable[Sequence[int]]) -> tuple[Ranges, int]:
    """Validate ``[[chunk, count], ...]`` and return (sorted merged ranges, total).

    Cost is in the number of ranges, never the number of chunks, so a hostile
    ``[[0, 2**60]]`` is cheap to reject by its total.
    """
    pairs = []
    for item in ranges:
        try:
            start, count = item
        except (TypeError, ValueError):
            raise InvalidRanges(f"range {item!r} is not a [chunk, count] pair") from None
        if type(start) is not int or type(count) is not int or start < 0 or count < 0:
            raise InvalidRanges(f"range {item!r} needs integers chunk >= 0, count >= 0")
        if count:
            pairs.append((start, count))
    if len(pairs) <= 1:
        return tuple(pairs), (pairs[0][1] if pairs else 0)
    pairs.sort()
    merged = [list(pairs[0])]
    for start, count in pairs[1:]:
        last = merged[-1]
        if start <= last[0] + last[1]:
            last[1] = max(last[1], start + count - last[0])
        else:
            merged.append([start, count])
    return tuple((s, n) for s, n in merged), sum(n for _, n in merged)


def _chunk_set(ranges: Ranges) -> set[int]:
    """Expand normalised ranges into the set of chunks they cover."""
    if len(ranges) == 1:
        start, count = ranges[0]
        return set(range(start, start + count))
    chunks: set[int] = set()
    for start, count in ranges:
        chunks.update(range(start, start + count))
    return chunks


def _in_ranges(chunk: int, ranges: Ranges) -> bool:
    """True if ``chunk`` lies in one of ``ranges`` (few ranges: linear scan)."""
    return any(start <= chunk < start + count for start, count in ranges)


# ---------------------------------------------------------------- records
# Plain slotted classes, hashed by identity.


class _Lock:
    """A held lock: the chunks it still covers and its lease expiry."""

    __slots__ = ("client", "lock_id", "ranges", "chunks", "expiry")

    def __init__(self, client: Hashable, lock_id: Hashable, ranges: Ranges,
                 chunks: set[int], expiry: float | None) -> None:
        self.client, self.lock_id, self.ranges = client, lock_id, ranges
        self.chunks, self.expiry = chunks, expiry


class _Write:
    """A waiting origin write (invariant 2 describes ``blocked``)."""

    __slots__ = ("client", "write_id", "chunks", "seq", "blocked", "behind", "payload")

    def __init__(self, client: Hashable, write_id: Hashable, chunks: set[int],
                 seq: int, blocked: int, payload: Any = None) -> None:
        self.client, self.write_id, self.chunks, self.seq = client, write_id, chunks, seq
        self.blocked, self.payload = blocked, payload
        self.behind: dict[_Read, None] = {}  # queued reads waiting on this write


class _Read:
    """A queued read: granted when ``waiting_on`` becomes empty."""

    __slots__ = ("client", "lock_id", "ranges", "chunks", "seq", "waiting_on", "payload")

    def __init__(self, client: Hashable, lock_id: Hashable, ranges: Ranges,
                 chunks: set[int], seq: int, waiting_on: set[_Write], payload: Any = None
                 ) -> None:
        self.client, self.lock_id, self.ranges, self.chunks = client, lock_id, ranges, chunks
        self.seq, self.waiting_on, self.payload = seq, waiting_on, payload


class _Client:
    """Everything one client has in the table, plus its broken-lock memory."""

    __slots__ = ("held", "queued", "writes", "broken", "reserved")

    def __init__(self) -> None:
        self.held: dict[Hashable, _Lock] = {}
        self.queued: dict[Hashable, _Read] = {}
        self.writes: dict[Hashable, _Write] = {}
        self.broken: OrderedDict[Hashable, None] = OrderedDict()
        self.reserved = 0  # chunks held + chunks of queued reads (the limit's unit)

    def is_empty(self) -> bool:
        """True when nothing (not even broken-lock memory) is left."""
        return not (self.held or self.queued or self.writes or self.broken)


# ------------------------------------------------------------------- table


class LockTable:
    """Read locks on origin chunks and origin writes waiting on them.

    ``lease`` is the lock lifetime in seconds (``None``: locks never expire).
    ``max_client_chunks`` bounds chunks held plus chunks of queued reads per
    client, ``max_client_queued`` bounds queued reads plus waiting writes per
    client, ``max_request_chunks`` bounds one request, and ``max_broken`` bounds
    how many broken lock ids are remembered per client.
    """

    def __init__(self, lease: float | None = 30.0, *, max_client_chunks: int = 1 << 20,
                 max_client_queued: int = 4096, max_request_chunks: int = 1 << 20,
                 max_broken: int = 1024) -> None:
        self.lease = lease
        self.max_client_chunks = max_client_chunks
        self.max_client_queued = max_client_queued
        self.max_request_chunks = max_request_chunks
        self.max_broken = max_broken
        self._readers: dict[int, int] = {}
        self._wwait: dict[int, dict[_Write, None]] = {}
        self._clients: dict[Hashable, _Client] = {}
        self._leases: OrderedDict[_Lock, None] = OrderedDict()
        self._now: float | None = None
        self._seq = 0
        self._held_chunks = 0
        self._held_locks = 0
        self._queued_reads = 0
        self._waiting_writes = 0

    # ------------------------------------------------------------ reads

    def acquire_read(self, client: Hashable, lock_id: Hashable,
                     ranges: Iterable[Sequence[int]], now: float, payload: Any = None
                     ) -> ReadGrant | QueuedRead:
        """Lock the chunks of a snapshot read, or queue it behind waiting writes.

        ``payload`` comes back in the :class:`ReadGranted` event of a queued read, so
        the caller needs no table of its own. Raises :class:`LockLimitExceeded`,
        :class:`DuplicateRequest` or :class:`InvalidRanges`; nothing changes when it raises.
        """
        self._tick(now)
        norm, total = normalize_ranges(ranges)
        state = self._clients.get(client)
        if state is not None:
            self._check_new_lock(state, lock_id)
        self._check_chunks(client, state, total)
        chunks = _chunk_set(norm)
        waiting_on = self._writes_on(chunks) if self._wwait else None
        if waiting_on:
            return self._queue_read(client, lock_id, norm, chunks, waiting_on, payload)
        lock = self._hold(client, lock_id, norm, chunks)
        return ReadGrant(client, lock_id, norm, lock.expiry)

    def release(self, client: Hashable, lock_id: Hashable,
                ranges: Iterable[Sequence[int]] | None = None,
                now: float | None = None) -> tuple[bool, list[Event]]:
        """Release all (or the listed) chunks of a lock.

        Returns ``(valid, events)``.  ``valid`` is False when the lock was
        broken before this release (the client must re-read), or is unknown.
        Releasing a still-queued read cancels it (``valid`` False: nothing was
        granted).  ``events`` may carry replies for other clients.
        """
        if now is not None:
            self._tick(now)
        state = self._clients.get(client)
        if state is None:
            return False, []
        lock = state.held.get(lock_id)
        if lock is None:
            self._forget_request(client, state, lock_id)
            return False, []
        gone = self._release_chunks(lock, ranges)
        candidates: list[_Write] = []
        self._unlock(gone, candidates)
        if not lock.chunks:
            self._drop_lock(state, lock)
            self._forget_if_empty(client, state)
        events: list[Event] = []
        self._settle(candidates, events)
        return True, events

    # ----------------------------------------------------------- writes

    def wait_write(self, client: Hashable, write_id: Hashable,
                   ranges: Iterable[Sequence[int]], payload: Any = None) -> bool:
        """May this origin write proceed now?  False: it waits for a WriteReady.

        Call it after the copy-out for the write is recorded; ``payload`` comes back
        in the :class:`WriteReady` event.  O(number of ranges) when no lock is held
        anywhere.
        """
        if not self._readers:  # no lock held anywhere: the common case, nothing to check
            return True
        norm, total = normalize_ranges(ranges)
        if not total:
            return True
        blocked = self._count_locked(norm, total)
        if not blocked:
            return True
        state = self._clients.get(client)
        if state is not None and write_id in state.writes:
            raise DuplicateRequest(f"write {write_id!r} of {client!r} is already waiting")
        self._check_queue(client, state, total)
        self._register_write(client, write_id, _chunk_set(norm), blocked, payload)
        return False

    # ---------------------------------------------------------- clients

    def drop_client(self, client: Hashable, now: float | None = None) -> list[Event]:
        """A client disconnected: drop its locks, queued reads and waiting writes.

        Also forgets its broken-lock memory.
        Returns the events for other clients whose requests can now proceed.
        """
        if now is not None:
            self._tick(now)
        events: list[Event] = []
        candidates: list[_Write] = []
        state = self._clients.pop(client, None)
        if state is not None:
            for read in list(state.queued.values()):
                self._unqueue_read(state, read)
            for write in list(state.writes.values()):
                self._unregister_write(state, write, events)
            for lock in list(state.held.values()):
                self._unlock(lock.chunks, candidates)
                self._drop_lock(state, lock)
        self._settle(candidates, events)
        return events

    # ------------------------------------------------------------ leases

    def expire(self, now: float) -> list[Event]:
        """Break locks held past their lease (their maximum hold time)."""
        self._tick(now)
        events: list[Event] = []
        candidates: list[_Write] = []
        leases = self._leases
        while leases:
            lock = next(iter(leases))
            if lock.expiry is None or lock.expiry > now:
                break
            self._break(lock, candidates, events)
        self._settle(candidates, events)
        return events

    def next_deadline(self) -> float | None:
        """The earliest time at which ``expire`` has work to do, or None."""
        return next(iter(self._leases)).expiry if self._leases else None

    # ----------------------------------------------------------- stats

    @property
    def held_chunks(self) -> int:
        """Sum over held locks of the chunks each covers."""
        return self._held_chunks

    @property
    def held_locks(self) -> int:
        """Number of held (granted, not broken, not released) locks."""
        return self._held_locks

    @property
    def waiting_writes(self) -> int:
        """Number of origin writes waiting."""
        return self._waiting_writes

    @property
    def queued_reads(self) -> int:
        """Number of reads queued behind waiting writes."""
        return self._queued_reads

    def pending(self) -> list[tuple[Hashable, Hashable, Any]]:
        """Every waiting write and queued read as ``(client, id, payload)``."""
        out: list[tuple[Hashable, Hashable, Any]] = []
        for client, state in self._clients.items():
            out += [(client, w.write_id, w.payload) for w in state.writes.values()]
            out += [(client, r.lock_id, r.payload) for r in state.queued.values()]
        return out

    def was_broken(self, client: Hashable, lock_id: Hashable) -> bool:
        """True if the lock was broken and not yet released (for error texts)."""
        state = self._clients.get(client)
        return state is not None and lock_id in state.broken

    def held_lock_count(self, client: Hashable) -> int:
        """How many locks ``client`` holds (O(1), for per-request limit checks)."""
        state = self._clients.get(client)
        return 0 if state is None else len(state.held)

    def client_stats(self, client: Hashable) -> ClientLockStats:
        """Counts for one client (all zero for an unknown client)."""
        state = self._clients.get(client)
        if state is None:
            return ClientLockStats(0, 0, 0, 0, 0)
        return ClientLockStats(len(state.held), sum(len(x.chunks) for x in state.held.values()),
                               len(state.queued), len(state.writes), len(state.broken))

    def stats(self) -> LockStats:
        """A snapshot of all counts, per client included."""
        per_client = {client: self.client_stats(client) for client in self._clients}
        return LockStats(self._held_locks, self._held_chunks, len(self._readers),
                         self._queued_reads, self._waiting_writes, per_client)

    # ================================================== internals: checks

    def _tick(self, now: float) -> None:
        """Remember the largest time seen; leases are computed from it."""
        if self._now is None or now > self._now:
            self._now = now

    def _state(self, client: Hashable) -> _Client:
        """The client's record, created on first use."""
        state = self._clients.get(client)
        if state is None:
            state = self._clients[client] = _Client()
        return state

    def _check_new_lock(self, state: _Client, lock_id: Hashable) -> None:
        """A new read must not reuse a held or queued id (a broken one is fine)."""
        if lock_id in state.held or lock_id in state.queued:
            raise DuplicateRequest(f"lock id {lock_id!r} is already in use")

    def _check_chunks(self, client: Hashable, state: _Client | None, total: int) -> None:
        """Enforce the per-request and per-client chunk limits."""
        if total > self.max_request_chunks:
            raise LockLimitExceeded(
                f"request covers {total} chunks, more than the limit of {self.max_request_chunks}")
        reserved = state.reserved if state is not None else 0
        if reserved + total > self.max_client_chunks:
            raise LockLimitExceeded(
                f"client {client!r} would lock {reserved + total} chunks, "
                f"more than the limit of {self.max_client_chunks}")

    def _check_queue(self, client: Hashable, state: _Client | None, total: int) -> None:
        """Enforce the per-request size and per-client queue limits."""
        if total > self.max_request_chunks:
            raise LockLimitExceeded(
                f"request covers {total} chunks, more than the limit of {self.max_request_chunks}")
        queued = len(state.queued) + len(state.writes) if state is not None else 0
        if queued >= self.max_client_queued:
            raise LockLimitExceeded(
                f"client {client!r} already has {queued} queued requests "
                f"(limit {self.max_client_queued})")

    def _count_locked(self, norm: Ranges, total: int) -> int:
        """How many chunks of ``norm`` have a holder (cheapest way round)."""
        readers = self._readers
        if total > 4 * len(readers):
            return sum(1 for c in readers if _in_ranges(c, norm))
        keys, blocked = readers.keys(), 0
        for start, count in norm:
            span = range(start, start + count)
            if not keys.isdisjoint(span):  # usually disjoint: checked at C speed
                blocked += sum(1 for chunk in span if chunk in readers)
        return blocked

    def _writes_on(self, chunks: set[int]) -> set[_Write]:
        """All writes waiting on any of ``chunks``."""
        wwait = self._wwait
        found: set[_Write] = set()
        if len(chunks) > len(wwait):
            for chunk in wwait.keys() & chunks:
                found.update(wwait[chunk])
            return found
        for chunk in chunks:
            writes = wwait.get(chunk)
            if writes:
                found.update(writes)
        return found

    # ============================================ internals: held locks

    def _hold(self, client: Hashable, lock_id: Hashable, norm: Ranges,
              chunks: set[int]) -> _Lock:
        """Record a held lock and count its chunks as read-locked."""
        expiry = None if self.lease is None else (self._now or 0.0) + self.lease
        lock = _Lock(client, lock_id, norm, set(), expiry)
        state = self._state(client)
        state.held[lock_id] = lock
        state.broken.pop(lock_id, None)
        if expiry is not None:
            self._leases[lock] = None
        self._held_locks += 1
        self._extend(lock, chunks)
        return lock

    def _extend(self, lock: _Lock, chunks: set[int]) -> None:
        """Add ``chunks`` (not yet in the lock) to a held lock.

        A chunk that gains its first holder blocks every write waiting on it.
        """
        if lock.chunks:
            lock.chunks |= chunks
        else:
            lock.chunks = chunks  # callers hand over a set they no longer use
        self._clients[lock.client].reserved += len(chunks)
        self._held_chunks += len(chunks)
        readers, wwait = self._readers, self._wwait
        if readers.keys().isdisjoint(chunks):  # the common case, at C speed
            readers.update(dict.fromkeys(chunks, 1))
            fresh: Iterable[int] = chunks
        else:
            fresh = [c for c in chunks if c not in readers]
            get = readers.get
            for chunk in chunks:
                readers[chunk] = get(chunk, 0) + 1
        if wwait:
            for chunk in wwait.keys() & fresh:
                for write in wwait[chunk]:
                    write.blocked += 1

    def _release_chunks(self, lock: _Lock, ranges: Iterable[Sequence[int]] | None) -> set[int]:
        """Remove the listed chunks (all if None) from a lock; return them."""
        if ranges is None:
            gone, lock.chunks = lock.chunks, set()
        else:
            norm, total = normalize_ranges(ranges)
            if total > len(lock.chunks):
                gone = {c for c in lock.chunks if _in_ranges(c, norm)}
            else:
                gone = _chunk_set(norm) & lock.chunks
            lock.chunks -= gone
        self._clients[lock.client].reserved -= len(gone)
        self._held_chunks -= len(gone)
        return gone

    def _unlock(self, chunks: set[int], candidates: list[_Write]) -> None:
        """Drop one holder from each chunk; collect writes whose wait reached 0."""
        readers, wwait = self._readers, self._wwait
        for chunk in chunks:
            n = readers[chunk]
            if n == 1:
                del readers[chunk]
            else:
                readers[chunk] = n - 1
        if not wwait:
            return
        for chunk in wwait.keys() & chunks:  # each chunk once: gone now = freed now
            if chunk not in readers:
                for write in wwait[chunk]:
                    write.blocked -= 1
                    if not write.blocked:
                        candidates.append(write)

    def _drop_lock(self, state: _Client, lock: _Lock) -> None:
        """Forget a lock whose chunks have already been unlocked."""
        if lock.chunks:
            n = len(lock.chunks)
            state.reserved -= n
            self._held_chunks -= n
            lock.chunks = set()
        del state.held[lock.lock_id]
        self._leases.pop(lock, None)
        self._held_locks -= 1

    def _break(self, lock: _Lock, candidates: list[_Write], events: list[Event]) -> None:
        """Lease ran out: unlock, remember the id as broken (bounded)."""
        state = self._clients[lock.client]
        self._unlock(lock.chunks, candidates)
        self._drop_lock(state, lock)
        state.broken[lock.lock_id] = None
        if len(state.broken) > self.max_broken:
            state.broken.popitem(last=False)
        events.append(LockBroken(lock.client, lock.lock_id))

    def _forget_request(self, client: Hashable, state: _Client, lock_id: Hashable) -> None:
        """Release of a lock that is not held: clear broken memory or cancel."""
        state.broken.pop(lock_id, None)
        read = state.queued.get(lock_id)
        if read is not None:
            self._unqueue_read(state, read)
        self._forget_if_empty(client, state)

    def _forget_if_empty(self, client: Hashable, state: _Client) -> None:
        """Drop the record of a client with nothing left (keeps memory bounded)."""
        if state.is_empty() and self._clients.get(client) is state:
            del self._clients[client]

    # ============================================ internals: queued reads

    def _queue_read(self, client: Hashable, lock_id: Hashable, norm: Ranges,
                    chunks: set[int], waiting_on: set[_Write], payload: Any) -> QueuedRead:
        """Queue a read behind the writes waiting on its chunks."""
        self._check_queue(client, self._clients.get(client), 0)
        state = self._state(client)
        self._seq += 1
        read = _Read(client, lock_id, norm, chunks, self._seq, waiting_on, payload)
        for write in waiting_on:
            write.behind[read] = None
        state.queued[lock_id] = read
        state.reserved += len(chunks)
        self._queued_reads += 1
        return QueuedRead(client, lock_id, len(waiting_on))

    def _unqueue_read(self, state: _Client, read: _Read) -> None:
        """Take a read out of the queue (granted, cancelled or dropped)."""
        for write in read.waiting_on:
            del write.behind[read]
        read.waiting_on = set()
        del state.queued[read.lock_id]
        state.reserved -= len(read.chunks)
        self._queued_reads -= 1

    def _write_left(self, write: _Write, events: list[Event]) -> None:
        """A write is ready or gone: grant the reads that waited only on it."""
        behind, write.behind = write.behind, {}
        for read in behind:
            read.waiting_on.discard(write)
            if not read.waiting_on:
                self._grant_queued(read, events)

    def _grant_queued(self, read: _Read, events: list[Event]) -> None:
        """Turn a queued read into a held lock and report it."""
        state = self._clients[read.client]
        self._unqueue_read(state, read)
        lock = self._hold(read.client, read.lock_id, read.ranges, read.chunks)
        events.append(ReadGranted(read.client, read.lock_id, read.ranges, lock.expiry,
                                  read.payload))

    # =========================================== internals: waiting writes

    def _register_write(self, client: Hashable, write_id: Hashable, chunks: set[int],
                        blocked: int, payload: Any) -> None:
        """Make a write wait, registered on all its chunks (invariant 3)."""
        self._seq += 1
        write = _Write(client, write_id, chunks, self._seq, blocked, payload)
        wwait = self._wwait
        for chunk in chunks:
            waiting = wwait.get(chunk)
            if waiting is None:
                wwait[chunk] = {write: None}
            else:
                waiting[write] = None
        self._state(client).writes[write_id] = write
        self._waiting_writes += 1

    def _unregister_write(self, state: _Client, write: _Write, events: list[Event]) -> None:
        """Remove a write from every chunk; reads queued only on it are granted."""
        wwait = self._wwait
        for chunk in write.chunks:
            waiting = wwait[chunk]
            del waiting[write]
            if not waiting:
                del wwait[chunk]
        del state.writes[write.write_id]
        self._waiting_writes -= 1
        self._write_left(write, events)
        self._forget_if_empty(write.client, state)

    def _settle(self, candidates: list[_Write], events: list[Event]) -> None:
        """Report ready writes in arrival order.

        Called after all the unlocking of one operation.  A read granted on the
        way may block a later candidate again, so each is re-checked.
        """
        if len(candidates) > 1:
            candidates.sort(key=lambda w: w.seq)
        for write in candidates:
            state = self._clients.get(write.client)
            if write.blocked or state is None or state.writes.get(write.write_id) is not write:
                continue
            events.append(WriteReady(write.client, write.write_id, write.payload))
            self._unregister_write(state, write, events)

    # ==================================================== invariants

    def check_invariants(self) -> None:
        """Recompute everything from the records and compare (tests, debug).

        Raises AssertionError naming the first broken invariant.
        """
        readers: dict[int, int] = {}
        held_chunks = held_locks = queued = waiting = 0
        for client, state in self._clients.items():
            reserved = 0
            for lock_id, lock in state.held.items():
                assert lock.client == client and lock.lock_id == lock_id, "lock keyed wrongly"
                assert lock_id not in state.queued, f"{lock_id!r} both held and queued"
                for chunk in lock.chunks:
                    readers[chunk] = readers.get(chunk, 0) + 1
                held_chunks += len(lock.chunks)
                reserved += len(lock.chunks)
                assert (lock in self._leases) == (lock.expiry is not None), "lease not tracked"
            held_locks += len(state.held)
            for read in state.queued.values():
                self._check_read(read)
                reserved += len(read.chunks)
            queued += len(state.queued)
            for write in state.writes.values():
                self._check_write(write)
            waiting += len(state.writes)
            assert reserved == state.reserved, f"client {client!r} reserved count off"
            assert len(state.broken) <= self.max_broken, "broken memory unbounded"
        assert readers == self._readers, "readers counts differ from held locks (inv 1)"
        assert (held_chunks, held_locks) == (self._held_chunks, self._held_locks), "held counters"
        assert (queued, waiting) == (self._queued_reads, self._waiting_writes), "queue counters"
        self._check_wwait_and_leases(waiting)

    def _check_write(self, write: _Write) -> None:
        """Invariants 2 and 3 for one waiting write."""
        locked = sum(1 for c in write.chunks if c in self._readers)
        assert write.blocked == locked > 0, f"write {write.write_id!r} blocked off"
        for chunk in write.chunks:
            assert write in self._wwait.get(chunk, ()), "write not registered on a chunk"
        for read in write.behind:
            assert write in read.waiting_on, "behind/waiting_on mismatch"

    def _check_read(self, read: _Read) -> None:
        """Invariant 4 for one queued read."""
        assert read.waiting_on, f"queued read {read.lock_id!r} waits on nothing"
        for write in read.waiting_on:
            assert write.seq < read.seq, "read waits on a later write"
            assert read in write.behind, "waiting_on/behind mismatch"
            assert write.chunks & read.chunks, "read waits on an unrelated write"
            assert self._clients[write.client].writes.get(write.write_id) is write, "stale write"

    def _check_wwait_and_leases(self, waiting: int) -> None:
        """Chunk->writes index matches the writes; lease order (invariant 6)."""
        registered = {w for ws in self._wwait.values() for w in ws}
        assert len(registered) == waiting, "chunk index holds unknown writes"
        assert all(self._wwait.values()), "empty chunk write list kept"
        expiries = [lock.expiry for lock in self._leases]
        assert expiries == sorted(expiries), "lease order broken"
