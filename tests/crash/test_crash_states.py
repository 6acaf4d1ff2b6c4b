"""Power-loss crash states: every prefix, torn writes, reordered writes after a barrier,
and a bit flipped in each transaction right after the flush that made it durable.

For seeded random workloads (origin writes, snapshot create/delete, snapshot
writes with client data, background delete steps, clean reopen) every write
the store issues is recorded.  Each crash state is recovered, checked with
check_store, and compared with the model of what clients were told (see
csnap_soak/crash_harness.py for the exact crash and client model).

The CI run tries at least 2,000 states; csnap_soak/crash.py runs the long
version.  The second half of this file makes sure the harness has teeth:
with a durability rule of the store deliberately broken, crash states fail.
"""

from __future__ import annotations

import random

import pytest

from csnap_soak.crash_harness import (
    Expectation,
    Op,
    Run,
    Tally,
    enumerate_states,
    expectations,
    run_seed,
    run_workload,
)
from csnap_soak.recording import RecordingDevice, replay, torn
from csnapd.store import datacheck, txn
from csnapd.store import journal as jnl
from csnapd.store import superblock as sbk
from csnapd.store.replay import Replay
from csnapd.store.seal import Checkpoint, Frozen, Sealed
from csnapd.store.store import Store

CI_SEEDS = (1, 2, 3)
CI_OPS = 60
CI_MIN_STATES = 2000


def test_crash_states_ci(show_figure):
    total = Tally()
    for seed in CI_SEEDS:
        total.merge(run_seed(seed, CI_OPS))
    show_figure(total.figure())
    assert total.states >= CI_MIN_STATES, total.figure()
    # every kind of crash state is represented
    for kind in ("prefix", "torn-head", "torn-tail", "torn-sub", "reorder", "flip", "double"):
        assert total.by_kind.get(kind, 0) > 0, (kind, total.by_kind)
    assert total.continued > 0
    assert total.failures == 0, "\n".join(total.examples)


LIFECYCLE_SEEDS = (5, 7)


def test_crash_states_of_holds_renames_and_priorities(show_figure):
    """Workloads with hold / release / priority / rename ops: each is all or nothing,
    and a held snapshot is never deleted, in every crash state."""
    total = Tally()
    for seed in LIFECYCLE_SEEDS:
        run = run_workload(seed, 40, meta=True)
        assert {"hold", "release", "prio", "rename"} <= {op.kind for op in run.ops}
        total.merge(run_seed(seed, 40, meta=True))
    show_figure("holds/renames/priorities: " + total.figure())
    assert total.states >= 1000, total.figure()
    assert total.failures == 0, "\n".join(total.examples)


CLONE_SEEDS = (3, 11)


def test_crash_states_of_clones(show_figure):
    """Workloads with clones and steps of their fill: a clone is there with all of its
    parent's content or not at all, in every crash state, and keeps it while the fill
    resumes after recovery."""
    total = Tally()
    for seed in CLONE_SEEDS:
        run = run_workload(seed, 40, clones=True)
        kinds = [op.kind for op in run.ops]
        assert "clone" in kinds and "cstep" in kinds, kinds
        total.merge(run_seed(seed, 40, clones=True))
    show_figure("clones: " + total.figure())
    assert total.states >= 1000, total.figure()
    assert total.failures == 0, "\n".join(total.examples)


def test_mutant_holds_kept_only_in_memory_are_caught(monkeypatch):
    """A hold that changes the entry but never dirties the table block is lost by
    every crash after it was acknowledged."""
    from csnapd.store.snapshots import Snapshots

    def hold(self, entry):
        entry.use_count += 1

    def release(self, entry):  # a hold lost at a reopen has nothing to release
        entry.use_count = max(0, entry.use_count - 1)

    monkeypatch.setattr(Snapshots, "hold", hold)
    monkeypatch.setattr(Snapshots, "release", release)
    tally = Tally()
    for seed in LIFECYCLE_SEEDS:
        tally.merge(run_seed(seed, 40, double_rate=0.0, continue_rate=0.0,
                             stop_on_failure=True, meta=True))
        if tally.failures:
            break
    assert tally.failures > 0
    assert "hold(s); the model says" in tally.examples[0]


def test_mutant_space_counts_written_wrong_at_close_are_caught(monkeypatch):
    """A clean close writes the space counts into the snapshot table (format 8.1); a
    close that wrote them wrong is caught in the crash states that open the store
    clean and take them as they are."""
    from csnapd.store.snapshots import Snapshots

    real = Snapshots.save_counts

    def save_counts(self, counts):
        real(self, counts)
        for e in self.entries:
            if e.state:
                e.exclusive += 1
                self._save(e)

    monkeypatch.setattr(Snapshots, "save_counts", save_counts)
    tally = run_seed(LIFECYCLE_SEEDS[0], 40, double_rate=0.0, continue_rate=0.0,
                     stop_on_failure=True, meta=True)
    assert tally.failures > 0
    assert "space counts of snapshot slot" in tally.examples[0]


