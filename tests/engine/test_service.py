"""The server core without sockets: requests in, replies out, one commit per batch."""

from __future__ import annotations

import pytest

from csnap_client.protocol import ErrorCode
from csnap_client.protocol import messages as m
from csnapd.engine import report
from csnapd.engine.service import Engine
from csnapd.store import create
from csnapd.store.device import MemoryDevice
from csnapd.store.store import Store

CS = 4096


@pytest.fixture
def engine():
    store_dev, origin = MemoryDevice(16 << 20), MemoryDevice(1024 * CS)
    create.create(store_dev, origin.size, chunk_size=CS, block_size=512,
                  journal_bytes=256 * 512)
    eng = Engine(Store.open(store_dev, origin), lease=1.0, lock_lease=5.0)
    eng.open_conn(100, control=True)
    return eng


def connect(eng: Engine, conn: int, volume: str | int = "origin") -> dict:
    eng.open_conn(conn, peer=f"test-{conn}")
    eng.handle_message(conn, m.identify(1, 1000 + conn, volume), 0.0)
    (cid, reply), = eng.flush(0.0)
    assert cid == conn and reply["op"] == "IDENTIFY_OK", reply
    return reply


def create_snapshot(eng: Engine, name: str, origin_conns: list[int]) -> None:
    eng.handle_message(100, m.create_snapshot(7, name), 0.0)
    out = eng.flush(0.0)
    advices = [(c, msg) for c, msg in out if msg["op"] == "ADVICE"]
    assert sorted(c for c, _ in advices) == sorted(origin_conns)
    for conn, adv in advices:
        eng.handle_message(conn, m.ack_advice(50, adv["advice"]), 0.0)
    out = eng.flush(0.0)
    assert (100, "OK") in [(c, msg["op"]) for c, msg in out], out


def test_group_commit_one_journal_transaction_per_batch(engine):
    for conn in (1, 2, 3):
        connect(engine, conn)
    create_snapshot(engine, "s", [1, 2, 3])
    commits = engine.store.stats["commits"]
    for conn in (1, 2, 3):
        engine.handle_message(conn, m.query_write(9, [[conn * 10, 5]]), 0.0)
    out = engine.flush(0.0)
    assert sorted((c, msg["op"]) for c, msg in out) == [(1, "WRITE_OK"), (2, "WRITE_OK"),
                                                        (3, "WRITE_OK")]
    assert engine.store.stats["commits"] == commits + 1


def test_replies_wait_for_the_commit(engine, monkeypatch):
    connect(engine, 1)
    create_snapshot(engine, "s", [1])
    engine.handle_message(1, m.query_write(9, [[0, 1]]), 0.0)
    calls = []
    monkeypatch.setattr(engine.store, "commit", lambda: calls.append("commit"))
    out = engine.flush(0.0)
    assert calls == ["commit"] and [msg["op"] for _, msg in out] == ["WRITE_OK"]


def test_failed_commit_turns_done_into_errors(engine, monkeypatch):
    connect(engine, 1)
    create_snapshot(engine, "s", [1])
    engine.handle_message(1, m.query_write(9, [[0, 1]]), 0.0)

    def broken() -> None:
        raise OSError(5, "Input/output error")
    monkeypatch.setattr(engine.store, "commit", broken)
    (conn, reply), = engine.flush(0.0)
    assert reply["op"] == "ERROR" and reply["id"] == 9 and "not done" in reply["message"]


def write_blocked_by_reader(engine: Engine) -> None:
    """Origin conn 1 wants chunk 4 while snapshot conn 2 holds read lock 5 on 0..7."""
    connect(engine, 1)
    create_snapshot(engine, "s", [1])
    connect(engine, 2, "s")
    engine.handle_message(2, m.query_snapshot_read(5, [[0, 8]]), 0.0)
    (_, read), = engine.flush(0.0)
    assert read["origin"] == [[0, 8]]
    engine.handle_message(1, m.query_write(6, [[4, 1]]), 0.0)
    assert engine.flush(0.0) == []


def test_origin_write_waits_for_read_lock_and_release_wakes_it(engine):
    write_blocked_by_reader(engine)
    engine.handle_message(2, m.finish_snapshot_read(7, 5), 0.0)
    out = sorted((c, msg["op"]) for c, msg in engine.flush(0.0))
    assert out == [(1, "WRITE_OK"), (2, "FINISH_OK")]


def test_disconnect_frees_locks(engine):
    write_blocked_by_reader(engine)
    engine.close_conn(2, 0.1)
    assert [msg["op"] for _, msg in engine.flush(0.1)] == ["WRITE_OK"]


