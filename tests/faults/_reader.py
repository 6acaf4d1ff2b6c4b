"""Helper process for tests/faults: read a snapshot through csnap_client, slowly.

    python _reader.py PORT ORIGIN STORE VOLUME OFFSET LENGTH MODE

The library's data read (``csnap_client.volume._pread_into``) is wrapped: the first read
from the *origin* device (which happens only after the server granted the read locks)
prints ``LOCKED`` and then either hangs forever (MODE ``hang``: the test SIGKILLs us) or
sleeps a second before reading (MODE ``slow``: the test SIGSTOPs us in that second,
overwrites the origin, then SIGCONTs us).  At the end one JSON line is printed: the
sha256 of the bytes ``Volume.read`` returned, of what the first origin read saw, and the
``valid`` flags of every FINISH_SNAPSHOT_READ.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
import time

import csnap_client
from csnap_client import volume as volmod


def main() -> None:
    port, origin, store, volume, offset, length, mode = sys.argv[1:8]
    real = volmod._pread_into
    state = {"first": None, "finish": []}

    def pread(fd: int, buf: memoryview, dev_off: int) -> None:
        if fd == state.get("origin_fd") and state["first"] is None:
            state["first"] = "pending"
            print("LOCKED", flush=True)
            if mode == "hang":
                time.sleep(3600)
            time.sleep(1.0)
            real(fd, buf, dev_off)
            state["first"] = hashlib.sha256(bytes(buf)).hexdigest()
            return
        real(fd, buf, dev_off)

    volmod._pread_into = pread
    real_finish = volmod.Volume._finish

    async def finish(self: volmod.Volume, lock: int) -> bool:
        valid = await real_finish(self, lock)
        state["finish"].append(valid)
        return valid

    volmod.Volume._finish = finish

    async def run() -> None:
        vol = await csnap_client.connect("127.0.0.1", int(port), volume=volume, origin=origin,
                                         store=store, io_threads=1)
        state["origin_fd"] = vol._origin_fd
        data = await vol.read(int(offset), int(length))
        await vol.close()
        print(json.dumps({"result": hashlib.sha256(data).hexdigest(),
                          "first_origin_read": state["first"], "finish": state["finish"]}),
              flush=True)

    asyncio.run(run())


if __name__ == "__main__":
    main()
