"""Clones through a real csnapd: csnapctl create --from, list --tree, writers of the parent
(a live one that acknowledges, a stalled one that cannot), SIGKILL during the fill."""

from __future__ import annotations

import asyncio
import json

import csnap_client
from csnap_client.control import ControlClient
from csnap_client.protocol import messages as m
from csnapd.store.device import FileDevice
from csnapd.store.store import Store

from .conftest import make_server, run_tool


def _pattern(tag: bytes, n: int) -> bytes:
    return (tag * (n // len(tag) + 1))[:n]


def test_clone_of_a_snapshot_being_written_keeps_its_content(tmp_path):
    handle = make_server(tmp_path, store_size=64 << 20, origin_size=8 << 20)
    handle.start()
    cs = handle.chunk_size
    ctl = ("csnapctl", "--control", str(handle.control))

    async def scenario() -> None:
        origin = await csnap_client.connect("127.0.0.1", handle.port, origin=handle.origin,
                                            store=handle.store)
        await origin.write(0, _pattern(b"origin-v1 ", 64 * cs))
        await origin.flush()
        run_tool(*ctl, "create", "base")
        await origin.write(0, _pattern(b"origin-v2 ", 16 * cs))  # base gets copies of 0..15
        base = await csnap_client.connect("127.0.0.1", handle.port, volume="base",
                                          origin=handle.origin, store=handle.store)
        await base.write(8 * cs, _pattern(b"base-own ", 16 * cs))  # base's own 8..23
        want = await base.read(0, 64 * cs)
        # the clone is made while base's writer is connected: it must let go of its
        # cached addresses (NEW_CLONE) before the clone exists
        async with ControlClient(str(handle.control)) as c:
            made = await c.create("work", from_="base")
        assert made["parent"] == "base"
        # base writes again, to chunks it owned alone before the clone: the clone keeps
        # the old data
        await base.write(8 * cs, _pattern(b"base-later ", 16 * cs))
        await origin.write(32 * cs, _pattern(b"origin-v3 ", 16 * cs))
        work = await csnap_client.connect("127.0.0.1", handle.port, volume="work",
                                          origin=handle.origin, store=handle.store)
        assert await work.read(0, 64 * cs) == want
        await work.write(0, _pattern(b"work-own ", 4 * cs))
        assert (await base.read(0, 4 * cs)) == want[:4 * cs]
        assert (await work.read(4 * cs, 60 * cs)) == want[4 * cs:]
        for vol in (origin, base, work):
            await vol.close()

    asyncio.run(scenario())
    listed = {s["name"]: s for s in json.loads(run_tool(*ctl, "list", "--json").stdout)}
    assert listed["work"]["parent"] == "base" and listed["base"]["parent"] is None
    run_tool(*ctl, "create", "deeper", "--from", "work")
    tree = run_tool(*ctl, "list", "--tree").stdout
    lines = tree.splitlines()
    assert lines[0] == "origin"
    assert lines[1].startswith("`-- base") and lines[2].startswith("    `-- work")
    assert lines[3].startswith("        `-- deeper")
    # deleting a parent hangs its clones under the grandparent
    run_tool(*ctl, "delete", "work")
    listed = {s["name"]: s for s in json.loads(run_tool(*ctl, "list", "--json").stdout)}
    assert listed["deeper"]["parent"] == "base"
    assert handle.stop() == 0
    check = run_tool("csnap-check", "--store", str(handle.store), "--origin",
                     str(handle.origin), check=False)
    assert check.returncode == 0, check.stdout


def test_a_stalled_writer_of_the_parent_blocks_the_clone_until_forgotten(tmp_path):
    """A writer that never acknowledges keeps store addresses it may write at any time:
    the clone is refused (naming it) rather than made to share those chunks."""
    handle = make_server(tmp_path)
    handle.start("--lease", "1")
    ctl = ("csnapctl", "--control", str(handle.control))
    run_tool(*ctl, "create", "base")
    stalled = handle.client("base", client_id=4242)
    reply = stalled.call(m.query_write(0, [[0, 4]]))
    assert reply["op"] == "SNAPSHOT_WRITE_OK"  # it holds four addresses, and goes silent
    refused = run_tool(*ctl, "create", "work", "--from", "base", check=False)
    assert refused.returncode == 1
    assert "SNAPSHOT_HELD" in refused.stderr and "client 4242" in refused.stderr
    assert "forget-client" in refused.stderr
    stalled.sock.close()
    run_tool(*ctl, "forget-client", "4242")
    out = run_tool(*ctl, "create", "work", "--from", "base").stdout
    assert "created clone 'work'" in out and "of 'base'" in out
    handle.stop()


def test_sigkill_during_the_fill_resumes_it(tmp_path):
    """A parent with many copies: the fill takes many background slices; a SIGKILL in the
    middle and a restart finish it, and the clone reads its parent's data throughout."""
    handle = make_server(tmp_path, origin_size=64 << 20, store_size=256 << 20,
                         block_size="512")  # small leaves: many of them to fill
    handle.start()
    cs = handle.chunk_size
    n = (64 << 20) // cs

    async def write_all(tag: bytes) -> None:
        vol = await csnap_client.connect("127.0.0.1", handle.port, origin=handle.origin,
                                         store=handle.store)
        step = 256 * cs
        for off in range(0, n * cs, step):
            await vol.write(off, _pattern(tag, step))
        await vol.flush()
        await vol.close()

    async def read(name: str) -> bytes:
        vol = await csnap_client.connect("127.0.0.1", handle.port, volume=name,
                                         origin=handle.origin, store=handle.store)
        data = await vol.read(0, n * cs)
        await vol.close()
        return data

    async def clone_and_kill() -> None:
        async with ControlClient(str(handle.control)) as c:
            await c.create("work", from_="base")
        handle.kill()  # at once: the fill has only begun

    asyncio.run(write_all(b"first "))
    run_tool("csnapctl", "--control", str(handle.control), "create", "base")
    asyncio.run(write_all(b"second "))  # base has a copy of every chunk
    want = asyncio.run(read("base"))
    asyncio.run(clone_and_kill())
    s = Store.open(FileDevice(str(handle.store), writable=False),
                   FileDevice(str(handle.origin), writable=False), readonly=True)
    assert s.cloning, "the fill had finished before the kill: nothing was tested"
    s.close()
    handle.start()
    assert asyncio.run(read("work")) == want
    ctl = ("csnapctl", "--control", str(handle.control))
    for _ in range(400):
        status = json.loads(run_tool(*ctl, "status", "--json").stdout)
        if not status["store"]["clone_fill"]["active"]:
            break
        asyncio.run(asyncio.sleep(0.05))
    assert not status["store"]["clone_fill"]["active"]
    assert asyncio.run(read("work")) == want
    assert handle.stop() == 0
    check = run_tool("csnap-check", "--store", str(handle.store), "--origin",
                     str(handle.origin), check=False)
    assert check.returncode == 0, check.stdout