def test_lease_expiry_breaks_lock_and_release_says_invalid(engine):
    write_blocked_by_reader(engine)
    engine.tick(10.0)
    assert [msg["op"] for _, msg in engine.flush(10.0)] == ["WRITE_OK"]
    engine.handle_message(2, m.finish_snapshot_read(7, 5), 10.0)
    (_, fin), = engine.flush(10.0)
    assert fin["valid"] is False


def test_new_snapshot_holds_origin_writes_until_acknowledged(engine):
    connect(engine, 1)
    connect(engine, 2)
    engine.handle_message(100, m.create_snapshot(7, "x"), 0.0)
    advices = [(c, msg) for c, msg in engine.flush(0.0) if msg["op"] == "ADVICE"]
    engine.handle_message(1, m.query_write(9, [[0, 1]]), 0.0)
    assert [msg["op"] for _, msg in engine.flush(0.0)] == []  # held
    for conn, adv in advices:
        engine.handle_message(conn, m.ack_advice(50, adv["advice"]), 0.0)
    ops = sorted((c, msg["op"]) for c, msg in engine.flush(0.0))
    assert (100, "OK") in ops and (1, "WRITE_OK") in ops
    assert engine.store.stats["copyouts"] == 1  # the held write copied out for "x"


def test_unanswered_advice_disconnects_after_twice_the_lease(engine):
    connect(engine, 1)
    engine.handle_message(100, m.create_snapshot(7, "x"), 0.0)
    engine.flush(0.0)
    engine.tick(1.5)
    assert engine.flush(1.5) == []
    engine.tick(2.1)
    assert 1 in engine.closing
    assert [(c, msg["op"]) for c, msg in engine.flush(2.1)] == [(100, "OK")]


def test_bad_requests(engine):
    engine.open_conn(1)
    engine.handle_message(1, m.query_write(3, [[0, 1]]), 0.0)
    engine.handle_message(1, m.identify(4, 1, "nope"), 0.0)
    out = engine.flush(0.0)
    connect(engine, 2)
    engine.handle_message(2, m.query_write(5, [[10**6, 1]]), 0.0)
    codes = {msg["id"]: msg["code"] for _, msg in out + engine.flush(0.0)}
    assert codes == {3: ErrorCode.NOT_IDENTIFIED, 4: ErrorCode.UNKNOWN_SNAPSHOT,
                     5: ErrorCode.OUT_OF_RANGE}


def test_unprivileged_control_connection(engine):
    engine.open_conn(101, control=True, privileged=False)
    engine.handle_message(101, m.shutdown(1), 0.0)
    engine.handle_message(101, m.list_snapshots(2), 0.0)
    out = {msg["id"]: msg for _, msg in engine.flush(0.0)}
    assert out[1]["code"] == ErrorCode.PERMISSION_DENIED and out[2]["op"] == "OK"
    assert not engine.shutdown_requested


def test_usage_of_a_large_store_is_counted_in_the_background(engine, monkeypatch):
    connect(engine, 1)
    create_snapshot(engine, "s", [1])
    engine.handle_message(1, m.query_write(9, [[0, 500]]), 0.0)
    engine.flush(0.0)
    monkeypatch.setattr(report, "SYNC_USAGE_LIMIT", 10)
    first = engine.status()
    assert first["snapshots"][0]["exclusive"] == 0 and first["usage_counted"] == 0.0
    steps = 0
    while engine.background(budget_leaves=1):
        steps += 1
    assert steps >= 2  # really incremental
    later = engine.status()
    assert later["snapshots"][0]["exclusive"] == 500 and later["usage_counted"] == 1.0
    # from now on the counts follow every change, with no walk
    engine.handle_message(1, m.query_write(10, [[600, 20]]), 0.0)
    engine.flush(0.0)
    assert not engine.background(budget_leaves=1)
    assert engine.status()["snapshots"][0]["exclusive"] == 520


def test_read_lock_limits(engine, monkeypatch):
    connect(engine, 1)
    create_snapshot(engine, "s", [1])
    connect(engine, 2, "s")
    monkeypatch.setattr(Engine, "MAX_READ_LOCKS", 3)
    for rid in range(10, 14):
        engine.handle_message(2, m.query_snapshot_read(rid, [[rid, 1]]), 0.0)
    out = {msg["id"]: msg for _, msg in engine.flush(0.0)}
    assert [out[r]["op"] for r in range(10, 13)] == ["SNAPSHOT_READ_OK"] * 3
    assert out[13]["code"] == ErrorCode.LIMIT_EXCEEDED
    monkeypatch.setattr(Engine, "MAX_TOTAL_LOCKED", 5)
    engine.handle_message(2, m.finish_snapshot_read(20, 10), 0.0)
    engine.handle_message(2, m.query_snapshot_read(21, [[100, 8]]), 0.0)
    out = {msg["id"]: msg for _, msg in engine.flush(0.0)}
    assert out[21]["code"] == ErrorCode.BUSY
