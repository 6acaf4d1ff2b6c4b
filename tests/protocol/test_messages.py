"""Message catalogue, builders and validation."""

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from csnap_client import protocol as P
from csnap_client.protocol import (
    CATALOGUE,
    CLIENT_REQUESTS,
    CONTROL_REPLIES,
    CONTROL_REQUESTS,
    MAX_CHUNKS_PER_REQUEST,
    MAX_RANGES,
    SERVER_MESSAGES,
    BadRequest,
    ErrorCode,
    Framer,
    Limits,
    Op,
    validate,
)

EXAMPLES = {
    Op.IDENTIFY: [P.identify(1, 2, "origin", auth={"cnonce": b"c" * 32, "mac": b"m" * 32}),
                  P.identify(1, 2**64 - 1, "origin"), P.identify(2, 7, "snap-a"),
                  P.identify(3, 7, 42, version=1)],
    Op.IDENTIFY_OK: [
        P.identify_ok(1, chunk_size=65536, origin_chunks=1000, origin_bytes=65536000,
                      store_uuid="0d6c1d1e-0000-4000-8000-000000000000", server_epoch=3,
                      lease_ms=30000),
        P.identify_ok(2, chunk_size=4096, origin_chunks=1, origin_bytes=4096,
                      store_uuid="u", server_epoch=0, lease_ms=1,
                      snapshot=P.snapshot_info("snap-a", 5, 1.7e9), read_only=True,
                      limits={"max_ranges": 1024}),
        P.identify_ok(3, chunk_size=4096, origin_chunks=8, origin_bytes=32768,
                      store_uuid="ab" * 16, server_epoch=1, lease_ms=10000,
                      devices=P.devices_info([[72, b"u" * 16], [4168, b"u" * 16]], 1 << 20,
                                             [[0, 4096], [28672, 4096]])),
    ],
    Op.QUERY_WRITE: [P.query_write(9, [[0, 1], [5, 3], [2**64 - 2, 2]])],
    Op.WRITE_OK: [P.write_ok(9)],
    Op.SNAPSHOT_WRITE_OK: [P.snapshot_write_ok(9, [[0, 1, 100], [5, 3, 7]]),
                           P.snapshot_write_ok(9, [])],
    Op.QUERY_SNAPSHOT_READ: [P.query_snapshot_read(10, [[100, 64]])],
    Op.SNAPSHOT_READ_OK: [P.snapshot_read_ok(10, [[100, 10]], [[110, 54, 9000]], 30000),
                          P.snapshot_read_ok(10, [], [], 0)],
    Op.FINISH_SNAPSHOT_READ: [P.finish_snapshot_read(11, 10),
                              P.finish_snapshot_read(12, 10, [[100, 5]])],
    Op.FINISH_OK: [P.finish_ok(11, True), P.finish_ok(12, False)],
    Op.DETACH: [P.detach(1)],
    Op.DETACH_OK: [P.detach_ok(1)],
    Op.PING: [P.ping(2**64 - 1)],
    Op.PONG: [P.pong(2**64 - 1)],
    Op.ACK_ADVICE: [P.ack_advice(5, 77)],
    Op.ACK_OK: [P.ack_ok(5)],
    Op.CHALLENGE: [P.challenge(b"\x01" * 32)],
    Op.LIST_VOLUMES: [P.list_volumes(3)],
    Op.VOLUMES: [P.volumes(3, [{"name": "s", "tag": 1, "created": 1.7e9, "squashed": False}]),
                 P.volumes(3, [])],
    Op.QUERY_MAP: [P.query_map(4, [[0, 64]])],
    Op.MAP_OK: [P.map_ok(4, [[0, 2, 100]]), P.map_ok(4, [])],
    Op.QUERY_CHANGES: [P.query_changes(4, None), P.query_changes(4, "origin", 7),
                       P.query_changes(4, "monday", 0, 100, 65536), P.query_changes(4, 3)],
    Op.CHANGES: [P.changes(4, [[0, 2], [9, 1]], 10), P.changes(4, [], None)],
    Op.VERIFY_DEVICES: [P.verify_devices(6, [0, 2**32 - 1]), P.verify_devices(6, [])],
    Op.VERIFY_OK: [P.verify_ok(6)],
    Op.VERIFY_AGAIN: [P.verify_again(6, [[0, 4096], [2**20, 512]], 1)],
    Op.ADVICE: [P.advice(77, P.AdviceKind.NEW_SNAPSHOT, "snap-b", 10000),
                P.advice(78, "DELETE_SNAPSHOT", "snap-a", 10000)],
    Op.ERROR: [P.reply_error(0, ErrorCode.SHUTTING_DOWN),
               P.reply_error(9, ErrorCode.OUT_OF_RANGE, "chunk 5000 >= 1000")],
    Op.CREATE_SNAPSHOT: [P.create_snapshot(1, "s"), P.create_snapshot(1, "s", 4, -3),
                         P.create_snapshot(2, "c", from_="s"), P.create_snapshot(3, "c", from_=4)],
    Op.DELETE_SNAPSHOT: [P.delete_snapshot(1, "s"), P.delete_snapshot(1, 4)],
    Op.LIST_SNAPSHOTS: [P.list_snapshots(1)],
    Op.STATUS: [P.status(1)],
    Op.SHUTDOWN: [P.shutdown(1)],
    Op.FORGET_CLIENT: [P.forget_client(1, 42)],
    Op.HOLD_SNAPSHOT: [P.hold_snapshot(1, "s"), P.hold_snapshot(1, 4)],
    Op.RELEASE_SNAPSHOT: [P.release_snapshot(1, "s")],
    Op.REVERT_SNAPSHOT: [P.revert_snapshot(1, "s"), P.revert_snapshot(2, 7)],
    Op.GROW: [P.grow(1, store=True), P.grow(2, origin=True, origin_bytes=1 << 30),
              P.grow(3, store=True, origin=True, store_bytes=1 << 40)],
    Op.RESIZED: [P.resized(32, 32 * 65536 - 5)],
    Op.SET_SNAPSHOT: [P.set_snapshot(1, "s", name="t"), P.set_snapshot(1, 4, priority=-128),
                      P.set_snapshot(1, "s", "t", 127)],
    Op.OK: [P.ok(1), P.ok(2, {"snapshots": [{"name": "s", "tag": 4}]})],
}


