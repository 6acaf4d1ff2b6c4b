"""Store full: squash snapshots (default) or fail the origin write (--on-full=fail)."""

from __future__ import annotations

import socket
import time

from csnap_client.protocol import ErrorCode
from csnap_client.protocol import messages as m

from .conftest import RawClient, make_server, run_tool
from .test_server import _create

SMALL = {"store_size": 1536 << 10, "origin_size": 4 << 20}


def _fill(origin, chunks: range) -> list[dict]:
    return [origin.call(m.query_write(0, [[c, 1]])) for c in chunks]


def _status(handle) -> dict:
    return handle.ctl(m.status(1))["result"]


def test_full_store_squashes_the_snapshot_that_needs_the_copy(tmp_path):
    handle = make_server(tmp_path, block_size="512", **SMALL)
    handle.start("--lease", "0.2")
    origin = handle.client("origin")
    free0 = _status(handle)["store"]["free_chunks"]
    _create(handle, origin, "old")
    replies = _fill(origin, range(0, 1024))
    assert all(r["op"] == "WRITE_OK" for r in replies), [r for r in replies if r["op"] != "WRITE_OK"][:1]
    snaps = {s["name"]: s for s in handle.ctl(m.list_snapshots(1))["result"]}
    assert snaps["old"]["squashed"] is True
    assert "squashing snapshot old" in handle.log_text()
    refused = handle.client.__func__  # noqa: F841 - identify below must fail

    c = RawClient(socket.create_connection(("127.0.0.1", handle.port)))
    reply = c.call(m.identify(0, 555, "old"))
    assert reply["op"] == "ERROR" and reply["code"] == ErrorCode.SNAPSHOT_SQUASHED
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        st = _status(handle)["store"]
        if st["free_chunks"] >= free0 - 2 and not st["deleting"]["active"]:
            break
        time.sleep(0.2)
    assert st["free_chunks"] >= free0 - 2, st
    assert st["exceptions"] == 0
    # the tombstone goes away when deleted
    assert handle.ctl(m.delete_snapshot(1, "old"))["op"] == "OK"
    assert handle.ctl(m.list_snapshots(1))["result"] == []
    assert handle.stop() == 0
    check = run_tool("csnap-check", "--store", str(handle.store), check=False)
    assert check.returncode == 0, check.stdout


def test_full_store_with_on_full_fail_rejects_the_write(tmp_path):
    handle = make_server(tmp_path, block_size="512", **SMALL)
    handle.start("--on-full", "fail")
    origin = handle.client("origin")
    _create(handle, origin, "keep")
    replies = _fill(origin, range(0, 1024))
    ok = [r for r in replies if r["op"] == "WRITE_OK"]
    failed = [r for r in replies if r["op"] == "ERROR"]
    assert ok and failed
    assert all(r["code"] == ErrorCode.STORE_FULL and "full" in r["message"] for r in failed)
    # the snapshot is intact and still readable, and the server still serves
    snap = handle.client("keep")
    read = snap.call(m.query_snapshot_read(0, [[0, 4]]))
    assert read["op"] == "SNAPSHOT_READ_OK" and len(read["store"]) >= 1
    assert origin.call(m.ping(0))["op"] == "PONG"
    # rewriting an already copied chunk needs no space and still works
    assert origin.call(m.query_write(0, [[0, 1]]))["op"] == "WRITE_OK"
    snap.close()
    assert handle.stop() == 0
    check = run_tool("csnap-check", "--store", str(handle.store), check=False)
    assert check.returncode == 0, check.stdout


def test_squash_takes_only_as_many_snapshots_as_the_space_needs(tmp_path):
    """Squashing the lowest priority snapshot frees enough: the other one must survive."""
    handle = make_server(tmp_path, block_size="512", **SMALL)
    handle.start("--lease", "0.2")
    origin = handle.client("origin")
    free0 = _status(handle)["store"]["free_chunks"]
    ctl = handle.control_client()
    for name, prio in (("low", -5), ("high", 10)):
        rid = ctl.send(m.create_snapshot(0, name, priority=prio))
        advice = origin.recv()
        assert origin.call(m.ack_advice(0, advice["advice"]))["op"] == "ACK_OK"
        assert ctl.wait_for(rid)["op"] == "OK"
        if name == "low":  # low alone owns copies of chunks 0..149
            assert all(r["op"] == "WRITE_OK" for r in _fill(origin, range(0, 150)))
    # copies shared by both snapshots until the store is full, then some more:
    # squashing "low" frees its 150 chunks, which is room for every one of them
    more = free0 - 150 + 100
    replies = _fill(origin, range(150, 150 + more))
    assert all(r["op"] == "WRITE_OK" for r in replies), [r for r in replies if r["op"] != "WRITE_OK"][:1]
    snaps = {s["name"]: s for s in handle.ctl(m.list_snapshots(1))["result"]}
    assert snaps["low"]["squashed"] is True
    assert snaps["high"]["squashed"] is False, handle.log_text()[-2000:]
    assert handle.stop() == 0
    check = run_tool("csnap-check", "--store", str(handle.store), check=False)
    assert check.returncode == 0, check.stdout
