"""Model-based test: random operations with real data, clean reopens and crashes.

The test plays the client.  An origin write is: ``origin_write`` (copy-outs),
``commit()``, then the new bytes go to the origin device.  A snapshot write
is: ``snapshot_write``, ``commit()``, then the bytes go to the returned store
chunks.  An operation is acknowledged once ``commit()`` has returned; after a
simulated power cut (VolatileDevice.crash) every acknowledged operation must
be there, and every snapshot must read back exactly the bytes of the model,
with the name, priority and holds the model gives it (a held snapshot refuses
to be deleted).
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from csnapd.store import create, revert
from csnapd.store.device import MemoryDevice, VolatileDevice
from csnapd.store.errors import LimitError, NoSuchSnapshot, SnapshotHeld, StoreFullError
from csnapd.store.store import Store
from csnapd.store.walk import snapshot_usage

from .conftest import BS, CS, audit, chunk_bytes

ORIGIN_CHUNKS = 96
STORE_BYTES = 6 << 20
NAMES = [f"snap{i}" for i in range(8)]
MAX_LIVE = 6

chunks = st.integers(0, ORIGIN_CHUNKS - 1)
counts = st.integers(1, 24)
# which bytes of each chunk the client writes: whole chunks or a partial range
parts = st.one_of(st.just((0, CS)),
                  st.tuples(st.integers(0, CS - 1), st.integers(1, CS))
                  .map(lambda t: (min(t[0], t[1] - 1), max(t[0] + 1, t[1]))))
cache_sizes = st.sampled_from([0, 64 << 20])  # 0: the 32 KiB minimum, lots of eviction


class StoreMachine(RuleBasedStateMachine):
    store_bytes = STORE_BYTES

    @initialize(cache=cache_sizes)
    def setup(self, cache):
        self.inner = MemoryDevice(self.store_bytes)
        self.origin = MemoryDevice(ORIGIN_CHUNKS * CS)
        create.create(self.inner, self.origin.size, chunk_size=CS, block_size=BS,
                      journal_bytes=128 * BS)
        self.version = 0
        self.model_origin: dict[int, bytes] = {}
        for c in range(ORIGIN_CHUNKS):
            self.model_origin[c] = chunk_bytes(c, 0)
            self.origin.pwrite(c * CS, self.model_origin[c])
        self.snaps: dict[str, dict[int, bytes]] = {}  # acknowledged snapshots
        self.meta: dict[str, tuple[int, int]] = {}  # name -> (priority, holds)
        self.parents: dict[str, str | None] = {}  # name -> the snapshot it was cloned from
        self.dev = VolatileDevice(self.inner)
        self.s = Store.open(self.dev, self.origin, cache_size=cache)
        self.initial_free = self.s.sb.free_chunks
        self.s.count_step(1)  # an empty map: counted at once, then kept by every change

    # -- helpers -----------------------------------------------------------
    def _next(self) -> int:
        self.version += 1
        return self.version

    def _slot(self, name: str) -> int:
        return self.s.snaps.find(name).slot

    def _clip(self, start: int, count: int) -> tuple[int, int]:
        return start, min(count, ORIGIN_CHUNKS - start)

    def _client_origin_write(self, start: int, count: int, part: tuple[int, int]) -> None:
        v = self._next()
        for c in range(start, start + count):
            self.model_origin[c] = self._patch(self.model_origin[c], chunk_bytes(c, v), part)
            self.origin.pwrite(c * CS, self.model_origin[c])

    @staticmethod
    def _patch(old: bytes, new: bytes, part: tuple[int, int]) -> bytes:
        """Bytes [lo, hi) of ``new`` written over ``old``: clients write partial chunks."""
        lo, hi = part
        return old[:lo] + new[lo:hi] + old[hi:]

    def _verify_data(self) -> None:
        s = self.s
        live = {e.name for e in s.snaps.visible() if not e.squashed}
        assert live == set(self.snaps), (live, set(self.snaps))
        for name, meta in self.meta.items():
            e = s.snaps.find(name)
            assert (e.priority, e.use_count) == meta, (name, e, meta)
            parent = s.snaps.parent_of(e)
            assert (parent.name if parent else None) == self.parents[name], (name, parent)
        for name, model in self.snaps.items():
            slot = self._slot(name)
            for chunk, store_chunk in s.snapshot_map(slot, [(0, ORIGIN_CHUNKS)]):
                if store_chunk is None:
                    got = self.origin.pread(chunk * CS, CS)
                else:
                    got = s.dev.pread(store_chunk * CS, CS)
                assert got == model[chunk], (name, chunk, store_chunk, got[:24], model[chunk][:24])

    def _reopen(self, cache: int) -> None:
        self.s = Store.open(self.dev, self.origin, cache_size=cache)
        assert not self.s.failed

    # -- rules -------------------------------------------------------------
    @precondition(lambda self: len(self.snaps) < MAX_LIVE)
    @rule(name=st.sampled_from(NAMES))
    def create_snapshot(self, name):
        if name in self.snaps:
            return
        self.s.create_snapshot(name)
        self.s.commit()
        self.snaps[name] = dict(self.model_origin)
        self.meta[name] = (0, 0)
        self.parents[name] = None

    @precondition(lambda self: self.snaps and len(self.snaps) < MAX_LIVE)
    @rule(data=st.data(), name=st.sampled_from(NAMES), steps=st.sampled_from([0, 1, -1]))
    def clone_snapshot(self, data, name, steps):
        """A clone has its parent's content at once, and keeps it while both change."""
        if name in self.snaps:
            return
        parent = data.draw(st.sampled_from(sorted(self.snaps)))
        try:
            self.s.clone_snapshot(name, parent)
        except LimitError:
            event("clone refused: a fill is running")
            assert self.s.cloning
            return
        self.s.commit()
        self.snaps[name] = dict(self.snaps[parent])
        self.meta[name] = (0, 0)
        self.parents[name] = parent
        self._clone_steps(steps)

    def _clone_steps(self, steps: int) -> None:
        n = 0
        while (steps < 0 or n < steps) and self.s.clone_step(max_leaves=1):
            n += 1
            if n % 2:
                self.s.commit()
        self.s.commit()

    @rule(steps=st.sampled_from([1, 3, -1]))
    def clone_steps(self, steps):
        self._clone_steps(steps)

    @precondition(lambda self: self.snaps)
    @rule(data=st.data(), crash_after=st.sampled_from([None, 0, 1, 3]),
          batch=st.sampled_from([1, 5, 64]), cache=cache_sizes)
    def revert_origin(self, data, crash_after, batch, cache):
        """The origin becomes a snapshot's content and every snapshot keeps its own,
        whether or not a power cut interrupts the revert (it resumes after the reopen)."""
        name = data.draw(st.sampled_from(sorted(self.snaps)))
        try:
            revert.start(self.s, name)
        except StoreFullError:
            event("revert refused: would not fit")
            return
        self.s.commit()
        steps = 0
        while revert.active(self.s):
            if crash_after is not None and steps == crash_after:
                b = revert.prepare(self.s, batch)
                self.s.commit()
                revert.apply(self.s, b, self.origin)
                sealed = self.s.seal()  # the restore's transaction, cut short
                if sealed is not None and data.draw(st.booleans()):
                    for d in sealed.frozen.direct:
                        d.write(self.dev)
                self.dev.crash()
                self.dev = VolatileDevice(self.inner)
                self._reopen(cache)
                crash_after = None
                event("revert crashed and resumed")
                continue
            b = revert.prepare(self.s, batch)
            self.s.commit()
            revert.apply(self.s, b, self.origin)
            self.s.commit()
            steps += 1
        self.model_origin = dict(self.snaps[name])
        self._verify_data()
        for c in range(ORIGIN_CHUNKS):
            assert self.origin.pread(c * CS, CS) == self.model_origin[c], c

    @rule(start=chunks, count=counts, part=parts)
    def origin_write(self, start, count, part):
        start, count = self._clip(start, count)
        try:
            self.s.origin_write([(start, count)])
        except StoreFullError:
            event("origin write: store full")
            self.s.commit()  # the client is told "full" and does not write
            return
        self.s.commit()
        self._client_origin_write(start, count, part)

    @precondition(lambda self: self.snaps)
    @rule(data=st.data(), start=chunks, count=counts, part=parts)
    def snapshot_write(self, data, start, count, part):
        name = data.draw(st.sampled_from(sorted(self.snaps)))
        start, count = self._clip(start, count)
        slot = self._slot(name)
        try:
            pairs = self.s.snapshot_write(slot, [(start, count)])
        except StoreFullError:
            event("snapshot write: store full")
            self.s.commit()
            return
        self.s.commit()
        assert [c for c, _ in pairs] == list(range(start, start + count))
        assert len({sc for _, sc in pairs}) == count
        v = self._next()
        for chunk, store_chunk in pairs:
            # the returned chunk must be this snapshot's alone
            for other in self.snaps:
                if other != name:
                    assert self.s.snapshot_lookup(self._slot(other), chunk) != store_chunk
            # before the client writes, the new copy must hold the snapshot's data
            assert self.s.dev.pread(store_chunk * CS, CS) == self.snaps[name][chunk]
            payload = self._patch(self.snaps[name][chunk], chunk_bytes(chunk, v), part)
            lo, hi = part
            self.inner.pwrite(store_chunk * CS + lo, payload[lo:hi])  # client data, durable
            self.snaps[name][chunk] = payload

    @precondition(lambda self: self.snaps)
    @rule(data=st.data(), steps=st.sampled_from([0, 1, 3, -1]))
    def delete_snapshot(self, data, steps):
        name = data.draw(st.sampled_from(sorted(self.snaps)))
        if self.meta[name][1] or self._filling_from(name):
            with pytest.raises(SnapshotHeld):
                self.s.delete_snapshot(name)
            event("delete refused: held or being cloned")
            return
        self.s.delete_snapshot(name)
        self.s.commit()
        self._forget(name)
        self._delete_steps(steps)

    def _filling_from(self, name: str) -> bool:
        fill = self.s.fill
        return fill.active and fill.parent == self._slot(name)

    def _forget(self, name: str) -> None:
        del self.snaps[name]
        del self.meta[name]
        grand = self.parents.pop(name)
        for child, parent in self.parents.items():
            if parent == name:
                self.parents[child] = grand

    def _rename_model(self, old: str, new: str) -> None:
        self.snaps[new] = self.snaps.pop(old)
        self.meta[new] = self.meta.pop(old)
        self.parents[new] = self.parents.pop(old)
        for child, parent in self.parents.items():
            if parent == old:
                self.parents[child] = new

    @precondition(lambda self: self.snaps)
    @rule(data=st.data(), release=st.booleans())
    def hold_or_release(self, data, release):
        name = data.draw(st.sampled_from(sorted(self.snaps)))
        prio, holds = self.meta[name]
        if release and holds:
            self.s.release_snapshot(name)
            holds -= 1
        else:
            self.s.hold_snapshot(name)
            holds += 1
        self.s.commit()
        self.meta[name] = (prio, holds)

    @precondition(lambda self: self.snaps)
    @rule(data=st.data(), new=st.sampled_from(NAMES), priority=st.integers(-128, 127))
    def set_snapshot(self, data, new, priority):
        name = data.draw(st.sampled_from(sorted(self.snaps)))
        if new in self.snaps and new != name:
            new = None  # taken: only the priority changes
        self.s.set_snapshot(name, name=new, priority=priority)
        self.s.commit()
        if new is not None:
            self._rename_model(name, new)
            name = new
        self.meta[name] = (priority, self.meta[name][1])

    def _delete_steps(self, steps: int) -> None:
        n = 0
        while (steps < 0 or n < steps) and self.s.delete_step(max_leaves=2):
            n += 1
            if n % 2:
                self.s.commit()
        self.s.commit()

    @rule(steps=st.sampled_from([1, 4, -1]))
    def delete_steps(self, steps):
        self._delete_steps(steps)

    @rule(cache=cache_sizes)
    def clean_reopen(self, cache):
        self.s.close()
        self._reopen(cache)
        assert not self.s.recovery.unclean
        assert self.s.recovery.transactions == 0

    @rule(data=st.data(), cache=cache_sizes,
          pending=st.sampled_from(["none", "origin_write", "snapshot_write", "create",
                                   "delete", "delete_step", "hold", "rename", "clone",
                                   "clone_step"]))
    def crash(self, data, cache, pending):
        """Power cut, possibly in the middle of an unacknowledged operation."""
        maybe_created = maybe_deleted = maybe_held = None
        maybe_renamed: tuple[str, str] | None = None
        maybe_cloned: tuple[str, str] | None = None
        if pending == "origin_write":
            start = data.draw(chunks)
            try:
                self.s.origin_write([self._clip(start, data.draw(st.integers(1, 64)))])
            except StoreFullError:
                pass
        elif pending == "snapshot_write" and self.snaps:
            name = data.draw(st.sampled_from(sorted(self.snaps)))
            try:
                self.s.snapshot_write(self._slot(name), [self._clip(data.draw(chunks), 8)])
            except StoreFullError:
                pass
        elif pending == "create" and len(self.snaps) < MAX_LIVE:
            name = data.draw(st.sampled_from(NAMES))
            if name not in self.snaps:
                self.s.create_snapshot(name)
                maybe_created = name
        elif pending == "clone" and self.snaps and len(self.snaps) < MAX_LIVE:
            name = data.draw(st.sampled_from(NAMES))
            parent = data.draw(st.sampled_from(sorted(self.snaps)))
            if name not in self.snaps:
                try:
                    self.s.clone_snapshot(name, parent)
                    maybe_cloned = (name, parent)
                except LimitError:
                    pass
        elif pending == "clone_step":
            self.s.clone_step(max_leaves=2)
        elif pending == "delete" and self.snaps:
            maybe_deleted = data.draw(st.sampled_from(sorted(self.snaps)))
            try:
                self.s.delete_snapshot(maybe_deleted)
            except SnapshotHeld:
                maybe_deleted = None
        elif pending == "hold" and self.snaps:
            maybe_held = data.draw(st.sampled_from(sorted(self.snaps)))
            self.s.hold_snapshot(maybe_held)
        elif pending == "rename" and self.snaps:
            old = data.draw(st.sampled_from(sorted(self.snaps)))
            new = data.draw(st.sampled_from(NAMES))
            if new not in self.snaps:
                self.s.set_snapshot(old, name=new)
                maybe_renamed = (old, new)
        elif pending == "delete_step":
            self.s.delete_step(max_leaves=3)
        self.dev.crash()
        self.dev = VolatileDevice(self.inner)
        self._reopen(cache)
        # unacknowledged operations may or may not have survived; nothing else
        if maybe_created is not None:
            try:
                self.s.snaps.find(maybe_created)
                self.snaps[maybe_created] = dict(self.model_origin)
                self.meta[maybe_created] = (0, 0)
                self.parents[maybe_created] = None
            except NoSuchSnapshot:
                pass
        if maybe_cloned is not None:
            name, parent = maybe_cloned
            try:
                self.s.snaps.find(name)
                self.snaps[name] = dict(self.snaps[parent])
                self.meta[name] = (0, 0)
                self.parents[name] = parent
            except NoSuchSnapshot:
                pass
        if maybe_deleted is not None:
            try:
                self.s.snaps.find(maybe_deleted)
            except NoSuchSnapshot:
                self._forget(maybe_deleted)
        if maybe_held is not None:
            prio, holds = self.meta[maybe_held]
            if self.s.snaps.find(maybe_held).use_count == holds + 1:
                self.meta[maybe_held] = (prio, holds + 1)
        if maybe_renamed is not None:
            old, new = maybe_renamed
            try:
                self.s.snaps.find(new)
                self._rename_model(old, new)
            except NoSuchSnapshot:
                pass
        self._verify_data()
        audit(self.s)

    @rule(leaves=st.sampled_from([1, 2, 1000]))
    def count_space(self, leaves):
        """The server's background slices of the space count after an open."""
        self.s.count_step(leaves)

    @rule()
    def check_everything(self):
        self._verify_data()
        audit(self.s)

    @precondition(lambda self: self.snaps)
    @rule()
    def delete_all_frees_everything(self):
        self._clone_steps(-1)  # a parent is not deleted while a clone is filled from it
        for name in list(self.snaps):
            for _ in range(self.meta[name][1]):
                self.s.release_snapshot(name)
            self.s.delete_snapshot(name)
        self.s.commit()
        self.snaps.clear()
        self.meta.clear()
        self.parents.clear()
        self._delete_steps(-1)
        assert not self.s.deleting
        assert self.s.sb.exceptions == 0
        assert self.s.sb.free_chunks == self.initial_free
        assert self.s.sb.depth == 0
        audit(self.s)

    # -- invariants ----------------------------------------------------------
    @invariant()
    def space_counts_are_exact(self):
        """The kept counts equal a count of the tree, below the scan cursor (all of it
        once complete), whatever changed since they were counted."""
        if not hasattr(self, "s"):
            return
        counts = self.s.exmap.counts
        if counts.complete:
            want = {k: v for k, v in snapshot_usage(self.s).items() if v["unique"] or v["shared"]}
        else:
            want = {}
            for chunk, excs in self.s.exmap.entries():
                if chunk >= counts.cursor:
                    break
                for _, sharemap in excs:
                    bits = [b for b in range(64) if sharemap >> b & 1]
                    for b in bits:
                        u = want.setdefault(b, {"unique": 0, "shared": 0})
                        u["unique" if len(bits) == 1 else "shared"] += 1
        assert counts.as_usage() == want

    @invariant()
    def tree_shape(self):
        if hasattr(self, "s"):
            self.s.tree.check_invariants()
            assert self.s.sb.free_chunks <= self.s.sb.store_chunks
            assert not self.s.failed

    def teardown(self):
        if not hasattr(self, "s"):
            return
        self._verify_data()
        audit(self.s)
        self.s.close()


