"""The exception map: logical chunk -> exceptions, the only way into B-tree leaves.

Everything above the B-tree layer (the store facade, the checker, the walkers,
the dump tool, the engine's usage scan) reads and changes exceptions through
this module; none of them touches a leaf's keys, lists or byte count.

* :class:`ExceptionMap` answers lookups (one chunk, or a range, for a slot),
  hands out a :class:`LeafSpan` for changes, walks the whole tree (the cursor
  for check, dump and status) and counts per-snapshot usage a few leaves at a
  time.  It keeps ``counts`` (usage.py), the exact per-snapshot exclusive and
  shared copies: every sharemap change a span makes is passed to it.
* :class:`LeafSpan` is the part of the map one leaf holds, ``[lo, hi)``.  A
  caller batches its per-chunk work inside one span (so the tree is descended
  once per leaf, not once per chunk), then calls ``finish()``, which marks the
  leaf dirty and restores the tree's shape (split, merge, grow, shrink) if
  anything changed.  A span is valid until ``finish()`` or the next change
  elsewhere in the tree; callers never keep one across operations.

Exceptions are ``format.Exc`` pairs ``(store chunk, sharemap)``, an entry's a tuple
of them (``format.Excs``); being tuples they cannot be changed by a reader, and a
change here replaces the entry's tuple whole.

Reads record their dependency on the leaf (store/cache.py ``depend``), so the
store can tell whether an answer relies on a change that is not durable yet.

Must not import the store facade, the journal or anything asyncio.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from . import format as fmt
from .blocks import Leaf, Node
from .btree import KEY_LIMIT, BTree, Path
from .cache import BlockCache
from .errors import CorruptionError, LimitError
from .format import Exc, Excs
from .usage import SpaceCounts

ErrorHook = Callable[[CorruptionError], None]
Usage = dict[int, dict[str, int]]
#: Allocates one store chunk for a new exception (raises StoreFullError when full).
Alloc = Callable[[], int]

__all__ = ["Exc", "ExceptionMap", "LeafSpan", "Visit"]


class LeafSpan:
    """The exceptions of the logical chunks ``[lo, hi)``, all in one leaf."""

    __slots__ = ("_map", "_path", "_leaf", "lo", "hi", "_changed")

    def __init__(self, emap: ExceptionMap, path: Path, leaf: Leaf, lo: int, hi: int) -> None:
        self._map, self._path, self._leaf, self.lo, self.hi = emap, path, leaf, lo, hi
        self._changed = False

    @property
    def addr(self) -> int:
        """Block number of the leaf."""
        return self._leaf.addr

    @property
    def overfull(self) -> bool:
        """The leaf no longer fits its block: finish() before changing more."""
        return self._leaf.nbytes > self._map.tree.leaf_cap

    # -- reading ----------------------------------------------------------
    def copies(self, chunk: int) -> Excs:
        """The exceptions of ``chunk`` (empty if it has none)."""
        keys = self._leaf.keys
        i = bisect_left(keys, chunk)
        if i < len(keys) and keys[i] == chunk:
            return self._leaf.vals[i]
        return ()

    def lookup(self, slot: int, chunk: int) -> int | None:
        """Store chunk holding slot ``slot``'s copy of ``chunk``, or None (origin)."""
        bit = 1 << slot
        for store, sharemap in self.copies(chunk):
            if sharemap & bit:
                return store
        return None

    def map_into(self, slot: int, start: int, stop: int,
                 out: list[tuple[int, int | None]]) -> None:
        """Append (chunk, store chunk or None) for every chunk of ``[start, stop)``."""
        bit = 1 << slot
        keys, vals = self._leaf.keys, self._leaf.vals
        n = len(keys)
        i = bisect_left(keys, start)
        append = out.append
        for chunk in range(start, stop):
            while i < n and keys[i] < chunk:
                i += 1
            found = None
            if i < n and keys[i] == chunk:
                for store, sharemap in vals[i]:
                    if sharemap & bit:
                        found = store
                        break
            append((chunk, found))

    def missing(self, live: int, start: int, stop: int) -> list[tuple[int, int]]:
        """(chunk, sharemap) for each chunk of ``[start, stop)`` lacking copies for ``live``."""
        keys, vals = self._leaf.keys, self._leaf.vals
        n = len(keys)
        i = bisect_left(keys, start)
        out = []
        for chunk in range(start, stop):
            while i < n and keys[i] < chunk:
                i += 1
            need = live
            if i < n and keys[i] == chunk:
                for _, sharemap in vals[i]:
                    need &= ~sharemap
            if need:
                out.append((chunk, need))
        return out

    def unique(self, slot: int, start: int, stop: int) -> list[tuple[int, int | None]]:
        """(chunk, store chunk only slot ``slot`` uses, or None) for ``[start, stop)``."""
        bit = 1 << slot
        keys, vals = self._leaf.keys, self._leaf.vals
        n = len(keys)
        i = bisect_left(keys, start)
        out: list[tuple[int, int | None]] = []
        for chunk in range(start, stop):
            while i < n and keys[i] < chunk:
                i += 1
            found = None
            if i < n and keys[i] == chunk:
                for store, sharemap in vals[i]:
                    if sharemap == bit:
                        found = store
                        break
            out.append((chunk, found))
        return out

    def entries(self) -> Iterator[tuple[int, Excs]]:
        """(chunk, exceptions) in key order."""
        return zip(self._leaf.keys, self._leaf.vals, strict=True)

    def store_chunks(self) -> Iterator[int]:
        """Every store chunk an exception of this leaf points at."""
        for excs in self._leaf.vals:
            for store, _ in excs:
                yield store

    # -- changing ---------------------------------------------------------
    def _index(self, chunk: int, grow: int) -> int:
        """Index of ``chunk``'s entry in the leaf (created empty), checked to stay within
        limits after growing by ``grow`` bytes."""
        leaf = self._leaf
        keys = leaf.keys
        i = bisect_left(keys, chunk)
        if i < len(keys) and keys[i] == chunk:
            if fmt.entry_size(leaf.vals[i]) + grow > self._map.tree.entry_max:
                raise LimitError(f"chunk {chunk} has too many exceptions for a "
                                 f"{self._map.block_size}-byte leaf; use a larger --block-size")
            return i
        if not self.lo <= chunk < self.hi:
            raise ValueError(f"chunk {chunk} is outside this leaf's range {self.lo}..{self.hi}")
        keys.insert(i, chunk)
        leaf.vals.insert(i, ())
        leaf.nbytes += fmt.ENTRY_OVERHEAD
        return i

    def add(self, chunk: int, sharemap: int, alloc: Alloc) -> int:
        """A new exception of ``chunk`` for ``sharemap``, in a chunk from ``alloc``.

        Raises LimitError (before allocating) when the entry would outgrow half
        a leaf.  Returns the store chunk.
        """
        grow = fmt.sharemap_size(sharemap)
        i = self._index(chunk, grow)
        vals = self._leaf.vals
        try:
            store = alloc()
        except BaseException:
            if not vals[i]:  # created for this exception: take it out again
                del self._leaf.keys[i], vals[i]
                self._leaf.nbytes -= fmt.ENTRY_OVERHEAD
            raise
        vals[i] = vals[i] + ((store, sharemap),)
        self._leaf.nbytes += grow
        self._note(chunk)
        self._map.counts.note(chunk, 0, sharemap)
        return store

    def _rebit(self, chunk: int, store: int, before: int, after: int) -> None:
        """The exception of ``chunk`` in ``store`` now has sharemap ``after`` (never 0)."""
        leaf = self._leaf
        i = bisect_left(leaf.keys, chunk)
        leaf.vals[i] = tuple((s, after) if s == store else (s, m) for s, m in leaf.vals[i])
        leaf.nbytes += fmt.sharemap_size(after) - fmt.sharemap_size(before)
        self._note(chunk)
        self._map.counts.note(chunk, before, after)

    def unshare(self, chunk: int, slot: int, alloc: Alloc) -> tuple[int, int | None]:
        """Give slot ``slot`` its own copy of ``chunk``; return (new store chunk, source).

        The source is the store chunk of the copy the slot shared (it loses the
        bit), or None when the slot read the origin.  The caller copies it.
        """
        bit = 1 << slot
        shared = next((e for e in self.copies(chunk) if e[1] & bit), None)
        store = self.add(chunk, bit, alloc)
        if shared is None:
            return store, None
        source, before = shared
        self._rebit(chunk, source, before, before & ~bit)
        return store, source

    def clear_bits(self, mask: int) -> list[int]:
        """Clear ``mask`` from every sharemap; return the store chunks no one uses now.

        Exceptions left with an empty sharemap and entries left with no
        exception disappear; the caller frees the returned chunks.
        """
        leaf = self._leaf
        freed: list[int] = []
        changed = False
        keep_keys: list[int] = []
        keep_vals: list[Excs] = []
        note = self._map.counts.note
        for chunk, excs in zip(leaf.keys, leaf.vals, strict=True):
            if not any(m & mask for _, m in excs):
                keep_keys.append(chunk)
                keep_vals.append(excs)
                continue
            changed = True
            self._note(chunk)
            kept = []
            for store, before in excs:
                after = before & ~mask
                if after != before:
                    note(chunk, before, after)
                if after:
                    kept.append((store, after))
                else:
                    freed.append(store)
            if kept:
                keep_keys.append(chunk)
                keep_vals.append(tuple(kept))
        if changed:
            leaf.keys, leaf.vals = keep_keys, keep_vals
            leaf.recount()
        return freed

    def share_into(self, parent: int, clone: int, start: int, stop: int) -> int:
        """Give slot ``clone`` the copy slot ``parent`` has of each chunk of ``[start, stop)``
        where ``clone`` has none (a clone being filled, clones.py).

        Returns where to go on from: ``stop``, or the chunk after the one that made
        the leaf overfull (the caller finishes the span and takes a new one there, since
        a wide sharemap can grow each exception by many bytes).
        """
        pbit, cbit = 1 << parent, 1 << clone
        leaf = self._leaf
        keys, vals = leaf.keys, leaf.vals
        limit = self._map.tree.entry_max
        note = self._map.counts.note
        i = bisect_left(keys, start)
        n = len(keys)
        while i < n and keys[i] < stop:
            excs = vals[i]
            at = -1
            for j, (_, m) in enumerate(excs):
                if m & cbit:
                    at = -1
                    break
                if m & pbit:
                    at = j
            if at >= 0:
                chunk = keys[i]
                store, before = excs[at]
                after = before | cbit
                grow = fmt.sharemap_size(after) - fmt.sharemap_size(before)
                if grow and fmt.entry_size(excs) + grow > limit:
                    raise LimitError(f"chunk {chunk} has too many exceptions for a "
                                     f"{self._map.block_size}-byte leaf to share it with "
                                     "a clone; use a larger --block-size")
                vals[i] = excs[:at] + ((store, after),) + excs[at + 1:]
                leaf.nbytes += grow
                self._note(chunk)
                note(chunk, before, after)
                if self.overfull:
                    return chunk + 1
            i += 1
        return stop

    def _note(self, chunk: int) -> None:
        """``chunk``'s exceptions changed: the compact journal records just that entry."""
        changes = self._leaf.changes
        if changes is not None:
            changes.add(chunk)
        self._changed = True

    def finish(self) -> None:
        """Done with this span: mark the leaf dirty and fix the tree's shape if it changed."""
        if self._changed:
            self._changed = False
            self._map.tree.fixup(self._path, self._leaf)


