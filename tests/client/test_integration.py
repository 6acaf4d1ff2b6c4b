"""The client library and CLIs against a real csnapd subprocess on temporary sparse files."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import csnap_client
from csnap_client import protocol as P
from csnap_client.control import open_control

BIN = Path(sys.executable).parent
CS = 4096
ORIGIN_BYTES = 1 << 20

pytestmark = pytest.mark.skipif(not (BIN / "csnapd").exists(),
                                reason="csnapd not installed (pip install -e .)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One csnapd process; ``start`` waits until both sockets accept connections."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.origin, self.store = tmp / "origin.img", tmp / "store.img"
        self.control = tmp / "ctl.sock"
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        with open(self.origin, "wb") as f:
            for c in range(ORIGIN_BYTES // CS):
                f.write(c.to_bytes(4, "big") * (CS // 4))
        with open(self.store, "wb") as f:
            f.truncate(32 << 20)
        subprocess.run([str(BIN / "csnap-init"), "--store", str(self.store), "--origin",
                        str(self.origin), "--chunk-size", "4K", "--quiet"], check=True,
                       capture_output=True)

    def start(self) -> None:
        log = open(self.tmp / "csnapd.log", "a")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(
            [str(BIN / "csnapd"), "--store", str(self.store), "--origin", str(self.origin),
             "--listen", f"127.0.0.1:{self.port}", "--control", str(self.control),
             "--lease", "3"], stdout=log, stderr=log)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (self.tmp / "csnapd.log").read_text()
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                with socket.socket(socket.AF_UNIX) as u:  # a stale socket file may exist
                    u.connect(str(self.control))
                return
            except OSError:
                pass
            time.sleep(0.02)
        raise AssertionError("csnapd did not start")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(20)

    async def connect(self, volume: str | int = "origin", **kw) -> csnap_client.Volume:
        return await csnap_client.connect("127.0.0.1", self.port, volume=volume,
                                          origin=str(self.origin), store=str(self.store), **kw)

    async def ctl(self, *args: str) -> subprocess.CompletedProcess:
        proc = await asyncio.create_subprocess_exec(
            str(BIN / "csnapctl"), "--control", str(self.control), *args,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = await proc.communicate()
        return subprocess.CompletedProcess(args, proc.returncode, out.decode(), err.decode())


def original(chunk: int) -> bytes:
    return chunk.to_bytes(4, "big") * (CS // 4)


@pytest.fixture
def server(tmp_path):
    srv = Server(tmp_path)
    srv.start()
    yield srv
    srv.stop(signal.SIGKILL)


async def test_origin_write_read(server):
    async with await server.connect() as vol:
        assert vol.size == ORIGIN_BYTES and vol.chunk_size == CS
        data = os.urandom(3 * CS)
        await vol.write(CS // 2, data)
        assert await vol.read(CS // 2, len(data)) == data
        assert await vol.read(10 * CS, CS) == original(10)


async def test_snapshot_keeps_old_bytes_and_writes_stay_private(server):
    async with await server.connect() as origin:
        await origin.write(0, b"A" * CS)  # before the snapshot
        res = await server.ctl("create", "snap1")
        assert res.returncode == 0, res.stderr
        assert "snap1" in res.stdout
        await origin.write(0, b"B" * (2 * CS))  # after: must be copied out first
        async with await server.connect("snap1") as snap:
            assert await snap.read(0, 2 * CS) == b"A" * CS + original(1)
            await snap.write(CS + 10, b"private")
            assert await snap.read(CS + 10, 7) == b"private"
            assert await origin.read(CS + 10, 7) == b"B" * 7
            assert await snap.read(0, CS) == b"A" * CS
        listing = json.loads((await server.ctl("list", "--json")).stdout)
        assert [s["name"] for s in listing] == ["snap1"]
        status = await server.ctl("status")
        assert status.returncode == 0 and status.stdout.strip()
        assert (await server.ctl("create", "snap1")).returncode == 1  # exists
        assert (await server.ctl("delete", "snap1")).returncode == 0
        assert (await server.ctl("delete", "snap1")).returncode == 1


async def test_concurrent_snapshot_readers_while_origin_writes(server):
    async with await server.connect() as origin:
        async with await open_control(server.control) as ctl:
            info = await ctl.create("s")
        readers = [await server.connect(info["tag"] if i % 2 else "s") for i in range(4)]
        try:
            async def write_all():
                for c in range(0, 64):
                    await origin.write(c * CS, os.urandom(CS))

            async def read_all(vol, seed):
                for i in range(40):
                    c = (seed * 7 + i * 5) % 64
                    assert await vol.read(c * CS, 2 * CS) == original(c) + original(c + 1)

            await asyncio.gather(write_all(), *(read_all(v, i) for i, v in enumerate(readers)))
        finally:
            for v in readers:
                await v.close()


async def test_control_errors(server):
    async with await open_control(server.control) as ctl:
        with pytest.raises(P.UnknownSnapshotError):
            await ctl.delete("nope")
        snap = await ctl.create("t", tag=7, priority=-3)
        assert snap["tag"] == 7
        with pytest.raises(P.SnapshotExistsError):
            await ctl.create("t")
        assert any(s["name"] == "t" for s in await ctl.list())
        assert isinstance(await ctl.status(), dict)
        await ctl.delete(7)
    with pytest.raises(P.UnknownSnapshotError):
        await server.connect("t")


async def test_csnap_io_roundtrip(server, tmp_path):
    data = os.urandom(10000)
    env = {**os.environ, "CSNAP_SERVER": f"127.0.0.1:{server.port}",
           "CSNAP_ORIGIN": str(server.origin), "CSNAP_STORE": str(server.store)}
    w = await asyncio.create_subprocess_exec(
        str(BIN / "csnap-io"), "--volume", "origin", "write", "--offset", "1K",
        stdin=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    _, err = await w.communicate(data)
    assert w.returncode == 0, err
    r = await asyncio.create_subprocess_exec(
        str(BIN / "csnap-io"), "--volume", "origin", "read", "--offset", "1K", "--length",
        str(len(data)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    out, err = await r.communicate()
    assert r.returncode == 0, err
    assert out == data


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["clean", "crash"])
async def test_reconnect_after_server_restart(server, sig):
    async with await server.connect() as origin:
        async with await open_control(server.control) as ctl:
            await ctl.create("r")
        async with await server.connect("r") as snap:
            await origin.write(0, b"x" * CS)
            server.stop(sig)
            server.start()
            assert await snap.read(0, CS) == original(0)
            await origin.write(CS, b"y" * CS)
            assert await snap.read(CS, CS) == original(1)
            assert origin.client.reconnects >= 1 and snap.client.reconnects >= 1


async def test_read_in_progress_across_a_crash_is_read_again(server):
    """A read whose lock died with the server is redone: the data is still right."""
    async with await open_control(server.control) as ctl:
        await ctl.create("u")
    async with await server.connect("u") as snap:
        gate, locked = asyncio.Event(), asyncio.Event()
        real_finish = snap._finish
        finishes = []

        async def held_finish(lock):
            locked.set()
            await gate.wait()
            valid = await real_finish(lock)
            finishes.append(valid)
            return valid

        snap._finish = held_finish
        task = asyncio.ensure_future(snap.read(5 * CS, 2 * CS))
        await asyncio.wait_for(locked.wait(), 5)
        server.stop(signal.SIGKILL)
        server.start()
        deadline = time.monotonic() + 15
        while snap.client.reconnects < 1:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        gate.set()
        assert await task == original(5) + original(6)
        assert finishes[0] is False  # the old lock is unknown to the new server
