"""Client-side metadata caches: compact, bounded, run-length encoded.

Owns: what a client remembers between requests so that it can skip the server.

* :class:`RunSet` - the **origin unique cache**: chunks of the origin known to be unshared
  with every snapshot (a WRITE_OK said so). Writes to them go straight to the origin device.
  Valid until the next ``NEW_SNAPSHOT`` advice (or a lost lease / reconnect), when the whole
  set is cleared: a new snapshot shares every origin chunk.
* :class:`StoreMap` - the **snapshot unique map**: snapshot chunks known to live in a store
  chunk unique to this snapshot (a SNAPSHOT_WRITE_OK gave the address). Reads and writes of
  them go straight to the store device. Valid for the life of the snapshot: a store chunk
  unique to one snapshot never becomes shared again.

Why runs and not a bitmap (the design paper's "unique bitmap"): runs cost memory in
proportion to the *fragmentation* of what is cached, not to the size of the device, and
the common pattern (sequential writes, whole-device copy-out) produces very few runs.

Memory per TiB of origin, 64 KiB chunks (N = 2**24 chunks per TiB):

* one run costs about 150 bytes in CPython (a SortedDict key and value, two ints; a
  StoreMap value is a 2-tuple, about 200 bytes);
* a fully unique 1 TiB origin is **one run** (~150 bytes); a plain bitmap would be 2 MiB;
* the worst case is alternating unique/shared chunks: **N/2 runs** (8 Mi runs, ~1.2 GiB for
  1 TiB), which is why both caches are **capped** at ``max_runs`` runs (default
  :data:`DEFAULT_MAX_RUNS` = 65,536 runs, about 10-13 MiB whatever the device size). When an
  insert pushes the count over the cap, random runs are evicted: forgetting a unique chunk
  only costs one more query later, it is never incorrect.

Invariants (checked by ``check_invariants``, always in tests): runs are sorted, non-empty,
non-overlapping, and never adjacent (adjacent runs are merged; for StoreMap only when the
store addresses are consecutive too); ``len(self) <= max_runs``.

Not thread-safe; used from the event loop only. Must not import csnapd.
"""

from __future__ import annotations

import random

from sortedcontainers import SortedDict

DEFAULT_MAX_RUNS = 65536

Segment = tuple[int, int, int | None]
"""``(chunk, count, store_chunk | None)``: a piece of a lookup; None means not cached."""


class _Runs:
    """Sorted runs keyed by their first chunk, at most ``max_runs`` of them.

    When over the bound, random runs are dropped: a cache may forget, and
    random eviction needs no bookkeeping on the hot path.
    """

    __slots__ = ("_runs", "max_runs", "_rng")

    def __init__(self, max_runs: int = DEFAULT_MAX_RUNS) -> None:
        if max_runs < 1:
            raise ValueError("max_runs must be >= 1")
        self._runs: SortedDict = SortedDict()
        self.max_runs = max_runs
        self._rng = random.Random(0x5EED)

    def __len__(self) -> int:
        """Number of runs (the memory cost), not of chunks."""
        return len(self._runs)

    def clear(self) -> None:
        """Forget everything (a NEW_SNAPSHOT or DELETE_SNAPSHOT advice, a lost lease)."""
        self._runs.clear()

    def _evict(self) -> None:
        runs = self._runs
        while len(runs) > self.max_runs:
            runs.popitem(self._rng.randrange(len(runs)))


class RunSet(_Runs):
    """A set of chunk numbers stored as ``start -> end`` (exclusive) runs, bounded."""

    __slots__ = ()

    @property
    def chunks(self) -> int:
        """Number of chunks in the set."""
        return sum(end - start for start, end in self._runs.items())

    def runs(self) -> list[tuple[int, int]]:
        """All runs as ``(start, count)``, sorted."""
        return [(s, e - s) for s, e in self._runs.items()]

    def __contains__(self, chunk: int) -> bool:
        runs = self._runs
        i = runs.bisect_right(chunk) - 1
        return i >= 0 and runs.peekitem(i)[1] > chunk

    def add(self, start: int, count: int) -> None:
        """Add chunks ``[start, start + count)``, merging with overlapping/adjacent runs."""
        if count <= 0:
            return
        runs = self._runs
        end = start + count
        i = runs.bisect_right(start) - 1
        if i >= 0:
            s, e = runs.peekitem(i)
            if e >= start:  # overlaps or touches on the left
                start, end = s, max(e, end)
                del runs[s]
        # swallow every run starting inside (or touching) [start, end]
        while True:
            j = runs.bisect_left(start)
            if j >= len(runs):
                break
            s, e = runs.peekitem(j)
            if s > end:
                break
            end = max(end, e)
            del runs[s]
        runs[start] = end
        self._evict()

    def missing(self, start: int, count: int) -> list[list[int]]:
        """Sub-ranges ``[[start, count], ...]`` of ``[start, start + count)`` not in the set."""
        out: list[list[int]] = []
        pos, end = start, start + count
        runs = self._runs
        i = runs.bisect_right(start) - 1
        if i < 0:
            i = 0
        n = len(runs)
        while pos < end and i < n:
            s, e = runs.peekitem(i)
            i += 1
            if e <= pos:
                continue
            if s >= end:
                break
            if s > pos:
                out.append([pos, s - pos])
            pos = max(pos, e)
        if pos < end:
            out.append([pos, end - pos])
        return out

    def covers(self, start: int, count: int) -> bool:
        """True if every chunk of ``[start, start + count)`` is in the set."""
        runs = self._runs
        i = runs.bisect_right(start) - 1
        return i >= 0 and runs.peekitem(i)[1] >= start + count

    def check_invariants(self) -> None:
        """Raise AssertionError if the runs are not sorted, disjoint, non-adjacent, bounded."""
        prev_end = -1
        for s, e in self._runs.items():
            assert e > s, (s, e)
            assert s > prev_end, (prev_end, s)
            prev_end = e
        assert len(self._runs) <= self.max_runs


