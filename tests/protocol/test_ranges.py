"""Range and mapping compression helpers."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from csnap_client.protocol import (
    LocalProtocolError,
    compress_mapping,
    compress_ranges,
    count_chunks,
    expand_mapping,
    expand_ranges,
    query_write,
    validate,
)

sorted_chunks = st.sets(st.integers(0, 5000), max_size=300).map(sorted)


def test_compress_examples():
    assert compress_ranges([]) == []
    assert compress_ranges([0]) == [[0, 1]]
    assert compress_ranges([1, 2, 3, 7, 9, 10]) == [[1, 3], [7, 1], [9, 2]]
    assert compress_mapping([(1, 10), (2, 11), (3, 20), (5, 21)]) == [
        [1, 2, 10], [3, 1, 20], [5, 1, 21]]


@pytest.mark.parametrize("bad", [[3, 3], [3, 2], [-1], [0, -1]])
def test_compress_rejects_unsorted(bad):
    with pytest.raises(LocalProtocolError):
        compress_ranges(bad)


def test_compress_mapping_rejects_unsorted():
    with pytest.raises(LocalProtocolError):
        compress_mapping([(5, 1), (5, 2)])


@given(sorted_chunks)
def test_ranges_round_trip(chunks):
    ranges = compress_ranges(chunks)
    assert list(expand_ranges(ranges)) == chunks
    assert count_chunks(ranges) == len(chunks)
    # maximal runs: no two adjacent runs touch
    for (s1, c1), (s2, _) in zip(ranges, ranges[1:], strict=False):
        assert s1 + c1 < s2
    if ranges:
        validate(query_write(1, ranges))


@given(sorted_chunks, st.data())
def test_mapping_round_trip(chunks, data):
    stores = data.draw(st.lists(st.integers(0, 2**40), min_size=len(chunks),
                                max_size=len(chunks)))
    # make some runs consecutive in the store too
    for i in range(1, len(stores)):
        if data.draw(st.booleans()):
            stores[i] = stores[i - 1] + 1
    pairs = list(zip(chunks, stores, strict=True))
    mapping = compress_mapping(pairs)
    assert list(expand_mapping(mapping)) == pairs
    assert count_chunks(mapping) == len(chunks)
    for a, b in zip(mapping, mapping[1:], strict=False):
        assert not (a[0] + a[1] == b[0] and a[2] + a[1] == b[2]), "runs not maximal"