# ---------------------------------------------------------------------------
# the recording layer and the enumeration themselves


def test_recording_device_logs_writes_flushes_and_marks():
    from csnapd.store.device import MemoryDevice

    inner = MemoryDevice(4096)
    rec = RecordingDevice(inner)
    rec.pwrite(512, b"a" * 512)
    rec.mark("x")
    rec.flush()
    rec.pwrite(0, bytearray(b"b" * 1024))
    assert rec.log == [("W", 512, b"a" * 512), ("M", "x"), ("F",), ("W", 0, b"b" * 1024)]
    assert inner.data[:1024] == b"b" * 1024 and inner.flushes == 1
    assert rec.pread(0, 4) == b"bbbb" and rec.size == 4096
    with pytest.raises(OSError):
        rec.pwrite(4000, b"c" * 512)
    assert replay(bytes(4096), rec.writes())[:1024] == b"b" * 1024
    assert torn(b"o" * 1024, b"n" * 1024, 1, True) == b"n" * 512 + b"o" * 512
    assert torn(b"o" * 1024, b"n" * 1024, 1, False) == b"o" * 512 + b"n" * 512


def test_workload_exercises_checkpoints_and_journal_wrap():
    run = run_workload(1, CI_OPS)
    writes = [e for e in run.log if e[0] == "W"]
    flushes = sum(1 for e in run.log if e[0] == "F")
    acks = [e[1][1] for e in run.log if e[0] == "M" and e[1][0] == "ack"]
    assert acks == list(range(1, CI_OPS + 1))
    bs = run.geometry.block_size
    supers = [e for e in writes if e[1] in (0, bs)]
    assert {e[1] for e in supers} == {0, bs}, "checkpoints alternate superblock slots"
    sb = sbk.load(_dev(run.base))[0]
    jlo, jhi = sb.journal_start * bs, (sb.journal_start + sb.journal_blocks) * bs
    journal = [e[1] for e in writes if jlo <= e[1] < jhi]
    assert any(b < a for a, b in zip(journal, journal[1:], strict=False)), "journal wrapped"
    assert flushes > len(acks)
    kinds = {op.kind for op in run.ops}
    assert {"create", "delete", "owrite", "swrite", "step", "reopen"} <= kinds


def _dev(image: bytes):
    from csnap_soak.recording import ImageDevice

    return ImageDevice(bytearray(image))


def test_enumeration_covers_every_prefix_and_reorders():
    run = run_workload(2, 20)
    states = list(enumerate_states(run, random.Random(0)))
    nwrites = sum(1 for e in run.log if e[0] == "W")
    prefixes = [s for s in states if s.kind == "prefix"]
    assert len(prefixes) == nwrites + 1
    assert prefixes[-1].image == replay(run.base, (w for w in _writes(run)))
    # a reordered state is never equal to a mere prefix of its interval
    assert any(s.kind == "reorder" for s in states)


def _writes(run: Run):
    return ((e[1], e[2]) for e in run.log if e[0] == "W")


def test_expectations_follow_marks():
    ops = [Op(1, "create", "a"), Op(2, "swrite", "a")]
    run = Run(0, None, b"", [("M", ("start", 1)), ("W", 0, b""), ("F",), ("M", ("ack", 1)),
                             ("M", ("start", 2)), ("F",), ("M", ("ack", 2)), ("W", 0, b""),
                             ("F",), ("M", ("data", 2))], ops, [])
    exps = expectations(run)
    assert exps[0] == Expectation(0, None, None)
    assert exps[1] == Expectation(0, ops[0], None)
    assert exps[4] == Expectation(1, None, None)
    assert exps[7] == Expectation(2, None, ops[1])
    assert exps[10] == Expectation(2, None, None)


# ---------------------------------------------------------------------------
# test the tests: break a durability rule, crash states must fail


def _skip_flush_after(monkeypatch, cls, method: str) -> None:
    """Make ``cls`` (a sealed transaction or a checkpoint) skip the flush that follows
    ``cls.method`` (a seeded bug)."""
    armed = {"on": False}
    orig = getattr(cls, method)
    orig_flush = cls._flush

    def wrapped(*args, **kwargs):
        result = orig(*args, **kwargs)
        armed["on"] = True
        return result

    def flush(self):
        if armed["on"]:
            armed["on"] = False
            return
        orig_flush(self)

    monkeypatch.setattr(cls, method, wrapped)
    monkeypatch.setattr(cls, "_flush", flush)


