"""Tests for csnapd.engine.locks: read locks on origin chunks vs origin writes.

Times are plain floats passed in; nothing sleeps.  ``check_invariants`` runs
after every scenario and after every step of the model-based test.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    rule,
)

from csnapd.engine.locks import (
    DuplicateRequest,
    InvalidRanges,
    LockBroken,
    LockLimitExceeded,
    LockTable,
    QueuedRead,
    ReadGrant,
    ReadGranted,
    WriteReady,
    normalize_ranges,
)

A, B, C = "a", "b", "c"


@pytest.fixture
def table():
    t = LockTable(lease=10.0)
    yield t
    t.check_invariants()


# ------------------------------------------------------------ ordering


def test_write_before_read_proceeds_and_read_is_granted(table):
    assert table.wait_write(A, 1, [[0, 64]]) is True
    grant = table.acquire_read(B, 7, [[3, 2]], now=0.0)
    assert grant == ReadGrant(B, 7, ((3, 2),), 10.0)
    assert table.held_chunks == 2


def test_read_before_write_makes_write_wait_until_release(table):
    table.acquire_read(B, 7, [[3, 2]], now=0.0)
    assert table.wait_write(A, 1, [[0, 4]]) is False
    assert table.waiting_writes == 1
    valid, events = table.release(B, 7, now=1.0)
    assert valid is True
    assert events == [WriteReady(A, 1)]
    assert table.waiting_writes == 0 and table.held_chunks == 0


def test_write_not_touching_locked_chunks_proceeds(table):
    table.acquire_read(B, 7, [[3, 2]], now=0.0)
    assert table.wait_write(A, 1, [[5, 10], [0, 3]]) is True


def test_multiple_holders_on_one_chunk(table):
    table.acquire_read(A, 1, [[5, 1]], now=0.0)
    table.acquire_read(B, 1, [[5, 1]], now=0.0)
    assert table.stats().locked_chunks == 1 and table.held_chunks == 2
    assert table.wait_write(C, 9, [[5, 1]]) is False
    assert table.release(A, 1) == (True, [])
    assert table.release(B, 1) == (True, [WriteReady(C, 9)])


def test_write_waits_on_several_locks_across_clients(table):
    table.acquire_read(A, 1, [[0, 1]], now=0.0)
    table.acquire_read(B, 2, [[2, 1]], now=0.0)
    table.acquire_read(B, 3, [[4, 1]], now=0.0)
    assert table.wait_write(C, 9, [[0, 5]]) is False
    assert table.release(B, 3) == (True, [])
    assert table.release(A, 1) == (True, [])
    assert table.release(B, 2) == (True, [WriteReady(C, 9)])


def test_partial_release(table):
    table.acquire_read(A, 1, [[0, 4]], now=0.0)
    assert table.wait_write(B, 9, [[3, 1]]) is False
    assert table.release(A, 1, [[0, 2]]) == (True, [])
    assert table.held_chunks == 2
    assert table.release(A, 1, [[3, 1], [100, 5]]) == (True, [WriteReady(B, 9)])
    assert table.release(A, 1) == (True, [])
    assert table.held_locks == 0
    assert table.release(A, 1) == (False, [])


# -------------------------------------------------------- no starvation


def test_read_queues_behind_waiting_write_then_granted(table):
    table.acquire_read(A, 1, [[1, 1]], now=0.0)
    assert table.wait_write(C, 9, [[1, 2]]) is False
    # chunk 2 is not locked, but a write waits on it: the read queues
    queued = table.acquire_read(B, 5, [[2, 1]], now=1.0)
    assert queued == QueuedRead(B, 5, 1)
    assert table.queued_reads == 1
    # a read on an unrelated chunk is not held up
    assert isinstance(table.acquire_read(B, 6, [[50, 1]], now=1.0), ReadGrant)
    valid, events = table.release(A, 1, now=2.0)
    assert valid
    assert events == [WriteReady(C, 9), ReadGranted(B, 5, ((2, 1),), 12.0)]
    assert table.queued_reads == 0 and table.held_locks == 2


def test_fifo_write_behind_queued_read_waits_for_its_grant(table):
    table.acquire_read(A, 1, [[0, 1]], now=0.0)
    assert table.wait_write(C, 1, [[0, 1]]) is False
    assert isinstance(table.acquire_read(B, 5, [[0, 1]], now=0.0), QueuedRead)
    assert table.wait_write(C, 2, [[0, 1]]) is False
    _, events = table.release(A, 1, now=1.0)
    # write 1 first, then the read it held up; write 2 now waits on that read
    assert events == [WriteReady(C, 1), ReadGranted(B, 5, ((0, 1),), 11.0)]
    assert table.waiting_writes == 1
    assert table.release(B, 5) == (True, [WriteReady(C, 2)])


def test_queued_read_waits_for_all_earlier_writes(table):
    table.acquire_read(A, 1, [[0, 1]], now=0.0)
    table.acquire_read(A, 2, [[1, 1]], now=0.0)
    table.wait_write(C, 1, [[0, 1]])
    table.wait_write(C, 2, [[1, 1]])
    assert table.acquire_read(B, 5, [[0, 2]], now=0.0) == QueuedRead(B, 5, 2)
    assert table.release(A, 1) == (True, [WriteReady(C, 1)])
    _, events = table.release(A, 2)
    assert events == [WriteReady(C, 2), ReadGranted(B, 5, ((0, 2),), 10.0)]


def test_releasing_a_queued_read_cancels_it(table):
    table.acquire_read(A, 1, [[0, 1]], now=0.0)
    table.wait_write(C, 1, [[0, 1]])
    table.acquire_read(B, 5, [[0, 1]], now=0.0)
    assert table.release(B, 5) == (False, [])
    assert table.queued_reads == 0
    assert table.release(A, 1) == (True, [WriteReady(C, 1)])


# ------------------------------------------------------------- clients


def test_drop_holder_wakes_waiting_write(table):
    table.acquire_read(A, 1, [[0, 2]], now=0.0)
    table.acquire_read(A, 2, [[8, 2]], now=0.0)
    table.wait_write(B, 9, [[1, 8]])
    assert table.drop_client(A) == [WriteReady(B, 9)]
    assert table.stats().per_client == {}


def test_drop_writer_grants_reads_queued_behind_it(table):
    table.acquire_read(A, 1, [[0, 1]], now=0.0)
    table.wait_write(C, 9, [[0, 4]])
    table.acquire_read(B, 5, [[3, 1]], now=0.0)
    table.acquire_read(C, 6, [[3, 1]], now=0.0)  # the writer's own queued read
    assert table.drop_client(C, now=4.0) == [ReadGranted(B, 5, ((3, 1),), 14.0)]
    assert table.waiting_writes == 0 and table.queued_reads == 0


def test_drop_unknown_client_is_harmless(table):
    assert table.drop_client("nobody") == []


def test_release_unknown_lock_is_invalid_not_a_crash(table):
    assert table.release("nobody", 1) == (False, [])
    table.acquire_read(A, 1, [[0, 1]], now=0.0)
    assert table.release(A, 2, [[0, 1]]) == (False, [])


# -------------------------------------------------------------- leases


def test_lease_expiry_breaks_lock_and_release_is_invalid(table):
    table.acquire_read(A, 1, [[0, 1]], now=0.0)
    assert table.wait_write(B, 9, [[0, 1]]) is False
    assert table.next_deadline() == 10.0
    assert table.expire(9.5) == []
    assert table.expire(10.0) == [LockBroken(A, 1), WriteReady(B, 9)]
    assert table.next_deadline() is None
    assert table.was_broken(A, 1)
    assert table.release(A, 1, now=11.0) == (False, [])
    assert not table.was_broken(A, 1)


def test_lease_is_a_fixed_maximum_hold_time(table):
    """Nothing extends a lock: a reader that never finishes loses it at the lease."""
    table.acquire_read(A, 1, [[0, 1]], now=0.0)
    assert table.wait_write(B, 9, [[0, 1]]) is False
    table.acquire_read(A, 2, [[5, 1]], now=8.0)  # more activity by the same client
    assert not hasattr(table, "renew") and not hasattr(table, "renew_client")
    assert table.next_deadline() == 10.0
    assert table.expire(10.0) == [LockBroken(A, 1), WriteReady(B, 9)]
    assert table.release(A, 1, now=10.5) == (False, [])


def test_lease_times_never_go_backwards(table):
    table.acquire_read(A, 1, [[0, 1]], now=5.0)
    grant = table.acquire_read(A, 2, [[1, 1]], now=3.0)  # clock skew is clamped
    assert grant.expiry == 15.0
    table.check_invariants()


def test_no_lease_means_no_deadline():
    t = LockTable(lease=None)
    assert t.acquire_read(A, 1, [[0, 1]], now=0.0).expiry is None
    assert t.next_deadline() is None and t.expire(1e9) == []
    t.check_invariants()


def test_broken_memory_is_bounded_and_forgotten_on_drop():
    t = LockTable(lease=1.0, max_broken=2)
    for lock_id in range(3):
        t.acquire_read(A, lock_id, [[lock_id, 1]], now=0.0)
    assert [type(e) for e in t.expire(1.0)] == [LockBroken] * 3
    assert t.client_stats(A).broken_remembered == 2
    assert not t.was_broken(A, 0) and t.was_broken(A, 2)
    t.check_invariants()
    t.drop_client(A)
    assert not t.was_broken(A, 2)


def test_broken_id_can_be_reused(table):
    table.acquire_read(A, 1, [[0, 1]], now=0.0)
    table.expire(10.0)
    table.acquire_read(A, 1, [[0, 1]], now=10.0)
    assert not table.was_broken(A, 1)
    assert table.release(A, 1) == (True, [])


# -------------------------------------------------------- limits, errors


def test_client_chunk_limit_raises_and_changes_nothing():
    t = LockTable(max_client_chunks=8)
    t.acquire_read(A, 1, [[0, 6]], now=0.0)
    with pytest.raises(LockLimitExceeded, match="limit of 8"):
        t.acquire_read(A, 2, [[10, 3]], now=0.0)
    t.acquire_read(B, 2, [[10, 3]], now=0.0)  # other clients have their own budget
    assert t.held_chunks == 9
    t.check_invariants()


def test_queue_limit_raises():
    t = LockTable(max_client_queued=2)
    t.acquire_read(A, 1, [[0, 1]], now=0.0)
    assert t.wait_write(B, 1, [[0, 1]]) is False
    assert isinstance(t.acquire_read(B, 2, [[0, 1]], now=0.0), QueuedRead)
    with pytest.raises(LockLimitExceeded, match="queued requests"):
        t.wait_write(B, 3, [[0, 1]])
    with pytest.raises(LockLimitExceeded):
        t.acquire_read(B, 4, [[0, 1]], now=0.0)
    assert t.wait_write(B, 5, [[1, 1]]) is True  # not waiting: not queued
    t.check_invariants()


def test_huge_request_is_rejected_cheaply():
    t = LockTable(max_request_chunks=1000)
    with pytest.raises(LockLimitExceeded, match="request covers"):
        t.acquire_read(A, 1, [[0, 2**60]], now=0.0)
    t.acquire_read(A, 1, [[0, 1]], now=0.0)
    with pytest.raises(LockLimitExceeded):
        t.wait_write(B, 1, [[0, 2**60]])
    assert t.stats().per_client.keys() == {A}
    t.check_invariants()


def test_duplicate_ids_rejected(table):
    table.acquire_read(A, 1, [[0, 1]], now=0.0)
    with pytest.raises(DuplicateRequest):
        table.acquire_read(A, 1, [[3, 1]], now=0.0)
    table.wait_write(B, 1, [[0, 1]])
    with pytest.raises(DuplicateRequest):
        table.wait_write(B, 1, [[0, 1]])


@pytest.mark.parametrize("bad", [[[0]], [[-1, 1]], [[0, -1]], [["x", 1]], [[1.5, 1]], [5]])
def test_invalid_ranges(table, bad):
    with pytest.raises(InvalidRanges):
        table.acquire_read(A, 1, bad, now=0.0)
    assert table.held_locks == 0


def test_normalize_ranges_merges():
    assert normalize_ranges([[5, 2], [0, 3], [3, 1], [6, 4], [20, 0]]) == (((0, 4), (5, 5)), 9)
    assert normalize_ranges([]) == ((), 0)


def test_stats_per_client(table):
    table.acquire_read(A, 1, [[0, 4]], now=0.0)
    table.wait_write(B, 1, [[0, 1]])
    table.acquire_read(C, 1, [[0, 1]], now=0.0)
    s = table.stats()
    assert (s.held_locks, s.held_chunks, s.waiting_writes, s.queued_reads) == (1, 4, 1, 1)
    assert s.per_client[A].held_chunks == 4
    assert s.per_client[B].waiting_writes == 1
    assert s.per_client[C].queued_reads == 1


# ------------------------------------------------------- model-based test

CLIENTS = (0, 1, 2)
LEASE = 5.0
ranges_st = st.lists(st.tuples(st.integers(0, 7), st.integers(0, 3)), min_size=1, max_size=3)


def _chunks(ranges):
    return {c for s, n in ranges for c in range(s, s + n)}


class LockMachine(RuleBasedStateMachine):
    """The table against a model of who holds, queues and waits.

    The model is driven only by the table's own replies and events; it checks
    safety (a write is never ready while a held lock covers one of its chunks;
    a read is never granted while an earlier write waits on one of its chunks)
    and that nobody waits without a reason.
    """

    held_keys = Bundle("held_keys")

    @initialize()
    def setup(self):
        self.t = LockTable(lease=LEASE, max_client_chunks=40, max_client_queued=6)
        self.now = 0.0
        self.seq = 0
        self.ids = 0
        self.held = {}  # (client, id) -> [chunks, expiry]
        self.queued = {}  # (client, id) -> (seq, chunks)
        self.writes = {}  # (client, id) -> (seq, chunks)
        self.broken = set()

    def _next(self):
        self.ids += 1
        self.seq += 1
        return self.ids

    def _apply(self, events):
        last_write = 0
        for ev in events:
            if isinstance(ev, WriteReady):
                seq, chunks = self.writes.pop((ev.client, ev.write_id))
                assert seq > last_write, "writes of one batch reported out of arrival order"
                last_write = seq
                for key, (held, _) in self.held.items():
                    assert not (held & chunks), f"write ready while {key} holds {held & chunks}"
            elif isinstance(ev, ReadGranted):
                seq, chunks = self.queued.pop((ev.client, ev.lock_id))
                assert chunks == _chunks(ev.ranges)
                for wseq, wchunks in self.writes.values():
                    assert not (wseq < seq and wchunks & chunks), "read overtook a write"
                assert ev.expiry == self.now + LEASE
                self.held[(ev.client, ev.lock_id)] = [chunks, ev.expiry]
            elif isinstance(ev, LockBroken):
                key = (ev.client, ev.lock_id)
                assert self.held.pop(key)[1] <= self.now
                self.broken.add(key)
            else:
                raise AssertionError(f"unexpected event {ev!r}")

    def _budget_ok(self, client, extra):
        used = sum(len(c) for (cl, _), (c, _) in self.held.items() if cl == client)
        used += sum(len(c) for (cl, _), (_, c) in self.queued.items() if cl == client)
        return used + extra <= 40

    def _queue_ok(self, client):
        return sum(1 for cl, _ in [*self.queued, *self.writes] if cl == client) < 6

    @rule(target=held_keys, client=st.sampled_from(CLIENTS), ranges=ranges_st)
    def acquire(self, client, ranges):
        lock_id, chunks = self._next(), _chunks(ranges)
        if not self._budget_ok(client, len(chunks)):
            with pytest.raises(LockLimitExceeded):
                self.t.acquire_read(client, lock_id, ranges, self.now)
            return (client, -1)
        blocked = any(c & chunks for _, c in self.writes.values())
        if blocked and not self._queue_ok(client):
            with pytest.raises(LockLimitExceeded):
                self.t.acquire_read(client, lock_id, ranges, self.now)
            return (client, -1)
        res = self.t.acquire_read(client, lock_id, ranges, self.now)
        if blocked:
            assert isinstance(res, QueuedRead)
            self.queued[(client, lock_id)] = (self.seq, chunks)
        else:
            assert res == ReadGrant(client, lock_id, normalize_ranges(ranges)[0],
                                    self.now + LEASE)
            self.held[(client, lock_id)] = [chunks, self.now + LEASE]
        return (client, lock_id)

    @rule(client=st.sampled_from(CLIENTS), ranges=ranges_st)
    def write(self, client, ranges):
        write_id, chunks = self._next(), _chunks(ranges)
        must_wait = bool(chunks) and any(c & chunks for c, _ in self.held.values())
        if must_wait and not self._queue_ok(client):
            with pytest.raises(LockLimitExceeded):
                self.t.wait_write(client, write_id, ranges)
            return
        assert self.t.wait_write(client, write_id, ranges) is (not must_wait)
        if must_wait:
            self.writes[(client, write_id)] = (self.seq, chunks)

    @rule(key=consumes(held_keys))
    def release_all(self, key):
        expect = key in self.held
        was_queued = self.queued.pop(key, None) is not None
        valid, events = self.t.release(*key, now=self.now)
        assert valid is expect, (key, was_queued)
        self.held.pop(key, None)
        self.broken.discard(key)
        self._apply(events)

    @rule(key=held_keys, ranges=ranges_st)
    def release_part(self, key, ranges):
        if key not in self.held:
            return
        valid, events = self.t.release(*key, ranges=ranges, now=self.now)
        assert valid
        entry = self.held[key]
        entry[0] = entry[0] - _chunks(ranges)
        if not entry[0]:
            del self.held[key]
        self._apply(events)

    @rule(client=st.sampled_from(CLIENTS))
    def drop(self, client):
        for d in (self.held, self.queued, self.writes):
            for key in [k for k in d if k[0] == client]:
                del d[key]
        self.broken = {k for k in self.broken if k[0] != client}
        events = self.t.drop_client(client, now=self.now)
        assert all(getattr(ev, "client", None) != client for ev in events)
        self._apply(events)

    @rule(dt=st.sampled_from([0.0, 1.0, 2.5, 6.0]))
    def tick(self, dt):
        self.now += dt
        self._apply(self.t.expire(self.now))
        for _, expiry in self.held.values():
            assert expiry > self.now

    @invariant()
    def consistent(self):
        if not hasattr(self, "t"):
            return
        self.t.check_invariants()
        for _seq, chunks in self.writes.values():
            assert any(c & chunks for c, _ in self.held.values()), "write waits for nothing"
        for seq, chunks in self.queued.values():
            assert any(ws < seq and wc & chunks for ws, wc in self.writes.values()), \
                "read queued for nothing"
        s = self.t.stats()
        assert s.held_locks == len(self.held)
        assert s.held_chunks == sum(len(c) for c, _ in self.held.values())
        assert (s.waiting_writes, s.queued_reads) == (len(self.writes), len(self.queued))
        deadlines = [e for _, e in self.held.values()]
        assert self.t.next_deadline() == (min(deadlines) if deadlines else None)
        for key in self.broken:
            assert self.t.was_broken(*key)

    def teardown(self):
        """Liveness: releasing everything grants everything."""
        if not hasattr(self, "t"):
            return
        for _ in range(1000):
            if not self.held:
                break
            key = next(iter(self.held))
            valid, events = self.t.release(*key, now=self.now)
            assert valid
            del self.held[key]
            self._apply(events)
        assert not self.writes and not self.queued
        assert self.t.waiting_writes == 0 and self.t.queued_reads == 0
        self.t.check_invariants()


LockMachine.TestCase.settings = settings(
    max_examples=300, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
test_lock_machine = LockMachine.TestCase
