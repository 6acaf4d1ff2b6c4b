"""Fixtures for client tests: temp origin/store files and a fake csnapd."""

from __future__ import annotations

import os

import pytest

import csnap_client

from .fakeserver import FakeServer

CS = 4096
ORIGIN_CHUNKS = 64


def pattern(chunk: int, tag: bytes = b"O") -> bytes:
    """Recognisable contents for one chunk."""
    return (tag + chunk.to_bytes(4, "big")) * (CS // 5) + b"\0" * (CS % 5)


@pytest.fixture
def devices(tmp_path):
    origin = tmp_path / "origin.img"
    store = tmp_path / "store.img"
    origin.write_bytes(b"".join(pattern(c) for c in range(ORIGIN_CHUNKS)))
    with open(store, "wb") as f:
        f.truncate(4 << 20)
    return str(origin), str(store)


@pytest.fixture
async def fake(devices, tmp_path):
    srv = FakeServer(*devices, chunk_size=CS, lease_ms=2000)
    await srv.start(control=str(tmp_path / "ctl.sock"))
    srv.control_path = str(tmp_path / "ctl.sock")
    yield srv
    await srv.close()


@pytest.fixture
async def open_volume(fake, devices):
    """``await open_volume(volume, **kw)``; every volume is closed at teardown."""
    opened = []

    async def _open(volume="origin", **kw):
        kw.setdefault("reconnect_delay", 0.02)
        vol = await csnap_client.connect("127.0.0.1", fake.port, volume=volume,
                                         origin=devices[0], store=devices[1], **kw)
        opened.append(vol)
        return vol

    yield _open
    for vol in opened:
        await vol.close()


def count(fake, op):
    return sum(1 for m in fake.received if m.get("op") == op)


def read_file(path, offset, length):
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, length, offset)
    finally:
        os.close(fd)