def _mutant_failures(seeds=(1, 2, 3), nops: int = 60) -> Tally:
    """Crash states of the usual workloads, stopping at the first failure."""
    total = Tally()
    for seed in seeds:
        total.merge(run_seed(seed, nops, double_rate=0.0, continue_rate=0.0,
                             stop_on_failure=True))
        if total.failures:
            break
    return total


def test_mutant_ack_before_journal_flush_is_caught(monkeypatch):
    """dm-thin 4ae280b4 class: acknowledging before the commit is durable."""
    _skip_flush_after(monkeypatch, Sealed, "_write_journal")
    assert _mutant_failures().failures > 0


def test_mutant_journal_before_copyout_data_is_caught(monkeypatch):
    """dm-snapshot 694cfe7f class: committing an exception before its data is durable."""
    _skip_flush_after(monkeypatch, Sealed, "_copy_out")
    assert _mutant_failures().failures > 0


def test_mutant_replaying_a_last_transaction_whose_copied_data_is_missing_is_caught(
        monkeypatch):
    """One flush for data and journal is sound only because recovery checks the last
    transaction's DATA record: without the check, a crash that kept the journal write but
    not the copies points a snapshot at chunks that never reached the disk."""
    monkeypatch.setattr(datacheck, "check_tail", lambda *args: None)
    assert _mutant_failures().failures > 0


def test_mutant_in_place_snapshot_write_without_a_confirming_commit_is_caught(monkeypatch):
    """A writer may not overwrite a chunk that the journal's last transaction covers with
    a DATA record (recovery would take the overwrite for missing data and drop that
    acknowledged transaction): the store commits once more first."""
    def hand_out(self, chunks):
        self._handout = True
        for frozen in self._ready:
            frozen.handout = True

    monkeypatch.setattr(Store, "_hand_out", hand_out)
    assert _mutant_failures(seeds=tuple(range(1, 40))).failures > 0


def test_mutant_superblock_before_home_writes_is_caught(monkeypatch):
    """ddsnap commit_transaction class: no barrier between home writes and the new tail."""
    _skip_flush_after(monkeypatch, Checkpoint, "_write_home")
    assert _mutant_failures().failures > 0


def test_mutant_images_not_checked_against_the_commit_record_is_caught(monkeypatch):
    """ddsnap checksum_block class: a torn transaction whose images are not covered."""

    def mend(rec, blocks, start, nblocks, store_id):
        return txn.Mended(rec, list(blocks[1:len(rec.homes) + 1]), [], None)

    monkeypatch.setattr(txn, "mend", mend)
    assert _mutant_failures().failures > 0


def test_mutant_damaged_newest_transaction_treated_as_torn_is_caught(monkeypatch):
    """The reported defect: one bad block in the newest transaction silently rolled it back."""
    real = txn.mend

    def mend(*args):
        got = real(*args)
        return got if got is not None and not got.damaged else None

    monkeypatch.setattr(txn, "mend", mend)
    tally = _mutant_failures()
    assert tally.failures > 0
    assert " flip " in tally.examples[0]


def test_mutant_single_superblock_slot_is_caught(monkeypatch):
    """A torn checkpoint must only ever damage the older superblock copy."""

    def write_slot(dev, f):
        dev.pwrite(0, sbk.seal_super(0, f))
        return 0

    monkeypatch.setattr(sbk, "write_slot", write_slot)
    assert _mutant_failures().failures > 0


def test_mutant_recovery_stepping_generation_back_is_caught(monkeypatch):
    """The bug fixed in f74ae93: a journaled superblock sealed before an in-commit
    checkpoint carried the old generation, so recovery's checkpoint overwrote the
    newest valid slot; torn, that lost the store.  The harness flags the overwrite."""
    real = Store._adopt_journaled_super

    def adopt(self, image):
        real(self, image)
        self.sb.generation -= 1

    monkeypatch.setattr(Store, "_adopt_journaled_super", adopt)
    tally = _mutant_failures()
    assert tally.failures > 0
    assert "overwrites the newest valid superblock slot" in tally.examples[0]


def test_mutant_recovery_without_replay_is_caught(monkeypatch):
    real = jnl.scan

    def scan(*args, **kwargs):
        result = real(*args, **kwargs)
        result.transactions = []
        return result

    monkeypatch.setattr(jnl, "scan", scan)
    assert _mutant_failures().failures > 0


class _Everything:
    def __contains__(self, item: object) -> bool:
        return True


