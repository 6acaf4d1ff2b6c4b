"""Holds, renames and priority changes through the control socket, as the engine sees them."""

from __future__ import annotations

from csnap_client.protocol import ErrorCode
from csnap_client.protocol import messages as m
from csnapd.engine.service import Engine
from csnapd.store import create
from csnapd.store.device import MemoryDevice
from csnapd.store.store import Store

from .test_service import CS, connect


def _engine(store_bytes: int = 16 << 20, origin_chunks: int = 1024) -> Engine:
    store_dev, origin = MemoryDevice(store_bytes), MemoryDevice(origin_chunks * CS)
    create.create(store_dev, origin.size, chunk_size=CS, block_size=512,
                  journal_bytes=256 * 512)
    eng = Engine(Store.open(store_dev, origin), lease=1.0, lock_lease=5.0)
    eng.open_conn(100, control=True)
    return eng


def control(eng: Engine, msg: dict) -> dict:
    """Send one control request; return its (only) reply to the control connection."""
    eng.handle_message(100, msg, 0.0)
    replies = [r for c, r in eng.flush(0.0) if c == 100]
    assert len(replies) == 1, replies
    return replies[0]


def test_a_held_snapshot_refuses_delete_until_released():
    eng = _engine()
    _create(eng, "keep")
    reply = control(eng, m.hold_snapshot(1, "keep"))
    assert reply["op"] == "OK" and reply["result"]["holds"] == 1
    reply = control(eng, m.delete_snapshot(2, "keep"))
    assert reply["op"] == "ERROR" and reply["code"] == ErrorCode.SNAPSHOT_HELD
    assert "csnapctl release keep" in reply["message"]
    listed = control(eng, m.list_snapshots(3))["result"]
    assert [(s["name"], s["holds"]) for s in listed] == [("keep", 1)]
    assert control(eng, m.release_snapshot(4, "keep"))["result"]["holds"] == 0
    reply = control(eng, m.release_snapshot(5, "keep"))
    assert reply["op"] == "ERROR" and "not held" in reply["message"]
    assert control(eng, m.delete_snapshot(6, "keep"))["op"] == "OK"


def test_rename_and_priority_keep_a_connected_snapshot_client_working():
    eng = _engine()
    _create(eng, "old")
    tag = eng.store.snaps.find("old").tag
    connect(eng, 5, "old")
    reply = control(eng, m.set_snapshot(1, "old", name="new", priority=-7))
    assert reply["op"] == "OK"
    assert (reply["result"]["name"], reply["result"]["tag"], reply["result"]["priority"]) \
        == ("new", tag, -7)
    eng.handle_message(5, m.query_map(2, [[0, 4]]), 0.0)
    (conn, answer), = eng.flush(0.0)
    assert conn == 5 and answer["op"] == "MAP_OK", answer
    reply = control(eng, m.set_snapshot(3, "old", name="x"))
    assert reply["op"] == "ERROR" and reply["code"] == ErrorCode.UNKNOWN_SNAPSHOT
    _create(eng, "other")
    reply = control(eng, m.set_snapshot(4, "new", name="other"))
    assert reply["op"] == "ERROR" and reply["code"] == ErrorCode.SNAPSHOT_EXISTS


def test_unprivileged_control_may_not_hold_or_rename():
    eng = _engine()
    _create(eng, "s")
    eng.open_conn(101, control=True, privileged=False)
    for msg in (m.hold_snapshot(1, "s"), m.release_snapshot(2, "s"),
                m.set_snapshot(3, "s", name="t")):
        eng.handle_message(101, msg, 0.0)
        (_, reply), = eng.flush(0.0)
        assert reply["code"] == ErrorCode.PERMISSION_DENIED


def _fill(eng: Engine, conn: int) -> dict:
    """Origin writes over fresh chunks until one is answered with an error; return it."""
    for chunk in range(eng.store.origin_chunks):
        eng.handle_message(conn, m.query_write(10 + chunk, [[chunk, 1]]), 0.0)
        for _, reply in eng.flush(0.0):
            if reply["op"] == "ERROR":
                return reply
        if eng.counters.get("squashed"):
            return {}
    raise AssertionError("the store never filled")


def test_store_full_squashes_the_unheld_snapshot_even_at_a_higher_priority():
    eng = _engine(store_bytes=(4 + 16 + 40) * CS, origin_chunks=96)
    connect(eng, 1)
    eng.handle_message(100, m.create_snapshot(7, "low", priority=-100), 0.0)
    _ack_all(eng)
    eng.handle_message(100, m.create_snapshot(8, "high", priority=100), 0.0)
    _ack_all(eng)
    control(eng, m.hold_snapshot(9, "low"))
    assert _fill(eng, 1) == {}
    entries = {e.name: e for e in eng.store.snaps.visible()}
    assert entries["high"].squashed and not entries["low"].squashed


def test_store_full_with_only_held_snapshots_refuses_the_write_and_says_why():
    eng = _engine(store_bytes=(4 + 16 + 40) * CS, origin_chunks=96)
    connect(eng, 1)
    eng.handle_message(100, m.create_snapshot(7, "only"), 0.0)
    _ack_all(eng)
    control(eng, m.hold_snapshot(9, "only"))
    reply = _fill(eng, 1)
    assert reply["code"] == ErrorCode.STORE_FULL
    assert "held snapshots are never squashed" in reply["message"]
    assert not eng.store.snaps.find("only").squashed


def _create(eng: Engine, name: str) -> None:
    eng.handle_message(100, m.create_snapshot(7, name), 0.0)
    _ack_all(eng)


def _ack_all(eng: Engine) -> None:
    """Acknowledge every advice sent and let the create finish."""
    for _ in range(3):
        out = eng.flush(0.0)
        for conn, msg in out:
            if msg["op"] == "ADVICE":
                eng.handle_message(conn, m.ack_advice(50, msg["advice"]), 0.0)
        if any(c == 100 for c, _ in out):
            return


def test_store_full_never_squashes_the_parent_of_a_clone_being_filled():
    """The parent (priority -100) would be the victim, but a clone is being filled from it:
    the clone is squashed instead (which ends its fill), never the copies it relies on."""
    eng = _engine(store_bytes=(4 + 16 + 40) * CS, origin_chunks=96)
    connect(eng, 1)
    eng.handle_message(100, m.create_snapshot(7, "parent", priority=-100), 0.0)
    _ack_all(eng)
    reply = control(eng, {**m.create_snapshot(8, "clone", priority=100), "from": "parent"})
    assert reply["op"] == "OK" and reply["result"]["parent"] == "parent", reply
    assert eng.store.cloning
    assert _fill(eng, 1) == {}
    entries = {e.name: e for e in eng.store.snaps.visible()}
    assert entries["clone"].squashed and not entries["parent"].squashed
    assert not eng.store.cloning
