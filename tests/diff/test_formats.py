"""The rbd diff and csnap-send formats, byte by byte, and the resume token."""

from __future__ import annotations

import io

import pytest

from csnap_diff import rbd
from csnap_diff import stream as st
from csnap_diff.source import split_zeros
from csnap_diff.state import Progress, TokenError, parse_token


def test_rbd_v1_bytes_exactly_as_documented():
    out = io.BytesIO()
    w = rbd.RbdDiffWriter(out)
    w.header(8192, "a", "b")
    w.write(0, b"xy")
    w.zero(4096, 4096)
    w.end()
    assert out.getvalue() == (
        b"rbd diff v1\n" + b"f\x01\x00\x00\x00a" + b"t\x01\x00\x00\x00b"
        + b"s" + (8192).to_bytes(8, "little")
        + b"w" + (0).to_bytes(8, "little") + (2).to_bytes(8, "little") + b"xy"
        + b"z" + (4096).to_bytes(8, "little") + (4096).to_bytes(8, "little") + b"e")
    r = rbd.RbdDiffReader(io.BytesIO(out.getvalue()))
    assert (r.header.from_snap, r.header.to_snap, r.header.size) == ("a", "b", 8192)
    assert list(r) == [("w", 0, b"xy"), ("z", 4096, 4096)] and r.complete


@pytest.mark.parametrize("raw", [b"rbd diff v9\n", b"rbd diff v1\nq", b"rbd diff v1\ns\x00",
                                 b"rbd diff v1\ns" + bytes(8) + b"w" + bytes(16) + b"s"])
def test_rbd_malformed(raw):
    with pytest.raises(rbd.DiffFormatError):
        list(rbd.RbdDiffReader(io.BytesIO(raw)))


def test_split_zeros_merges_per_chunk():
    cs = 4
    data = b"\0" * 8 + b"ab\0\0" + b"cdef" + b"\0" * 4
    got = [(e.offset, e.length, e.zero) for e in split_zeros(100, data, cs)]
    assert got == [(100, 8, True), (108, 8, False), (116, 4, True)]
    assert [(e.offset, e.zero) for e in split_zeros(0, bytes(12), cs)] == [(0, True)]


def _stream(records):
    sid = bytes(16)
    h = st.StreamHeader(sid, "u", "a", "b", 1 << 20, 4096, 0, st.chain_start(sid))
    enc = st.StreamEncoder(h)
    parts = enc.start()
    for kind, off, val in records:
        parts += enc.data(off, [val]) if kind == "w" else enc.zero(off, val)
        parts += enc.checkpoint(off + (len(val) if kind == "w" else val))
    parts += enc.end()
    return b"".join(bytes(p) for p in parts)


def test_stream_round_trip_and_every_single_bit_flip_is_caught():
    recs = [("w", 0, b"x" * 100), ("z", 4096, 8192), ("w", 65536, b"y" * 10)]
    raw = _stream(recs)
    events = list(st.StreamDecoder(io.BytesIO(raw)))
    assert [type(e).__name__ for e in events] == ["Data", "Checkpoint", "Zero", "Checkpoint",
                                                 "Data", "Checkpoint", "End"]
    for i in range(len(raw)):
        for bit in (0x01, 0x80):
            bad = bytearray(raw)
            bad[i] ^= bit
            with pytest.raises(st.StreamError):
                list(st.StreamDecoder(io.BytesIO(bytes(bad))))
    for cut in range(len(raw)):
        with pytest.raises(st.StreamError):
            list(st.StreamDecoder(io.BytesIO(raw[:cut])))


def test_token_round_trip_and_mangling():
    p = Progress(b"s" * 16, "a", "b", 1 << 20, 4096, 65536, b"c" * 32)
    tok = parse_token(p.token())
    assert (tok.stream, tok.from_snap, tok.to_snap, tok.position, tok.chain) == (
        p.stream, "a", "b", 65536, p.chain)
    text = p.token()
    for bad in (text[:-2], text[:5] + ("A" if text[5] != "A" else "B") + text[6:], "", "!!"):
        with pytest.raises(TokenError):
            parse_token(bad)
