"""The leader's lease gates everything it decides and sends (in-process, deterministic).

A real Server, Engine and file-backed Store on loopback, with the HA lease replaced by
a switch the test flips: the moments a stalled leader can resume at (before a request
is handled, while a commit is being written) are placed exactly, which SIGSTOP cannot.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

import csnap_client
from csnapd.engine.service import Engine
from csnapd.net.server import Server
from csnapd.store import create
from csnapd.store.device import FileDevice
from csnapd.store.errors import FencedError
from csnapd.store.paths import open_store

CS = 4096


@pytest.fixture
async def leader(tmp_path):
    origin, store = tmp_path / "origin.img", tmp_path / "store.img"
    with open(origin, "wb") as f:
        f.truncate(256 * CS)
    with open(store, "wb") as f:
        f.truncate(16 << 20)
    dev = FileDevice(str(store))
    create.create(dev, 256 * CS, chunk_size=CS)
    dev.close()
    s = open_store(str(store), str(origin))
    s.create_snapshot("s")
    s.commit()
    lease = {"valid": True}
    engine = Engine(s, epoch=s.sb.generation, now=time.monotonic())
    server = Server(engine)
    server.switch(engine, lease_ok=lambda: lease["valid"])
    tcp = await server.listen_tcp("127.0.0.1", 0)
    runner = asyncio.ensure_future(server.run())
    port = tcp.sockets[0].getsockname()[1]
    yield server, s, lease, port, (str(origin), str(store))
    server.stopping.set()
    await server.stop_listening()
    server.close_all()
    runner.cancel()
    await asyncio.gather(runner, return_exceptions=True)
    server.worker.shutdown()
    s.abandon()


async def _volume(port: int, paths: tuple[str, str]) -> csnap_client.Volume:
    return await csnap_client.connect("127.0.0.1", port, origin=paths[0], store=paths[1],
                                      reconnect=False, timeout=5)


async def test_no_request_is_decided_once_the_lease_ended(leader):
    server, store, lease, port, paths = leader
    vol = await _volume(port, paths)
    await vol.write(0, b"a" * CS)  # a copy-out for s, committed, approved
    commits = store.stats["commits"]
    lease["valid"] = False  # the leader resumes from a stall past its lease
    with pytest.raises((ConnectionError, OSError, asyncio.TimeoutError)):
        await asyncio.wait_for(vol.write(8 * CS, b"b" * CS), 10)
    assert store.stats["commits"] == commits
    assert not server.conns  # its connection was dropped, unanswered
    await vol.close()


async def test_a_commit_that_completes_after_the_lease_ended_is_not_acknowledged(leader):
    server, store, lease, port, paths = leader
    vol = await _volume(port, paths)
    await vol.write(0, b"a" * CS)
    # The next commit's flush hangs (slow storage, or the store thread is stopped)
    # until the lease has ended; then it completes.
    entered, release = threading.Event(), threading.Event()
    flush = store.dev.flush

    def slow_flush() -> None:
        entered.set()
        release.wait(10)
        flush()

    store.dev.flush = slow_flush  # type: ignore[method-assign]
    write = asyncio.ensure_future(vol.write(16 * CS, b"c" * CS))
    assert await asyncio.get_running_loop().run_in_executor(None, entered.wait, 10)
    lease["valid"] = False
    release.set()
    with pytest.raises((ConnectionError, OSError, asyncio.TimeoutError, Exception)):
        await asyncio.wait_for(write, 10)
    for _ in range(100):
        if store.failed:
            break
        await asyncio.sleep(0.01)
    assert server.committer.late_writes == 1
    assert store.failed  # nothing more is written
    await vol.close()


async def test_the_fence_refuses_a_write_before_it_starts(leader):
    server, store, lease, port, paths = leader
    vol = await _volume(port, paths)
    await vol.write(0, b"a" * CS)
    calls = []
    store.dev.pwrite = lambda *a: calls.append(a)  # type: ignore[method-assign]
    # The lease ends between the decision (on the loop) and the write (store thread):
    # the write is refused before any byte goes out.
    store.fence = lambda: (_ for _ in ()).throw(FencedError("the lease has ended"))
    with pytest.raises(Exception):  # noqa: B017 - NOT_LEADER or a dropped connection
        await asyncio.wait_for(vol.write(24 * CS, b"d" * CS), 10)
    assert calls == []
    assert "lease has ended" in server.committer.fenced
    await vol.close()
