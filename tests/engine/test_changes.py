"""QUERY_CHANGES in the engine: one handler, bounded replies, durable like MAP_OK."""

from __future__ import annotations

from csnap_client.protocol import ErrorCode
from csnap_client.protocol import messages as m

from .test_service import connect, create_snapshot, engine  # noqa: F401


def ask(eng, conn, msg):
    eng.handle_message(conn, msg, 0.0)
    out = eng.take()
    assert not out.now or out.now[0][1]["op"] == "ERROR"
    (cid, reply), = out.now + out.durable
    assert cid == conn
    return reply, bool(out.durable)


def test_changes_between_snapshots_and_the_origin(engine):  # noqa: F811
    connect(engine, 1)
    create_snapshot(engine, "a", [1])
    engine.handle_message(1, m.query_write(2, [[10, 5]]), 0.0)
    engine.flush(0.0)
    create_snapshot(engine, "b", [1])
    engine.handle_message(1, m.query_write(3, [[12, 10]]), 0.0)
    engine.flush(0.0)
    connect(engine, 2, "b")
    reply, durable = ask(engine, 2, m.query_changes(5, "a"))
    assert durable and reply == m.changes(5, [[10, 5]], None)
    reply, _ = ask(engine, 2, m.query_changes(6, "origin"))
    assert reply["ranges"] == [[12, 10]]
    reply, _ = ask(engine, 1, m.query_changes(7, "a", 11, 2))
    assert reply["ranges"] == [[11, 2]] and reply["next"] is None
    reply, _ = ask(engine, 2, m.query_changes(8, None, 1000, None, 10))
    assert reply["ranges"] == [[1000, 10]] and reply["next"] == 1010
    reply, _ = ask(engine, 2, m.query_changes(9, None, 1020, None, 10))
    assert reply["ranges"] == [[1020, 4]] and reply["next"] is None
    reply, _ = ask(engine, 2, m.query_changes(10, "b"))
    assert reply["ranges"] == []


def test_changes_errors(engine):  # noqa: F811
    connect(engine, 1)
    create_snapshot(engine, "a", [1])
    connect(engine, 2, "a")
    reply, _ = ask(engine, 2, m.query_changes(5, "nope"))
    assert reply["code"] == ErrorCode.UNKNOWN_SNAPSHOT
    reply, _ = ask(engine, 2, m.query_changes(6, "origin", 1025))
    assert reply["code"] == ErrorCode.OUT_OF_RANGE
    reply, _ = ask(engine, 2, m.query_changes(7, "origin", 0, None, 0))
    assert reply["code"] == ErrorCode.BAD_REQUEST
