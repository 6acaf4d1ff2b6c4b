"""Fixtures for the diff and replication tests: real csnapd processes with a random
snapshot history, helpers to read volumes and to run the tools in-process or as
processes."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import csnap_client
from csnap_client.protocol import messages as m
from tests.integration.conftest import BIN, ServerHandle, make_server

ROOT = Path(__file__).resolve().parents[2]
CS = 4096
CHUNKS = 1024  # 4 MiB origin
_install_tried: list[str] = []


def require_rbd() -> str:
    """The rbd tool (installed once through scripts/install-system-deps.sh if missing);
    skip the test if it cannot be had."""
    if shutil.which("rbd") is None and not _install_tried:
        proc = subprocess.run([str(ROOT / "scripts" / "install-system-deps.sh")],
                              capture_output=True, text=True, timeout=900)
        _install_tried.append(proc.stdout + proc.stderr)
    path = shutil.which("rbd")
    if path is None:
        pytest.skip("rbd (ceph-common) missing and scripts/install-system-deps.sh could not "
                    f"install it: {''.join(_install_tried).strip()[-300:]}")
    return path


def env_of(srv: ServerHandle) -> dict[str, str]:
    """The environment the tools take their connection defaults from."""
    return dict(os.environ, CSNAP_SERVER=f"127.0.0.1:{srv.port}", CSNAP_ORIGIN=str(srv.origin),
                CSNAP_STORE=str(srv.store), CSNAP_CONTROL=str(srv.control),
                CSNAP_STATE_DIR=str(srv.tmp / "state"))


def conn_args(srv: ServerHandle) -> list[str]:
    """The same as command-line options."""
    return ["--server", f"127.0.0.1:{srv.port}", "--origin", str(srv.origin),
            "--store", str(srv.store)]


def tool(srv: ServerHandle, name: str, *args: str, input: bytes | None = None,
         check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run a console script as a process (bytes in, bytes out)."""
    proc = subprocess.run([str(BIN / name), *args], env=env_of(srv), input=input,
                          capture_output=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{name} {args} exited {proc.returncode}: "
                             f"{proc.stderr.decode()[-2000:]}")
    return proc


def read_volume(srv: ServerHandle, volume: str) -> bytes:
    """Every byte of a volume, through the client library."""
    async def go() -> bytes:
        async with await csnap_client.connect("127.0.0.1", srv.port, volume, origin=str(srv.origin),
                                              store=str(srv.store), read_only=True) as vol:
            return await vol.read(0, vol.size)
    return asyncio.run(go())


def write_volume(srv: ServerHandle, volume: str, writes: list[tuple[int, bytes]]) -> None:
    """Write ``(offset, data)`` pieces through the client library."""
    async def go() -> None:
        async with await csnap_client.connect("127.0.0.1", srv.port, volume, origin=str(srv.origin),
                                              store=str(srv.store)) as vol:
            for offset, data in writes:
                await vol.write(offset, data)
    asyncio.run(go())


def snapshot(srv: ServerHandle, name: str) -> None:
    """Create a snapshot (no origin client is connected while the tests call this)."""
    reply = srv.ctl(m.create_snapshot(1, name))
    assert reply["op"] == "OK", reply


def random_writes(rng: random.Random, count: int, chunks: int = CHUNKS) -> list[tuple[int, bytes]]:
    """Runs of whole and partial chunks: random data, zeros, or a repeated pattern."""
    out = []
    for _ in range(count):
        start = rng.randrange(chunks)
        n = min(rng.choice([1, 1, 2, 5, 17, 40]), chunks - start)
        kind = rng.random()
        data = (bytes(n * CS) if kind < 0.2 else rng.randbytes(n * CS) if kind < 0.8
                else bytes([rng.randrange(256)]) * (n * CS))
        if rng.random() < 0.2:  # a partial-chunk write
            cut = rng.randrange(1, CS)
            out.append((start * CS + cut, data[:-cut] if len(data) > cut else data[:1]))
        else:
            out.append((start * CS, data))
    return out


@dataclass
class History:
    """A server with snapshots s0..s3 made over random origin and snapshot writes, and the
    final image of every snapshot."""

    srv: ServerHandle
    names: list[str]
    images: dict[str, bytes] = field(default_factory=dict)


def make_history(tmp: Path, seed: int = 7, rounds: int = 4) -> History:
    """Start a csnapd and build a random snapshot history on it."""
    srv = make_server(tmp)
    srv.start()
    rng = random.Random(seed)
    write_volume(srv, "origin", [(0, rng.randbytes(CHUNKS * CS // 2))])  # half has data
    names = []
    for r in range(rounds):
        name = f"s{r}"
        snapshot(srv, name)
        names.append(name)
        write_volume(srv, "origin", random_writes(rng, 60))
        if r and rng.random() < 0.7:  # an older snapshot is written, too
            write_volume(srv, rng.choice(names[:-1]), random_writes(rng, 5))
    hist = History(srv, names)
    for name in names:
        hist.images[name] = read_volume(srv, name)
    return hist


@pytest.fixture
def history(tmp_path):
    """A :class:`History` on a running csnapd, stopped (and checked clean) afterwards."""
    hist = make_history(tmp_path)
    yield hist
    assert hist.srv.stop() == 0, hist.srv.log_text()
