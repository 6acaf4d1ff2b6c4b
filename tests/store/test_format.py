"""Block sealing/verification and the leaf, node and superblock layouts."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from csnapd.store import create
from csnapd.store import format as fmt
from csnapd.store.blocks import Leaf
from csnapd.store.errors import CorruptionError
from csnapd.store.format import BlockKind

BS = 512
SID = 0x1122334455667788


def excs(vals: list[list[list[int]]]) -> list[fmt.Excs]:
    """Entries' exceptions from [store, sharemap] pairs."""
    return [tuple((store, sharemap) for store, sharemap in v) for v in vals]


def leaf_image(addr: int = 77, sid: int = SID) -> bytes:
    keys = [3, 9, 100]
    vals = excs([[[500, 0b1]], [[501, 0b110], [502, 0b1]], [[503, 1 << 40]]])
    count, payload = Leaf(addr, keys, vals).payload()
    return fmt.seal(BlockKind.LEAF, addr, sid, count, payload, BS)


def test_seal_verify_round_trip():
    image = leaf_image()
    assert len(image) == BS
    assert fmt.verify(image, BlockKind.LEAF, 77, SID) == 3
    assert fmt.verify(image, BlockKind.LEAF, 77, None) == 3


@pytest.mark.parametrize("kind", [k for k in BlockKind if k != BlockKind.LEAF])
def test_leaf_never_verifies_as_another_kind(kind):
    image = leaf_image()
    with pytest.raises(CorruptionError, match="wrong block kind LEAF"):
        fmt.verify(image, kind, 77, SID)


def test_kind_salt_makes_crc_kind_specific():
    """Relabel a LEAF as a NODE and re-checksum it with an unsalted (LEAF) CRC:
    verification as NODE must still fail, because the CRC seed is per kind."""
    buf = bytearray(leaf_image())
    struct.pack_into("<H", buf, 4, BlockKind.NODE)
    struct.pack_into("<I", buf, 8, fmt._crc_of(buf, fmt.KIND_SALT[BlockKind.LEAF]))
    with pytest.raises(CorruptionError, match="checksum mismatch"):
        fmt.verify(bytes(buf), BlockKind.NODE, 77, SID)
    # ...whereas the NODE salt makes the same bytes verify: the salt is what decides
    struct.pack_into("<I", buf, 8, fmt._crc_of(buf, fmt.KIND_SALT[BlockKind.NODE]))
    assert fmt.verify(bytes(buf), BlockKind.NODE, 77, SID) == 3
    assert len(set(fmt.KIND_SALT.values())) == len(BlockKind)


def test_self_address_mismatch():
    image = leaf_image(addr=77)
    with pytest.raises(CorruptionError, match="misdirected") as info:
        fmt.verify(image, BlockKind.LEAF, 78, SID)
    assert info.value.block == 78


def test_store_id_mismatch():
    image = leaf_image(sid=SID)
    with pytest.raises(CorruptionError, match="different store"):
        fmt.verify(image, BlockKind.LEAF, 77, SID + 1)


def test_bad_magic():
    image = b"XXXX" + leaf_image()[4:]
    with pytest.raises(CorruptionError, match="bad magic"):
        fmt.verify(image, BlockKind.LEAF, 77, SID)


