"""GROW through the engine: the durable answer, RESIZED to origin clients (not snapshot
clients), snapshot sizes at IDENTIFY, and QUERY_CHANGES against a smaller snapshot."""

from __future__ import annotations

from csnap_client.protocol import ErrorCode
from csnap_client.protocol import messages as m
from csnap_client.protocol.session import ServerSession

from .test_holds import _create, _engine, control
from .test_service import CS, connect


def test_grow_answers_durably_and_tells_origin_clients():
    eng = _engine(store_bytes=4 << 20, origin_chunks=64)
    _create(eng, "old")
    connect(eng, 5, "origin")
    connect(eng, 6, "old")
    eng.store.dev.grow(64 << 20)
    eng.store.origin.grow(96 * CS)
    eng.handle_message(100, m.grow(1, store=True, origin=True), 0.0)
    assert not eng._now and eng._durable  # answered once it is durable
    eng.store.dev.grow(128 << 20)
    eng.handle_message(100, m.grow(2, store=True), 0.0)  # the moved bitmaps are not yet
    out = eng.flush(0.0)
    first = next(r for c, r in out if c == 100 and r["id"] == 1)
    assert first["op"] == "OK", first
    grown = {g["what"]: g for g in first["result"]["grown"]}
    assert grown["store"]["how"] == "bitmaps moved" and grown["origin"]["new"] == 96 * CS
    second = next(r for c, r in out if c == 100 and r["id"] == 2)
    assert second["op"] == "ERROR" and "still being committed" in second["message"]
    assert [r for c, r in out if c == 5] == [m.resized(96, 96 * CS)]
    assert not [r for c, r in out if c == 6]  # a snapshot keeps its size
    assert connect(eng, 7, "origin")["origin_bytes"] == 96 * CS
    assert connect(eng, 8, "old")["origin_bytes"] == 64 * CS
    eng.handle_message(8, m.query_map(3, [[64, 1]]), 0.0)
    (_, refused), = eng.flush(0.0)
    assert refused["op"] == "ERROR" and refused["code"] == ErrorCode.OUT_OF_RANGE


def test_grow_refusals_change_nothing():
    eng = _engine(store_bytes=4 << 20, origin_chunks=64)
    before = eng.store.sb.geometry
    reply = control(eng, m.grow(1, store=True, store_bytes=1 << 20))
    assert reply["op"] == "ERROR" and reply["code"] == ErrorCode.BAD_REQUEST
    assert "shrinking the store is refused" in reply["message"]
    eng.store.dev.grow(8 << 20)
    reply = control(eng, m.grow(2, store=True, origin=True, origin_bytes=32 * CS))
    assert reply["op"] == "ERROR" and "shrinking the origin is refused" in reply["message"]
    assert eng.store.sb.geometry == before  # all or nothing: the store did not grow
    reply = control(eng, m.grow(3, origin=True))
    assert reply["result"]["grown"] == [{"what": "origin", "old": 64 * CS, "new": 64 * CS,
                                         "how": "unchanged"}]


def test_changes_against_a_snapshot_taken_before_the_growth():
    eng = _engine(store_bytes=4 << 20, origin_chunks=64)
    _create(eng, "old")
    eng.store.origin.grow(80 * CS)
    assert control(eng, m.grow(1, origin=True))["op"] == "OK"
    connect(eng, 5, "origin")
    eng.handle_message(5, m.query_changes(2, "old", 60), 0.0)
    (_, first), = eng.flush(0.0)
    assert first["op"] == "CHANGES" and first["ranges"] == [] and first["next"] == 64
    eng.handle_message(5, m.query_changes(3, "old", 64), 0.0)
    (_, rest), = eng.flush(0.0)
    assert rest["ranges"] == [[64, 16]] and rest["next"] is None  # did not exist in "old"


def test_a_session_raises_its_range_limit_on_resized():
    s = ServerSession()
    s.limit = 64
    s.send([m.resized(96, 96 * CS)])
    assert s.limit == 96