def test_every_op_has_an_example_and_builder():
    assert set(EXAMPLES) == set(Op) == set(CATALOGUE)


def test_direction_sets_partition_ops():
    sets = [CLIENT_REQUESTS, SERVER_MESSAGES, CONTROL_REQUESTS, CONTROL_REPLIES - {"ERROR"}]
    assert sum(len(s) for s in sets) == len(Op)
    assert set().union(*sets) == set(Op)
    for spec in CATALOGUE.values():
        for reply in spec.replies:
            assert reply in CATALOGUE
        if spec.op in CLIENT_REQUESTS | CONTROL_REQUESTS:
            assert "ERROR" in spec.replies


@pytest.mark.parametrize("op", list(Op))
def test_round_trip(op):
    for msg in EXAMPLES[op]:
        f = Framer(max_frame_size=P.MAX_SERVER_FRAME)
        f.feed(Framer.encode(msg))
        got = f.next_message()
        assert got == msg
        assert validate(got) is got
        assert validate(got, accept=frozenset({op.value})) is got
        assert got["op"] == op.value and type(got["id"]) is int


@pytest.mark.parametrize("accept,op", [
    (CLIENT_REQUESTS, "WRITE_OK"), (CLIENT_REQUESTS, "CREATE_SNAPSHOT"),
    (CONTROL_REQUESTS, "PING"), (SERVER_MESSAGES, "QUERY_WRITE"),
])
def test_misdirected_op_is_unknown(accept, op):
    msg = EXAMPLES[Op(op)][0]
    with pytest.raises(BadRequest) as ei:
        validate(msg, accept)
    assert ei.value.code == ErrorCode.UNKNOWN_OP
    assert ei.value.request_id == msg["id"]


def qw(ranges, id=5):
    return {"op": "QUERY_WRITE", "id": id, "ranges": ranges}


