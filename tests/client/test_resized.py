"""The client follows the origin's growth: RESIZED on the connection, or a larger
origin found at a reconnect (the fake server plays csnapd)."""

from __future__ import annotations

import asyncio
import os

from csnap_client import protocol as P

from .conftest import CS


async def _until(cond, timeout: float = 5.0) -> None:  # noqa: ANN001
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        assert loop.time() < deadline
        await asyncio.sleep(0.01)


async def test_resized_raises_the_volume_size(fake, open_volume, devices):
    vol = await open_volume()
    old = vol.size
    seen = []
    vol.client.resize_listeners.append(lambda info: seen.append(info.origin_bytes))
    os.truncate(devices[0], old + 4 * CS)
    fake.origin_bytes, fake.chunks = old + 4 * CS, old // CS + 4
    for conn in fake.conns:
        fake._send(conn, P.resized(fake.chunks, fake.origin_bytes))
    await _until(lambda: vol.size == old + 4 * CS)
    assert seen == [old + 4 * CS] and vol.client.info.origin_chunks == fake.chunks
    await vol.write(old, b"\x5a" * CS)  # past the old end
    assert await vol.read(old, CS) == b"\x5a" * CS


async def test_a_grown_origin_found_at_reconnect(fake, open_volume, devices):
    vol = await open_volume()
    old = vol.size
    os.truncate(devices[0], old + 8 * CS)
    fake.origin_bytes, fake.chunks = old + 8 * CS, old // CS + 8
    await fake.restart()  # no RESIZED: the client learns it from IDENTIFY_OK
    await vol.client.wait_ready()
    await _until(lambda: vol.size == old + 8 * CS)
