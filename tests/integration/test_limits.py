"""One client cannot block or exhaust the server; the control socket checks its peer."""

from __future__ import annotations

import os
import socket
import tempfile
import time
from pathlib import Path

from csnap_client.protocol import ErrorCode, Framer, encode
from csnap_client.protocol import messages as m

from .conftest import make_server


def test_silent_and_slow_clients_are_disconnected_and_do_not_block_others(tmp_path):
    handle = make_server(tmp_path)
    handle.start("--identify-timeout", "0.5", "--frame-timeout", "0.5")
    silent = socket.create_connection(("127.0.0.1", handle.port))
    slow = handle.client("origin").sock
    slow.sendall(encode(m.ping(7))[:3])  # a frame that never completes
    good = handle.client("origin")
    for _ in range(5):
        assert good.call(m.ping(0), timeout=2)["op"] == "PONG"
    time.sleep(1.2)
    for sock in (silent, slow):
        sock.settimeout(5)
        assert sock.recv(1024) == b""  # closed by the server
    assert good.call(m.query_write(0, [[0, 2]]))["op"] == "WRITE_OK"
    log = handle.log_text()
    assert "no IDENTIFY within" in log and "frame incomplete" in log
    assert handle.stop() == 0


def test_too_many_requests_in_flight_get_errors(tmp_path):
    handle = make_server(tmp_path)
    handle.start("--max-inflight", "4")
    origin = handle.client("origin")
    reader = handle.client("origin")
    from .test_server import _create
    _create(handle, [origin, reader], "s")
    snap = handle.client("s")
    read = snap.call(m.query_snapshot_read(0, [[0, 8]]))
    # writes that wait on the read lock stay in flight; the fifth is refused
    ids = [origin.send(m.query_write(0, [[i, 1]])) for i in range(5)]
    reply = origin.wait_for(ids[4], timeout=5)
    assert reply["op"] == "ERROR" and reply["code"] == ErrorCode.LIMIT_EXCEEDED
    snap.call(m.finish_snapshot_read(0, read["id"]))
    for rid in ids[:4]:
        assert origin.wait_for(rid)["op"] == "WRITE_OK"
    assert handle.stop() == 0


def test_control_socket_refuses_changes_from_other_users(tmp_path):
    if os.getuid() != 0:
        import pytest
        pytest.skip("needs root to act as another user")
    handle = make_server(tmp_path)
    public = Path(tempfile.mkdtemp(prefix="csnap-ctl-"))
    public.chmod(0o755)
    handle.control = public / "control.sock"
    handle.start()
    os.chmod(handle.control, 0o666)  # let "nobody" reach it, so SO_PEERCRED is what refuses
    requests = [encode(msg) for msg in (m.create_snapshot(1, "x"), m.shutdown(2),
                                          m.list_snapshots(3))]
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: become "nobody" and try the control socket
        try:
            os.setgid(65534)
            os.setuid(65534)
            sock = socket.socket(socket.AF_UNIX)
            sock.connect(str(handle.control))
            framer = Framer(max_frame_size=2 << 20)
            answers = []
            for raw in requests:
                sock.sendall(raw)
                got = []
                while not got:
                    got = framer.feed_many(sock.recv(65536))
                answers.append(got[0].get("code", got[0]["op"]))
            os.write(write_fd, repr(answers).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    os.waitpid(pid, 0)
    answers = os.read(read_fd, 4096).decode()
    assert answers == f"[{int(ErrorCode.PERMISSION_DENIED)}, " \
        f"{int(ErrorCode.PERMISSION_DENIED)}, 'OK']", answers
    assert "refused CREATE_SNAPSHOT" in handle.log_text()
    assert handle.stop() == 0