TestStoreModel = StoreMachine.TestCase
TestStoreModel.settings = settings(max_examples=60, stateful_step_count=30, deadline=None,
                                   suppress_health_check=[HealthCheck.too_slow])


class TinyStoreMachine(StoreMachine):
    """The same, in a store with room for only ~40 copies: it fills up often."""

    store_bytes = (4 + 16 + 40) * CS


TestTinyStoreModel = TinyStoreMachine.TestCase
TestTinyStoreModel.settings = settings(max_examples=30, stateful_step_count=40, deadline=None,
                                       suppress_health_check=[HealthCheck.too_slow])


def test_model_slots_are_bits():
    """Sanity check of an assumption the model relies on: slot == sharemap bit."""
    m = StoreMachine()
    m.setup(cache=0)
    m.create_snapshot("snap0")
    m.origin_write(0, 1, (0, CS))
    [(_, [(_, sharemap)])] = list(m.s.exmap.entries())
    assert sharemap == 1 << m._slot("snap0")
    m.teardown()


pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.NonInteractiveExampleWarning")


class CloneStoreMachine(StoreMachine):
    """The same with long-running clone fills: most of the time a clone is only part
    filled while the origin, the clone and its parent are written, deleted and crashed."""

    def _clone_steps(self, steps: int) -> None:
        super()._clone_steps(min(steps, 1) if steps < 0 else steps)


TestCloneStoreModel = CloneStoreMachine.TestCase
TestCloneStoreModel.settings = settings(max_examples=60, stateful_step_count=40, deadline=None,
                                        suppress_health_check=[HealthCheck.too_slow])
