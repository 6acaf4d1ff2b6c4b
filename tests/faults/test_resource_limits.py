"""One client cannot exhaust csnapd's memory or starve other clients.

Each test measures the server's RSS (psutil) around the abuse and checks that a sentinel
client on another connection keeps getting answers.  Figures are printed (``-s``).
"""

from __future__ import annotations

import socket
import struct
import threading
import time

import psutil

from csnap_client.protocol import ErrorCode, Framer, encode
from csnap_client.protocol import messages as m

from ..integration.conftest import make_server, run_tool

MiB = 1 << 20


def _rss(handle) -> int:
    return psutil.Process(handle.proc.pid).memory_info().rss


def _finish(handle) -> None:
    assert handle.proc.poll() is None, handle.log_text()
    assert handle.stop() == 0, handle.log_text()
    check = run_tool("csnap-check", "--store", str(handle.store), "--origin",
                     str(handle.origin), check=False)
    assert check.returncode == 0, check.stdout


def _read_all(sock: socket.socket, want: int, timeout: float = 60) -> list[dict]:
    framer, got = Framer(max_frame_size=2 << 20), []
    deadline = time.monotonic() + timeout
    while len(got) < want:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = sock.recv(1 << 20)
        except TimeoutError:
            break
        if not data:
            break
        got += framer.feed_many(data)
    return got


def test_5000_pipelined_requests_without_reading_replies(tmp_path):
    handle = make_server(tmp_path, origin_size=64 * MiB)
    handle.start()
    assert handle.ctl(m.create_snapshot(1, "s"))["op"] == "OK"
    sentinel = handle.client("origin")
    base = _rss(handle)
    hog = handle.client("s")
    n = 5000
    blob = b"".join(encode(m.ping(i)) if i % 2 else
                    encode(m.query_snapshot_read(i, [[(i * 3) % 16000, 3]]))
                    for i in range(2, n + 2))
    sender = threading.Thread(target=hog.sock.sendall, args=(blob,), daemon=True)
    sender.start()  # may block: the server stops reading a client that does not read
    time.sleep(2)
    for _ in range(20):
        assert sentinel.call(m.ping(0), timeout=5)["op"] == "PONG"
    peak = _rss(handle)
    replies = _read_all(hog.sock, n)
    sender.join(30)
    ids = [r["id"] for r in replies]
    assert len(replies) == n and sorted(ids) == list(range(2, n + 2)), len(replies)
    kinds = {}
    for r in replies:
        key = r.get("code", r["op"])
        kinds[key] = kinds.get(key, 0) + 1
    print(f"{n} pipelined requests: RSS {base / MiB:.0f} -> {peak / MiB:.0f} MiB; "
          f"replies {kinds}")
    assert peak - base < 64 * MiB
    hog.close()
    assert sentinel.call(m.ping(0))["op"] == "PONG"
    _finish(handle)


def test_read_lock_hoarding_is_bounded(tmp_path):
    """Locks on 100k chunks in 2 requests; then as many as the server allows one client
    (the lock table's per-client limit, 2^20 chunks)."""
    handle = make_server(tmp_path, origin_size=8192 * MiB)  # 2M chunks of 4 KiB (sparse)
    handle.start()
    assert handle.ctl(m.create_snapshot(1, "s"))["op"] == "OK"
    sentinel = handle.client("origin")
    base = _rss(handle)
    hog = handle.client("s")
    for i in range(2):  # 2 x 50k = 100k locked chunks
        reply = hog.call(m.query_snapshot_read(0, [[i * 50_000, 50_000]]), timeout=60)
        assert reply["op"] == "SNAPSHOT_READ_OK" and reply["origin"] == [[i * 50_000, 50_000]]
    rss_100k = _rss(handle)
    assert sentinel.call(m.ping(0))["op"] == "PONG"
    held = handle.ctl(m.status(1))["result"]["locks"]["held_chunks"]
    assert held == 100_000
    # keep asking (65536 chunks per request, the protocol maximum) until refused
    refused, start = None, 100_000
    for _ in range(40):
        reply = hog.call(m.query_snapshot_read(0, [[start, 65536]]), timeout=60)
        if reply["op"] == "ERROR":
            refused = reply
            break
        start += 65536
    peak = _rss(handle)
    held = handle.ctl(m.status(1))["result"]["locks"]["held_chunks"]
    print(f"read locks: 100k chunks cost {(rss_100k - base) / MiB:.0f} MiB of RSS; "
          f"refused at {held} held chunks ({refused and refused['code']}), "
          f"RSS {base / MiB:.0f} -> {peak / MiB:.0f} MiB")
    assert refused is not None and refused["code"] == ErrorCode.LIMIT_EXCEEDED
    assert held <= 1 << 20
    assert peak - base < 256 * MiB
    # a writer that needs one of those chunks waits; closing the hog frees everything
    wid = sentinel.send(m.query_write(0, [[7, 1]]))
    hog.close()
    assert sentinel.wait_for(wid, timeout=30)["op"] == "WRITE_OK"
    _finish(handle)


def test_oversized_and_partial_frames(tmp_path):
    handle = make_server(tmp_path)
    handle.start("--max-connections", "24", "--frame-timeout", "2")
    sentinel = handle.client("origin")
    base = _rss(handle)
    # a header declaring 4 GiB: refused from the 4 header bytes, connection closed
    s = socket.create_connection(("127.0.0.1", handle.port))
    s.sendall(struct.pack(">I", 0xFFFFFFFF) + b"\x80" * 100)
    replies = _read_all(s, 5, timeout=10)
    assert [(r["op"], r["id"]) for r in replies] == [("ERROR", 0)]
    assert replies[0]["code"] in (ErrorCode.BAD_REQUEST, ErrorCode.LIMIT_EXCEEDED)
    s.close()
    # 20 connections each hold an almost complete 1 MiB frame (the most a frame may be)
    partial = [socket.create_connection(("127.0.0.1", handle.port)) for _ in range(20)]
    for p in partial:
        p.sendall(struct.pack(">I", MiB) + b"\x00" * (MiB - 1))
    time.sleep(0.5)
    peak = _rss(handle)
    assert sentinel.call(m.ping(0))["op"] == "PONG"
    # over the connection limit: BUSY and closed, the others unaffected
    extra = [socket.create_connection(("127.0.0.1", handle.port)) for _ in range(6)]
    busy = 0
    for e in extra:
        got = _read_all(e, 1, timeout=1)
        busy += bool(got and got[0].get("code") == ErrorCode.BUSY)
        e.close()
    # the frame timeout closes the stalled ones
    time.sleep(2.5)
    for p in partial:
        p.settimeout(5)
        try:
            assert p.recv(1024) == b""
        except ConnectionResetError:
            pass
        p.close()
    after = _rss(handle)
    print(f"20 partial 1 MiB frames: RSS {base / MiB:.0f} -> {peak / MiB:.0f} MiB "
          f"(after the frame timeout {after / MiB:.0f} MiB); {busy} connections over the "
          f"limit refused with BUSY; 4 GiB header refused at once")
    assert busy >= 2  # 24 allowed: sentinel + 20 partial + 3 of the 6 extra
    assert peak - base < 20 * 3 * MiB
    assert sentinel.call(m.ping(0))["op"] == "PONG"
    _finish(handle)
