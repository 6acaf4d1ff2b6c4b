"""Stalled clients can never change a snapshot after it was taken (cluster safety, item 1)."""

from __future__ import annotations

import os
import signal
import subprocess
import textwrap
import time

import pytest

from csnap_client.protocol import ErrorCode
from csnap_client.protocol import messages as m
from csnap_soak import stall

from ..integration.conftest import BIN, make_server, run_tool, snapshot_chunk
from ..integration.test_server import _create


def _write_origin(handle, chunk: int, data: bytes) -> None:
    with open(handle.origin, "r+b") as f:
        f.seek(chunk * handle.chunk_size)
        f.write(data)
        os.fsync(f.fileno())


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
    before = snapshot_chunk(handle, "taken", 3)
    assert before == b"O" * cs
    _write_origin(handle, 3, b"L" * cs)  # the stalled client resumes and writes
    assert snapshot_chunk(handle, "taken", 3) == before
    assert handle.stop() == 0


# --------------------------------------------------------------------------------------
# Real client processes: a host stalled every way across creates, one SIGSTOPped mid-write.


def test_a_host_stalled_across_creates_and_server_kills_never_changes_a_snapshot(tmp_path,
                                                                              show_figure):
    """Issue item 1a: origin writers in one host process that stalls while snapshots are
    created (its event loop blocked right after the library's last check, SIGSTOP, SIGSTOP
    during a 1 MiB write); csnapd is SIGKILLed and restarted between snapshots. No
    snapshot changes later, and none holds a write started after it was created."""
    result = stall.run(cycles=6, seed=5, tmp=tmp_path)
    show_figure(result.figure())
    assert result.changed == [] and result.late == [], result.changed + result.late
    assert result.check_rc == 0
    assert result.stalls == {"loop": 2, "sigstop": 2, "sigstop-mid-write": 2}
    assert result.cutoff_log_lines >= 1  # the server did cut the stalled host off


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
        before = stall.read_snapshot(handle.port, handle.origin, handle.store, "taken", chunks)
        assert set(before) == {b"O" * cs}
        os.kill(proc.pid, signal.SIGCONT)
        assert proc.stdout.readline().strip() == "wrote"
        assert proc.wait(30) == 0
        with open(handle.origin, "rb") as f:
            assert f.read(size) == b"N" * size  # the write itself was not lost
        assert stall.read_snapshot(handle.port, handle.origin, handle.store, "taken",
                                   chunks) == before
    finally:
        proc.kill()
        proc.wait()
    assert handle.stop() == 0


def test_stalled_snapshot_writer_cannot_write_into_a_chunk_another_snapshot_reuses(tmp_path):
    """A writer of a deleted snapshot that never acknowledged keeps writing its old store
    addresses: those chunks must stay its own until it lets go (or is forgotten)."""
    handle = make_server(tmp_path, block_size="512", store_size=1536 << 10)
    handle.start("--lease", "0.3", "--on-full", "fail")
    cs = handle.chunk_size
    origin = handle.client("origin")
    _create(handle, origin, "w")
    writer = handle.client("w", client_id=4242)
    mapping = writer.call(m.query_write(0, [[0, 64]]))["map"]
    mine = [s + i for _, n, s in mapping for i in range(n)]
    assert handle.ctl(m.delete_snapshot(1, "w"))["op"] == "OK"  # the writer never acks
    _create(handle, origin, "v")
    for start in range(0, 1024, 8):  # copy-outs until the store is full: every free
        reply = origin.call(m.query_write(0, [[start, 8]]))  # chunk gets used
        if reply["op"] == "ERROR":
            assert reply["code"] == ErrorCode.STORE_FULL
            break
    else:
        raise AssertionError("the store never filled up")
    before = stall.read_snapshot(handle.port, handle.origin, handle.store, "v", 1024)
    with open(handle.store, "r+b") as f:  # the stalled writer resumes
        for chunk in mine:
            f.seek(chunk * cs)
            f.write(b"STALE" * (cs // 5))
    assert stall.read_snapshot(handle.port, handle.origin, handle.store, "v", 1024) == before
    unproven = handle.ctl(m.status(1))["result"]["unproven_clients"]
    assert [(u["client_id"], u["writes_snapshots"]) for u in unproven] == [(4242, ["w"])]
    assert handle.ctl(m.forget_client(1, 4242))["result"] == {"client_id": 4242,
                                                              "forgotten": True}
    origin.detach()
    assert handle.stop() == 0
    check = run_tool("csnap-check", "--store", str(handle.store), check=False)
    assert check.returncode == 0, check.stdout + check.stderr