@dataclass(slots=True)
class Visit:
    """One tree block reached by a walk (parents before children, in key order).

    ``depth`` is the number of levels below (0 = leaf).  A node has ``keys``
    and ``children``; a leaf has ``entries`` and ``nbytes`` (its encoded size).
    """

    addr: int
    depth: int
    lo: int
    hi: int
    path: str
    keys: list[int]
    children: list[int]
    entries: list[tuple[int, Excs]]
    nbytes: int


class ExceptionMap:
    """Lookups, changes, walks and usage counts over the exception B-tree."""

    def __init__(self, tree: BTree, cache: BlockCache) -> None:
        self.tree, self.cache = tree, cache
        self.block_size = tree.sbs.f.block_size
        self.counts = SpaceCounts()

    def count_step(self, leaves: int) -> bool:
        """Build ``counts`` up to ``leaves`` leaves further; True while leaves remain."""
        counts = self.counts
        for _ in range(leaves):
            if counts.complete:
                return False
            _path, leaf, lo, hi = self.tree.find(counts.cursor)
            counts.add_entries(zip(leaf.keys, leaf.vals, strict=True), lo, hi)
        return not counts.complete

    def span(self, chunk: int) -> LeafSpan:
        """The span of the leaf covering ``chunk``."""
        path, leaf, lo, hi = self.tree.find(chunk)
        self.cache.depend(leaf.addr)
        return LeafSpan(self, path, leaf, lo, hi)

    def lookup(self, slot: int, chunk: int) -> int | None:
        """Store chunk holding slot ``slot``'s copy of ``chunk``, or None (origin)."""
        leaf = self.tree.find(chunk)[1]  # no span object: this is the hot single lookup
        cache = self.cache
        t = cache.stamps.get(leaf.addr)  # cache.depend(leaf.addr), inlined
        if t is not None and t > cache.need:
            cache.need = t
        keys = leaf.keys
        i = bisect_left(keys, chunk)
        if i < len(keys) and keys[i] == chunk:
            bit = 1 << slot
            for store, sharemap in leaf.vals[i]:
                if sharemap & bit:
                    return store
        return None

    def map_range(self, slot: int, start: int, count: int,
                  out: list[tuple[int, int | None]] | None = None
                  ) -> list[tuple[int, int | None]]:
        """(chunk, store chunk or None) for every chunk of ``[start, start + count)``,
        appended to ``out`` (a new list when None), which is returned."""
        if out is None:
            out = []
        chunk, end = start, start + count
        while chunk < end:
            span = self.span(chunk)
            stop = min(end, span.hi)
            span.map_into(slot, chunk, stop, out)
            chunk = stop
        return out

    # -- whole-map cursors --------------------------------------------------
    def walk(self, on_error: ErrorHook | None = None) -> Iterator[Visit]:
        """Every reachable tree block, parents before children, in key order.

        Blocks are read through the cache (so each is verified) and the cache is
        trimmed as the walk goes.  A damaged block is passed to ``on_error``
        with its tree path and skipped (raised when there is no hook).
        """
        f = self.tree.sbs.f
        stack = [(f.root, f.depth, 0, KEY_LIMIT, "root")]
        seen = 0
        while stack:
            addr, depth, lo, hi, path = stack.pop()
            try:
                block = self.cache.get(addr, fmt.BlockKind.LEAF if depth == 0
                                       else fmt.BlockKind.NODE)
            except CorruptionError as exc:
                exc.path = path
                if on_error is None:
                    raise
                on_error(exc)
                continue
            yield self._visit(addr, depth, lo, hi, path, block)
            seen += 1
            if seen % 256 == 0:
                self.cache.trim()
            if depth:
                bounds = block.keys[1:] + [hi]
                for i in range(len(block.children) - 1, -1, -1):
                    stack.append((block.children[i], depth - 1, block.keys[i], bounds[i],
                                  f"{path}/{i}"))

    @staticmethod
    def _visit(addr: int, depth: int, lo: int, hi: int, path: str,
               block: Leaf | Node) -> Visit:
        if depth:
            return Visit(addr, depth, lo, hi, path, list(block.keys), list(block.children),
                         [], 0)
        entries = list(zip(block.keys, block.vals, strict=True))
        return Visit(addr, 0, lo, hi, path, [], [], entries, block.nbytes)

    def entries(self, start: int = 0) -> Iterator[tuple[int, Excs]]:
        """(chunk, exceptions) for every chunk with exceptions from ``start``, in order."""
        key = start
        while key < KEY_LIMIT:
            span = self.span(key)
            for chunk, excs in list(span.entries()):
                if chunk >= start:
                    yield chunk, excs
            key = span.hi

    def usage_step(self, cursor: int, leaves: int, usage: Usage) -> tuple[int, bool]:
        """Add up to ``leaves`` leaves from key ``cursor`` to per-slot usage counts.

        ``usage[slot]`` counts the copies the slot owns alone ("unique") and
        shares ("shared").  Returns the key to resume from and whether the
        whole map has been counted.
        """
        for _ in range(leaves):
            path, leaf, _lo, hi = self.tree.find(cursor)
            add_usage(usage, leaf.vals)
            if hi >= KEY_LIMIT:
                return 0, True
            cursor = hi
        return cursor, False


def add_usage(usage: Usage, vals: list[Excs]) -> None:
    """Add exceptions to per-slot unique/shared counts."""
    for excs in vals:
        for _, sharemap in excs:
            single = sharemap & (sharemap - 1) == 0
            bits = sharemap
            while bits:
                low = bits & -bits
                entry = usage.setdefault(low.bit_length() - 1, {"unique": 0, "shared": 0})
                entry["unique" if single else "shared"] += 1
                bits ^= low
