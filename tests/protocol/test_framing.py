"""Framer: splitting, limits, error behaviour, fuzz, throughput."""

import struct
import time

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from csnap_client.protocol import (
    NEED_DATA,
    ErrorCode,
    Framer,
    FramingError,
    LocalProtocolError,
    encode,
    encode_many,
    ping,
    query_write,
)


def frame_of(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def test_single_frame_and_need_data():
    f = Framer()
    assert f.next_message() is NEED_DATA
    f.feed(encode(ping(1)))
    assert f.next_message() == ping(1)
    assert f.next_message() is NEED_DATA
    assert f.buffered == 0


def test_encode_is_static_and_on_class():
    assert Framer.encode(ping(3)) == encode(ping(3)) == Framer().encode(ping(3))
    data = encode(ping(3))
    assert data[:4] == struct.pack(">I", len(data) - 4)


def test_split_at_every_byte_boundary():
    msgs = [query_write(i, [[i * 10, i + 1]]) for i in range(1, 6)]
    data = encode_many(msgs)
    for cut in range(len(data) + 1):
        f = Framer()
        f.feed(data[:cut])
        got = list(f.messages())
        f.feed(data[cut:])
        got += list(f.messages())
        assert got == msgs, cut


def test_one_byte_at_a_time():
    msgs = [ping(i) for i in range(1, 20)]
    f = Framer()
    got = []
    for b in encode_many(msgs):
        got += f.feed_many(bytes([b]))
    assert got == msgs


def test_many_frames_in_one_feed():
    msgs = [query_write(i, [[i, 1]]) for i in range(1, 5001)]
    f = Framer()
    assert f.feed_many(encode_many(msgs)) == msgs
    f.feed(encode_many(msgs))
    assert list(f.messages()) == msgs
    assert f.buffered == 0


def test_compaction_keeps_partial_frame():
    big = {"op": "PING", "id": 1, "pad": "x" * 50_000}
    data = encode_many([big, big, big])
    f = Framer()
    got = f.feed_many(data[:-10])
    assert len(got) == 2
    assert got + f.feed_many(data[-10:]) == [big] * 3


def test_oversize_rejected_before_body():
    f = Framer(max_frame_size=1000)
    f.feed(struct.pack(">I", 1001))  # header only: no body has arrived
    with pytest.raises(FramingError) as ei:
        f.next_message()
    assert ei.value.code == ErrorCode.LIMIT_EXCEEDED
    # poisoned: every later call fails the same way
    with pytest.raises(FramingError):
        f.feed(b"more")
    with pytest.raises(FramingError):
        f.next_message()


def test_oversize_rejected_in_feed_many():
    f = Framer(max_frame_size=16)
    with pytest.raises(FramingError):
        f.feed_many(encode(ping(1)) + struct.pack(">I", 17))


def test_default_max_is_one_mib():
    f = Framer()
    assert f.max_frame_size == 1 << 20
    f.feed(struct.pack(">I", (1 << 20) + 1))
    with pytest.raises(FramingError):
        f.next_message()


@pytest.mark.parametrize("payload", [
    b"",  # zero length
    b"\xc1",  # never-used msgpack byte
    msgpack.packb([1, 2, 3]),  # not a map
    msgpack.packb("op"),
    msgpack.packb({"op": "PING"}) + b"\x00",  # trailing bytes
    msgpack.packb({1: 2}),  # non-str key
    msgpack.packb({"op": b"\xff"}, use_bin_type=False),  # invalid utf-8 str
    msgpack.packb({"t": msgpack.Timestamp(1, 0)}),  # ext types are not allowed
    b"\x81\xa2op",  # truncated inside the payload
])
def test_bad_payloads(payload):
    f = Framer()
    f.feed(frame_of(payload))
    with pytest.raises(FramingError):
        f.next_message()


def test_encode_errors_are_local():
    with pytest.raises(LocalProtocolError):
        encode([1, 2])  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        encode({"op": "PING", "id": object()})
    with pytest.raises(LocalProtocolError):
        encode({"op": "PING", "pad": "x" * 100}, max_frame_size=50)
    with pytest.raises(LocalProtocolError):
        Framer(max_frame_size=0)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.integers(1, 50))
def test_fuzz_random_bytes(data, step):
    """Random input either parses or raises FramingError, never anything else."""
    for mode in ("next", "many"):
        f = Framer(max_frame_size=4096)
        try:
            for i in range(0, len(data), step):
                if mode == "many":
                    msgs = f.feed_many(data[i:i + step])
                else:
                    f.feed(data[i:i + step])
                    msgs = list(f.messages())
                assert all(type(m) is dict for m in msgs)
        except FramingError:
            pass


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text()
    | st.binary(),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=5), kids,
                                                               max_size=4),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=8), msgpack_values, max_size=6), st.binary(max_size=8))
def test_fuzz_valid_frames_then_garbage(msg, garbage):
    """Valid frames round-trip exactly; garbage after them never escapes as another error."""
    f = Framer()
    data = encode(msg)
    got = f.feed_many(data)
    assert len(got) == 1
    assert msgpack.packb(got[0]) == msgpack.packb(msg)  # NaN-safe equality
    try:
        f.feed_many(garbage)
    except FramingError:
        pass


def test_decode_throughput_benchmark(capsys):
    """Micro benchmark (printed, not asserted): small frames decoded per second."""
    msgs = [query_write(i, [[i * 8, 8]]) for i in range(1, 1001)]
    block = encode_many(msgs)
    chunk = 64 * 1024
    rounds = 100
    f = Framer()
    n = 0
    t0 = time.perf_counter()
    for _ in range(rounds):
        for i in range(0, len(block), chunk):
            n += len(f.feed_many(block[i:i + chunk]))
    dt = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(rounds):
        f.feed(block)
        for _m in f.messages():
            pass
    dt2 = time.perf_counter() - t0
    assert n == rounds * len(msgs)
    with capsys.disabled():
        print(f"\n[bench] Framer.feed_many: {n / dt:,.0f} frames/s; "
              f"messages(): {n / dt2:,.0f} frames/s")