def test_mutant_records_on_home_blocks_without_full_page_images_is_caught(monkeypatch):
    """The compact journal's full-page rule: a block's first change after a checkpoint
    is journaled as an image, so replay never applies records to a home block, which a
    checkpoint cut short may have torn.  Break the rule (records whenever a block has
    them; replay starts from the home block) and torn checkpoint writes lose data."""
    real_payload, real_recover, real_decoded = Frozen.payload, Store._recover, Replay._decoded
    devices = []

    def payload(self, version, imaged):
        return real_payload(self, version, _Everything())

    def recover(self):
        devices.append(self.dev)
        return real_recover(self)

    def decoded(self, home, kinds, where):
        if home not in self._blocks:
            dev = devices[-1]
            self._blocks[home] = dev.pread(home * self.block_size, self.block_size)
        return real_decoded(self, home, kinds, where)

    monkeypatch.setattr(Frozen, "payload", payload)
    monkeypatch.setattr(Store, "_recover", recover)
    monkeypatch.setattr(Replay, "_decoded", decoded)
    tally = _mutant_failures()
    assert tally.failures > 0
    assert any(kind in tally.examples[0] for kind in (" torn-", " double ", " reorder "))


def test_regression_checkpoint_inside_commit_keeps_images_of_blocks_being_freed():
    """Found by csnap_soak/crash.py (seed 56): a delete step merged two leaves,
    freeing leaf 140 whose committed image was not yet home; BlockCache.forget
    dropped that image; commit() then checkpointed (the transaction did not fit)
    and moved the tail past it, so a crash before the new transaction left the
    committed tree pointing at a stale leaf.  Every prefix state of that run."""
    from csnap_soak.crash_harness import GEOMETRIES, check_state

    run = run_workload(56, 120, GEOMETRIES["small"])
    exps = expectations(run)
    rng = random.Random(0)
    tally = Tally()
    for state in enumerate_states(run, random.Random(56)):
        if state.kind == "prefix":
            check_state(state, run, exps[state.position], tally, rng, 0.0, 0.0)
    assert tally.states > 200
    assert tally.failures == 0, "\n".join(tally.examples)


def test_mutant_clone_fill_not_journaled_is_caught(monkeypatch):
    """A clone fill whose record never reaches the journal (the superblock fields change
    only in memory) loses the clone's parent copies at a crash: the enumeration sees it."""
    from csnapd.store import format as fmt

    monkeypatch.setattr(fmt, "clone_record", lambda f: b"")
    tally = Tally()
    for seed in CLONE_SEEDS:
        tally.merge(run_seed(seed, 40, double_rate=0.0, continue_rate=0.0,
                             stop_on_failure=True, clones=True))
        if tally.failures:
            break
    assert tally.failures, tally.figure()


GROW_SEEDS = (7, 8, 9)


def test_crash_states_of_store_and_origin_growth(show_figure):
    """Workloads that grow the store (within the bitmaps' reach and beyond it, moving
    them) and the origin: in every crash state the store is the old size or the new one
    (the growth in flight) with a clean check, and every snapshot keeps its size and
    data."""
    total = Tally()
    moved = False
    for seed in GROW_SEEDS:
        run = run_workload(seed, 60, grow=True)
        kinds = {op.kind for op in run.ops}
        assert {"sgrow", "ogrow"} <= kinds
        sizes = [m.store_chunks for m in run.models]
        moved |= any(a and a <= 480 < b for a, b in zip(sizes, sizes[1:], strict=False))
        total.merge(run_seed(seed, 60, grow=True))
    assert moved, "no workload grew the store past its bitmaps' reach"
    show_figure("store and origin growth: " + total.figure())
    assert total.states >= 1500, total.figure()
    assert total.failures == 0, "\n".join(total.examples)


def _grow_failures(seeds=GROW_SEEDS) -> Tally:
    total = Tally()
    for seed in seeds:
        total.merge(run_seed(seed, 60, grow=True, double_rate=0.0, continue_rate=0.0))
    return total


def test_mutant_growth_writing_the_new_bitmaps_with_the_journal_is_caught(monkeypatch):
    """The new bitmaps written in the journal's flush window instead of before it: a
    crash may keep the switch without them."""
    direct = Sealed._write_direct
    journal = Sealed._write_journal

    def late(self):
        journal(self)
        direct(self)

    monkeypatch.setattr(Sealed, "_write_direct", lambda self: None)
    monkeypatch.setattr(Sealed, "_write_journal", late)
    assert _grow_failures().failures > 0


def test_mutant_growth_without_the_geometry_record_is_caught(monkeypatch):
    orig = Frozen.__init__

    def init(self, *args, **kwargs):
        orig(self, *args, **kwargs)
        self.geometry = False  # the geometry would travel nowhere (no SUPER field has it)

    monkeypatch.setattr(Frozen, "__init__", init)
    assert _grow_failures().failures > 0
