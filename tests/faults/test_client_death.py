"""Snapshot readers that die or stall while holding read locks (client library, real server).

* a reader SIGKILLed mid-read: its locks go with its connection, the origin write it
  blocked completes at once (long before any lease), the snapshot keeps its bytes;
* a reader SIGSTOPped mid-read past a short ``--lock-lease``: the server breaks the lock so
  the origin write proceeds; on SIGCONT the reader's first pass read the *new* origin bytes,
  its FINISH_SNAPSHOT_READ says ``valid: false``, it re-reads from the snapshot's new store
  mapping and returns exactly the snapshot's (pre-write) bytes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import csnap_client
from csnap_client.protocol import messages as m

from ..integration.conftest import BIN, make_server, run_tool

READER = Path(__file__).with_name("_reader.py")
LENGTH = 1 << 20  # 256 chunks of 4 KiB, all shared with the origin: one big locked read


def _pattern(tag: bytes, length: int) -> bytes:
    return (tag * (length // len(tag) + 1))[:length]


def _setup(handle) -> bytes:
    old = _pattern(b"snapshot-bytes-A", LENGTH)
    with open(handle.origin, "r+b") as f:
        f.write(old)
    assert handle.ctl(m.create_snapshot(1, "s"))["op"] == "OK"
    return old


def _start_reader(handle, mode: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [str(BIN / "python"), str(READER), str(handle.port), str(handle.origin),
         str(handle.store), "s", "0", str(LENGTH), mode], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    assert line == "LOCKED", line
    return proc


async def _origin(handle) -> csnap_client.Volume:
    return await csnap_client.connect("127.0.0.1", handle.port, volume="origin",
                                      origin=str(handle.origin), store=str(handle.store))


async def _read_snapshot(handle) -> bytes:
    vol = await csnap_client.connect("127.0.0.1", handle.port, volume="s",
                                     origin=str(handle.origin), store=str(handle.store))
    try:
        return await vol.read(0, LENGTH)
    finally:
        await vol.close()


def _stop_and_check(handle) -> None:
    assert handle.stop() == 0, handle.log_text()
    check = run_tool("csnap-check", "--store", str(handle.store), "--origin",
                     str(handle.origin), check=False)
    assert check.returncode == 0, check.stdout + check.stderr


async def test_killed_library_reader_frees_its_locks(tmp_path):
    handle = make_server(tmp_path)
    handle.start()  # default lock lease 30 s: only the disconnect can free the locks
    old = _setup(handle)
    reader = _start_reader(handle, "hang")
    try:
        origin = await _origin(handle)
        new = _pattern(b"new-origin-B", 8192)
        write = asyncio.ensure_future(origin.write(LENGTH // 2, new))  # chunks 128, 129
        done, _ = await asyncio.wait({write}, timeout=0.7)
        assert not done, "the origin write must wait for the reader's read lock"
        status = handle.ctl(m.status(1))["result"]["locks"]
        assert status["held_chunks"] == LENGTH // handle.chunk_size
        assert status["waiting_writes"] == 1
        killed = time.monotonic()
        reader.kill()
        reader.wait()
        await asyncio.wait_for(write, 5)
        latency = time.monotonic() - killed
        print(f"origin write unblocked {latency * 1000:.0f} ms after the reader was killed")
        assert latency < 3.0  # far below the 30 s lease: freed by the disconnect
        status = handle.ctl(m.status(1))["result"]["locks"]
        assert status["held_chunks"] == 0 and status["waiting_writes"] == 0
        await origin.close()
        assert await _read_snapshot(handle) == old
    finally:
        if reader.poll() is None:
            reader.kill()
    _stop_and_check(handle)


async def test_stopped_reader_past_lease_rereads_from_the_snapshot(tmp_path):
    handle = make_server(tmp_path)
    handle.start("--lock-lease", "1")
    old = _setup(handle)
    reader = _start_reader(handle, "slow")
    try:
        os.kill(reader.pid, signal.SIGSTOP)
        origin = await _origin(handle)
        new = _pattern(b"overwritten-origin-B", LENGTH)
        start = time.monotonic()
        await asyncio.wait_for(origin.write(0, new), 10)  # waits for the lease to run out
        waited = time.monotonic() - start
        await origin.flush()
        assert waited >= 0.7, f"write did not wait for the lock ({waited:.2f} s)"
        assert "broken: held past its" in handle.log_text()
        os.kill(reader.pid, signal.SIGCONT)
        out, _ = reader.communicate(timeout=30)
    finally:
        if reader.poll() is None:
            os.kill(reader.pid, signal.SIGCONT)
            reader.kill()
    report = json.loads(out.strip().splitlines()[-1])
    sha = lambda b: hashlib.sha256(b).hexdigest()  # noqa: E731
    # the first pass really read the overwritten origin (the dangerous case happened) ...
    assert report["first_origin_read"] == sha(new)
    # ... the server said so (valid=false), and the library re-read: the chunks now map to
    # the store copy, so the second round needs no lock and no FINISH
    assert report["finish"] == [False]
    assert report["result"] == sha(old)
    assert await _read_snapshot(handle) == old
    assert open(handle.origin, "rb").read(LENGTH) == new
    await origin.close()
    _stop_and_check(handle)
