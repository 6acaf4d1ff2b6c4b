"""csnapctl revert against a real csnapd: the origin becomes the snapshot, the others keep
their content, a reader holding a read lock is waited for, SIGKILL in the middle resumes."""

from __future__ import annotations

import asyncio
import json
import time

import csnap_client
from csnap_client.control import ControlClient
from csnap_client.protocol import messages as m
from csnapd.store.device import FileDevice
from csnapd.store.store import Store

from .conftest import make_server, run_tool


def _pattern(tag: bytes, n: int) -> bytes:
    return (tag * (n // len(tag) + 1))[:n]


async def _write(handle, off: int, data: bytes) -> None:  # noqa: ANN001
    vol = await csnap_client.connect("127.0.0.1", handle.port, origin=handle.origin,
                                     store=handle.store)
    await vol.write(off, data)
    await vol.flush()
    await vol.close()


async def _read(handle, name: str, length: int) -> bytes:  # noqa: ANN001
    vol = await csnap_client.connect("127.0.0.1", handle.port, volume=name,
                                     origin=handle.origin, store=handle.store)
    data = await vol.read(0, length)
    await vol.close()
    return data


def _origin_bytes(handle, length: int) -> bytes:  # noqa: ANN001
    with open(handle.origin, "rb") as f:
        return f.read(length)


def _wait_done(ctl: tuple[str, ...], limit: float = 60.0) -> dict:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        status = json.loads(run_tool(*ctl, "status", "--json").stdout)
        if not status["store"]["revert"]["active"]:
            return status
        time.sleep(0.05)
    raise AssertionError("the revert did not finish")


def test_revert_keeps_every_other_snapshot_and_waits_for_a_reader(tmp_path):
    handle = make_server(tmp_path, origin_size=8 << 20)
    handle.start()
    cs, n = handle.chunk_size, 64
    size = n * cs
    ctl = ("csnapctl", "--control", str(handle.control))
    asyncio.run(_write(handle, 0, _pattern(b"v1 ", size)))
    run_tool(*ctl, "create", "monday")
    asyncio.run(_write(handle, 0, _pattern(b"v2 ", size // 2)))
    run_tool(*ctl, "create", "tuesday")
    asyncio.run(_write(handle, size // 4, _pattern(b"v3 ", size // 2)))
    run_tool(*ctl, "create", "wednesday")  # shares the origin everywhere
    want = {name: asyncio.run(_read(handle, name, size))
            for name in ("monday", "tuesday", "wednesday")}
    # an origin client connected: refused, saying why
    origin = handle.client("origin")
    refused = run_tool(*ctl, "revert", "monday", check=False)
    assert refused.returncode == 1 and "origin client(s) are connected" in refused.stderr
    origin.close()
    # a reader of wednesday holds a read lock on an origin chunk the revert overwrites
    reader = handle.client("wednesday")
    lock = reader.call(m.query_snapshot_read(0, [[0, 1]]))
    assert lock["origin"] == [[0, 1]]
    out = run_tool(*ctl, "revert", "monday").stdout
    assert "reverting the origin to snapshot 'monday'" in out
    time.sleep(0.5)
    status = json.loads(run_tool(*ctl, "status", "--json").stdout)
    assert status["store"]["revert"]["active"], "the restore did not wait for the reader"
    assert _origin_bytes(handle, cs) == want["wednesday"][:cs]  # not overwritten under it
    busy = handle.client  # a new origin client is refused while it runs
    try:
        busy("origin")
        raise AssertionError("an origin client was let in during the revert")
    except Exception as exc:  # noqa: BLE001 - the raw client raises on the ERROR reply
        assert "being reverted" in str(exc)
    reader.call(m.finish_snapshot_read(0, lock["id"]))
    _wait_done(ctl)
    assert _origin_bytes(handle, size) == want["monday"]
    for name, data in want.items():
        assert asyncio.run(_read(handle, name, size)) == data, name
    # the origin takes writes again, and the snapshots still keep their content
    asyncio.run(_write(handle, 0, _pattern(b"after ", size)))
    for name, data in want.items():
        assert asyncio.run(_read(handle, name, size)) == data, name
    assert handle.stop() == 0
    check = run_tool("csnap-check", "--store", str(handle.store), "--origin",
                     str(handle.origin), check=False)
    assert check.returncode == 0, check.stdout


def test_sigkill_during_a_revert_resumes_it(tmp_path):
    handle = make_server(tmp_path, origin_size=64 << 20, store_size=256 << 20,
                         block_size="512")
    handle.start()
    cs = handle.chunk_size
    size = 64 << 20
    ctl = ("csnapctl", "--control", str(handle.control))

    async def fill(tag: bytes) -> None:
        vol = await csnap_client.connect("127.0.0.1", handle.port, origin=handle.origin,
                                         store=handle.store)
        step = 256 * cs
        for off in range(0, size, step):
            await vol.write(off, _pattern(tag, step))
        await vol.flush()
        await vol.close()

    async def revert_and_kill() -> None:
        async with ControlClient(str(handle.control)) as c:
            await c.revert("old")
        handle.kill()  # at once: the revert has only begun

    asyncio.run(fill(b"old "))
    run_tool(*ctl, "create", "old")
    asyncio.run(fill(b"new "))  # old has a copy of every chunk
    run_tool(*ctl, "create", "new")
    want_old = asyncio.run(_read(handle, "old", size))
    want_new = asyncio.run(_read(handle, "new", size))
    asyncio.run(revert_and_kill())
    s = Store.open(FileDevice(str(handle.store), writable=False),
                   FileDevice(str(handle.origin), writable=False), readonly=True)
    assert s.sb.revert_slot, "the revert had finished before the kill: nothing was tested"
    s.close()
    handle.start()
    _wait_done(ctl, limit=120)
    assert _origin_bytes(handle, size) == want_old
    assert asyncio.run(_read(handle, "new", size)) == want_new
    assert asyncio.run(_read(handle, "old", size)) == want_old
    assert handle.stop() == 0
    check = run_tool("csnap-check", "--store", str(handle.store), "--origin",
                     str(handle.origin), check=False)
    assert check.returncode == 0, check.stdout
