"""A snapshot never holds data written after it was taken: slow and silent origin clients."""

from __future__ import annotations

import os
import signal
import subprocess
import textwrap
import time

import pytest

from csnap_client.protocol import messages as m

from .conftest import BIN, make_server, snapshot_chunk

WRITER = textwrap.dedent("""
    import asyncio, sys, time
    import csnap_client

    async def main(port, origin, store, cs):
        vol = await csnap_client.connect("127.0.0.1", port, volume="origin", origin=origin,
                                         store=store, client_id=777)
        n = 0
        while True:
            n += 1
            await vol.write(0, n.to_bytes(4, "big") * (cs // 4))
            await vol.flush()
            print(f"wrote {n}", flush=True)
            await asyncio.sleep(0.3)

    asyncio.run(main(int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])))
""")


def test_slow_origin_client_finishes_approved_writes_before_the_snapshot(server):
    """The advice makes an approved-but-unwritten write land before the snapshot."""
    cs = server.chunk_size
    origin = server.client("origin")
    assert origin.call(m.query_write(0, [[3, 1]]))["op"] == "WRITE_OK"  # approved, not written
    ctl = server.control_client()
    rid = ctl.send(m.create_snapshot(0, "after-slow"))
    advice = origin.recv()
    assert advice["op"] == "ADVICE" and advice["kind"] == "NEW_SNAPSHOT"
    with open(server.origin, "r+b") as f:  # finish the approved write, durably
        f.seek(3 * cs)
        f.write(b"S" * cs)
        os.fsync(f.fileno())
    with pytest.raises(TimeoutError):
        ctl.wait_for(rid, timeout=0.3)  # create waits for the acknowledgement
    origin.call(m.ack_advice(0, advice["advice"]))
    assert ctl.wait_for(rid)["op"] == "OK"
    # the approval is void now: the next write must ask again, and is copied out first
    assert origin.call(m.query_write(0, [[3, 1]]))["op"] == "WRITE_OK"
    with open(server.origin, "r+b") as f:
        f.seek(3 * cs)
        f.write(b"L" * cs)
    assert snapshot_chunk(server, "after-slow", 3) == b"S" * cs


def test_client_that_stops_answering_cannot_leak_writes_into_a_snapshot(tmp_path):
    handle = make_server(tmp_path)
    handle.start("--lease", "1")
    cs = handle.chunk_size
    proc = subprocess.Popen([str(BIN / "python"), "-c", WRITER, str(handle.port),
                             str(handle.origin), str(handle.store), str(cs)],
                            stdout=subprocess.PIPE, text=True)
    try:
        for _ in range(3):
            line = proc.stdout.readline()
        last = int(line.split()[1])
        os.kill(proc.pid, signal.SIGSTOP)  # stopped while sleeping between writes
        start = time.monotonic()
        reply = handle.ctl(m.create_snapshot(1, "frozen"))
        assert reply["op"] == "OK"
        assert time.monotonic() - start >= 1.5  # waited for the silent client, then cut it off
        os.kill(proc.pid, signal.SIGCONT)
        for _ in range(3):  # it recovers: lease lost -> reconnect -> ask again
            later = int(proc.stdout.readline().split()[1])
        assert later > last
        snap = snapshot_chunk(handle, "frozen", 0)
        assert snap == last.to_bytes(4, "big") * (cs // 4), int.from_bytes(snap[:4], "big")
        with open(handle.origin, "rb") as f:
            assert int.from_bytes(f.read(4), "big") >= later
    finally:
        proc.kill()
        proc.wait()
    assert "did not acknowledge in time" in handle.log_text()
    assert handle.stop() == 0