class StoreMap(_Runs):
    """Snapshot chunk -> store chunk, as runs ``start -> (count, store_start)``, bounded."""

    __slots__ = ()

    @property
    def chunks(self) -> int:
        """Number of mapped chunks."""
        return sum(n for n, _ in self._runs.values())

    def runs(self) -> list[tuple[int, int, int]]:
        """All runs as ``(chunk, count, store_chunk)``, sorted."""
        return [(c, n, s) for c, (n, s) in self._runs.items()]

    def get(self, chunk: int) -> int | None:
        """Store chunk of ``chunk``, or None if not cached."""
        runs = self._runs
        i = runs.bisect_right(chunk) - 1
        if i < 0:
            return None
        c, (n, s) = runs.peekitem(i)
        return s + chunk - c if chunk < c + n else None

    def _cut(self, start: int, end: int) -> None:
        """Remove mappings for chunks ``[start, end)``, splitting runs at the edges."""
        runs = self._runs
        i = runs.bisect_right(start) - 1
        if i >= 0:
            c, (n, s) = runs.peekitem(i)
            if c + n > start:
                if c < start:
                    runs[c] = (start - c, s)
                else:
                    del runs[c]
                if c + n > end:
                    runs[end] = (c + n - end, s + end - c)
        while True:
            j = runs.bisect_left(start)
            if j >= len(runs):
                break
            c, (n, s) = runs.peekitem(j)
            if c >= end:
                break
            del runs[c]
            if c + n > end:
                runs[end] = (c + n - end, s + end - c)

    def discard(self, chunk: int, count: int) -> None:
        """Forget the mappings of chunks ``[chunk, chunk + count)``."""
        if count > 0:
            self._cut(chunk, chunk + count)

    def add(self, chunk: int, count: int, store: int) -> None:
        """Map ``chunk + i -> store + i`` for ``i < count`` (replacing older mappings)."""
        if count <= 0:
            return
        runs = self._runs
        self._cut(chunk, chunk + count)
        i = runs.bisect_right(chunk) - 1
        if i >= 0:  # merge with the left neighbour when both addresses continue
            c, (n, s) = runs.peekitem(i)
            if c + n == chunk and s + n == store:
                del runs[c]
                chunk, count, store = c, n + count, s
        nxt = runs.get(chunk + count)
        if nxt is not None and nxt[1] == store + count:
            del runs[chunk + count]
            count += nxt[0]
        runs[chunk] = (count, store)
        self._evict()

    def add_mapping(self, mapping: list[list[int]]) -> None:
        """Add every ``[chunk, count, store_chunk]`` entry of a protocol mapping."""
        for chunk, count, store in mapping:
            self.add(chunk, count, store)

    def lookup(self, start: int, count: int) -> list[Segment]:
        """Split ``[start, start + count)`` into segments ``(chunk, count, store | None)``."""
        out: list[Segment] = []
        pos, end = start, start + count
        runs = self._runs
        i = max(runs.bisect_right(start) - 1, 0)
        n_runs = len(runs)
        while pos < end and i < n_runs:
            c, (n, s) = runs.peekitem(i)
            i += 1
            if c + n <= pos:
                continue
            if c >= end:
                break
            if c > pos:
                out.append((pos, c - pos, None))
                pos = c
            stop = min(end, c + n)
            out.append((pos, stop - pos, s + pos - c))
            pos = stop
        if pos < end:
            out.append((pos, end - pos, None))
        return out

    def check_invariants(self) -> None:
        """Raise AssertionError if runs overlap, are empty, mergeable, or over the cap."""
        prev: tuple[int, int, int] | None = None
        for c, (n, s) in self._runs.items():
            assert n > 0 and s >= 0, (c, n, s)
            if prev is not None:
                pc, pn, ps = prev
                assert pc + pn <= c, (prev, c)
                assert not (pc + pn == c and ps + pn == s), ("unmerged", prev, c)
            prev = (c, n, s)
        assert len(self._runs) <= self.max_runs
