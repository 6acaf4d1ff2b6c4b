"""The split-brain attempt: the leader SIGSTOPped past its lease while a client writes,
the standby takes over and serves, then SIGCONT. The old leader must write nothing more
to the store, acknowledge nothing, and step down; every snapshot stays intact.

The old leader's writes are counted from outside with strace (every pwrite to the store
file descriptor from the moment it was stopped), and from inside (its fenced and late
write counters in STATUS).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import csnap_client
from csnap_client.protocol import messages as m
from tests.integration.conftest import run_tool

from .conftest import LEASE, needs_etcd

pytestmark = needs_etcd
CS = 4096


def _block(tag: str, chunk: int) -> bytes:
    text = f"<{tag} chunk {chunk}>".encode()
    return (text * (CS // len(text) + 1))[:CS]


def _fd_of(pid: int, path: Path) -> set[int]:
    fds = set()
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{name}") == str(path):
                fds.add(int(name))
        except OSError:
            pass
    return fds


async def _write(pair, node: str, chunks: range, tag: str) -> None:
    h = pair.nodes[node]
    vol = await csnap_client.connect("127.0.0.1", h.port, origin=str(pair.origin),
                                     store=str(pair.store), reconnect=False)
    try:
        for c in chunks:
            await vol.write(c * CS, _block(tag, c))
        await vol.flush()
    finally:
        await vol.close()


async def _read(pair, node: str, volume: str, chunks: range) -> list[bytes]:
    h = pair.nodes[node]
    vol = await csnap_client.connect("127.0.0.1", h.port, volume, origin=str(pair.origin),
                                     store=str(pair.store), reconnect=False)
    try:
        return [await vol.read(c * CS, CS) for c in chunks]
    finally:
        await vol.close()


CHUNKS = 1024  # the 4 MiB origin


async def _writer(vol, first: int, acks: list[tuple[float, int]]) -> None:
    """Write a chunk never written since s1 each time (each needs a copy-out, so a
    request and a commit), noting every ack."""
    for chunk in range(first, CHUNKS, 8):
        await vol.write(chunk * CS, _block("late", chunk))
        acks.append((time.monotonic(), chunk))
        await asyncio.sleep(0.01)  # still writing when the leader stops


async def test_a_stopped_leader_writes_nothing_after_it_resumes(pair, show_figure):
    pair.start()
    old = pair.wait_leader()
    new = pair.other(old)
    L = pair.nodes[old]
    await _write(pair, old, range(0, 16), "v1")
    L.ctl(m.create_snapshot(1, "s1"))
    # Writers keep the leader busy as it stops; requests sent while it is stopped wait in
    # its socket buffer for SIGCONT.
    vol = await csnap_client.connect("127.0.0.1", L.port, origin=str(pair.origin),
                                     store=str(pair.store), reconnect=False)
    acks: list[tuple[float, int]] = []
    writers = [asyncio.ensure_future(_writer(vol, 16 + i, acks)) for i in range(8)]
    await asyncio.sleep(0.3)
    assert acks, "the writers got nothing done before the stop"
    L.proc.send_signal(signal.SIGSTOP)
    stopped = time.monotonic()
    strace = None
    trace = L.tmp / "strace.txt"
    if shutil.which("strace"):
        strace = subprocess.Popen(["strace", "-f", "-qq", "-p", str(L.proc.pid), "-o",
                                   str(trace), "-e", "trace=pwrite64,pwritev,pwritev2"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    store_fds = _fd_of(L.proc.pid, pair.store)
    try:
        pair.wait_leader(among=(new,), timeout=20)
        took = time.monotonic() - stopped
        pair.nodes[new].ctl(m.create_snapshot(1, "s2"))
        s2_then = await _read(pair, new, "s2", range(CHUNKS))
        await _write(pair, new, range(8, 16), "v3")
        time.sleep(0.3)  # strace has attached by now (the process stays stopped)
    finally:
        resumed = time.monotonic()
        L.proc.send_signal(signal.SIGCONT)
    # The old leader notices its lease ended, drops what it was doing, and stands by.
    deadline = time.monotonic() + 15
    while pair.role(old) != "standby" and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert pair.role(old) == "standby", L.log_text()[-3000:]
    await asyncio.sleep(1)  # anything it would still do, it would have done now
    for w in writers:
        w.cancel()
    await asyncio.gather(*writers, return_exceptions=True)
    await vol.close()
    acked_after = [a for a in acks if a[0] > resumed]
    st = pair.status(old)["result"]["ha"]
    writes_after = -1
    if strace is not None:
        strace.send_signal(signal.SIGINT)
        strace.wait(10)
        text = trace.read_text() if trace.exists() else ""
        writes_after = sum(1 for line in text.splitlines()
                           if (mm := re.search(r"pwrite\w*\((\d+),", line))
                           and int(mm.group(1)) in store_fds)
    show_figure(f"split brain: leader SIGSTOPped ({LEASE:g}s lease), the standby led after "
                f"{took:.2f}s; after SIGCONT the old leader wrote {writes_after} times to the "
                f"store (strace), acknowledged {len(acked_after)} writes (of "
                f"{len(acks)} acked before the stop); fenced writes {st['fenced_writes']}, "
                f"late writes {st['late_writes']}")
    assert not acked_after, acked_after[:5]
    assert st["late_writes"] == 0
    if strace is not None:
        assert writes_after == 0, trace.read_text()[-3000:]
    # Snapshots as the new leader shows them: s1 = v1, and s2 exactly as it was taken.
    assert await _read(pair, new, "s1", range(0, 16)) == [_block("v1", c) for c in range(16)]
    assert await _read(pair, new, "s2", range(CHUNKS)) == s2_then
    pair.stop_all()
    check = run_tool("csnap-check", "--store", str(pair.store), "--origin", str(pair.origin),
                     check=False)
    assert check.returncode == 0, check.stdout + check.stderr
