"""csnapd as a process: lifecycle, locking, bad input, crash recovery."""

from __future__ import annotations

import os
import signal
import socket
import stat
import struct
import subprocess
import time

import pytest

from csnap_client.protocol import ErrorCode, encode
from csnap_client.protocol import messages as m
from csnapd.store import format as fmt
from csnapd.store.device import FileDevice
from csnapd.store.superblock import load

from .conftest import BIN, make_server, read_snapshot_chunk, run_tool


def test_control_socket_is_private(server):
    mode = stat.S_IMODE(os.stat(server.control).st_mode)
    assert mode == 0o600


def test_second_server_on_same_store_is_refused(server):
    proc = subprocess.run(
        [str(BIN / "csnapd"), "--store", str(server.store), "--origin", str(server.origin),
         "--listen", "127.0.0.1:1", "--control", str(server.tmp / "other.sock")],
        capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0
    assert "in use" in proc.stderr


def test_sigterm_marks_store_clean(tmp_path):
    handle = make_server(tmp_path)
    handle.start()
    origin = handle.client("origin")
    _create(handle, origin, "s1")
    assert origin.call(m.query_write(0, [[0, 8]]))["op"] == "WRITE_OK"
    dev = FileDevice(str(handle.store), writable=False)
    assert load(dev)[0].flags & fmt.FLAG_BUSY
    dev.close()
    assert handle.stop(signal.SIGTERM) == 0
    dev = FileDevice(str(handle.store), writable=False)
    assert not load(dev)[0].flags & fmt.FLAG_BUSY
    dev.close()
    assert "store closed cleanly" in handle.log_text()


def _create(server, clients, name: str) -> dict:
    """Create a snapshot while the origin ``clients`` answer the advice."""
    ctl = server.control_client()
    rid = ctl.send(m.create_snapshot(0, name))
    for client in clients if isinstance(clients, list) else [clients]:
        advice = client.recv()
        assert advice["op"] == "ADVICE" and advice["kind"] == "NEW_SNAPSHOT"
        assert client.call(m.ack_advice(0, advice["advice"]))["op"] == "ACK_OK"
    reply = ctl.wait_for(rid)
    ctl.close()
    assert reply["op"] == "OK", reply
    return reply["result"]


def test_bad_requests_get_errors_and_others_keep_working(server):
    good = server.client("origin")
    bad = server.client("origin")
    cases = [
        ({"op": "NOPE", "id": 5}, ErrorCode.UNKNOWN_OP),
        ({"op": "QUERY_WRITE", "id": 6, "ranges": "zero"}, ErrorCode.BAD_REQUEST),
        ({"op": "QUERY_WRITE", "id": 7, "ranges": [[-1, 2]]}, ErrorCode.BAD_REQUEST),
        (m.query_write(8, [[10**6, 1]]), ErrorCode.OUT_OF_RANGE),
        (m.query_write(9, [[0, 1]] + [[i * 2, 1] for i in range(1, 2000)]),
         ErrorCode.TOO_MANY_RANGES),
        (m.identify(10, 1, "origin"), ErrorCode.ALREADY_IDENTIFIED),
        ({"op": "IDENTIFY_OK", "id": 11}, ErrorCode.UNKNOWN_OP),
    ]
    for msg, code in cases:
        reply = bad.call(msg)
        assert reply["op"] == "ERROR" and reply["code"] == code, (msg, reply)
        assert reply["message"]
        assert good.call(m.ping(0))["op"] == "PONG"
    # a request before IDENTIFY
    raw = socket.create_connection(("127.0.0.1", server.port))
    raw.sendall(encode(m.query_write(3, [[0, 1]])))
    from .conftest import RawClient
    fresh = RawClient(raw)
    reply = fresh.recv()
    assert reply["code"] == ErrorCode.NOT_IDENTIFIED
    # an unknown snapshot
    fresh.send(m.identify(4, 99, "no-such-snapshot"))
    assert fresh.recv()["code"] == ErrorCode.UNKNOWN_SNAPSHOT
    # a framing error (oversize frame) closes only that connection
    raw.sendall(struct.pack(">I", 64 << 20) + b"\x80")
    msg = fresh.recv()
    assert msg["op"] == "ERROR" and msg["id"] == 0
    with pytest.raises(ConnectionError):
        fresh.recv(timeout=5)
    assert good.call(m.query_write(0, [[0, 4]]))["op"] == "WRITE_OK"


def test_origin_write_waits_for_read_lock(server):
    origin = server.client("origin")
    _create(server, origin, "snap")
    reader = server.client("snap")
    read = reader.call(m.query_snapshot_read(0, [[0, 4]]))
    assert read["op"] == "SNAPSHOT_READ_OK" and read["origin"] == [[0, 4]]
    wid = origin.send(m.query_write(0, [[2, 1]]))
    with pytest.raises(TimeoutError):
        origin.wait_for(wid, timeout=0.5)
    # meanwhile other requests are answered: replies may come out of order
    assert origin.call(m.ping(0))["op"] == "PONG"
    # the copy-out is already recorded, so a new read of that chunk goes to the
    # store at once and never waits behind (or starves) the write
    second = reader.call(m.query_snapshot_read(0, [[2, 1]]))
    assert second["origin"] == [] and second["store"][0][:2] == [2, 1]
    done = reader.call(m.finish_snapshot_read(0, read["id"]))
    assert done == {"op": "FINISH_OK", "id": done["id"], "valid": True}
    assert origin.wait_for(wid)["op"] == "WRITE_OK"


def test_killed_reader_frees_its_locks(server):
    origin = server.client("origin")
    _create(server, origin, "snap")
    script = (
        "import socket,sys,time\n"
        "from csnap_client.protocol import Framer, encode, messages as m\n"
        f"s=socket.create_connection(('127.0.0.1',{server.port}))\n"
        "f=Framer(max_frame_size=2<<20)\n"
        "s.sendall(encode(m.identify(1, 4242, 'snap')))\n"
        "s.sendall(encode(m.query_snapshot_read(2, [[0, 16]])))\n"
        "got=[]\n"
        "while len(got)<2: got+=f.feed_many(s.recv(65536))\n"
        "print(got[1]['origin'], flush=True)\n"
        "time.sleep(60)\n")
    proc = subprocess.Popen([str(BIN / "python"), "-c", script], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "[[0, 16]]"
    wid = origin.send(m.query_write(0, [[5, 1]]))
    with pytest.raises(TimeoutError):
        origin.wait_for(wid, timeout=0.5)
    proc.kill()
    proc.wait()
    assert origin.wait_for(wid, timeout=10)["op"] == "WRITE_OK"


def test_snapshot_write_is_private_and_snapshot_keeps_its_bytes(server):
    cs = server.chunk_size
    origin = server.client("origin")
    with open(server.origin, "r+b") as f:
        f.write(b"A" * cs * 4)
    _create(server, origin, "s1")
    _create(server, origin, "s2")
    # origin client: ask, then write new data
    assert origin.call(m.query_write(0, [[0, 4]]))["op"] == "WRITE_OK"
    with open(server.origin, "r+b") as f:
        f.write(b"B" * cs * 4)
        os.fsync(f.fileno())
    s1 = server.client("s1")
    mapping = s1.call(m.query_write(0, [[1, 1]]))["map"]
    assert mapping[0][:2] == [1, 1]
    with open(server.store, "r+b") as f:
        f.seek(mapping[0][2] * cs)
        f.write(b"S" * cs)
    s2 = server.client("s2")

    assert read_snapshot_chunk(server, s1, 1) == b"S" * cs
    assert read_snapshot_chunk(server, s2, 1) == b"A" * cs
    assert read_snapshot_chunk(server, s1, 0) == b"A" * cs
    assert read_snapshot_chunk(server, s2, 3) == b"A" * cs


def test_sigkill_then_restart_keeps_acknowledged_work(tmp_path):
    handle = make_server(tmp_path)
    handle.start()
    cs = handle.chunk_size
    origin = handle.client("origin")
    with open(handle.origin, "r+b") as f:
        f.write(bytes(range(256)) * (cs // 256) * 64)
    _create(handle, origin, "before")
    acked = []
    for i in range(32):
        assert origin.call(m.query_write(0, [[i * 2, 2]]))["op"] == "WRITE_OK"
        acked.append(i * 2)
        with open(handle.origin, "r+b") as f:
            f.seek(i * 2 * cs)
            f.write(b"\xee" * 2 * cs)
    handle.kill()
    handle.start()
    assert "not shut down cleanly" in handle.log_text()
    snap = handle.client("before")
    reply = snap.call(m.query_snapshot_read(0, [[0, 64]]))
    stored = {c + j: s + j for c, n, s in reply["store"] for j in range(n)}
    for chunk in acked:
        assert chunk in stored and chunk + 1 in stored
        with open(handle.store, "rb") as f:
            f.seek(stored[chunk] * cs)
            assert f.read(cs) == bytes(range(256)) * (cs // 256)
    if reply["origin"]:
        snap.call(m.finish_snapshot_read(0, reply["id"]))
    assert handle.stop() == 0
    check = run_tool("csnap-check", "--store", str(handle.store), "--origin",
                     str(handle.origin), check=False)
    assert check.returncode == 0, check.stdout


def test_group_commit_shares_fsyncs(server):
    clients = [server.client("origin") for _ in range(8)]
    _create(server, clients, "g")
    ids = []
    for round_ in range(16):
        for i, c in enumerate(clients):
            chunk = (round_ * len(clients) + i) * 4
            ids.append((c, c.send(m.query_write(0, [[chunk, 4]]))))
    for c, rid in ids:
        assert c.wait_for(rid)["op"] == "WRITE_OK"
    status = server.ctl(m.status(1))["result"]["store"]
    assert status["ops_committed"] >= 128
    assert status["commits"] < 128, status
    # copy-out commits take one fdatasync each (a DATA record vouches for the copies);
    # the snapshot's creation and each checkpoint take two
    assert status["flushes"] <= status["commits"] + 2 * status["checkpoints"] + 2, status


def test_unacknowledged_advice_times_out(tmp_path):
    handle = make_server(tmp_path)
    handle.start("--lease", "0.5")
    silent = handle.client("origin")
    start = time.monotonic()
    reply = handle.ctl(m.create_snapshot(1, "late"))
    assert reply["op"] == "OK"
    assert time.monotonic() - start >= 0.9
    assert silent.recv()["op"] == "ADVICE"
    with pytest.raises(ConnectionError):
        silent.recv(timeout=5)
    assert handle.stop() == 0


def test_locks_do_not_survive_a_crash_and_the_reader_rereads_the_snapshot(tmp_path):
    """A restarted server never trusts an old lock: writes go on, the old reader re-reads."""
    handle = make_server(tmp_path)
    handle.start()
    origin = handle.client("origin", client_id=1)
    _create(handle, origin, "snap")
    reader = handle.client("snap", client_id=2)
    read = reader.call(m.query_snapshot_read(0, [[0, 4]]))
    assert read["origin"] == [[0, 4]]
    handle.kill()
    handle.start()
    origin = handle.client("origin", client_id=1)
    start = time.monotonic()
    assert origin.call(m.query_write(0, [[1, 1]]))["op"] == "WRITE_OK"
    assert time.monotonic() - start < 2.0  # nobody waits for an old reader to come back
    reader = handle.client("snap", client_id=2)
    finish = reader.call(m.finish_snapshot_read(0, read["id"]))
    assert finish.get("valid") is False or finish.get("code") == ErrorCode.UNKNOWN_LOCK
    again = reader.call(m.query_snapshot_read(0, [[1, 1]]))
    assert again["origin"] == [] and again["store"][0][:2] == [1, 1]
    upload = reader.call({"op": "UPLOAD_LOCK", "id": 90, "lock": read["id"], "ranges": [[0, 4]]})
    assert upload["op"] == "ERROR" and upload["code"] == ErrorCode.UNKNOWN_OP
    assert handle.stop() == 0
