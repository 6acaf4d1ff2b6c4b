"""Client grants: what clients may still write without asking, kept through the journal.

Some permissions outlive the reply that gave them.  An origin client that got
WRITE_OK for a chunk may keep writing it without asking again until it proves
it let go (it acknowledged a NEW_SNAPSHOT advice, identified as ``clean`` on a
new connection, or sent DETACH); a snapshot client that got store addresses in
SNAPSHOT_WRITE_OK may keep writing them for the life of the snapshot.  A client
that stalls (a paused VM, a blocked event loop, SIGSTOP between its last check
and its pwrite) can use such a permission at any later moment, and no timeout
on the server can stop it.  So the server remembers them here:

* **origin exposure** of a client: the origin chunks approved to it since it
  last let go.  A snapshot created while a client has exposure gets its own
  copy of every exposed chunk before the create completes, so whatever the
  client writes later lands on the origin only (see the engine's advice flow);
* **writer grants**: (client, snapshot slot) pairs.  A deleted or squashed
  snapshot's chunks are not freed while a writer grant names its slot, so a
  late write can never land in a chunk that another snapshot reuses.

The table is persisted (a chain of GRANTS blocks, format.py) because a server
that restarts, or a standby that takes over, must know the grants its
predecessor handed out.  Each origin record holds at most
``format.grant_runs()`` runs: the persisted exposure is the in-memory one
coarsened (gaps filled), so it is never smaller than the truth.

Invariants:
  * ``persisted(client) ⊇ exact(client)`` for every client, as chunk sets;
  * a change of the persisted form marks its block dirty, so it is durable
    with the commit that the granting reply waits for;
  * in-memory exposure is bounded (``EXACT_RUNS``): beyond it, it is
    coarsened too (more copy-outs later, never fewer).

Must not import the engine, the protocol or asyncio.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence

from . import format as fmt
from .blocks import GrantBlock
from .cache import BlockCache
from .errors import CorruptionError, StoreFullError
from .superblock import SuperState

#: Runs of exact exposure kept in memory per client before coarsening.
EXACT_RUNS = 1 << 16
#: The persisted exposure grows in aligned steps of this many chunks, so a client
#: writing sequentially dirties its grant record once per step, not once per request.
PAD_CHUNKS = 1024


class Runs:
    """Sorted, disjoint, non-adjacent half-open chunk runs, at most ``cap`` of them.

    When an insert goes over the cap, the smallest gaps are filled: the set
    only ever grows, which is the safe direction for an exposure.
    """

    __slots__ = ("starts", "ends", "cap")

    def __init__(self, cap: int, runs: Iterable[tuple[int, int]] = ()) -> None:
        self.cap = cap
        self.starts: list[int] = []
        self.ends: list[int] = []
        for start, count in runs:
            self.add(start, count)

    def __len__(self) -> int:
        return len(self.starts)

    def __bool__(self) -> bool:
        return bool(self.starts)

    @property
    def chunks(self) -> int:
        """Number of chunks covered."""
        return sum(e - s for s, e in zip(self.starts, self.ends, strict=True))

    def items(self) -> list[tuple[int, int]]:
        """The runs as ``(start, count)``, sorted."""
        return [(s, e - s) for s, e in zip(self.starts, self.ends, strict=True)]

    def covers(self, start: int, count: int) -> bool:
        """True if every chunk of ``[start, start + count)`` is in the set."""
        i = bisect_right(self.starts, start) - 1
        return i >= 0 and self.ends[i] >= start + count

    def add(self, start: int, count: int) -> bool:
        """Add ``[start, start + count)``; True if the set changed."""
        if count <= 0 or self.covers(start, count):
            return False
        end = start + count
        starts, ends = self.starts, self.ends
        lo = bisect_left(ends, start)  # first run ending at or after start (touching)
        hi = bisect_right(starts, end)  # runs from lo..hi-1 overlap or touch
        if lo < hi:
            start, end = min(start, starts[lo]), max(end, ends[hi - 1])
        starts[lo:hi] = [start]
        ends[lo:hi] = [end]
        if len(starts) > self.cap:
            self.coarsen(self.cap)
        return True

    def coarsen(self, target: int) -> None:
        """Fill the smallest gaps until at most ``target`` runs remain."""
        n = len(self.starts)
        if n <= target:
            return
        gaps = sorted(range(n - 1), key=lambda i: (self.starts[i + 1] - self.ends[i], i))
        fill = set(gaps[:n - max(target, 1)])
        starts, ends = [self.starts[0]], [self.ends[0]]
        for i in range(1, n):
            if i - 1 in fill:
                ends[-1] = self.ends[i]
            else:
                starts.append(self.starts[i])
                ends.append(self.ends[i])
        self.starts, self.ends = starts, ends


class Grants:
    """The client grant table of one open store (see the module docstring)."""

    def __init__(self, cache: BlockCache, alloc: object, sbs: SuperState) -> None:
        self.cache, self.alloc, self.sbs = cache, alloc, sbs
        bs = sbs.f.block_size
        self.per_block = fmt.grants_per_block(bs)
        self.max_runs = fmt.grant_runs(bs)
        self.addrs: list[int] = []
        self.records: list[fmt.GrantRecord | None] = []
        self._index: dict[tuple[int, int, int], int] = {}
        self._exact: dict[int, Runs] = {}
        self._coarse: dict[int, Runs] = {}
        self._load()

    # -- loading ------------------------------------------------------------
    def _load(self) -> None:
        addr, seen = self.sbs.f.grants_root, set()
        while addr:
            if addr in seen:
                raise CorruptionError(addr, "GRANTS", "grant table chain loops")
            seen.add(addr)
            block: GrantBlock = self.cache.get(addr, fmt.BlockKind.GRANTS)
            self.addrs.append(addr)
            self.records.extend(block.slots)
            addr = block.next
        for i, rec in enumerate(self.records):
            if rec is not None:
                self._remember(i, rec)

    def _remember(self, i: int, rec: fmt.GrantRecord) -> None:
        key = (rec.client, rec.kind, rec.slot)
        if key in self._index:
            raise CorruptionError(self.addrs[i // self.per_block], "GRANTS",
                                  f"client {rec.client} has two records of one kind")
        self._index[key] = i
        if rec.kind == fmt.GRANT_ORIGIN:
            runs = rec.runs or []
            self._coarse[rec.client] = Runs(self.max_runs, runs)
            self._exact[rec.client] = Runs(EXACT_RUNS, runs)

    # -- queries ------------------------------------------------------------
    def exposure(self, client: int) -> list[tuple[int, int]]:
        """Origin chunks ``client`` may still write without asking, as runs."""
        runs = self._exact.get(client)
        return runs.items() if runs is not None else []

    def exposed_clients(self) -> list[int]:
        """Clients with origin exposure (they have not let go of approvals)."""
        return sorted(self._exact)

    def writers(self) -> dict[int, set[int]]:
        """Snapshot slot -> clients that may still write its store chunks."""
        out: dict[int, set[int]] = {}
        for client, kind, slot in self._index:
            if kind == fmt.GRANT_WRITER:
                out.setdefault(slot, set()).add(client)
        return out

    def held_mask(self) -> int:
        """Sharemap bits of the slots that writer grants keep from being freed."""
        mask = 0
        for _client, kind, slot in self._index:
            if kind == fmt.GRANT_WRITER:
                mask |= 1 << slot
        return mask

    def clients(self) -> set[int]:
        """Every client with any grant."""
        return {client for client, _kind, _slot in self._index}

    def __len__(self) -> int:
        return len(self._index)

    # -- changes ------------------------------------------------------------
    def add_origin(self, client: int, ranges: Iterable[Sequence[int]]) -> None:
        """Record that ``client`` was approved to write ``ranges`` of the origin."""
        exact = self._exact.get(client)
        if exact is None:
            exact = self._exact[client] = Runs(EXACT_RUNS)
            self._coarse[client] = Runs(self.max_runs)
        coarse, changed = self._coarse[client], False
        limit = self.sbs.f.origin_chunks
        for start, count in ranges:
            if exact.covers(start, count):  # approved before: nothing to record
                continue
            exact.add(start, count)
            if not coarse.covers(start, count):
                lo = start - start % PAD_CHUNKS
                hi = min(-(-(start + count) // PAD_CHUNKS) * PAD_CHUNKS, max(limit, start + count))
                changed |= coarse.add(lo, hi - lo)
        if changed:
            self._put(client, fmt.GRANT_ORIGIN, 0, coarse.items())
        else:
            self._depend((client, fmt.GRANT_ORIGIN, 0))

    def add_writer(self, client: int, slot: int) -> None:
        """Record that ``client`` holds store addresses of snapshot ``slot`` to write."""
        key = (client, fmt.GRANT_WRITER, slot)
        if key not in self._index:
            self._put(client, fmt.GRANT_WRITER, slot, None)
        else:
            self._depend(key)

    def _depend(self, key: tuple[int, int, int]) -> None:
        """An unchanged grant still counts only once the record saying it is durable."""
        i = self._index.get(key)
        if i is not None:
            self.cache.depend(self.addrs[i // self.per_block])

    def clear_origin(self, client: int) -> bool:
        """``client`` let go of every origin approval; True if it had any."""
        self._exact.pop(client, None)
        self._coarse.pop(client, None)
        return self._drop((client, fmt.GRANT_ORIGIN, 0))

    def clear_writer(self, client: int, slot: int) -> bool:
        """``client`` stopped using store addresses of ``slot``."""
        return self._drop((client, fmt.GRANT_WRITER, slot))

    def clear_client(self, client: int) -> bool:
        """Forget every grant of ``client``; True if there was one."""
        changed = self.clear_origin(client)
        for key in [k for k in self._index if k[0] == client]:
            changed |= self._drop(key)
        return changed

    def clear_slot(self, slot: int) -> None:
        """A snapshot slot was freed: no writer grant can name it any more."""
        for key in [k for k in self._index if k[1] == fmt.GRANT_WRITER and k[2] == slot]:
            self._drop(key)

    # -- persistence --------------------------------------------------------
    def _put(self, client: int, kind: int, slot: int, runs: list[tuple[int, int]] | None
             ) -> None:
        key = (client, kind, slot)
        i = self._index.get(key)
        if i is None:
            i = self._free_index()
            self._index[key] = i
        rec = fmt.GrantRecord(client, kind, slot, runs)
        self.records[i] = rec
        self._write(i)

    def _drop(self, key: tuple[int, int, int]) -> bool:
        i = self._index.pop(key, None)
        if i is None:
            return False
        self.records[i] = None
        self._write(i)
        return True

    def _free_index(self) -> int:
        for i, rec in enumerate(self.records):
            if rec is None:
                return i
        self._grow()
        return len(self.records) - self.per_block

    def _grow(self) -> None:
        """Append an empty block to the chain."""
        addr = self.alloc.alloc_block()  # type: ignore[attr-defined]
        if addr is None:
            raise StoreFullError("no space left for the client grant table")
        block = GrantBlock(addr, 0, [None] * self.per_block, self.sbs.f.block_size)
        self.cache.add_new(block)
        if self.addrs:
            last: GrantBlock = self.cache.get(self.addrs[-1], fmt.BlockKind.GRANTS)
            last.next = addr
            self.cache.mark_dirty(last)
        else:
            self.sbs.f.grants_root = addr
            self.sbs.touch()
        self.addrs.append(addr)
        self.records.extend([None] * self.per_block)

    def _write(self, i: int) -> None:
        b, j = divmod(i, self.per_block)
        block: GrantBlock = self.cache.get(self.addrs[b], fmt.BlockKind.GRANTS)
        block.slots[j] = self.records[i]
        self.cache.note(block, j)