BAD = [
    (None, ErrorCode.BAD_REQUEST, 0),
    ([], ErrorCode.BAD_REQUEST, 0),
    ({}, ErrorCode.UNKNOWN_OP, 0),
    ({"op": "NOPE", "id": 3}, ErrorCode.UNKNOWN_OP, 3),
    ({"op": 5, "id": 3}, ErrorCode.UNKNOWN_OP, 3),
    ({"op": "PING"}, ErrorCode.BAD_REQUEST, 0),
    ({"op": "PING", "id": 0}, ErrorCode.BAD_REQUEST, 0),
    ({"op": "PING", "id": -1}, ErrorCode.BAD_REQUEST, 0),
    ({"op": "PING", "id": 2**64}, ErrorCode.BAD_REQUEST, 0),
    ({"op": "PING", "id": True}, ErrorCode.BAD_REQUEST, 0),
    ({"op": "PING", "id": 1.0}, ErrorCode.BAD_REQUEST, 0),
    ({"op": "PING", "id": 4, "extra": 1}, ErrorCode.BAD_REQUEST, 4),
    ({"op": "PING", "id": 4, 7: 1}, ErrorCode.BAD_REQUEST, 4),
    ({"op": "QUERY_WRITE", "id": 5}, ErrorCode.BAD_REQUEST, 5),
    (qw("0-5"), ErrorCode.BAD_REQUEST, 5),
    (qw([]), ErrorCode.BAD_REQUEST, 5),
    (qw([[1]]), ErrorCode.BAD_REQUEST, 5),
    (qw([[1, 2, 3]]), ErrorCode.BAD_REQUEST, 5),
    (qw([(1, 2)]), ErrorCode.BAD_REQUEST, 5),
    (qw([[1, 0]]), ErrorCode.BAD_REQUEST, 5),
    (qw([[-1, 2]]), ErrorCode.BAD_REQUEST, 5),
    (qw([[1, -2]]), ErrorCode.BAD_REQUEST, 5),
    (qw([[1.0, 2]]), ErrorCode.BAD_REQUEST, 5),
    (qw([[False, 2]]), ErrorCode.BAD_REQUEST, 5),
    (qw([[5, 2], [1, 1]]), ErrorCode.BAD_REQUEST, 5),  # unsorted
    (qw([[5, 2], [6, 1]]), ErrorCode.BAD_REQUEST, 5),  # overlapping
    (qw([[2**64 - 1, 2]]), ErrorCode.BAD_REQUEST, 5),  # past 2**64
    (qw([[i * 2, 1] for i in range(MAX_RANGES + 1)]), ErrorCode.TOO_MANY_RANGES, 5),
    (qw([[0, MAX_CHUNKS_PER_REQUEST + 1]]), ErrorCode.LIMIT_EXCEEDED, 5),
    (qw([[0, MAX_CHUNKS_PER_REQUEST], [MAX_CHUNKS_PER_REQUEST, 1]]),
     ErrorCode.LIMIT_EXCEEDED, 5),
    ({"op": "IDENTIFY", "id": 1, "client_id": 1, "volume": "", "version": 1},
     ErrorCode.BAD_REQUEST, 1),
    ({"op": "IDENTIFY", "id": 1, "client_id": 1, "volume": 2**32, "version": 1},
     ErrorCode.BAD_REQUEST, 1),
    ({"op": "IDENTIFY", "id": 1, "client_id": 1, "volume": None, "version": 1},
     ErrorCode.BAD_REQUEST, 1),
    ({"op": "IDENTIFY", "id": 1, "client_id": -1, "volume": "origin", "version": 1},
     ErrorCode.BAD_REQUEST, 1),
    (P.create_snapshot(1, "origin"), ErrorCode.BAD_REQUEST, 1),
    (P.create_snapshot(1, "x" * 256), ErrorCode.BAD_REQUEST, 1),
    (P.create_snapshot(1, "s", priority=200), ErrorCode.BAD_REQUEST, 1),
    (P.advice(1, "RENAME", "s", 5), ErrorCode.BAD_REQUEST, 0),
    (P.finish_ok(3, 1), ErrorCode.BAD_REQUEST, 3),
    (P.snapshot_write_ok(3, [[1, 1, -1]]), ErrorCode.BAD_REQUEST, 3),
    (P.snapshot_write_ok(3, [[1, 2, 2**64 - 1]]), ErrorCode.BAD_REQUEST, 3),
    ({**P.identify_ok(2, chunk_size=1, origin_chunks=1, origin_bytes=1, store_uuid="u",
                      server_epoch=0, lease_ms=0), "snapshot": {"name": "s"}},
     ErrorCode.BAD_REQUEST, 2),
    ({"op": "OK", "id": 1}, ErrorCode.BAD_REQUEST, 1),
]


