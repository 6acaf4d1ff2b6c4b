"""Stalled clients can never change a snapshot after it was taken (cluster safety, item 1)."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import textwrap
import time

import pytest

from csnap_client.protocol import messages as m

from ..integration.conftest import BIN, make_server, read_snapshot_chunk, run_tool


def _write_origin(handle, chunk: int, data: bytes) -> None:
    with open(handle.origin, "r+b") as f:
        f.seek(chunk * handle.chunk_size)
        f.write(data)
        os.fsync(f.fileno())


def _snap_chunk(handle, name: str, chunk: int) -> bytes:
    snap = handle.client(name)
    try:
        return read_snapshot_chunk(handle, snap, chunk)
    finally:
        snap.close()


def test_cut_off_client_writing_on_a_stale_approval_cannot_reach_the_snapshot(tmp_path):
    """A client approved before the create, silent during it, writes after it returned."""
    handle = make_server(tmp_path)
    handle.start("--lease", "0.3")
    cs = handle.chunk_size
    _write_origin(handle, 3, b"O" * cs)
    stale = handle.client("origin")
    assert stale.call(m.query_write(0, [[3, 2]]))["op"] == "WRITE_OK"  # approved; never acks
    reply = handle.ctl(m.create_snapshot(1, "taken"))
    assert reply["op"] == "OK"
    before = _snap_chunk(handle, "taken", 3)
    assert before == b"O" * cs
    _write_origin(handle, 3, b"L" * cs)  # the stalled client resumes and writes
    assert _snap_chunk(handle, "taken", 3) == before
    assert handle.stop() == 0


# --------------------------------------------------------------------------------------
# Real client processes: a host whose event loop blocks, and one SIGSTOPped mid-write.

STAMP = struct.Struct(">IIId")  # magic, writer, seq, monotonic time the write started
MAGIC = 0x57A11ED0

HOST = textwrap.dedent("""
    import asyncio, os, random, struct, sys, time
    import csnap_client
    from csnap_client import volume

    STAMP = struct.Struct(">IIId")
    stall = []  # seconds the next device write holds the whole event loop
    real = volume._pwrite_all

    def stalling_pwrite(fd, buf, off):
        # small writes run on the event loop: blocking here stalls the whole host right
        # between the library's last permission check and the device write
        if stall:
            print("blocked", flush=True)
            time.sleep(stall.pop())
            print("unblocked", flush=True)
        real(fd, buf, off)

    volume._pwrite_all = stalling_pwrite

    async def writer(vol, w, cs, chunks, rng):
        seq = 0
        while True:
            seq += 1
            chunk = rng.randrange(chunks)
            block = STAMP.pack(0x57A11ED0, w, seq, time.monotonic())
            await vol.write(chunk * cs, block * (cs // STAMP.size))
            await asyncio.sleep(rng.choice((0, 0.001, 0.005)))

    async def main(port, origin, cs, chunks):
        vol = await csnap_client.connect("127.0.0.1", port, volume="origin", origin=origin,
                                         reconnect_timeout=None)
        loop = asyncio.get_running_loop()

        def command():
            line = sys.stdin.readline().split()
            if line and line[0] == "block":
                stall.append(float(line[1]))

        loop.add_reader(sys.stdin.fileno(), command)
        tasks = [asyncio.ensure_future(writer(vol, w, cs, chunks, random.Random(w)))
                 for w in range(4)]
        print("ready", flush=True)
        await asyncio.gather(*tasks)

    asyncio.run(main(int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
""")


def _read_snapshot(handle, name: str, chunks: int) -> list[bytes]:
    """Every chunk of snapshot ``name``, read as a client reads it (locks released)."""
    snap, cs = handle.client(name), handle.chunk_size
    try:
        reply = snap.call(m.query_snapshot_read(0, [[0, chunks]]))
        where = dict.fromkeys(range(chunks))
        for c, n, s in reply["store"]:
            for i in range(n):
                where[c + i] = s + i
        out = []
        with open(handle.origin, "rb") as o, open(handle.store, "rb") as st:
            for c in range(chunks):
                f, pos = (o, c) if where[c] is None else (st, where[c])
                f.seek(pos * cs)
                out.append(f.read(cs))
        if reply["origin"]:
            assert snap.call(m.finish_snapshot_read(0, reply["id"]))["valid"]
        return out
    finally:
        snap.close()


def _wait_for_origin_client(handle, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not any(c["volume"] == "origin" for c in handle.ctl(m.status(1))["result"]["clients"]):
        assert time.monotonic() < deadline, "the origin host did not reconnect"
        time.sleep(0.05)


def _late_blocks(image: list[bytes], done: float) -> list[tuple[int, int, int, float]]:
    """Blocks of a snapshot image whose write started after the create returned."""
    late = []
    for chunk, data in enumerate(image):
        magic, w, seq, started = STAMP.unpack_from(data)
        if magic == MAGIC and started > done:
            late.append((chunk, w, seq, round(started - done, 3)))
    return late


def test_a_host_whose_event_loop_blocks_across_creates_and_server_kills(tmp_path):
    """Issue item 1a: four origin writers in one process that stalls while a snapshot is
    created; csnapd is SIGKILLed and restarted between snapshots. No snapshot ever holds
    a block written after it was created, and none changes later."""
    chunks = 96
    handle = make_server(tmp_path, origin_size=chunks * 4096)
    handle.start("--lease", "1")
    host = subprocess.Popen([str(BIN / "python"), "-c", HOST, str(handle.port),
                             str(handle.origin), str(handle.chunk_size), str(chunks)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    taken: list[tuple[str, float, list[bytes]]] = []
    try:
        assert host.stdout.readline().strip() == "ready"
        for cycle in range(6):
            handle.kill()
            handle.start("--lease", "1")
            _wait_for_origin_client(handle)
            time.sleep(0.3)  # the writers write on
            host.stdin.write("block 2.6\n")
            host.stdin.flush()
            assert host.stdout.readline().strip() == "blocked"
            name = f"s{cycle}"
            assert handle.ctl(m.create_snapshot(1, name))["op"] == "OK"
            done = time.monotonic()
            taken.append((name, done, _read_snapshot(handle, name, chunks)))
            assert host.stdout.readline().strip() == "unblocked"
            time.sleep(0.6)  # the host resumes: stale approvals, buffered replies
        for name, done, first in taken:
            assert _late_blocks(first, done) == [], name
            assert _read_snapshot(handle, name, chunks) == first, f"snapshot {name} changed"
    finally:
        host.kill()
        host.wait()
    assert "copying them for the snapshot first" in handle.log_text()
    assert handle.stop() == 0
    check = run_tool("csnap-check", "--store", str(handle.store), check=False)
    assert check.returncode == 0, check.stdout + check.stderr


STOPPED_WRITER = textwrap.dedent("""
    import asyncio, sys, time
    import csnap_client
    from csnap_client import volume

    real = volume._pwrite_all

    def slow_pwrite(fd, buf, off):  # the pause between the last check and the device
        if len(buf) >= 1 << 20:
            print("writing", flush=True)
            time.sleep(0.5)
        real(fd, buf, off)

    volume._pwrite_all = slow_pwrite

    async def main(port, origin, size):
        vol = await csnap_client.connect("127.0.0.1", port, volume="origin", origin=origin,
                                         reconnect_timeout=None)
        await vol.write(0, b"N" * size)
        print("wrote", flush=True)
        await vol.close()

    asyncio.run(main(int(sys.argv[1]), sys.argv[2], int(sys.argv[3])))
""")


@pytest.mark.parametrize("size", [1 << 20, 4 << 20], ids=["1MiB", "4MiB"])
def test_sigstop_during_an_approved_write_cannot_change_the_snapshot(tmp_path, size):
    """Issue item 1b: SIGSTOP while an approved large write is in progress; the create
    returns; after SIGCONT the write lands on the origin only."""
    handle = make_server(tmp_path, origin_size=8 << 20, store_size=96 << 20)
    handle.start("--lease", "0.5")
    cs = handle.chunk_size
    with open(handle.origin, "r+b") as f:
        f.write(b"O" * size)
    proc = subprocess.Popen([str(BIN / "python"), "-c", STOPPED_WRITER, str(handle.port),
                             str(handle.origin), str(size)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
        os.kill(proc.pid, signal.SIGSTOP)
        start = time.monotonic()
        assert handle.ctl(m.create_snapshot(1, "taken"))["op"] == "OK"
        assert time.monotonic() - start >= 0.9  # waited for the silent client
        chunks = size // cs
        before = _read_snapshot(handle, "taken", chunks)
        assert set(before) == {b"O" * cs}
        os.kill(proc.pid, signal.SIGCONT)
        assert proc.stdout.readline().strip() == "wrote"
        assert proc.wait(30) == 0
        with open(handle.origin, "rb") as f:
            assert f.read(size) == b"N" * size  # the write itself was not lost
        assert _read_snapshot(handle, "taken", chunks) == before
    finally:
        proc.kill()
        proc.wait()
    assert handle.stop() == 0
