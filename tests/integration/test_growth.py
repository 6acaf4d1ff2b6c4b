"""Online growth against a real csnapd: files enlarged with truncate, csnapctl grow, a
client writing the origin the whole time, the new size learnt by clients."""

from __future__ import annotations

import asyncio
import json
import os
import time

import csnap_client
from csnap_client.control import ControlClient
from csnap_client.protocol import messages as m

from .conftest import make_server, run_tool

CS = 4096
ORIGIN = 4 << 20
STORE = 64 << 20


def _truncate(path, size: int) -> None:  # noqa: ANN001
    with open(path, "r+b") as f:
        f.truncate(size)


def test_growth_while_a_client_writes(tmp_path):
    handle = make_server(tmp_path, origin_size=ORIGIN, store_size=STORE)
    handle.start()
    ctl = ("csnapctl", "--control", str(handle.control))
    run_tool(*ctl, "create", "before")
    latencies: list[float] = []
    seen_sizes: list[int] = []

    async def main() -> dict:
        vol = await csnap_client.connect("127.0.0.1", handle.port, volume="origin",
                                         origin=str(handle.origin), store=str(handle.store))
        stop = asyncio.Event()

        async def writer() -> int:
            n = 0
            while not stop.is_set():
                off = (n * 7 % (vol.size // CS)) * CS
                t0 = time.monotonic()
                await vol.write(off, bytes([n % 251]) * CS)
                latencies.append(time.monotonic() - t0)
                n += 1
                await asyncio.sleep(0)
            return n

        task = asyncio.create_task(writer())
        await asyncio.sleep(0.3)
        async with ControlClient(str(handle.control)) as c:
            _truncate(handle.store, STORE + (16 << 20))  # within the bitmaps' reach
            inside = await c.grow(store=True)
            await asyncio.sleep(0.2)
            _truncate(handle.store, 1 << 30)  # far past it: the bitmaps move
            beyond = await asyncio.to_thread(run_tool, *ctl, "grow", "--store", "--json")
            await asyncio.sleep(0.2)
            _truncate(handle.origin, 2 * ORIGIN)
            origin = await c.grow(origin=True)
            for _ in range(100):  # RESIZED comes after the commit
                if vol.size == 2 * ORIGIN:
                    break
                await asyncio.sleep(0.02)
            seen_sizes.append(vol.size)
            await vol.write(2 * ORIGIN - CS, b"\x77" * CS)  # past the old end
            assert await vol.read(2 * ORIGIN - CS, CS) == b"\x77" * CS
            await asyncio.sleep(0.2)
        stop.set()
        writes = await task
        await vol.close()
        return {"inside": inside, "beyond": json.loads(beyond.stdout), "origin": origin,
                "writes": writes}

    out = asyncio.run(main())
    assert out["inside"]["grown"][0]["how"] == "in place"
    assert out["beyond"]["grown"][0]["how"] == "bitmaps moved"
    assert out["beyond"]["store_bytes"] == 1 << 30
    assert out["origin"]["origin_bytes"] == 2 * ORIGIN
    assert seen_sizes == [2 * ORIGIN]
    print(f"writes during growth: {out['writes']}, worst latency {max(latencies) * 1000:.1f} ms")
    assert out["writes"] > 50 and max(latencies) < 5.0, (out["writes"], max(latencies))

    # a new client sees the new size; the old snapshot keeps its own
    new = handle.client("origin")
    assert new.info["origin_bytes"] == 2 * ORIGIN
    old = handle.client("before")
    assert old.info["origin_bytes"] == ORIGIN
    refused = old.call(m.query_snapshot_read(0, [[ORIGIN // CS, 1]]))
    assert refused["op"] == "ERROR" and "outside" in refused["message"], refused
    new.close()
    old.close()

    # shrinking is refused with the reason; nothing changes
    small = run_tool(*ctl, "grow", "--store-size", str(STORE), check=False)
    assert small.returncode == 1 and "shrinking the store is refused" in small.stderr
    small = run_tool(*ctl, "grow", "--origin-size", str(ORIGIN), check=False)
    assert small.returncode == 1 and "shrinking the origin is refused" in small.stderr
    status = json.loads(run_tool(*ctl, "status", "--json").stdout)
    assert status["store"]["store_chunks"] == (1 << 30) // CS, status["store"]

    # and all of it survives a SIGKILL and a restart
    handle.kill()
    handle.start()
    again = handle.client("origin")
    assert again.info["origin_bytes"] == 2 * ORIGIN
    again.close()
    assert handle.stop() == 0
    check = run_tool("csnap-check", "--store", str(handle.store), "--origin",
                     str(handle.origin), check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    assert os.path.getsize(handle.store) == 1 << 30