@pytest.mark.parametrize("msg,code,rid", BAD, ids=range(len(BAD)))
def test_bad_messages(msg, code, rid):
    with pytest.raises(BadRequest) as ei:
        validate(msg)
    assert ei.value.code == code
    assert ei.value.request_id == rid
    assert ei.value.reason


def test_configurable_limits():
    msg = qw([[0, 10], [20, 10]])
    validate(msg)
    with pytest.raises(BadRequest) as ei:
        validate(msg, limits=Limits(max_ranges=1))
    assert ei.value.code == ErrorCode.TOO_MANY_RANGES
    with pytest.raises(BadRequest) as ei:
        validate(msg, limits=Limits(max_chunks=19))
    assert ei.value.code == ErrorCode.LIMIT_EXCEEDED


def test_limits_at_the_edge_pass():
    validate(qw([[i * 2, 1] for i in range(MAX_RANGES)]))
    validate(qw([[0, MAX_CHUNKS_PER_REQUEST]]))


ops = st.sampled_from([o.value for o in Op]) | st.text(max_size=6)
scalars = (st.none() | st.booleans() | st.integers(-(2**65), 2**65) | st.floats()
           | st.text(max_size=8) | st.binary(max_size=4))
values = st.recursive(scalars, lambda k: st.lists(k, max_size=4)
                      | st.dictionaries(st.text(max_size=6), k, max_size=3), max_leaves=12)
field_names = st.sampled_from(sorted({f for s in CATALOGUE.values() for f in s.fields}))
random_msgs = st.builds(
    lambda op, fields: {**fields, "op": op},
    ops, st.dictionaries(field_names | st.text(max_size=4), values, max_size=8))


@settings(max_examples=1500, deadline=None)
@given(random_msgs | values)
def test_fuzz_validate(msg):
    """Random input either validates or raises BadRequest, never anything else."""
    try:
        assert validate(msg) is msg
    except BadRequest as exc:
        assert exc.code in (ErrorCode.BAD_REQUEST, ErrorCode.UNKNOWN_OP,
                            ErrorCode.TOO_MANY_RANGES, ErrorCode.LIMIT_EXCEEDED)
        assert isinstance(exc.request_id, int)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([o for o in Op]), st.data())
def test_fuzz_mutated_examples(op, data):
    """Valid messages with one field replaced by a random value: pass or BadRequest."""
    msg = dict(data.draw(st.sampled_from(EXAMPLES[op])))
    key = data.draw(st.sampled_from(sorted(msg)))
    msg[key] = data.draw(values)
    try:
        validate(msg)
    except BadRequest:
        pass


def test_validate_speed_benchmark(capsys):
    """Micro benchmark (printed, not asserted): validating a 1-range QUERY_WRITE."""
    msg = P.query_write(5, [[1000, 8]])
    n = 50_000
    t0 = time.perf_counter()
    for _ in range(n):
        validate(msg, CLIENT_REQUESTS)
    dt = time.perf_counter() - t0
    with capsys.disabled():
        print(f"\n[bench] validate(QUERY_WRITE, 1 range): {dt / n * 1e6:.2f} us")


def test_worst_case_replies_fit_server_frame():
    """A reply to a maximal request fits MAX_SERVER_FRAME (docs section 2)."""
    big = 2**63
    n = MAX_CHUNKS_PER_REQUEST
    store = [[big + 2 * i, 1, big + 2 * i] for i in range(n)]
    for msg in (P.snapshot_read_ok(2**64 - 1, [], store, 2**32 - 1),
                P.snapshot_read_ok(2**64 - 1, [[big + 2 * i, 1] for i in range(n)], [], 1),
                P.snapshot_write_ok(2**64 - 1, store)):
        validate(msg)
        Framer.encode(msg, P.MAX_SERVER_FRAME)  # raises LocalProtocolError if too big
    # and a maximal request fits the 1 MiB client frame
    req = P.query_write(2**64 - 1, [[big + 2 * i * 64, 64] for i in range(MAX_RANGES)])
    validate(req)
    Framer.encode(req)