def test_every_single_bit_flip_is_detected():
    image = leaf_image()
    for bit in range(len(image) * 8):
        buf = bytearray(image)
        buf[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(CorruptionError):
            fmt.verify(bytes(buf), BlockKind.LEAF, 77, SID)


def test_seal_rejects_oversized_payload():
    with pytest.raises(ValueError):
        fmt.seal(BlockKind.LEAF, 5, SID, 0, bytes(BS - fmt.HEADER_SIZE + 1), BS)


# -- leaf encoding ---------------------------------------------------------

sharemaps = st.one_of(st.integers(1, 2**64 - 1), st.integers(1, 2**1024 - 1),
                      st.integers(0, 16383).map(lambda b: 1 << b))
exceptions = st.lists(st.tuples(st.integers(0, 2**64 - 1), sharemaps),
                      min_size=1, max_size=4).map(tuple)


@st.composite
def leaves(draw):
    keys = sorted(draw(st.sets(st.integers(0, 2**64 - 1), max_size=12)))
    vals = [draw(exceptions) for _ in keys]
    return keys, vals


@settings(max_examples=300, deadline=None)
@given(leaves())
def test_leaf_encode_decode_round_trip(leaf):
    keys, vals = leaf
    payload = fmt.encode_leaf(keys, vals)
    assert len(payload) == sum(fmt.entry_size(v) for v in vals)
    block = bytes(fmt.HEADER_SIZE) + payload
    got_keys, got_vals, used = fmt.decode_leaf(block, 1, len(keys))
    assert got_keys == keys
    assert got_vals == vals
    assert used == len(payload)


@settings(max_examples=100, deadline=None)
@given(leaves())
def test_leaf_seal_and_decode_through_cache_object(leaf):
    keys, vals = leaf
    size = sum(fmt.entry_size(v) for v in vals)
    bs = 512
    while fmt.leaf_capacity(bs) < size:
        bs *= 2
    count, payload = Leaf(9, keys, vals, size).payload()
    image = fmt.seal(BlockKind.LEAF, 9, SID, count, payload, bs)
    n = fmt.verify(image, BlockKind.LEAF, 9, SID)
    decoded = Leaf.decode(image, 9, n)
    assert (decoded.keys, decoded.vals, decoded.nbytes) == (keys, vals, size)


def test_single_snapshot_exception_costs_13_bytes_whatever_the_bit():
    for bit in (0, 7, 8, 1000, 16383):
        assert fmt.sharemap_size(1 << bit) == 13


def test_leaf_decode_rejects_structural_damage():
    keys, vals = [5, 6], excs([[[10, 1]], [[11, 2]]])
    block = bytearray(fmt.HEADER_SIZE + 64)
    payload = fmt.encode_leaf(keys, vals)
    block[fmt.HEADER_SIZE:fmt.HEADER_SIZE + len(payload)] = payload
    with pytest.raises(CorruptionError):  # keys out of order
        fmt.decode_leaf(bytes(block[:fmt.HEADER_SIZE]) + fmt.encode_leaf([6, 5], vals), 1, 2)
    with pytest.raises(CorruptionError):  # count claims entries that are not there
        fmt.decode_leaf(bytes(block), 1, 3)
    with pytest.raises(CorruptionError):  # runs off the end
        fmt.decode_leaf(bytes(block[:fmt.HEADER_SIZE + len(payload) - 1]), 1, 2)


def test_node_round_trip_and_structure_checks():
    keys, children = [0, 10, 20], [100, 101, 102]
    payload = fmt.encode_node(keys, children)
    image = fmt.seal(BlockKind.NODE, 4, SID, 3, payload, BS)
    assert fmt.decode_node(image, 4, fmt.verify(image, BlockKind.NODE, 4, SID)) == (keys, children)
    bad = fmt.seal(BlockKind.NODE, 4, SID, 3, fmt.encode_node([0, 20, 10], children), BS)
    with pytest.raises(CorruptionError, match="out of order"):
        fmt.decode_node(bad, 4, 3)
    null = fmt.seal(BlockKind.NODE, 4, SID, 3, fmt.encode_node(keys, [100, 0, 102]), BS)
    with pytest.raises(CorruptionError, match="null child"):
        fmt.decode_node(null, 4, 3)
    with pytest.raises(CorruptionError):
        fmt.decode_node(image, 4, fmt.node_capacity(BS) + 1)


def test_superblock_encode_decode():
    f = create.plan(8 << 20, 1 << 20, chunk_size=4096, block_size=BS)
    image = fmt.seal(BlockKind.SUPER, 1, f.store_id, 0, fmt.encode_super(f), BS)
    assert fmt.decode_super(image, 1) == f
    with pytest.raises(CorruptionError):
        fmt.decode_super(image, 0)  # slot B's image read as slot A


def test_snap_entry_round_trip():
    e = fmt.SnapEntry(3, fmt.SNAP_LIVE, 0, -5, 77, 123456789, 2, "snäp")
    assert fmt.decode_snap_entry(fmt.encode_snap_entry(e), 3, 2) == e
    assert fmt.decode_snap_entry(bytes(128), 4, 2) == fmt.SnapEntry(4)


def test_snap_entry_holds_and_space_counts_at_their_offsets():
    """docs/on-disk-format.md 8.1: use count at 16 (u32), exclusive at 20 and shared at
    26 (u48 each), name at 32."""
    e = fmt.SnapEntry(1, fmt.SNAP_LIVE, 0, 0, 9, 0, 3, "n", exclusive=2**48 - 1,
                      shared=0x010203040506)
    raw = fmt.encode_snap_entry(e)
    assert raw[16:20] == (3).to_bytes(4, "little")
    assert raw[20:26] == b"\xff" * 6 and raw[26:32] == bytes([6, 5, 4, 3, 2, 1])
    assert raw[32:33] == b"n"
    assert fmt.decode_snap_entry(raw, 1, 2) == e


def test_redundant_commit_record_matches_the_worked_example():
    """docs/on-disk-format.md 10.3: the bytes and CRCs printed there."""
    from csnapd.store import txn

    sid, bs = 0x0123456789ABCDEF, 4096
    payload = fmt.encode_leaf([5, 9], excs([[[40, 1]], [[41, 0b1010], [42, 1 << 100]]]))
    leaf = fmt.seal(fmt.BlockKind.LEAF, 1000, sid, 2, payload, bs)
    assert fmt.block_crc(leaf) == 0xAEDC5662  # the leaf of 10.1
    lead, image, parity, trail = txn.encode(290, 2048, 10, sid, 7, 0, [(1000, leaf)], bs)
    assert image == parity == leaf
    assert lead[:80] == bytes.fromhex(
        "43536e7008000000e08aabea01000000" "2c01000000000000efcdab8967452301"
        "07000000000000000000000000000000" "0a00000001000000e803000000000000"
        "8d11d16f8d11d16f0000000000000000")
    assert not any(lead[80:])
    assert fmt.block_crc(trail) == 0xE450FA24 and trail[16:24] == (303).to_bytes(8, "little")
    assert lead[:16] != trail[:16] and lead[24:] == trail[24:]
    rec = fmt.decode_commit2(lead, 300, sid)
    assert rec == fmt.decode_commit2(trail, 303, sid)
    assert (rec.seq, rec.epoch, rec.first, rec.homes, rec.crcs) == (7, 0, 10, (1000,), (0x6FD1118D,))
    assert fmt.decode_commit2(lead, 301, sid) is None  # misdirected
    assert fmt.decode_commit2(lead, 300, sid + 1) is None  # another store


def test_compact_commit_record_matches_the_worked_example():
    """docs/on-disk-format.md 10.4: the bytes and CRCs printed there."""
    from csnapd.store import txn

    sid, bs = 0x0123456789ABCDEF, 4096
    stream = fmt.entry_record(1000, 10, ((43, 1),)) + fmt.bits_record(2, 43, 1, 1)
    assert len(stream) == 50
    lead, trail = txn.encode3(290, 2048, 14, sid, 8, 0, [], stream, bs)
    assert lead[:128] == bytes.fromhex(
        "43536e700a00000009b8d6ca00000000" "3001000000000000efcdab8967452301"
        "08000000000000000000000000000000" "0e000000000000000000000032000000"
        "32000000000000000000000001e80300" "00000000000a0000000000000001002b"
        "00000000000000000001000102020000" "00000000002b00000001000000010000")
    assert not any(lead[126:])
    assert fmt.block_crc(lead) == 0xCAD6B809 and fmt.block_crc(trail) == 0x33DBBA1A
    assert trail[16:24] == (305).to_bytes(8, "little") and lead[24:] == trail[24:]
    rec = fmt.decode_commit3(lead, 304, sid)
    assert rec == fmt.decode_commit3(trail, 305, sid) and rec.span == 2
    assert (rec.seq, rec.first, rec.homes, rec.crcs, rec.inline) == (8, 14, (), (), stream)
    assert fmt.decode_records(rec.inline, 304) == [
        (fmt.REC_ENTRY, 1000, 10, ((43, 1),)), (fmt.REC_BITS, 2, 43, 1, 1)]
    assert fmt.decode_commit3(lead, 305, sid) is None  # misdirected
    assert fmt.decode_commit3(lead, 304, sid + 1) is None  # another store


grant_records = st.one_of(st.none(), st.builds(
    fmt.GrantRecord, st.integers(0, 2**64 - 1), st.just(fmt.GRANT_WRITER),
    st.integers(0, 16383)), st.builds(
    fmt.GrantRecord, st.integers(0, 2**64 - 1), st.just(fmt.GRANT_ORIGIN), st.just(0),
    st.lists(st.tuples(st.integers(0, 2**63), st.integers(1, 2**40)), max_size=30)))
records = st.one_of(
    st.builds(lambda b, c, e: (fmt.REC_ENTRY, b, c, e), st.integers(0, 2**64 - 1),
              st.integers(0, 2**64 - 1), st.lists(exceptions.map(lambda v: v[0]), max_size=4).map(tuple)),
    st.builds(lambda b, f, n, v: (fmt.REC_BITS, b, f, n, v), st.integers(0, 2**64 - 1),
              st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.integers(0, 1)),
    st.builds(lambda b, i, r: (fmt.REC_GRANT, b, i, r), st.integers(0, 2**64 - 1),
              st.integers(0, 2**16 - 1), grant_records))


def _encode_record(r: tuple) -> bytes:
    if r[0] == fmt.REC_ENTRY:
        return fmt.entry_record(*r[1:])
    if r[0] == fmt.REC_BITS:
        return fmt.bits_record(*r[1:])
    return fmt.grant_record(*r[1:])


@settings(max_examples=200, deadline=None)
@given(st.lists(records, max_size=8))
def test_records_round_trip(recs):
    f = create.plan(8 << 20, 1 << 20, chunk_size=4096, block_size=BS)
    stream = b"".join(_encode_record(r) for r in recs) + fmt.super_record(f)
    got = fmt.decode_records(stream, 7)
    assert got[:-1] == recs
    assert got[-1] == (fmt.REC_SUPER, {name: getattr(f, name)
                                       for name in fmt.SUPER_RECORD_FIELDS})
    with pytest.raises(CorruptionError):
        fmt.decode_records(stream[:-1], 7)  # cut short
    with pytest.raises(CorruptionError):
        fmt.decode_records(b"\x09" + stream, 7)  # unknown type
