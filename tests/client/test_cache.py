"""Unit tests for the bounded run-length caches and the range helpers."""

from hypothesis import given, settings
from hypothesis import strategies as st

from csnap_client.cache import RunSet, StoreMap
from csnap_client.volume import batch_ranges, chunk_span, map_pieces


def test_runset_merge_and_missing():
    s = RunSet()
    s.add(10, 5)
    s.add(15, 5)  # adjacent: merged
    assert s.runs() == [(10, 10)]
    s.add(0, 2)
    s.add(30, 1)
    assert s.missing(0, 40) == [[2, 8], [20, 10], [31, 9]]
    assert s.covers(12, 8) and not s.covers(12, 9)
    assert 19 in s and 20 not in s and 1 in s
    s.add(1, 40)  # swallows everything
    assert s.runs() == [(0, 41)]
    s.check_invariants()
    s.clear()
    assert len(s) == 0 and s.missing(3, 2) == [[3, 2]]


def test_runset_full_terabyte_is_one_run():
    s = RunSet()
    n = (1 << 40) // (64 << 10)
    for start in range(0, n, n // 16):
        s.add(start, n // 16)
    assert len(s) == 1 and s.chunks == n


def test_runset_cap_evicts():
    s = RunSet(max_runs=8)
    for c in range(0, 100, 2):  # worst case: alternating chunks
        s.add(c, 1)
    assert len(s) == 8
    s.check_invariants()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 200), st.integers(1, 20)), max_size=40),
       st.integers(0, 220), st.integers(1, 50))
def test_runset_model(adds, q_start, q_count):
    s, model = RunSet(), set()
    for start, count in adds:
        s.add(start, count)
        model.update(range(start, start + count))
        s.check_invariants()
    assert s.chunks == len(model)
    want = [c for c in range(q_start, q_start + q_count) if c not in model]
    got = [c for a, n in s.missing(q_start, q_count) for c in range(a, a + n)]
    assert got == want
    assert s.covers(q_start, q_count) == (not want)


def test_storemap_lookup_and_overwrite():
    m = StoreMap()
    m.add(10, 4, 100)
    m.add(14, 2, 104)  # continues both addresses: merged
    assert m.runs() == [(10, 6, 100)]
    m.add(12, 1, 500)  # overwrite splits the run
    assert m.runs() == [(10, 2, 100), (12, 1, 500), (13, 3, 103)]
    assert m.lookup(8, 10) == [(8, 2, None), (10, 2, 100), (12, 1, 500), (13, 3, 103),
                               (16, 2, None)]
    assert m.get(13) == 103 and m.get(16) is None
    m.check_invariants()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 100), st.integers(1, 10), st.integers(0, 300)),
                max_size=30), st.integers(0, 110), st.integers(1, 30))
def test_storemap_model(adds, q_start, q_count):
    m, model = StoreMap(), {}
    for chunk, count, store in adds:
        m.add(chunk, count, store)
        for i in range(count):
            model[chunk + i] = store + i
        m.check_invariants()
    got = {}
    pos = q_start
    for c, n, s in m.lookup(q_start, q_count):
        assert c == pos
        pos += n
        for i in range(n):
            got[c + i] = None if s is None else s + i
    assert pos == q_start + q_count
    assert got == {c: model.get(c) for c in range(q_start, q_start + q_count)}


def test_storemap_cap():
    m = StoreMap(max_runs=4)
    for c in range(20):
        m.add(c, 1, 1000 - c)  # never mergeable
    assert len(m) == 4
    m.check_invariants()


def test_batch_ranges_limits():
    assert batch_ranges([[0, 10]], 1024, 4) == [[[0, 4]], [[4, 4]], [[8, 2]]]
    ranges = [[i * 2, 1] for i in range(5)]
    assert batch_ranges(ranges, 2, 100) == [ranges[0:2], ranges[2:4], ranges[4:5]]
    assert batch_ranges([], 10, 10) == []


def test_chunk_span_and_pieces():
    assert chunk_span(0, 1, 4096) == (0, 1)
    assert chunk_span(4095, 2, 4096) == (0, 2)
    assert chunk_span(8192, 8192, 4096) == (2, 2)
    # chunks 2..3 of a request for bytes [8000, 20000) living at device chunk 7
    assert map_pieces(5, 2, 2, 7, 4096, 8000, 12000) == (5, 7 * 4096, 192, 8192)
    assert map_pieces(5, 0, 1, 7, 4096, 8000, 100) is None
